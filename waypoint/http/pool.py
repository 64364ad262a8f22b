"""Upstream connections, pooled per upstream key (one endpoint and source: the caller's
`UpstreamTarget.key`), limited per cluster by the cluster's circuit breaker
(waypoint/traffic/breaker.py: the DestinationRule's `connectionPool` over the node-wide settings).

- HTTP/1.1: a LIFO list of idle connections per key (the most recently used is the warmest and
  the least likely to have been closed by the server), at most `pool_max_idle` per key, each
  closed after the cluster's idle timeout (`http.idleTimeout`). A request that finds no idle
  connection waits in its key's queue, as Envoy's pending requests do (and counts against
  `http1MaxPendingRequests` while it waits, also while the connection it will get is being
  opened), and a connection is opened for it if the cluster is below `tcp.maxConnections`. A new or
  freed connection serves the oldest waiting request of its key. Beyond the pending limit a request
  gets 503 `x-envoy-overloaded: true` (UO) at once. The connection limit is strict: when it is
  reached and an endpoint has waiters but no connection, an idle connection of another endpoint of
  the cluster is closed to make room, or a connection that frees up goes to it (Envoy instead lets
  each endpoint open one connection over the limit; Ambit does not, so the backend never sees more
  than maxConnections).
- A connection is closed after `maxRequestsPerConnection` requests (1: no keep-alive).
- A connection goes back only after a clean end of both messages, at the end of the read that
  ended the response (nothing may follow it: bytes after a complete response close the
  connection, H1Client); until then it is `held`, and a request of its key waits for it rather
  than opening another. No liveness probe per request:
  a reused connection that turns out closed before any response byte is retried once on a fresh
  one (`Exchange.upstream_reset(retryable=True)`), for a body-less request with an idempotent
  method (the server may have applied a POST before it closed: H1Client).
- `http.useClientProtocol` (Envoy's use_downstream_protocol, as Istio sets it): a request goes
  upstream in h2c when its client spoke HTTP/2, else in HTTP/1.1, whatever the port's protocol or
  `h2UpgradePolicy` say (Istio does not upgrade such a cluster). An HTTP/1.1-only endpoint that
  refuses the h2c is spoken to in HTTP/1.1, as an upgraded one is (below).
- h2c (and HTTP/1.1 clusters whose policy has `h2UpgradePolicy: UPGRADE`): one multiplexed
  connection per key, another when the first is full (the server's SETTINGS_MAX_CONCURRENT_STREAMS),
  going away (GOAWAY) or spent (`maxRequestsPerConnection`) and the cluster's connection limit
  allows it; at the limit, a request queues on an existing connection of its endpoint, or overflows
  if its endpoint has none. Requests waiting for the connection being opened are pending.
  An upgraded endpoint that turns out to speak only HTTP/1.1 (it answers the h2 preface with an
  HTTP/1.x error and closes, never sending SETTINGS) is spoken to in HTTP/1.1 for `H1_ONLY_FOR`
  seconds, and the requests sent on that connection go again over HTTP/1.1 (the server cannot
  have processed them). Istio's waypoints send h2c regardless (istio/istio#54125), which breaks
  the seed destination-rule.yaml against an HTTP/1.1 app; a sidecar-mode Istio hides this, since
  the server's sidecar speaks the app's protocol.
- Every request bound to a connection counts against `http2MaxRequests` (Envoy's max_requests, any
  protocol) until its attempt is over (`attempt_over`, called when the exchange finishes).
- Only for clusters whose policy sets them (waypoint/traffic/lifetime.py has the semantics): a
  connection is drained at `tcp.maxConnectionDuration` (one timer per connection: an idle HTTP/1.1
  one closes, a busy one closes after its response, an h2 one takes no new stream and closes when
  its streams end); an h2 connection takes at most `http.maxConcurrentStreams` streams at once
  (under the server's SETTINGS_MAX_CONCURRENT_STREAMS) and PINGs the server on
  `http.http2KeepAlive`, closed when a PING goes unanswered. A cluster without them costs a request
  one attribute check (`drained`, `stream_cap`).

Connecting is the only task a request may create, and only when no connection is free.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import TYPE_CHECKING

from waypoint.http.http1 import H1Client
from waypoint.http.http2 import H2Client
from waypoint.traffic.breaker import Breaker, Limits
from waypoint.traffic.lifetime import Keepalive, drain_at, expired

if TYPE_CHECKING:
    from waypoint.http.engine import Engine, UpstreamTarget
    from waypoint.http.exchange import Exchange
    from waypoint.http.settings import HttpSettings

log = logging.getLogger("waypoint.http")

PENDING, ACTIVE, DONE = "pending", "active", "done"
H1_ONLY_FOR = 300.0     # seconds an endpoint that refused an h2c upgrade is spoken to in HTTP/1.1


def node_limits(settings: HttpSettings) -> Limits:
    """The node-wide pool settings, as the limits of a cluster whose policy sets none."""
    return Limits(max_connections=settings.pool_max_connections, max_pending=settings.pool_max_pending,
                  max_requests=settings.pool_max_requests, connect_timeout=settings.connect_timeout,
                  idle_timeout=settings.upstream_idle_timeout)


class _Queue:
    """The requests of one key waiting for an HTTP/1.1 connection; `live` counts those still
    pending (ended ones are dropped lazily)."""

    __slots__ = ("items", "live")

    def __init__(self) -> None:
        self.items: deque[_Claim] = deque()
        self.live = 0


class _Claim:
    """One request attempt's hold on its cluster's breaker: pending (waiting for a connection),
    then active (bound to one), until the attempt is over."""

    __slots__ = ("breaker", "target", "ex", "state", "seq", "queue")

    def __init__(self, breaker: Breaker, target: UpstreamTarget, ex: Exchange, seq: int) -> None:
        self.breaker = breaker
        self.target = target
        self.ex = ex
        self.state = ""
        self.seq = seq
        self.queue: _Queue | None = None

    def pend(self) -> bool:
        if not self.breaker.try_pending():
            return False
        self.state = PENDING
        return True

    def activate(self) -> bool:
        """Pending or new → active; False (and over) when max_requests is reached."""
        self._unpend()
        if not self.breaker.try_request():
            self.state = DONE
            return False
        self.state = ACTIVE
        return True

    def end(self) -> None:
        if self.state == ACTIVE:
            self.breaker.request_done()
        self._unpend()
        self.state = DONE

    def _unpend(self) -> None:
        if self.state == PENDING:
            self.breaker.pending_done()
            if self.queue is not None:
                self.queue.live -= 1
        self.queue = None

    @property
    def waiting(self) -> bool:
        return self.state == PENDING and not self.ex.done


class Pools:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.defaults = node_limits(engine.settings)
        self.idle: dict[str, list[H1Client]] = {}
        self.h2: dict[str, list[H2Client]] = {}
        self._h2_connecting: dict[str, list[_Claim]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0            # upstream connections opened, for tests and stats
        self.claims: dict[Exchange, _Claim] = {}            # each exchange's current attempt
        self.queues: dict[Breaker, dict[str, _Queue]] = {}  # HTTP/1.1 waiters, per cluster and key
        self.connecting: dict[str, int] = {}                # HTTP/1.1 connections being opened, per key
        self.cx: dict[H1Client | H2Client, Breaker] = {}    # every counted connection, to its cluster
        self._bound: dict[H1Client, _Claim] = {}
        self._h2_streams: dict[H2Client, int] = {}          # streams opened on each h2 connection
        self._why: dict[H1Client | H2Client, str] = {}      # why the pool closed a connection
        self._fallback: dict[str, Breaker] = {}             # targets without a cluster: per key
        self._seq = itertools.count()
        self._upgraded: set[H2Client] = set()              # h2c connections to HTTP/1.1 ports
        self._h1_only: dict[str, float] = {}                # keys that refused h2c, until when
        self.held: H1Client | None = None       # a connection whose response just ended (release)
        # maxConnectionDuration: each connection's drain timer, and when it was opened
        self._drains: dict[H1Client | H2Client, tuple[asyncio.TimerHandle, float]] = {}

    def breaker(self, target: UpstreamTarget) -> Breaker:
        """The target's cluster's breaker; a target without a cluster (a workload addressed
        directly) gets one of its own per key under the node-wide limits."""
        b = target.cluster.breaker if target.cluster is not None else None
        if b is None:
            b = self._fallback.get(target.key)
            if b is None:
                b = self._fallback[target.key] = Breaker()
        b.configure(self.defaults)
        return b

    def acquire(self, target: UpstreamTarget, ex: Exchange, *, fresh: bool = False) -> None:
        """Bind `ex` to an upstream connection for `target`: a pooled one now, or a new one soon,
        or answer 503 UO at once when the cluster's limits are reached."""
        assert ex.up_head is not None
        self.attempt_over(ex)
        b = self.breaker(target)
        claim = self.claims[ex] = _Claim(b, target, ex, next(self._seq))
        lim = b.limits
        if lim.use_client_protocol:
            if ex.head.version == "2" and not ex.upgrade and not self._h1_only_now(target.key):
                self._acquire_h2(claim, fresh)
                return
        elif target.protocol == "h2" or (lim.h2_upgrade and not ex.upgrade and not self._h1_only_now(target.key)):
            self._acquire_h2(claim, fresh)
            return
        key = target.key
        lst = self.idle.get(key)
        while lst and not fresh:
            c = lst.pop()
            if not lst:
                del self.idle[key]
            if not c.usable:
                continue
            if self.cx.get(c) is not b:     # opened under an older policy of the cluster
                c._close()
                continue
            if not claim.activate():
                self.idle.setdefault(key, []).append(c)
                self._overflow(claim)
                return
            self._bind_h1(c, claim, reused=True)
            return
        if not claim.pend():
            self._overflow(claim)
            return
        q = self.queues.setdefault(b, {}).setdefault(key, _Queue())
        q.items.append(claim)
        q.live += 1
        claim.queue = q
        self._grow(b, key)

    def attempt_over(self, ex: Exchange) -> None:
        """`ex`'s upstream attempt is over (the exchange finished, or a retry abandons it): its
        pending or active request no longer counts against the cluster's limits."""
        claim = self.claims.pop(ex, None)
        if claim is not None:
            claim.end()

    def holds(self, ex: Exchange) -> bool:
        """Does `ex`'s attempt still hold a claim? False once it is over: the exchange finished,
        or a retry abandoned the try (whose leg may be the exchange itself: exchange.py `_new_try`),
        so a queue still holding it must not serve it."""
        return ex in self.claims

    def _overflow(self, claim: _Claim) -> None:
        self.claims.pop(claim.ex, None)
        claim.end()
        claim.ex.overflow()

    # --- HTTP/1.1 -------------------------------------------------------------------------------

    def _grow(self, b: Breaker, key: str) -> bool:
        """Open a connection for `key` if its waiters outnumber the connections being opened for
        it and the cluster may have one more; at the limit, close an idle connection of another
        key of the cluster to make room (its close wakes the waiters)."""
        q = self.queues.get(b, {}).get(key)
        held = self.held
        if q is None or q.live <= self.connecting.get(key, 0) + (held is not None and held.key == key):
            return False
        if b.try_connect():
            target = next((c.target for c in q.items if c.waiting), None)
            if target is None:
                b.connection_closed()
                return False
            self.connecting[key] = self.connecting.get(key, 0) + 1
            self._spawn(self._connect_h1(target, b))
            return True
        victim = self._idle_of(b)
        if victim is not None:
            self.forget(victim)
            victim._close()
        return False

    def _idle_of(self, b: Breaker) -> H1Client | None:
        """The longest idle connection of cluster `b`, if any."""
        best: H1Client | None = None
        for lst in self.idle.values():
            for c in lst:
                if self.cx.get(c) is b and (best is None or c.idle_since < best.idle_since):
                    best = c
        return best

    def _wake(self, b: Breaker) -> None:
        """A connection of cluster `b` closed: open one for the keys still waiting, oldest first."""
        keys = self.queues.get(b)
        if not keys:
            return
        order = sorted(((next((c.seq for c in q.items if c.waiting), 1 << 62), k) for k, q in keys.items()
                        if q.live > self.connecting.get(k, 0)))
        for _, key in order:
            if b.cx_active >= b.limits.max_connections:
                break
            self._grow(b, key)

    def _pop_waiter(self, b: Breaker, key: str) -> _Claim | None:
        keys = self.queues.get(b)
        q = keys.get(key) if keys else None
        while q is not None and q.items:
            claim = q.items.popleft()
            if claim.waiting:
                return claim
            if claim.state == PENDING:      # its exchange is over: no longer waiting
                claim.end()
        if q is not None and not q.items and q.live <= 0:
            del keys[key]  # type: ignore[union-attr]
            if not keys:
                del self.queues[b]
        return None

    def _others_waiting(self, b: Breaker, key: str) -> bool:
        return any(q.live > 0 for k, q in self.queues.get(b, {}).items() if k != key)

    def _bind_h1(self, c: H1Client, claim: _Claim, reused: bool) -> None:
        self._bound[c] = claim
        assert claim.ex.up_head is not None
        c.bind(claim.ex, claim.ex.up_head, reused=reused)

    def _serve(self, c: H1Client) -> None:
        """`c` is free (new, or done with a request): give it to its key's oldest waiter, close it
        when spent or when another key of the cluster needs its slot, else keep it idle."""
        b = self.cx.get(c)
        if b is None or not c.usable:
            return
        if b.connection_spent(c.requests):
            self._close(c, "max_requests")
            return
        if c.drained:       # maxConnectionDuration passed while it carried a request
            self._close(c, "")
            return
        while (claim := self._pop_waiter(b, c.key)) is not None:
            if claim.activate():
                self._bind_h1(c, claim, reused=c.requests > 0)
                return
            self._overflow(claim)
        if self._others_waiting(b, c.key) and b.cx_active >= b.limits.max_connections:
            self._close(c, "")
            return
        lst = self.idle.setdefault(c.key, [])
        if len(lst) >= self.settings.pool_max_idle:
            self._close(c, "")
            if not lst:
                del self.idle[c.key]
            return
        c.idle_since = self.engine.loop.time()
        lst.append(c)

    def _close(self, c: H1Client, why: str) -> None:
        if why:
            self._why[c] = why
        self.forget(c)
        c._close()

    async def _connect_h1(self, target: UpstreamTarget, b: Breaker) -> None:
        key = target.key
        try:
            plug, why = await self._open(target, b)
        finally:
            n = self.connecting.get(key, 1) - 1
            if n > 0:
                self.connecting[key] = n
            else:
                self.connecting.pop(key, None)
        if plug is None:
            # Envoy purges every pending request of the endpoint when a connect fails
            # (conn_pool_base.cc, onConnectionEvent), so callers (retries) decide what to do.
            while (claim := self._pop_waiter(b, key)) is not None:
                self.claims.pop(claim.ex, None)
                claim.end()
                claim.ex.connect_failed(why)
            self._wake(b)
            return
        c = H1Client(self, key)
        self.cx[c] = b
        plug.attach(c)  # type: ignore[attr-defined]
        if b.limits.max_connection_duration and not c.lost:
            self._drain_later(c, b.limits.max_connection_duration)
        self._serve(c)

    def release(self, c: H1Client) -> None:
        """`c` finished an exchange cleanly (it was `held`): its request is over; serve the next one."""
        self.held = None
        claim = self._bound.pop(c, None)
        if claim is not None:
            claim.end()
        self._serve(c)

    def closed(self, c: H1Client) -> None:
        """An HTTP/1.1 connection closed: its slot frees up for a waiting request."""
        if self.held is c:
            self.held = None
        self.forget(c)
        claim = self._bound.pop(c, None)
        if claim is not None:
            claim.end()
        b = self.cx.pop(c, None)
        if self._drains:
            self._undrain(c)
        if b is not None:
            b.connection_closed(self._why.pop(c, ""))
            self._wake(b)

    def forget(self, c: H1Client | H2Client) -> None:
        """`c` takes no more requests (closed, closing, or going away): drop it from the pool."""
        pools = self.h2 if isinstance(c, H2Client) else self.idle
        lst = pools.get(c.key)
        if lst and c in lst:
            lst.remove(c)  # type: ignore[arg-type]
            if not lst:
                del pools[c.key]
        if isinstance(c, H2Client) and c.lost:
            self._h2_streams.pop(c, None)
            if self._drains:
                self._undrain(c)
            b = self.cx.pop(c, None)
            if b is not None:
                b.connection_closed(self._why.pop(c, ""))

    # --- h2c ------------------------------------------------------------------------------------

    def _acquire_h2(self, claim: _Claim, fresh: bool) -> None:
        b, key = claim.breaker, claim.target.key
        for c in [c for c in self.h2.get(key, ()) if self.cx.get(c) is not b]:
            c.shutdown()        # opened under an older policy of the cluster: drain it
        if not fresh:
            for c in self.h2.get(key, ()):
                if c.has_capacity():
                    if claim.activate():
                        self._open_stream(c, claim)
                    else:
                        self._overflow(claim)
                    return
        waiting = self._h2_connecting.get(key)
        if waiting is not None and not fresh:
            if not claim.pend():
                self._overflow(claim)
                return
            waiting.append(claim)
            return
        if not claim.pend():
            self._overflow(claim)
            return
        if b.try_connect():
            lst = self._h2_connecting[key] = [claim]
            self._spawn(self._connect_h2(claim.target, b, lst))
            return
        # at the connection limit: queue on a connection of this endpoint (it opens the stream
        # when the server allows one more), else there is nowhere to wait
        for c in self.h2.get(key, ()):
            if self.cx.get(c) is b and not c.closing and not c.lost:
                if claim.activate():
                    self._open_stream(c, claim)
                else:
                    self._overflow(claim)
                return
        self._overflow(claim)

    def requeue(self, c: H2Client, exes: list[Exchange], *, fresh: bool) -> None:
        """Requests queued on h2c connection `c` for a stream, which never went out, handed back
        (http2/client.py: `c` takes no more streams, or fewer than were queued): they no longer
        count as requests of `c` (maxRequestsPerConnection) and are placed again, on a new
        connection when `fresh`. Attempts that are over (not held) are dropped."""
        held = [ex for ex in exes if ex in self.claims]
        if held and c in self._h2_streams:
            self._h2_streams[c] = max(0, self._h2_streams[c] - len(held))
        for ex in held:
            self.acquire(ex.target, ex, fresh=fresh)  # type: ignore[arg-type]

    def _open_stream(self, c: H2Client, claim: _Claim) -> None:
        n = self._h2_streams[c] = self._h2_streams.get(c, 0) + 1
        c.open_stream(claim.ex)
        b = self.cx.get(c)
        if b is not None and b.connection_spent(n) and not c.closing:
            self._why[c] = "max_requests"
            c.shutdown()        # no new streams; closes when its streams are done

    async def _connect_h2(self, target: UpstreamTarget, b: Breaker, waiting: list[_Claim]) -> None:
        key = target.key
        try:
            plug, why = await self._open(target, b)
        finally:
            if self._h2_connecting.get(key) is waiting:
                del self._h2_connecting[key]
        if plug is None:
            for claim in waiting:
                if claim.waiting:
                    self.claims.pop(claim.ex, None)
                    claim.end()
                    claim.ex.connect_failed(why)
            return
        c = H2Client(self, key, self.settings)
        self.cx[c] = b
        if target.protocol != "h2":
            self._upgraded.add(c)
        self._h2_streams[c] = 0
        plug.attach(c)  # type: ignore[attr-defined]
        lim = b.limits
        if lim.max_concurrent_streams:
            c.stream_cap = lim.max_concurrent_streams
        if lim.h2_keepalive_interval and not c.lost:
            ka = Keepalive.of(lim.h2_keepalive_interval, lim.h2_keepalive_timeout, self.engine.loop.time())
            if ka is not None:
                c.start_keepalive(ka)
        if lim.max_connection_duration and not c.lost:
            self._drain_later(c, lim.max_connection_duration)
        self.h2.setdefault(key, []).append(c)
        for claim in waiting:
            if not claim.waiting:
                continue
            if c.closing or c.lost:     # spent or gone already: the rest starts over
                self.acquire(claim.target, claim.ex, fresh=True)
            elif claim.activate():
                self._open_stream(c, claim)
            else:
                self._overflow(claim)
        if c.spoke_h2 and c.waiting:
            # The server's SETTINGS came with the connect (`attach` hands over the bytes that
            # arrived first), so no SETTINGS event will spread the surplus: do it now, or a burst
            # over the server's limit (or maxConcurrentStreams) queued on this one connection.
            c._rehome()

    def keepalive_timeout(self, c: H2Client) -> None:
        """`c` left a keepalive PING unanswered: it takes no more streams; it is being closed."""
        self._why[c] = "keepalive_timeout"
        c.closing = True
        self.forget(c)

    # --- maxConnectionDuration ------------------------------------------------------------------

    def _drain_later(self, c: H1Client | H2Client, max_duration: float) -> None:
        now = self.engine.loop.time()
        t = self.engine.loop.call_at(drain_at(now, max_duration), self._drain, c)
        self._drains[c] = (t, now)

    def _undrain(self, c: H1Client | H2Client) -> None:
        entry = self._drains.pop(c, None)
        if entry is not None:
            entry[0].cancel()

    def _drain(self, c: H1Client | H2Client) -> None:
        """`c` reached its cluster's maxConnectionDuration: it takes no new request; an idle HTTP/1.1
        connection closes now, a busy one after its response (`_serve`), an h2 one when its streams
        end (its queued requests go to another connection)."""
        entry = self._drains.pop(c, None)
        b = self.cx.get(c)
        if entry is None or b is None:
            return
        now = self.engine.loop.time()
        if not expired(entry[1], now, b.limits.max_connection_duration):     # (a timer a hair early)
            self._drains[c] = (self.engine.loop.call_at(drain_at(entry[1], b.limits.max_connection_duration),
                                                        self._drain, c), entry[1])
            return
        if isinstance(c, H2Client):
            if c.closing or c.lost:
                return
            b.max_duration_reached()
            c.shutdown()
            if c.waiting:
                c._elsewhere()
            return
        b.max_duration_reached()
        c.drained = True
        lst = self.idle.get(c.key)
        if lst and c in lst:
            self._close(c, "")

    def h2_refused(self, c: H2Client) -> bool:
        """`c` is closing. True when it was an h2c upgrade (h2UpgradePolicy) the endpoint never
        answered in h2 (an HTTP/1.1-only server answers the preface with an HTTP/1.x error or
        closes): the endpoint's requests then go over HTTP/1.1 for `H1_ONLY_FOR` seconds, and the
        streams sent on `c`, which the server cannot have processed, may be sent again."""
        if c not in self._upgraded:
            return False
        self._upgraded.discard(c)
        if c.spoke_h2:
            return False
        log.info("upstream %s refused h2c (h2UpgradePolicy UPGRADE): HTTP/1.1 for %gs", c.key, H1_ONLY_FOR)
        self._h1_only[c.key] = self.engine.loop.time() + H1_ONLY_FOR
        return True

    def _h1_only_now(self, key: str) -> bool:
        until = self._h1_only.get(key)
        if until is None:
            return False
        if self.engine.loop.time() < until:
            return True
        del self._h1_only[key]
        return False

    # --- connecting -----------------------------------------------------------------------------

    def _spawn(self, coro: object) -> None:
        t = self.engine.loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _open(self, target: UpstreamTarget, b: Breaker) -> tuple[object | None, str]:
        """Open a connection `b.try_connect()` admitted, within the cluster's connect timeout;
        (None, why) on failure, the connection then no longer counted."""
        try:
            plug = await asyncio.wait_for(target.connect(), b.limits.connect_timeout)
        except asyncio.CancelledError:
            b.connection_closed()
            raise
        except TimeoutError:
            b.connect_failed(timeout=True)
            return None, f"connection timeout after {b.limits.connect_timeout:g}s"
        except Exception as e:      # OSError, HBONE refusals: all a connect failure
            b.connect_failed()
            return None, f"{type(e).__name__}: {e}"
        self.connections += 1
        return plug, ""

    # --- upkeep ---------------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than their cluster's idle timeout; drop waiters whose
        exchange is over, breakers nothing uses any more and expired HTTP/1.1-only marks."""
        for key, lst in list(self.idle.items()):
            keep = []
            for c in lst:
                b = self.cx.get(c)
                limit = b.limits.idle_timeout if b is not None else self.defaults.idle_timeout
                if not c.usable:
                    c._close()
                elif now - c.idle_since > limit:
                    self._why[c] = "idle_timeout"
                    c._close()
                else:
                    keep.append(c)
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]
        for lst in list(self.h2.values()):
            for c in list(lst):
                b = self.cx.get(c)
                limit = b.limits.idle_timeout if b is not None else self.defaults.idle_timeout
                if not c.streams and not c.waiting and now - c.last > limit:
                    self._why[c] = "idle_timeout"
                    c.shutdown()
        for b, keys in list(self.queues.items()):
            for key in list(keys):
                q = keys[key]
                for claim in [x for x in q.items if not x.waiting]:
                    if claim.state == PENDING:
                        claim.end()
                q.items = deque(x for x in q.items if x.waiting)
                if not q.items:
                    del keys[key]
            if not keys:
                del self.queues[b]
        if self._h1_only:   # keys of endpoints (and sources) that may never come back: pods churn
            self._h1_only = {k: until for k, until in self._h1_only.items() if until > now}
        if self._fallback:
            used = set(map(id, self.cx.values()))
            for k, b in list(self._fallback.items()):
                if b.idle and id(b) not in used:
                    del self._fallback[k]

    def close(self) -> list[asyncio.Task[None]]:
        """Close every connection, cancel the dials in progress and end what waits for one;
        returns the cancelled dials, for the caller to await (a dial left pending when the loop
        closes is an error from inside asyncio)."""
        for lst in self.idle.values():
            for c in lst:
                c._close()
        self.idle.clear()
        for lst in list(self.h2.values()):
            for c in list(lst):
                c.shutdown()
        dials = list(self._tasks)
        for t in dials:
            t.cancel()
        queues, self.queues = self.queues, {}
        for keys in queues.values():
            for q in keys.values():
                for claim in q.items:
                    if claim.waiting:
                        claim.end()
                        claim.ex.connect_failed("shutting down")
        return dials
