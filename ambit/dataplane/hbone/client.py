"""HBONE client: pooled mTLS HTTP/2 connections, many CONNECT tunnels per connection.

Pooling is what makes HBONE affordable: a full P-256 mTLS handshake costs ~1.85 ms of CPU, so
fresh connections cap at a few hundred per second, while a stream on a pooled connection costs
one HEADERS round trip (feasibility §5). The pool key is (source identity, destination identity,
destination IP): a connection authenticates exactly one pair of identities, so it can never carry
another workload's traffic. A waypoint adds the TCP keepalive of the cluster a tunnel is for
(`connect(keepalive=...)`, ambit/dataplane/keepalive.py), set on the connection's socket: clusters
that ask for the same keepalive (the usual case: none, or only the mesh-wide one) share connections
as before, and a connection never runs with another cluster's keepalive than its own.

Concurrent `connect()` calls for a key share one dial. A connection leaves the pool when it dies,
receives GOAWAY, or reaches `max_streams` open tunnels (then a second connection is dialled).
Idle connections are closed after `idle_timeout`. A connection is reused only while the TLS context
it was made with is still the source's current one: after a certificate rotation new tunnels go
over a fresh handshake with the new certificate, and the old connection is closed gracefully
(GOAWAY; its open tunnels finish), so no session outlives the rotation by more than its tunnels.

A tunnel is opened a second time, on a fresh connection, when the first try was refused
(REFUSED_STREAM) or its pooled connection turned out dead before any answer (the peer's process was
killed while the connection sat in the pool, and its RST was not read yet). Its data follows the
200, so the first try sent the destination nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ambit.dataplane import tls
from ambit.dataplane.connect import connect
from ambit.dataplane.hbone.connection import HBONEConnection, HBONEError
from ambit.dataplane.hbone.frames import REFUSED_STREAM
from ambit.dataplane.hbone.protocol import HBONEProtocol
from ambit.dataplane.hbone.stream import HBONEStream, StreamResetError
from ambit.dataplane.keepalive import apply as apply_keepalive
from ambit.dataplane.ports import PORT_HBONE as HBONE_PORT

if TYPE_CHECKING:
    from ambit.model import TcpKeepalive

log = logging.getLogger("ambit.dataplane.hbone")



@dataclass(frozen=True, slots=True)
class PoolKey:
    src_identity: str
    dst_identity: str
    dst_ip: str
    # The source pod's address when ztunnel dials from inside the pod's netns (the connection
    # leaves with that IP, so two pods sharing an identity never share a connection); "" otherwise.
    src_ip: str = ""
    # The TCP keepalive set on the connection's socket (a waypoint's cluster's); None: none set.
    keepalive: TcpKeepalive | None = None


class HBONEConnectError(ConnectionError):
    """The tunnel could not be opened; `status` is the HTTP status when the peer answered."""

    def __init__(self, key: PoolKey, authority: str, reason: str, status: int = 0,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HBONE CONNECT {authority} via {key.dst_ip} as {key.src_identity}: {reason}")
        self.key = key
        self.authority = authority
        self.reason = reason
        self.status = status
        self.headers = headers or {}      # the refusing response's headers (e.g. which policy)


class DialTimeout(ConnectionError):
    """The TCP connect or the TLS handshake to the peer did not finish within `handshake_timeout`:
    said as such, not as the tunnel's own (longer) timeout, which had not run out."""


ContextProvider = Callable[[str], Awaitable[ssl.SSLContext]]
SocketFactory = Callable[[PoolKey, int], Awaitable[socket.socket]]


async def tcp_connect(key: PoolKey, port: int) -> socket.socket:
    """Default dialer. IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY when proto says TCP,
    and Nagle + delayed ACK adds 40 ms stalls to a request/response tunnel."""
    family = socket.AF_INET6 if ipaddress.ip_address(key.dst_ip).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        await connect(sock, (key.dst_ip, port))     # not loop.sock_connect: see ambit/dataplane/connect.py
    except BaseException:
        sock.close()
        raise
    return sock


