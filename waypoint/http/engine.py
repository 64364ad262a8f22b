"""The HTTP engine: give it a byte stream, it serves HTTP on it.

    engine = Engine(settings, decide=..., upstream=..., opaque=..., access_log=..., stats=...)
    loop.create_server(lambda: engine.protocol(Downstream(...)), host, port)   # sockets
    HBONETransport(stream).attach(engine.protocol(downstream))                  # an HBONE tunnel

Injected, so the engine knows no routing, no policy and no HBONE:
- `decide(head, downstream) -> Forward | LocalReply`: the sans-IO cores (routing, authorization);
- `upstream(forward, head, downstream, exclude[, tried]) -> UpstreamTarget | None`: which endpoint
  (load balancing; `exclude` names addresses already tried, for retries; `tried`, passed only for a
  route with `retryRemoteLocalities`, the request's tries so far), which protocol (`http1` | `h2`),
  how to connect to it, and its cluster (which attempts are reported to); None means no endpoint
  (503 UH);
- `opaque(downstream) -> Attachable | Refused | None` (async): where a non-HTTP tunnel goes (or
  why it may not);
- `access_log(record)` and `stats(record)`: one `RequestRecord` per request when it ends.

Why `upstream` returns a target and not a connection: pooling is per endpoint (as Envoy's), and the
pool must know the endpoint before deciding whether a connection is needed at all.

A sweeper (one timer for the whole engine, not one per request) enforces the head, idle and stream
idle timeouts and expires idle pooled connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from waypoint import clienthello
from waypoint.http.detect import Detector, Verdict
from waypoint.http.exchange import Exchange
from waypoint.http.http1 import H1Server
from waypoint.http.http2 import H2Server
from waypoint.http.opaque import OpaqueRelay, Refused
from waypoint.http.plug import Attachable
from waypoint.http.pool import Pools
from waypoint.http.record import RecordSink, discard
from waypoint.http.settings import HttpSettings
from waypoint.request import Decision, Downstream, Hold, RequestHead
from waypoint.resilience.mirror import MirrorGate

if TYPE_CHECKING:
    from waypoint.traffic.cluster import Cluster

log = logging.getLogger("waypoint.http")


@dataclass(frozen=True)
class UpstreamTarget:
    """One upstream endpoint: `key` names its pool (e.g. "10.0.0.5:8080"), `address` goes to the
    access log, `protocol` is what it speaks (`http1` or `h2`: h2c with prior knowledge, for gRPC
    and HTTP/2 backends), `connect()` opens a connection (a TCP `Plug`, an `HBONETransport`)."""

    key: str
    address: str
    connect: Callable[[], Awaitable[Attachable]]
    protocol: str = "http1"
    cluster: Cluster | None = None      # the cluster it belongs to; attempts are reported to it
    response_headers: tuple[tuple[str, str], ...] = ()  # added to its response (a hash cookie's Set-Cookie)



Decide = Callable[[RequestHead, Downstream], "Decision | Hold"]
ChooseUpstream = Callable[..., "UpstreamTarget | None"]     # (forward, head, downstream, exclude[, tried])
OpenOpaque = Callable[[Downstream], Awaitable["Attachable | Refused | None"]]


class Engine:
    def __init__(self, settings: HttpSettings, decide: Decide, upstream: ChooseUpstream, *,
                 opaque: OpenOpaque | None = None, access_log: RecordSink = discard, stats: RecordSink = discard,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.decide = decide
        self.upstream = upstream
        self.opaque = opaque
        self.access_log = access_log
        self.stats = stats
        self.tracing: Any = None    # waypoint.telemetry.tracing_sdk.Tracing, set by the app when it traces
        self.rng = rng or random.Random()
        self.loop = asyncio.get_running_loop()
        self.pools = Pools(self)
        self.conns: set[H1Server | H2Server] = set()
        self.exchanges: set[Exchange] = set()
        self.mirrors = MirrorGate(settings.mirror_max_active)     # shadow requests (waypoint/http/shadow.py)
        self.draining = False
        self._tick = min(1.0, settings.header_timeout / 4, settings.stream_idle_timeout / 4,
                         settings.idle_timeout / 4)
        self._sweeper: asyncio.TimerHandle | None = None

    def protocol(self, downstream: Downstream) -> asyncio.Protocol:
        """The protocol for one accepted tunnel (a socket, or an HBONE stream via HBONETransport)."""
        self._arm()
        return TunnelProtocol(self, downstream)

    def serve(self, conn: Attachable, downstream: Downstream) -> None:
        """Serve an already connected stream (e.g. `HBONETransport(stream)`)."""
        conn.attach(self.protocol(downstream))

    def track(self, conn: H1Server | H2Server) -> None:
        """A connection the tick checks (timeouts) from now on. The tick runs while there is one to
        check: arm it here, not only when a tunnel arrives, since a tick during a tunnel's protocol
        detection found none and stopped, and the connection it became then had no timeout at all
        (an idle waypoint's first client whose first bytes came a tick late: seen under load)."""
        self.conns.add(conn)
        self._arm()

    def _arm(self) -> None:
        if self._sweeper is None and not self.draining:
            self._sweeper = self.loop.call_later(self._tick, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        for c in list(self.conns):
            try:
                c.check(now)
            except Exception:
                log.exception("timeout check failed")
        self.pools.sweep(now)
        if self.conns or self.pools.idle or self.pools.h2:
            self._arm()

    async def shutdown(self) -> None:
        """GOAWAY to HTTP/2 clients, `Connection: close` on HTTP/1 ones' next response, then
        `drain_timeout` for open requests to finish and for idle HTTP/1 clients to send one more
        (H1Server.shutdown says why they are not closed at once); whatever is left is aborted
        (an idle HTTP/1 connection is closed). Close the listener (or stop accepting tunnels)
        first: tunnels still being sniffed are closed, not served."""
        self.draining = True
        for c in list(self.conns):
            c.shutdown()
        deadline = self.loop.time() + self.settings.drain_timeout
        while self.conns and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for c in list(self.conns):
            c.abort()
        dials = self.pools.close()
        if dials:       # let the cancelled dials finish: one pending when the loop closes is an error
            await asyncio.gather(*dials, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


TLS_HANDSHAKE = b"\x16"     # the first byte of a TLS record carrying a handshake message


class TunnelProtocol(asyncio.Protocol):
    """Sniffs a tunnel's first bytes (detect.py), then hands the transport to the HTTP/1, HTTP/2
    or opaque side, replaying what it read.

    An ingress gateway's client (`Downstream.edge`) speaks HTTP, or nothing: its listener has no
    opaque side. Bytes that are not HTTP go to the HTTP/1 side, which answers them 400 as Envoy's
    codec does (not a silent close), and a client gets `header_timeout`, not `detect_timeout`, to
    send its first request: a browser's preconnected connection (opened, then used a few seconds
    later) was closed after 1 s, the request it then sent failing."""

    def __init__(self, engine: Engine, downstream: Downstream) -> None:
        self.engine = engine
        self.downstream = downstream
        self.detector = Detector()
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._hello: clienthello.HelloReader | None = None     # an opaque tunnel that opened with TLS
        self._held = bytearray()        # its bytes so far, replayed to the upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        s = self.engine.settings
        self._timer = self.engine.loop.call_later(s.header_timeout if self.downstream.edge else s.detect_timeout,
                                                  self._timeout)

    def data_received(self, data: bytes) -> None:
        if self._hello is not None:
            self._held += data
            if not isinstance(self._hello.feed(data), clienthello.NeedMore):
                self._opaque(eof=False)
            return
        verdict = self.detector.feed(data)
        if verdict is not None:
            self._switch(verdict, eof=False)

    def eof_received(self) -> bool:
        if self._hello is not None:
            self._opaque(eof=True)
            return True
        if self.detector.buffer:
            self._switch(self.detector.timeout(), eof=True)
            return True
        self._cancel()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()

    def _timeout(self) -> None:
        self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            if self._hello is not None:     # no whole ClientHello in time: relayed without its name
                self._opaque(eof=False)
                return
            self._switch(self.detector.timeout(), eof=False, timed_out=True)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _opaque(self, eof: bool) -> None:
        """The TLS tunnel's hello is read (or cannot be): relay it, with the server name it asked
        for (`Downstream.sni`; "" when it sent none, or the bytes were no ClientHello)."""
        self._cancel()
        hello, self._hello = self._hello, None
        v = hello.feed(b"") if hello is not None else None
        down = self.downstream
        if isinstance(v, clienthello.Hello) and v.server_name:
            down = dataclasses.replace(down, sni=v.server_name)
        held, self._held = bytes(self._held), bytearray()
        assert self.transport is not None
        OpaqueRelay(self.engine, down, self.transport, held, eof)

    def _switch(self, verdict: Verdict, eof: bool, timed_out: bool = False) -> None:
        self._cancel()
        t = self.transport
        assert t is not None
        early = bytes(self.detector.buffer)
        self.detector.buffer.clear()
        if verdict is Verdict.OPAQUE and self.downstream.edge:
            if timed_out:       # no request line within header_timeout (a slowloris, or an unused connection)
                t.close()
                return
            verdict = Verdict.HTTP1
        if verdict is Verdict.OPAQUE:
            if early[:1] == TLS_HANDSHAKE and not eof:
                # TLS: read its ClientHello (bounded in bytes and by the detection timer) for the
                # server name, which the Service's VirtualService `tls` routes match on
                self._hello, self._held = clienthello.HelloReader(), bytearray(early)
                if isinstance(self._hello.feed(early), clienthello.NeedMore):
                    self._timer = self.engine.loop.call_later(self.engine.settings.detect_timeout, self._timeout)
                    return
                self._opaque(eof=False)
                return
            OpaqueRelay(self.engine, self.downstream, t, early, eof)
            return
        # HTTP/1 has no :scheme: an ingress client's is its connection's (a redirect keeps https)
        proto: H1Server | H2Server = H1Server(self.engine, self.downstream, self.downstream.edge or "http") \
            if verdict is Verdict.HTTP1 else H2Server(self.engine, self.downstream)
        t.set_protocol(proto)
        proto.connection_made(t)
        # A tunnel that arrives while the engine drains (the HBONE listener accepts for a while
        # after SIGTERM: `HBONEServer.close(accept_for=...)`) is served, and told to go like the
        # others: `Connection: close` on its response (H1Server reads `engine.draining`), GOAWAY.
        if self.engine.draining and isinstance(proto, H2Server):
            proto.shutdown()
        proto.data_received(early)
        if eof and not proto.eof_received():
            t.close()
