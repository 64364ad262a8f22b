"""The waypoint's HTTP engine: the asyncio edge between byte streams (an HBONE tunnel the waypoint
terminated, or any asyncio transport) and the sans-IO cores in waypoint/request.py.

Per tunnel: `detect` sniffs HTTP/2, HTTP/1.x or opaque; `http1` (httptools) and `http2` (h2) turn
bytes into `RequestHead`s and drive one `Exchange` per request; the exchange asks the injected
`decide` for a `Decision`, answers locally or forwards through `pool` to an upstream that speaks
HTTP/1.1 or h2c, and emits one `RequestRecord` (access log and stats) when it ends.

`Engine` (engine.py) is the entry point; `settings.HttpSettings` holds every bound and timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ambit import lazy

if TYPE_CHECKING:
    from waypoint.http.engine import Engine, UpstreamTarget
    from waypoint.http.plug import HBONETransport, Plug, connect_tcp
    from waypoint.http.record import RequestRecord
    from waypoint.http.settings import HttpSettings

_P = "waypoint.http.plug"
# On first use: `http.settings` alone (the waypoint's settings) loads no engine.
__getattr__ = lazy.exports(__name__, {
    "Engine": "waypoint.http.engine", "UpstreamTarget": "waypoint.http.engine", "HBONETransport": _P, "Plug": _P,
    "connect_tcp": _P, "RequestRecord": "waypoint.http.record", "HttpSettings": "waypoint.http.settings"})

__all__ = ["Engine", "UpstreamTarget", "HBONETransport", "Plug", "connect_tcp", "RequestRecord", "HttpSettings"]