class HBONEClientPool:
    """Opens HBONE tunnels, reusing connections per (source id, destination id, destination IP).

    `client_context(src_identity)` returns the TLS client context for the source workload (e.g.
    `ContextCache.client(await identities.get(src, timeout))`); `dial` creates the connected TCP
    socket (ztunnel makes it inside the source pod's netns).
    """

    def __init__(
        self,
        client_context: ContextProvider,
        *,
        port: int = HBONE_PORT,
        dial: SocketFactory = tcp_connect,
        max_streams: int = 100,
        idle_timeout: float = 60.0,
        handshake_timeout: float = 10.0,
        connection_factory: Callable[[], HBONEConnection] | None = None,
    ) -> None:
        self._client_context = client_context
        self.port = port
        self._dial = dial
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self._new_conn = connection_factory or (lambda: HBONEConnection(client_side=True))
        self._pool: dict[PoolKey, list[HBONEProtocol]] = {}
        self._dialing: dict[PoolKey, asyncio.Task[HBONEProtocol]] = {}
        self._idle_timers: dict[HBONEProtocol, asyncio.TimerHandle] = {}
        self._last_used: dict[HBONEProtocol, float] = {}   # loop time of each connection's latest stream
        self._all: set[HBONEProtocol] = set()
        self._closed = False

    async def connect(
        self,
        src_identity: str,
        dst_identity: str,
        dst_ip: str,
        authority: str,
        *,
        forwarded_for: str | None = None,
        traceparent: str | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
        timeout: float = 10.0,
        src_ip: str = "",
        keepalive: TcpKeepalive | None = None,
    ) -> HBONEStream:
        """Open a tunnel to `authority` (`ip:port` of the real destination) through the HBONE peer,
        over a connection whose socket has `keepalive` (see the module docstring).

        Raises `HBONEConnectError` (non-200 answer, refused, timeout) or `ssl.SSLError`
        (`tls.PeerIdentityError` when the peer is not `dst_identity`).
        """
        key = PoolKey(src_identity, dst_identity, dst_ip, src_ip, keepalive)
        if self._closed:
            raise HBONEConnectError(key, authority, "pool is closed")
        headers = list(extra_headers or [])
        if forwarded_for:
            headers.append(("forwarded", f"for={_forwarded_node(forwarded_for)}"))
        if traceparent:
            headers.append(("traceparent", traceparent))
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for runs the coroutine as a task of its
            # own, one more task per tunnel on the connection-setup path.
            async with asyncio.timeout(timeout):
                return await self._open(key, authority, headers)
        except TimeoutError:
            raise HBONEConnectError(key, authority, f"timed out after {timeout:g}s") from None
        except DialTimeout as e:
            raise HBONEConnectError(key, authority, str(e)) from None

    async def _open(self, key: PoolKey, authority: str, headers: list[tuple[str, str]]) -> HBONEStream:
        for attempt in range(2):
            proto = await self._connection(key)
            reused = proto in self._last_used         # carried a tunnel before this one
            try:
                st = proto.open_stream(authority, headers)
            except HBONEError:
                self._evict(proto)  # raced with GOAWAY or the stream limit: dial afresh
                continue
            self._touch(proto)
            try:
                resp = await st.wait_response()
            except StreamResetError as e:
                # Tried once more on a fresh connection: a stream the peer refused (never processed),
                # and a pooled connection found dead only now (the peer process died, or the path
                # broke, while it sat in the pool: its RST was not read yet when this tunnel took
                # it). Either way no byte of the tunnel was sent (data follows the 200), so the
                # destination saw at most a connection that carried nothing.
                if attempt == 0 and (e.error_code == REFUSED_STREAM or (reused and proto.lost)):
                    continue
                raise HBONEConnectError(key, authority, str(e)) from None
            except asyncio.CancelledError:
                st.reset()
                raise
            if resp.status != 200:
                st.reset()
                raise HBONEConnectError(key, authority, resp.reason or f"status {resp.status}", resp.status,
                                        dict(resp.headers))
            return st
        raise HBONEConnectError(key, authority, "no usable connection")

    def connections(self) -> dict[PoolKey, int]:
        """Open connections per key (for the admin endpoint and tests)."""
        return {k: len(v) for k, v in self._pool.items() if v}

    def streams(self) -> dict[PoolKey, int]:
        """Open tunnels per key over the pooled connections."""
        return {k: sum(len(p.streams) for p in v) for k, v in self._pool.items() if v}

    def close_where(self, pred: Callable[[PoolKey], bool], reason: str) -> int:
        """GOAWAY the pooled connections whose key matches (e.g. of a pod leaving the node);
        their open tunnels finish. Returns how many were closed."""
        n = 0
        for k in [k for k in self._pool if pred(k)]:
            for p in list(self._pool.get(k, [])):
                self._evict(p)
                p.close(reason)
                n += 1
        return n

    async def close(self) -> None:
        """GOAWAY every connection and wait (briefly) for them to go."""
        self._closed = True
        for h in self._idle_timers.values():
            h.cancel()
        self._idle_timers.clear()
        self._last_used.clear()
        protos = list(self._all)
        for p in protos:
            p.close("client pool closing")
            if p.streams:
                p.abort()
        for p in protos:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(p.closed), 5)
        self._pool.clear()

    # --- internals ------------------------------------------------------------------------------

    async def _connection(self, key: PoolKey) -> HBONEProtocol:
        ctx = await self._client_context(key.src_identity)
        while True:
            for p in list(self._pool.get(key, [])):
                if p.context is not ctx:
                    self._evict(p)
                    p.close("client certificate rotated")   # GOAWAY: open tunnels finish, no new ones
                    continue
                if self._has_room(p):
                    return p
            task = self._dialing.get(key)
            if task is None or task.done():
                # A task of its own: one caller giving up (timeout, cancel) must not abort the dial
                # that other callers for the same key are waiting on.
                task = asyncio.ensure_future(self._dial_new(key, ctx))
                self._dialing[key] = task
                task.add_done_callback(lambda t, k=key: self._dial_done(k, t))
            proto = await asyncio.shield(task)
            if self._has_room(proto):
                return proto
            # Everyone waiting on that dial shared it, and the earlier ones filled it up to
            # max_streams: look again (and dial another connection) rather than overfill it.

    def _has_room(self, proto: HBONEProtocol) -> bool:
        """Usable, below `max_streams`, and not congested: when stalled streams hold most of a
        connection's flow-control window, new tunnels go to another connection (head-of-line)."""
        return proto.usable and len(proto.streams) < self.max_streams and not proto.conn.congested

    def _dial_done(self, key: PoolKey, task: asyncio.Task[HBONEProtocol]) -> None:
        if self._dialing.get(key) is task:
            del self._dialing[key]
        if not task.cancelled():
            task.exception()  # retrieved here; waiters re-raise it themselves

    async def _dial_new(self, key: PoolKey, ctx: ssl.SSLContext) -> HBONEProtocol:
        loop = asyncio.get_running_loop()
        try:
            sock = await asyncio.wait_for(self._dial(key, self.port), self.handshake_timeout)
        except TimeoutError:
            raise DialTimeout(f"TCP connect to {key.dst_ip}:{self.port} timed out after "
                              f"{self.handshake_timeout:g}s") from None
        proto = HBONEProtocol(self._new_conn(), loop=loop, on_unusable=self._evict)
        try:
            apply_keepalive(sock, key.keepalive)       # whatever dialled it (ztunnel dials in the pod's netns)
            transport, _ = await loop.create_connection(
                lambda: proto, sock=sock, ssl=ctx, server_hostname=key.dst_ip,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except TimeoutError:
            sock.close()
            raise DialTimeout(f"TLS handshake with {key.dst_ip}:{self.port} timed out after "
                              f"{self.handshake_timeout:g}s") from None
        except BaseException:
            sock.close()
            raise
        try:
            sslobj = transport.get_extra_info("ssl_object")
            tls.check_negotiated(sslobj)
            peer = tls.verify_peer(sslobj, key.dst_identity)
        except BaseException:
            transport.abort()
            raise
        proto.context = ctx
        proto.start(peer.uri)
        self._pool.setdefault(key, []).append(proto)
        self._all.add(proto)
        proto.closed.add_done_callback(lambda _f: self._all.discard(proto))
        log.debug("HBONE connection %s -> %s at %s", key.src_identity, key.dst_identity, key.dst_ip)
        return proto

    def _evict(self, proto: HBONEProtocol) -> None:
        for k, lst in list(self._pool.items()):
            if proto in lst:
                lst.remove(proto)
                if not lst:
                    del self._pool[k]
        h = self._idle_timers.pop(proto, None)
        if h is not None:
            h.cancel()
        self._last_used.pop(proto, None)

    def _touch(self, proto: HBONEProtocol) -> None:
        """Note that a connection just gained a stream; arm its idle timer if none is armed.

        Why not cancel and re-arm: that was one timer created and one cancelled per tunnel, on
        the connection-setup path. The one armed timer checks, when it fires, whether the
        connection was used since, and re-arms itself for the rest of the idle time."""
        loop = asyncio.get_running_loop()
        self._last_used[proto] = loop.time()
        if proto not in self._idle_timers:
            self._idle_timers[proto] = loop.call_later(self.idle_timeout, self._idle_check, proto)

    def _idle_check(self, proto: HBONEProtocol) -> None:
        self._idle_timers.pop(proto, None)
        if proto.lost:
            self._last_used.pop(proto, None)
            return
        loop = asyncio.get_running_loop()
        idle_for = loop.time() - self._last_used.get(proto, 0.0)
        if proto.streams or idle_for < self.idle_timeout:
            # in use, or a stream opened since the timer was armed: check again later
            delay = self.idle_timeout if proto.streams else self.idle_timeout - idle_for
            self._idle_timers[proto] = loop.call_later(delay, self._idle_check, proto)
            return
        self._evict(proto)
        proto.close("idle")


def _forwarded_node(ip: str) -> str:
    """RFC 7239 node syntax: IPv6 addresses are bracketed and quoted."""
    return f'"[{ip}]"' if ":" in ip else ip
