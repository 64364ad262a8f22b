"""HBONE server: accept mTLS on a caller-supplied listening socket and hand out CONNECT tunnels.

The caller creates the socket (ztunnel opens it inside the destination pod's netns, on :15008) and
supplies the TLS context through a provider called for every handshake (from OpenSSL's servername
callback, see `tls.selecting_server_context`), so a rotated certificate or trust bundle applies to
the next handshake without restarting the listener. That callback cannot wait, so with a
`certificate_gate` a handshake arriving before the certificate waits for it before it starts
(within its deadline: ambit/dataplane/identity/wait.py) instead of being refused. The accept loop is ours
(ambit/dataplane/acceptloop.py: TCP_DEFER_ACCEPT, so silent peers stay in the kernel) and each
connection's TLS is set up by `loop.connect_accepted_socket(ssl=...)` in a task that is the
handle to abort it, not by `start_tls` on an accepted plain transport: uvloop's `start_tls` stalls
when the ClientHello is already queued on the socket, which is the normal case for a busy server.
After the handshake
the client's SPIFFE id is extracted from its verified certificate and passed to `on_connect`
together with the requested authority and headers; `on_connect` decides (authorization), answers
with `stream.respond(200)` or an error status, and relays. Whatever it does, a misbehaving
callback only ever affects its own stream.

`on_connect` is either a coroutine function, run as a task that owns the tunnel until it returns
(the tunnel is closed then), or a plain function that answers at once and hands the tunnel to a
sink (`stream.attach`), for a handler with nothing to wait for: no task and no suspended frames
per tunnel (the waypoint; docs/performance.md, round 9).

Peers without a certificate are bounded too: at most `pending.limit` handshakes may be under way
(a `PendingHandshakes` shared by all of a process's listeners; past it the oldest is aborted for
the new one) and `pending.per_source` from one source IP (past it the new connection is reset),
counted in `ambit_connections_refused_total{limit="pending_handshakes"|"pending_handshakes_per_source"}`.
Hostile peers (anyone holding a mesh certificate) are bounded here: the TLS handshake must finish
within `handshake_timeout`, the HTTP/2 preface must follow within `preface_timeout`, a connection
without tunnels is closed after `idle_timeout`, one source identity may hold at most
`per_identity` connections (ztunnel: a `ConnLimiter` shared by all of a node's pods; the waypoint:
one per process), and the listener as a
whole at most `max_connections` (Envoy's `global_downstream_max_connections`): an idle mTLS
connection costs ~65 KiB here, so without it ~16,000 connections from any mesh certificate would
take a 1 GiB pod to its OOM kill, and every tunnel with it. Past the bound a handshaken connection
is reset, counted in `over_limit` and logged. The HTTP/2 limits (streams, header blocks, resets)
are `HBONEConnection`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from ambit.dataplane import tls
from ambit.dataplane.acceptloop import AcceptLoop, CertificateGate, Handshakes
from ambit.dataplane.hbone.connection import HBONEConnection
from ambit.dataplane.hbone.limits import (
    HANDSHAKE_TIMEOUT,
    REFUSED,
    ConnLimiter,
    PendingHandshakes,
    refused_at_bound,
)
from ambit.dataplane.hbone.protocol import HBONEProtocol
from ambit.dataplane.hbone.stream import HBONEStream
from ambit.dataplane.keepalive import apply as apply_keepalive
from ambit.dataplane.ports import LISTEN_BACKLOG
from ambit.model import TcpKeepalive

log = logging.getLogger("ambit.dataplane.hbone")

OnConnect = Callable[[HBONEStream, str, str, dict[str, str]], "Awaitable[None] | None"]

PREFACE_TIMEOUT = 10.0
IDLE_TIMEOUT = 3600.0       # Istio ztunnel's default for HBONE connections


class _ServerSide(HBONEProtocol):
    """An accepted HBONE connection: asyncio hands it the TLS transport once the handshake is done;
    it checks the negotiated policy and the peer's identity before speaking HTTP/2.

    It is made when the connection is accepted but sets up HBONE (`HBONEProtocol.__init__`: the
    HTTP/2 session, ~23 KiB with nghttp2's) only in `connection_made`, after the handshake: a
    connection still in its handshake holds no more than the TLS state, and asyncio calls nothing
    else on the protocol before (nor anything at all when the handshake fails)."""

    def __init__(self, server: HBONEServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self._accepted_on = loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self.server
        HBONEProtocol.__init__(self, server._new_conn(), loop=self._accepted_on, on_request=server._on_request)
        self._timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                apply_keepalive(sock, server.keepalive)
        try:
            sslobj = transport.get_extra_info("ssl_object")
            tls.check_negotiated(sslobj)
            peer = tls.peer_identity(sslobj)
        except (ssl.SSLError, ValueError, AttributeError) as e:
            log.info("HBONE connection from %s refused: %s", transport.get_extra_info("peername"), e)
            transport.abort()
            return
        if not self.server.admit():
            transport.abort()
            return
        limiter = self.server.per_identity
        if limiter is not None and not limiter.acquire(peer.uri):
            REFUSED["per_identity"] += 1
            if limiter.refused % 1000 == 1:     # a flood says so without flooding the log
                log.warning("HBONE connection from %s (%s) refused: %d connections from that identity already "
                            "(%d refused so far)", transport.get_extra_info("peername"), peer.uri, limiter.limit,
                            limiter.refused)
            transport.abort()
            return
        self.server.connections.add(self)
        self.closed.add_done_callback(lambda _f: self._gone(peer.uri))
        self.start(peer.uri)
        self._timer = self.loop.call_later(self.server.preface_timeout, self._check_preface)

    def _gone(self, peer: str) -> None:
        self.server.connections.discard(self)
        if self.server.per_identity is not None:
            self.server.per_identity.release(peer)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_preface(self) -> None:
        self._timer = None
        if self.lost:
            return
        if not self.conn.preface_received:
            self.server.preface_timeouts += 1
            REFUSED["preface_timeout"] += 1
            log.info("HBONE connection from %s: no HTTP/2 preface within %.0fs, closed",
                     self.peer_identity, self.server.preface_timeout)
            self.abort()
            return
        self._check_idle()      # from here on the timer watches for idleness

    def _arm_idle(self, delay: float) -> None:
        self._timer = self.loop.call_later(max(delay, 0.001), self._check_idle)

    def _check_idle(self) -> None:
        """Close a connection that has carried no tunnel for `idle_timeout` (GOAWAY, then close)."""
        self._timer = None
        if self.lost:
            return
        timeout = self.server.idle_timeout
        if self.streams:
            self._arm_idle(timeout)
            return
        left = self.idle_since + timeout - self.loop.time()
        if left > 0:
            self._arm_idle(left)
            return
        self.server.idle_closed += 1
        log.debug("HBONE connection from %s idle for %.0fs: closing", self.peer_identity, timeout)
        self.close("idle")


class HBONEServer:
    """Serves HBONE on `sock` (already bound and listening), and on connections accepted elsewhere
    and handed over (`adopt`: a supervisor's, waypoint/workers.py); see the module docstring."""

    def __init__(
        self,
        sock: socket.socket | None,
        server_context: Callable[[], ssl.SSLContext],
        on_connect: OnConnect,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        preface_timeout: float = PREFACE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        per_identity: ConnLimiter | None = None,
        max_connections: int | None = None,
        backlog: int = LISTEN_BACKLOG,
        connection_factory: Callable[[], HBONEConnection] | None = None,
        pending: PendingHandshakes | None = None,
        certificate_gate: CertificateGate | None = None,
        keepalive: TcpKeepalive | None = None,
    ) -> None:
        for name, v in (("handshake_timeout", handshake_timeout), ("preface_timeout", preface_timeout),
                        ("idle_timeout", idle_timeout)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        self.sock = sock
        self._server_context = server_context
        self.on_connect = on_connect
        self.handshake_timeout = handshake_timeout
        self.preface_timeout = preface_timeout
        self.idle_timeout = idle_timeout
        self.per_identity = per_identity
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.max_connections = max_connections
        self.over_limit = 0             # connections reset because `max_connections` were open
        self.backlog = backlog
        self.preface_timeouts = 0
        self.idle_closed = 0
        self._new_conn = connection_factory or (lambda: HBONEConnection(client_side=False))
        self.pending = pending if pending is not None else PendingHandshakes()
        self.certificate_gate = certificate_gate
        self.keepalive = keepalive      # TCP keepalive on each accepted connection (ztunnel's --keepalive*)
        self._accept: AcceptLoop | None = None
        self._handshakes: Handshakes | None = None
        self._ctx: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[HBONEProtocol] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ctx = tls.selecting_server_context(self._server_context)
        self._handshakes = Handshakes(lambda: _ServerSide(self, loop), self._ctx, self.handshake_timeout,
                                      self.pending, "HBONE listener", self.certificate_gate)
        if self.sock is not None:
            self.sock.listen(self.backlog)
            self._accept = AcceptLoop(self.sock, self._handshakes.accepted, self.handshake_timeout)
            self._accept.start()

    def adopt(self, sock: socket.socket) -> None:
        """Serve a connection another process accepted and handed over, exactly as one accepted
        here: TLS on the accepted socket (not `start_tls`, see the module docstring), the same
        bounds, handshake deadline and checks. Needs `start()` first."""
        if self._handshakes is None:
            sock.close()
            raise RuntimeError("HBONEServer.adopt before start()")
        try:
            source = sock.getpeername()[0]
        except OSError:             # already reset by the peer
            sock.close()
            return
        self._handshakes.accepted(sock, source)

    async def close(self, grace: float = 5.0, accept_for: float = 0.0) -> None:
        """GOAWAY every connection, let tunnels drain for `grace` s, then abort.

        The listener stops accepting at once, or after `accept_for` s (at most `grace`): a pod
        being terminated stays in its peers' endpoints until they hear otherwise, and a tunnel they
        send meanwhile would meet a closed port (a reset, a failed request). Connections accepted
        in that window are served and GOAWAYed with the rest when it ends, as Envoy keeps its
        listeners during a graceful drain."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for p in list(self.connections):
            p.close("server shutting down")
        if accept_for > 0:
            await asyncio.sleep(min(accept_for, grace))
        if self._accept is not None:
            self._accept.close()
        if self._handshakes is not None:
            self._handshakes.abort()
        for p in list(self.connections):
            p.close("server shutting down")     # those that came in the window (close is idempotent)
        conns = [p.closed for p in self.connections]
        if conns:
            _, pending = await asyncio.wait(conns, timeout=max(0.0, deadline - loop.time()))
            if pending:
                for p in list(self.connections):
                    p.abort()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # --- internals -----------------------------------------------------------------------------

    def admit(self) -> bool:
        """May one more connection be served (`max_connections`)? A refusal is counted, and logged
        the first time and every 1,000th after, so a flood says so without flooding the log."""
        if self.max_connections is None or len(self.connections) < self.max_connections:
            return True
        self.over_limit += 1
        refused_at_bound(self.over_limit, "HBONE listener", self.max_connections, "reset")
        return False

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_request(self, st: HBONEStream, headers: dict[str, str]) -> None:
        try:
            handling = self.on_connect(st, st.peer_identity, st.authority, headers)
        except Exception as e:
            self._failed(st, e)
            return
        if handling is not None:
            self._spawn(self._serve_stream(st, handling))
        elif not st.responded and not st.is_closed:
            st.respond(500, "handler returned without answering")
        elif not st.is_closed and not st.attached:       # refused, or answered with no sink to relay
            st.close()

    async def _serve_stream(self, st: HBONEStream, handling: Awaitable[None]) -> None:
        try:
            await handling
        except asyncio.CancelledError:
            st.reset()
            raise
        except Exception as e:
            self._failed(st, e)
            return
        if not st.responded and not st.is_closed:
            st.respond(500, "handler returned without answering")
        elif not st.is_closed and not st.attached:      # a sink (a relay) that took it over owns it
            st.close()

    @staticmethod
    def _failed(st: HBONEStream, e: Exception) -> None:
        log.exception("HBONE on_connect for %s from %s failed", st.authority, st.peer_identity, exc_info=e)
        if not st.responded and not st.is_closed:
            with contextlib.suppress(Exception):
                st.respond(500, f"internal error: {type(e).__name__}")
        else:
            st.reset()
