"""A shadow (mirrored) request: a copy of one request sent to a mirror, its response discarded.

The primary `Exchange` starts its shadows once it is past the fault filter (waypoint.resilience.
fault) and before it picks its own upstream, as Envoy's router does (once per request, not per
retry), and tees the request body into them (`tee`, `end`). A `Shadow` stands in for an `Exchange`
towards the pools and the upstream legs (same attributes and callbacks), with a null downstream
leg: nothing it receives goes anywhere.

It goes through the same upstream selection (the engine's `upstream` with a `Forward` for the
mirror's Service/port/subset: load balancing, the mirror's cluster, HBONE to the mirror endpoint's
ztunnel) and the same connection pools as any request, and reports its attempt to the mirror's
cluster, so shadows show in the mirror cluster's upstream stats, as Envoy counts shadows in the
shadow cluster's stats. It gets no access-log line and no istio_requests_total sample: those
describe downstream requests, and Envoy's shadows are not in the downstream access log either.

Never a cost to the primary:
- the primary's backpressure ignores shadows; a shadow whose upstream is not connected yet or is
  slower than the client buffers at most `mirror_buffer_bytes`, then is cut (aborted, counted);
- at most `mirror_max_active` shadows are in flight (waypoint.resilience.mirror.MirrorGate);
  beyond, a new one is dropped and counted;
- a shadow lives at most the route timeout, or `mirror_timeout` when the route has none;
- when the primary ends before its request body did (client gone, early answer), its shadows
  whose body is incomplete are cut (a partial body must not reach the mirror as if whole).

The Host of the copy is the primary's (rewritten) authority, unchanged: Istio 1.28+ sets Envoy's
`disable_shadow_host_suffix_append` by default, so there is no `-shadow` suffix.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

from waypoint.http import attempt
from waypoint.http.chunks import keep
from waypoint.http.subrequest import SubRequest
from waypoint.request import Forward

if TYPE_CHECKING:
    from waypoint.http.engine import Engine, UpstreamTarget
    from waypoint.http.legs import Headers, UpLeg
    from waypoint.request import Downstream, RequestHead
    from waypoint.resilience.mirror import MirrorGate, MirrorPolicy

log = logging.getLogger("waypoint.http")


class Shadow(SubRequest):
    __slots__ = ("engine", "gate", "up_head", "body", "target", "up", "pending", "pending_bytes", "paused",
                 "req_ended", "req_trailers", "resp_started", "reset_code", "done", "status", "_timer",
                 "_attempt")

    upgrade = False     # never an upgrade: upgrade requests are not mirrored
    down = None         # the null downstream leg

    def __init__(self, engine: Engine, gate: MirrorGate, up_head: RequestHead, body: str,
                 target: UpstreamTarget) -> None:
        self.engine = engine
        self.gate = gate
        self.up_head = up_head
        self.body = body
        self.target = target
        self.up: UpLeg | None = None
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.paused = False
        self.req_ended = False
        self.req_trailers: Headers | None = None
        self.resp_started = False
        self.reset_code: int | None = None
        self.done = False
        self.status = 0
        self._timer: asyncio.TimerHandle | None = None
        self._attempt = False

    def start(self, timeout: float, body: list[bytes], ended: bool) -> None:
        """Send it: `body` is what the primary received so far, `ended` whether that is all."""
        for chunk in body:
            self.tee(chunk)
        if ended:
            self.end(None)
        if self.done:
            return
        self._send(timeout)

    # --- the request body, from the primary ------------------------------------------------------

    def tee(self, data: bytes) -> None:
        if self.done or not data:
            return
        if self.up is not None and not self.paused:
            self.up.send_data(data)
            return
        keep(self.pending, data)
        self.pending_bytes += len(data)
        if self.pending_bytes > self.engine.settings.mirror_buffer_bytes:
            self._end("cut")

    def end(self, trailers: Headers | None) -> None:
        if self.done or self.req_ended:
            return
        self.req_ended = True
        self.req_trailers = trailers
        if self.up is not None and not self.paused:
            self.up.send_end(trailers)

    def cut(self) -> None:
        """The primary ended: a shadow whose request body is incomplete is aborted."""
        if not self.done and not self.req_ended:
            self._end("cut")

    # --- as an Exchange, for the pools and the upstream legs -------------------------------------

    def bind(self, up: UpLeg) -> None:
        if self.done:
            up.abort()
            return
        self.up = up
        self._flush()

    def _flush(self) -> None:
        up = self.up
        if up is None:
            return
        while self.pending and not self.paused:
            data = self.pending.popleft()
            self.pending_bytes -= len(data)
            up.send_data(data)
        if self.req_ended and not self.pending and not self.paused:
            up.send_end(self.req_trailers)

    def request_pause(self) -> None:
        self.paused = True

    def request_resume(self) -> None:
        if self.paused and not self.done:
            self.paused = False
            self._flush()

    def connect_failed(self, detail: str) -> None:
        self._result(attempt.Outcome(attempt.CONNECT_FAILURE))
        self._end("failed")

    def overflow(self) -> None:
        self._end("failed")

    def upstream_reset(self, flags: str, reason: str, *, retryable: bool = False) -> None:
        self.up = None
        if not self.resp_started:
            self._result(attempt.Outcome(attempt.RESET))
        self._end("failed")

    def response_head(self, status: int, headers: Headers, end: bool = False) -> None:
        if self.done:
            return
        self.resp_started = True
        self.status = status
        self._result(attempt.Outcome(attempt.RESPONSE, status))
        if end:
            self.up = None      # the stream is over on the leg's side
            self._end("completed")

    def response_data(self, data: bytes) -> None:
        """Discarded."""

    def response_end(self, trailers: Headers | None) -> None:
        self.up = None      # the leg is done with us (an HTTP/1.1 connection went back to the pool)
        self._end("completed")

    def response_pause(self) -> None:
        """Nothing downstream to fill."""

    def response_resume(self) -> None:
        """Nothing downstream to fill."""

    def raw_end(self) -> None:
        """No upgrades."""

    # --- the end ----------------------------------------------------------------------------------

    def _timed_out(self) -> None:
        self._end("failed")

    def _end(self, outcome: str) -> None:
        if self.done:
            return
        self._stop()
        self.pending.clear()
        self.gate.release(outcome)


def start_shadows(engine: Engine, mirrors: list[MirrorPolicy], fwd: Forward, up_head: RequestHead,
                  downstream: Downstream, body: str, received: list[bytes], ended: bool,
                  timeout: float) -> list[Shadow]:
    """Start one shadow per mirror picked for this request (waypoint.resilience.mirror.pick);
    returns those in flight, for the primary to tee its body into."""
    gate = engine.mirrors
    out = []
    for m in mirrors:
        if not gate.admit():
            continue
        mfwd = Forward(m.service, m.port or fwd.port, m.subset, m.hostname, route=fwd.route)
        try:
            target = engine.upstream(mfwd, up_head, downstream, frozenset())
        except Exception:
            log.exception("choosing an upstream for the mirror %s failed", m.service)
            target = None
        if target is None:
            gate.release("no_upstream")
            continue
        s = Shadow(engine, gate, replace(up_head), body, target)
        s.start(timeout or engine.settings.mirror_timeout, received, ended)
        if not s.done:
            out.append(s)
    return out


def tee(shadows: list[Shadow], data: bytes) -> None:
    """A request body chunk of the primary, for each of its shadows."""
    for s in shadows:
        s.tee(data)


def end(shadows: list[Shadow], trailers: Headers | None) -> None:
    for s in shadows:
        s.end(trailers)


def cut(shadows: list[Shadow]) -> None:
    for s in shadows:
        s.cut()
