"""HBONE: mTLS HTTP/2 CONNECT tunnels between ztunnels (and waypoints).

- `connection.HBONEConnection`: sans-IO protocol core (libnghttp2 for control, our own DATA fast path)
- `stream.HBONEStream`: one tunnel as an asyncio byte stream with backpressure
- `client.HBONEClientPool`: pooled client connections keyed by (src id, dst id, dst IP)
- `server.HBONEServer`: accepts tunnels on a caller-supplied listening socket
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ambit import lazy

if TYPE_CHECKING:
    from ambit.dataplane.hbone.client import (
        HBONE_PORT,
        HBONEClientPool,
        HBONEConnectError,
        PoolKey,
        tcp_connect,
    )
    from ambit.dataplane.hbone.connection import HBONEConnection, HBONEError
    from ambit.dataplane.hbone.server import HBONEServer
    from ambit.dataplane.hbone.stream import HBONEStream, StreamResetError

_C, _S = "ambit.dataplane.hbone.client", "ambit.dataplane.hbone.stream"
# On first use: `hbone.limits` alone (ztunnel's settings) loads no codec, TLS or pool.
__getattr__ = lazy.exports(__name__, {
    "HBONE_PORT": _C, "HBONEClientPool": _C, "HBONEConnectError": _C, "PoolKey": _C, "tcp_connect": _C,
    "HBONEConnection": "ambit.dataplane.hbone.connection", "HBONEError": "ambit.dataplane.hbone.connection",
    "HBONEServer": "ambit.dataplane.hbone.server", "HBONEStream": _S, "StreamResetError": _S})

__all__ = [
    "HBONE_PORT",
    "HBONEClientPool",
    "HBONEConnectError",
    "HBONEConnection",
    "HBONEError",
    "HBONEServer",
    "HBONEStream",
    "PoolKey",
    "StreamResetError",
    "tcp_connect",
]
