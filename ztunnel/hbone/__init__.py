"""HBONE: mTLS HTTP/2 CONNECT tunnels between ztunnels (and waypoints).

- `connection.HBONEConnection`: sans-IO protocol core (h2 for control, our own DATA fast path)
- `stream.HBONEStream`: one tunnel as an asyncio byte stream with backpressure
- `client.HBONEClientPool`: pooled client connections keyed by (src id, dst id, dst IP)
- `server.HBONEServer`: accepts tunnels on a caller-supplied listening socket
"""

from ztunnel.hbone.client import HBONE_PORT, HBONEClientPool, HBONEConnectError, PoolKey, tcp_connect
from ztunnel.hbone.connection import HBONEConnection, HBONEError
from ztunnel.hbone.server import HBONEServer
from ztunnel.hbone.stream import HBONEStream, StreamResetError

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
