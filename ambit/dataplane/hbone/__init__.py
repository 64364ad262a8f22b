"""HBONE: mTLS HTTP/2 CONNECT tunnels between ztunnels (and waypoints).

- `connection.HBONEConnection`: sans-IO protocol core (libnghttp2 for control, our own DATA fast path)
- `stream.HBONEStream`: one tunnel as an asyncio byte stream with backpressure
- `client.HBONEClientPool`: pooled client connections keyed by (src id, dst id, dst IP)
- `server.HBONEServer`: accepts tunnels on a caller-supplied listening socket
"""

from ambit.dataplane.hbone.client import HBONE_PORT, HBONEClientPool, HBONEConnectError, PoolKey, tcp_connect
from ambit.dataplane.hbone.connection import HBONEConnection, HBONEError
from ambit.dataplane.hbone.server import HBONEServer
from ambit.dataplane.hbone.stream import HBONEStream, StreamResetError

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
