"""HTTP/2 framing, HPACK and flow control in C: libnghttp2 through cffi (ABI mode).

`NgHttp2Connection` is a sans-IO connection with the `h2` library's `H2Connection` surface (the
part the waypoint uses), so callers switch codecs without changing their event handling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ambit import lazy

if TYPE_CHECKING:
    from ambit.dataplane.nghttp2.connection import NgHttp2Connection
    from ambit.dataplane.nghttp2.ffi import available

# On first use: the waypoint's settings check `available` without loading the connection (and h2's events).
__getattr__ = lazy.exports(__name__, {"NgHttp2Connection": "ambit.dataplane.nghttp2.connection",
                                      "available": "ambit.dataplane.nghttp2.ffi"})

__all__ = ["NgHttp2Connection", "available"]
