"""TCP keepalive on upstream sockets, as Envoy's `upstream_connection_options.tcp_keepalive`.

Istio configures it per cluster from the mesh-wide MeshConfig `tcpKeepalive`, then the
DestinationRule's `connectionPool.tcp.tcpKeepalive`, field by field
(pilot/pkg/networking/core/cluster.go, `applyTCPKeepalive` / `setKeepAliveSettings`): either one
set at all turns SO_KEEPALIVE on; a value set (non-zero) in the rule overrides the mesh's, and a
value set in neither stays the OS's (net.ipv4.tcp_keepalive_time, _intvl, _probes; 7200 s, 75 s,
9 on Linux). Envoy sets SO_KEEPALIVE and only the values it has (TCP_KEEPIDLE, TCP_KEEPINTVL,
TCP_KEEPCNT) on the socket before it connects.

Why it matters: an idle upstream connection (an HTTP/1.1 keep-alive connection in the pool, an
HBONE connection between bursts, a quiet TCP stream) is dropped silently by NATs and cloud load
balancers after their idle timeout, and a peer that vanished (node gone, path cut) is never
noticed without traffic. Probes keep the middleboxes' state alive and find dead peers.

`effective` is pure; `apply` is the one system call site (setsockopt on the real socket).
"""

from __future__ import annotations

import dataclasses
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ambit.model import TcpKeepalive

# The kernel's limits (include/net/tcp.h: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT):
# setsockopt refuses more with EINVAL, so the controller refuses them in a rule first.
MAX_IDLE = 32767           # seconds, TCP_KEEPIDLE and TCP_KEEPINTVL alike
MAX_PROBES = 127


def effective(mesh: TcpKeepalive | None, rule: TcpKeepalive | None) -> TcpKeepalive | None:
    """The keepalive of a cluster: the mesh's, each value the rule sets overriding it (Istio's
    applyTCPKeepalive); None when neither is set (no SO_KEEPALIVE, the socket's default)."""
    if rule is None:
        return mesh
    if mesh is None:
        return rule
    return dataclasses.replace(mesh, time=rule.time or mesh.time, interval=rule.interval or mesh.interval,
                               probes=rule.probes or mesh.probes)


def options(ka: TcpKeepalive) -> list[tuple[int, int, int]]:
    """(level, option, value) for setsockopt: SO_KEEPALIVE, then only the values set."""
    out = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for value, opt in ((ka.time, socket.TCP_KEEPIDLE), (ka.interval, socket.TCP_KEEPINTVL),
                       (ka.probes, socket.TCP_KEEPCNT)):
        if value:
            out.append((socket.IPPROTO_TCP, opt, value))
    return out


def apply(sock: Any, ka: TcpKeepalive | None) -> None:
    """Set `ka` on `sock` (a socket, or asyncio's TransportSocket); nothing when None. An error
    (the kernel refusing a value) propagates: the connection fails rather than run without what
    its cluster asked for."""
    if ka is None:
        return
    for level, opt, value in options(ka):
        sock.setsockopt(level, opt, value)


def describe(ka: TcpKeepalive | None) -> str:
    """For pool keys and logs: "" when off, else e.g. "keepalive 30/10/3" (seconds, seconds, probes;
    "os" for a value left to the OS)."""
    if ka is None:
        return ""
    return f"keepalive {ka.time or 'os'}/{ka.interval or 'os'}/{ka.probes or 'os'}"
