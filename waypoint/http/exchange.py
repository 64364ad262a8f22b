"""One request through the waypoint: decide, answer locally or forward, relay, record.

The downstream leg creates an `Exchange` when a request head is complete and calls `start()`. The
exchange asks the injected `decide`; a `LocalReply` is written at once, a `Forward` has its rewrites
and header operations applied and gets an upstream leg from the pools (`bind`). From then on the
exchange moves body chunks, trailers and resets between the legs and turns backpressure on one side
into a pause on the other, so no direction buffers more than `buffer_bytes` plus one read or one
HTTP/2 window. It ends when the response has ended (or failed), and emits one `RequestRecord`.

Failures follow Envoy's wording and response flags, since Istio users grep for them:
- connect failure: 503 `upstream connect error or disconnect/reset before headers. reset reason:
  connection failure`, UF;
- upstream reset or close before the response head: 503 with reset reason `remote reset` (UR) or
  `connection termination` (UC); after the head: the downstream is reset too;
- no progress for `stream_idle_timeout`: 408 if the request was still arriving, else 504, SI;
- gRPC requests get every local reply as a trailers-only response (grpc-status/grpc-message).

Fault injection and mirroring (waypoint/resilience: fault, mirror; waypoint/http/shadow.py;
docs/resilience/faults-and-mirroring.md) run first, as Envoy's fault filter before its router: a
delay holds the request on a timer, an abort answers locally (never retried), and the request's
mirrors get shadow copies (once per request, not per try).

Timeouts and retries (waypoint/resilience: timeouts, retry, budget; docs/resilience/retries.md):
the route timeout runs from the end of the request to the end of the response (504 UT, or a reset
once the head went downstream); each try may have a per-try timeout; a try's outcome (response head,
connect failure, reset, per-try timeout) goes to the route's retry policy (Istio's default when the
route has none) and, while no response byte went downstream and the request body is within
`retry_buffer_bytes`, may start a new try after a backoff on another endpoint. Each try is handed to
the pools as its own `_Try`, so a late callback from an abandoned try is dropped; the first try is
the exchange itself (a try is only ever abandoned by `_schedule_retry`, which first stops its leg and
ends its pool claim: docs/performance.md §43).

External authorization (AuthorizationPolicy CUSTOM; waypoint/authz/extauthz.py) runs before
everything else, as Envoy's ext_authz filter before its RBAC filters and router: `decide` answers
`Hold` when a CUSTOM policy's rule matches, and the exchange holds the request (its body waits in
`pending`, with backpressure; buffered first up to the provider's limit when the check includes
it) while a sub-request (waypoint/http/authzcall.py) asks the authorizer; its answer goes back to
the hold's `resume`, whose decision is then carried out as `decide`'s would have been.

Most requests use none of the retry, timeout, fault, mirror and upgrade state: it lives in a `_Rare`
made on first use (`Exchange.x`), so a plain request neither stores nor reads it (§43).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from waypoint.authz.extauthz import edit_response
from waypoint.http import attempt, authzcall, edge, shadow
from waypoint.http.chunks import keep
from waypoint.http.grpcframes import MessageCounter
from waypoint.http.headers import add_forwarded, grpc_status_for, strip_hop_by_hop, trailer_fields
from waypoint.http.legs import DownLeg, Headers, UpLeg
from waypoint.http.record import RequestRecord
from waypoint.request import Decision, Downstream, Forward, Hold, LocalReply, RequestHead, SubReply
from waypoint.resilience import fault, mirror
from waypoint.resilience import retry as retries
from waypoint.resilience.timeouts import TIMEOUT_BODY, request_timeout, upstream_grpc_timeout
from waypoint.routing import cors

if TYPE_CHECKING:
    from waypoint.http.engine import Engine, UpstreamTarget
    from waypoint.http.shadow import Shadow

log = logging.getLogger("waypoint.http")

RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers. reset reason: "
RETRY_BUFFER_OVERFLOW_BODY = b"exceeded request buffer limit while retrying upstream"

_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", "2": "HTTP/2"}     # the record's protocol, by head.version

# body framing of the request as received: no body, a Content-Length, or a stream of unknown length
BODY_NONE, BODY_LENGTH, BODY_STREAM = "none", "length", "stream"


class Exchange:
    __slots__ = ("engine", "down", "up", "head", "downstream", "body", "record", "forward", "target", "msgs",
                 "up_head", "pending", "pending_bytes", "req_ended", "req_trailers", "resp_started",
                 "resp_ended", "done", "last", "upgrade", "expect_continue", "_t0", "upgraded", "keep_alive",
                 "reset_code", "_attempt", "retry_policy", "replay", "replay_bytes", "trace", "x")

    def __init__(self, engine: Engine, down: DownLeg, head: RequestHead, downstream: Downstream, *,
                 body: str, upgrade: bool = False, expect_continue: bool = False) -> None:
        self.engine = engine
        self.down = down
        self.up: UpLeg | None = None
        self.head = head
        self.downstream = downstream
        self.body = body
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        v = head.version
        proto = _PROTOCOLS.get(v) or f"HTTP/{v}"
        self.record = RequestRecord(head.method, head.path, head.authority, proto, downstream, grpc=head.grpc,
                                    user_agent=head.header("user-agent") or "")
        self.forward: Forward | None = None
        self.target: UpstreamTarget | None = None
        # gRPC: messages counted each way (istio_request_messages_total / istio_response_messages_total)
        self.msgs = (MessageCounter(), MessageCounter()) if head.grpc else None
        self.up_head: RequestHead | None = None
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.req_ended = body == BODY_NONE
        self.req_trailers: Headers | None = None
        self.resp_started = False
        self.resp_ended = False
        self.done = False
        self.upgraded = False
        self.keep_alive = True          # the client wants the connection kept (HTTP/1)
        self.reset_code: int | None = None  # the last RST_STREAM code: a client's goes upstream
        self._attempt = 0               # 0: no attempt open; 1: open, outcome unknown; 2: outcome reported
        self.retry_policy: retries.RetryPolicy | None = None   # None: no retries for this request
        self.replay: list[bytes] | None = None  # the request body as received, for a retry
        self.replay_bytes = 0
        self.trace = None                   # its spans, when traced (waypoint/telemetry/tracing_sdk.py)
        self.x: _Rare | None = None         # retry, timeout, fault, mirror, upgrade state, made on first use
        self._t0 = time.monotonic()
        self.last = engine.loop.time()

    # --- start: decide, then reply or forward ---------------------------------------------------

    @property
    def leg(self) -> Exchange | _Try:
        """What the pools and the upstream leg of the current try talk to: a `_Try` for a retry,
        else (the first try) the exchange itself. Computed, not stored: an exchange holding itself
        (or a try holding it back) would be a reference cycle per request, freed only by the cyclic
        collector (docs/performance.md, round 6)."""
        x = self.x
        return x.try_ if x is not None and x.try_ is not None else self

    def _rare(self) -> _Rare:
        """The rarely used state, made on first use."""
        x = self.x
        if x is None:
            x = self.x = _Rare()
        return x

    def start(self) -> None:
        e = self.engine
        head = self.head
        if self.downstream.edge:    # an ingress gateway's client: its headers as an edge proxy passes them
            d = self.downstream
            head.headers = edge.sanitize(head.headers, d.edge, d.source_ip, d.client_cert)
        tracing = getattr(e, "tracing", None)   # waypoint.telemetry.tracing_sdk.Tracing, when the waypoint traces
        self.trace = tracing.server(head, self.downstream, self.record) if tracing is not None else None
        head.headers, self.record.request_id = add_forwarded(head.headers, head.scheme, e.rng)
        try:
            decision = e.decide(head, self.downstream)
        except Exception:
            log.exception("decide failed for %s %s", head.method, head.path)
            decision = LocalReply(500, b"internal error", reason="decide failed")
        if isinstance(decision, Hold):
            self._hold(decision)
            return
        self._decided(decision)

    def _decided(self, decision: Decision) -> None:
        """Carry out a decision: answer locally, or forward (after the fault filter)."""
        head = self.head
        if decision.audit:
            self.record.audit = decision.audit
        if decision.dry_run:
            self.record.dry_run = decision.dry_run
        if isinstance(decision, LocalReply):
            self.reply(decision)
            return
        self.forward = fwd = decision
        rec = self.record
        rec.route, rec.service, rec.hostname = fwd.route, fwd.service, fwd.hostname
        if self.trace is not None:
            self.trace.routed(fwd.hostname, fwd.port)
        self._resilience(fwd)
        if self.pending and self.replay is not None:    # body that arrived while the request was held
            self.replay_bytes = self.pending_bytes
            if self.replay_bytes > self.engine.settings.retry_buffer_bytes:
                self.replay = None
                self._rare().replayable = False
            else:
                self.replay = list(self.pending)
        headers = [(k, v) for k, v in head.headers if k != "expect"] if self.expect_continue else head.headers
        headers = fwd.request_headers.apply(strip_hop_by_hop(headers, keep_upgrade=self.upgrade))
        authority = fwd.authority or head.authority
        if head.grpc and self.x is not None:    # the upstream is told the deadline it has (Envoy's)
            deadline = upstream_grpc_timeout(self.x.timeout, self.x.per_try_timeout)
            if deadline is not None:
                headers = [(k, v) for k, v in headers if k != "grpc-timeout"] + [("grpc-timeout", deadline)]
        self.up_head = RequestHead(head.method, fwd.path or head.path, authority, head.scheme, headers,
                                   head.version, head.grpc)
        if not self._faults():      # waypoint.resilience.fault: aborted, or delayed (resumes in _forward_on)
            self._forward_on()

    def _forward_on(self) -> None:
        """Past the fault filter: choose the upstream and send the first try (Envoy's router)."""
        e, fwd = self.engine, self.forward
        assert fwd is not None and self.up_head is not None
        try:
            target = e.upstream(fwd, self.up_head, self.downstream, frozenset())
        except Exception:
            log.exception("choosing an upstream failed for %s", fwd.service)
            target = None
        if target is None:
            self.reply(LocalReply(503, b"no healthy upstream", flags="UH", route=fwd.route, reason="no endpoint"))
            return
        self.target = target
        self.record.upstream, self.record.upstream_protocol = target.address, target.protocol
        if self.expect_continue and not (self.x is not None and self.x.continued):
            self.down.send_continue()       # Envoy's default: the proxy answers 100 Continue itself
        self._attempt_start()
        self._arm_timeouts()        # the first try is the exchange itself (no `_Try`: see `_new_try`)
        e.pools.acquire(target, self)

    # --- from the pools / upstream leg ----------------------------------------------------------

    # Each of these is called by the current try's upstream leg or pool claim: through its `_Try`
    # (current=True) from the first retry on, else by the first try's, which is the exchange itself.
    # A call without `current` once a `_Try` exists comes from the abandoned first try: dropped
    # (`_superseded`), as a dead `_Try` drops its own.

    def _superseded(self) -> bool:
        x = self.x
        return x is not None and x.try_ is not None

    def bind(self, up: UpLeg, current: bool = False) -> None:
        """An upstream leg took the request head; send what body arrived meanwhile."""
        if self.done or (self.x is not None and not current and self._superseded()):
            up.abort()
            return
        self.up = up
        was_full = self.pending_bytes > self.engine.settings.buffer_bytes
        while self.pending:
            up.send_data(self.pending.popleft())
        self.pending_bytes = 0
        if self.req_ended:
            up.send_end(self.req_trailers)
        if was_full:
            self.down.resume_request()

    def connect_failed(self, detail: str, current: bool = False) -> None:
        if self.done or (self.x is not None and not current and self._superseded()):
            return
        log.info("upstream %s: connect failed: %s", self.record.upstream, detail)
        self._attempt_result(attempt.Outcome(attempt.CONNECT_FAILURE))
        if self._retry_failure(retries.CONNECT_FAILURE, sent=False):
            return
        self.fail_before_headers("UF", "connection failure", detail)

    def overflow(self, current: bool = False) -> None:
        """The upstream's connection limit and wait queue are full (Envoy: circuit breaker)."""
        if self.x is not None and not current and self._superseded():
            return
        route = self.forward.route if self.forward else ""
        self.reply(LocalReply(503, (RESET_BEFORE_HEADERS + "overflow").encode(),
                              headers=(("x-envoy-overloaded", "true"),), flags="UO", route=route,
                              reason="upstream connection limit"))

    def upstream_reset(self, flags: str, reason: str, *, retryable: bool = False, current: bool = False) -> None:
        """The upstream reset the stream or closed the connection. `retryable`: it happened on a
        reused pooled connection before any response byte (the server closed an idle connection
        as we reused it), which is safe to try once more on a fresh connection if no body went.
        Not when the route's retry policy retries resets itself: then that try is one of its
        counted retries (Gateway API `retry.attempts` is the most retries a request gets; the
        backend may have read the request before it reset)."""
        if self.done or (self.x is not None and not current and self._superseded()):
            return
        sent = self.up is not None      # the try's head went upstream (`bind`)
        self.up = None
        x = self.x
        rp = self.retry_policy
        if retryable and (x is None or not x.retried) and self.body == BODY_NONE and not self.resp_started \
                and self.target is not None and not (rp is not None and retries.would_retry_failure(rp, retries.RESET)):
            self._rare().retried = True
            self.reset_code = None      # (the refused stream's: a later reset passes on its own code)
            self.engine.pools.acquire(self.target, self.leg, fresh=True)
            return
        if not self.resp_started:
            self._attempt_result(attempt.Outcome(attempt.RESET))
            refused = self.reset_code == 7      # HTTP/2 REFUSED_STREAM
            if self._retry_failure(retries.REFUSED_STREAM if refused else retries.RESET, sent):
                return
            self.fail_before_headers(flags, reason, reason)
        elif not self.record.bytes_sent and self.down.retract_head():
            # The head came in the same read as the failure and none of it has left the proxy:
            # the client gets Envoy's answer before headers, not an empty reply under a record
            # that says 200 (a reset now would discard the queued head with the connection).
            self.resp_started = False
            self.fail_before_headers(flags, reason, reason)
        else:
            self.record.response_flags = flags
            self.record.detail = reason
            self.down.send_reset()
            self.finish()

    def fail_before_headers(self, flags: str, reason: str, detail: str) -> None:
        """Envoy's answer to an upstream failure before the response head: 502 for a protocol
        error (router.cc `onUpstreamReset`, since envoyproxy/envoy#15033), else 503."""
        up, self.up = self.up, None
        if up is not None:
            up.abort()
        route = self.forward.route if self.forward else ""
        self.reply(LocalReply(502 if flags == "UPE" else 503, (RESET_BEFORE_HEADERS + reason).encode(), flags=flags,
                              route=route, reason=detail))

    def response_head(self, status: int, headers: Headers, end: bool = False, current: bool = False) -> None:
        """The upstream's response head; `end`: it is the whole response (HTTP/2 END_STREAM on
        HEADERS: a gRPC trailers-only response must stay one HEADERS frame)."""
        if self.done or (self.x is not None and not current and self._superseded()):
            return
        self.last = self.engine.loop.time()
        upgraded = status == 101 and self.upgrade
        grpc_status = ""
        if self.head.grpc:      # a trailers-only response carries grpc-status in its head
            for k, v in headers:
                if k == "grpc-status":
                    grpc_status = v
        self._attempt_result(attempt.Outcome(attempt.RESPONSE, status, grpc_status))
        rp = self.retry_policy
        if rp is not None and not upgraded:
            would = retries.would_retry_response(rp, status, grpc_status)
            if would or "envoy-ratelimited" in rp.retry_on:     # only then can Envoy's headers matter
                would = retries.would_retry_response(
                    rp, status, grpc_status, overloaded=any(k == "x-envoy-overloaded" for k, _ in headers),
                    ratelimited=any(k == "x-envoy-ratelimited" for k, _ in headers))
            x = self.x
            if (would or (x is not None and x.rstate is not None)) and self._retry(would):
                return
        headers = strip_hop_by_hop(headers, keep_upgrade=upgraded)
        if self.forward is not None:
            headers = self.forward.response_headers.apply(headers)
            if self.forward.response_edits:     # an external authorizer's, on allow
                headers = edit_response(headers, self.forward.response_edits)
        if self.target is not None and self.target.response_headers:
            headers = list(headers) + list(self.target.response_headers)     # e.g. a hash cookie to set
        x = self.x
        if x is not None and x.cors is not None:
            headers = x.cors.apply(list(headers))
        self.resp_started = True
        self.record.status = status
        self.record.grpc_status = grpc_status
        if upgraded:
            self.upgraded = True
        if x is not None:
            if upgraded:
                _cancel_timers(x)
            elif x.try_timer is not None:   # Envoy ignores the per-try timeout once the response
                x.try_timer.cancel()        # started downstream: only the route timeout still runs
                x.try_timer = None
        if end:
            self.resp_ended = True
            self.down.send_head(status, headers, True)
            self.finish()
            return
        self.down.send_head(status, headers, False)

    def response_data(self, data: bytes, current: bool = False) -> None:
        if self.done or (self.x is not None and not current and self._superseded()):
            return
        self.last = self.engine.loop.time()
        self.record.bytes_sent += len(data)
        if self.msgs is not None:
            self.msgs[1].feed(data)
            self.record.response_messages = self.msgs[1].count
        self.down.send_data(data)

    def response_end(self, trailers: Headers | None, current: bool = False) -> None:
        if self.done or (self.x is not None and not current and self._superseded()):
            return
        if trailers:
            trailers = trailer_fields(trailers)
            for k, v in trailers:
                if k == "grpc-status":
                    self.record.grpc_status = v
        self.resp_ended = True
        self.down.send_end(trailers)
        self.finish()

    # --- from the downstream leg ----------------------------------------------------------------

    def request_data(self, data: bytes) -> None:
        if self.done or self.resp_ended or not data:
            # (empty: an HTTP/2 DATA frame without payload, which the `h2` codec reports; kept,
            # each took a list slot of the retry buffer without counting against it)
            return
        self.last = self.engine.loop.time()
        self.record.bytes_received += len(data)
        if self.msgs is not None:
            self.msgs[0].feed(data)
            self.record.request_messages = self.msgs[0].count
        x = self.x
        if x is not None and x.shadows:
            shadow.tee(x.shadows, data)
        if self.replay is not None:
            self.replay_bytes += len(data)
            if self.replay_bytes > self.engine.settings.retry_buffer_bytes:
                self.replay = None          # too long to keep: no retries
                x = self._rare()
                x.replayable = False
                if x.backoff is not None:   # a retry was waiting for its backoff: it has no body to send
                    self._replay_overflowed(x)
                    return
            else:
                keep(self.replay, data)
        up = self.up
        if up is not None:
            up.send_data(data)
            return
        keep(self.pending, data)
        self.pending_bytes += len(data)
        if x is not None and x.hold_state == _BUFFERING:     # the check waits for the body, up to its limit
            assert x.hold is not None
            if self.pending_bytes >= x.hold.body_limit:
                self._check()
            return
        if self.pending_bytes > self.engine.settings.buffer_bytes:
            self.down.pause_request()

    def request_end(self, trailers: Headers | None = None) -> None:
        if self.req_ended:
            return
        self.req_ended = True
        if trailers:
            trailers = trailer_fields(trailers)
        self.req_trailers = trailers
        x = self.x
        if x is not None and x.shadows:
            shadow.end(x.shadows, trailers)
        if x is not None and x.hold_state == _BUFFERING and not self.done:
            self._check()
        if self.up is not None and not self.done:
            self.up.send_end(trailers)
        if not self.done:
            self._arm_timeouts()

    def request_abort(self, flags: str = "DC") -> None:
        """The client went away (connection closed, or RST_STREAM)."""
        if self.done:
            return
        up, self.up = self.up, None
        if up is not None:
            up.abort()
        if not self.record.response_flags:
            self.record.response_flags = flags
        self.finish()

    # --- backpressure ---------------------------------------------------------------------------

    def request_pause(self, current: bool = False) -> None:        # the upstream leg is full
        if self.x is None or current or not self._superseded():
            self.down.pause_request()

    def request_resume(self, current: bool = False) -> None:
        if self.x is None or current or not self._superseded():
            self.down.resume_request()

    def response_pause(self) -> None:       # the downstream leg is full
        if self.up is not None:
            self.up.pause_response()

    def response_resume(self) -> None:
        if self.up is not None:
            self.up.resume_response()

    # --- local replies, timeouts, the end -------------------------------------------------------

    def reply(self, r: LocalReply) -> None:
        if self.done:
            return
        rec = self.record
        rec.status, rec.response_flags = r.status, r.flags
        rec.route = rec.route or r.route
        rec.detail = r.reason
        x = self.x
        if x is not None and x.cors is not None:    # a local reply after the CORS filter ran (503 UH ...)
            r = dataclasses.replace(r, headers=tuple(x.cors.apply(list(r.headers))))
        if self.head.grpc:
            code = r.grpc_status if r.grpc_status is not None else grpc_status_for(r.status)
            rec.grpc_status = str(code)
            msg = r.body.decode("utf-8", "replace") if r.body else ""
            headers = [("content-type", "application/grpc"), ("grpc-status", str(code))]
            if msg:
                headers.append(("grpc-message", _grpc_message(msg)))
            # trailers-only: the body went into grpc-message, so the body's own content-type
            # (text/plain) must not follow: content-type is a singleton (RFC 9110), and a client or
            # intermediary that keeps the last value sees a non-gRPC response (Envoy sends one)
            headers += [(k, v) for k, v in r.headers if k.lower() != "content-type"]
            rec.status = 200
            self.resp_started = True
            self.down.send_head(200, headers, True)
        else:
            headers = list(r.headers)
            names = {k.lower() for k, _ in headers}
            if r.body and "content-type" not in names:
                headers.append(("content-type", "text/plain"))
            headers.append(("content-length", str(len(r.body))))
            self.resp_started = True
            self.down.send_head(r.status, [(k.lower(), v) for k, v in headers], not r.body)
            if r.body:
                rec.bytes_sent += len(r.body)
                self.down.send_data(r.body)
                self.down.send_end(None)
        self.resp_ended = True
        self.finish()

    def check(self, now: float) -> None:
        """Called by the engine's sweeper: end a request that made no progress for too long."""
        if self.done or self.upgraded:
            return
        if now - self.last < self.engine.settings.stream_idle_timeout:
            return
        up, self.up = self.up, None
        if up is not None:
            up.abort()
        if self.req_ended and not self.resp_started:
            # Only a silent upstream counts against the endpoint (outlier detection): a request
            # still arriving is the client's stall, a response under way may be stalled by either
            # side (a client that stopped reading holds the upstream back), and a healthy endpoint
            # must not be ejected for a slow client.
            self._attempt_result(attempt.Outcome(attempt.TIMEOUT))
        if self.resp_started:
            self.record.response_flags = "SI"
            self.down.send_reset()
            self.finish()
        elif not self.req_ended:
            self.reply(LocalReply(408, b"request timeout", flags="SI", reason="stream idle timeout"))
        else:
            self.reply(LocalReply(504, b"stream timeout", flags="SI", reason="stream idle timeout"))

    # --- upgraded (101) raw relay ---------------------------------------------------------------

    def raw_end(self) -> None:
        """One side of an upgraded connection closed; the second ends the exchange."""
        x = self._rare()
        x.raw_ends += 1
        if x.raw_ends >= 2 and not self.done:
            self.finish()

    # --- external authorization (waypoint.request.Hold, waypoint/http/authzcall.py) --------------

    def _hold(self, h: Hold) -> None:
        """Hold the request for its check: at once, or once its body is buffered (up to the limit)."""
        x = self._rare()
        x.hold = h
        if h.body_limit >= 0 and not self.req_ended and self.pending_bytes < h.body_limit:
            x.hold_state = _BUFFERING
            if self.expect_continue:    # the client waits for 100 before the body the check needs
                x.continued = True
                self.down.send_continue()
            return
        self._check()

    def _check(self) -> None:
        x = self._rare()
        h = x.hold
        assert h is not None
        body: bytes | None = None
        partial = False
        if h.body_limit >= 0:
            data = b"".join(self.pending)
            if len(data) > h.body_limit or (not self.req_ended and len(data) >= h.body_limit):
                if not h.partial_ok:    # Envoy: allow_partial_message false, 413 before any check
                    x.hold_state = _CHECKED
                    self.reply(LocalReply(413, b"Payload Too Large",
                                          reason="request body over the ext_authz max_request_bytes"))
                    return
                data, partial = data[:h.body_limit], True
            body = data
        x.hold_state = _CALLING
        if self.pending_bytes > self.engine.settings.buffer_bytes:
            self.down.pause_request()
        ctx: list[tuple[str, str]] = []
        if self.trace is None and (tracing := getattr(self.engine, "tracing", None)) is not None:
            ctx = tracing.untraced_context(self.head, self.downstream)
        call = authzcall.start(self.engine, h, self.downstream, body, partial, self._checked, self.trace, ctx)
        if x.hold_state == _CALLING:
            x.call = call

    def _checked(self, reply: SubReply | None, why: str) -> None:
        """The check's answer (None: it failed, `why`): the hold's decision, carried out."""
        x = self._rare()
        x.call = None
        x.hold_state = _CHECKED
        if self.done or x.hold is None:
            return
        self.last = self.engine.loop.time()
        try:
            decision = x.hold.resume(reply, why)
        except Exception:
            log.exception("deciding after the ext_authz check failed for %s %s", self.head.method, self.head.path)
            decision = LocalReply(500, b"internal error", reason="decide failed")
        self._decided(decision)

    # --- fault injection and mirroring (waypoint.resilience.fault, .mirror; waypoint/http/shadow.py) --

    def _faults(self) -> bool:
        """Envoy's fault filter, before the router: a delay (DI) holds the request on a timer (its
        body waits in `pending`, with backpressure), then an abort (FI) answers locally; either
        way the upstream is never chosen. True when the request was taken over (delayed or
        aborted); else the mirrors are started and the caller goes on."""
        fwd = self.forward
        pol = fwd.policy if fwd is not None else None
        f = pol.fault if pol is not None else None
        if f is not None:
            d = f.delay_for(self.engine.rng)
            if d > 0:
                x = self._rare()
                x.fault_flags = fault.DELAY_FLAG
                x.delay = self.engine.loop.call_later(d, self._delay_over)
                return True
            if self._abort(f):
                return True
        if pol is not None and pol.cors is not None and self._cors(pol.cors):
            return True
        self._mirror()
        return False

    def _delay_over(self) -> None:
        self._rare().delay = None
        if self.done:
            return
        self.last = self.engine.loop.time()
        pol = self.forward.policy if self.forward is not None else None
        if pol is not None and pol.fault is not None and self._abort(pol.fault):
            return
        if pol is not None and pol.cors is not None and self._cors(pol.cors):
            return
        self._mirror()
        self._forward_on()

    def _abort(self, f: fault.FaultPolicy) -> bool:
        r = f.abort_for(self.engine.rng, self.forward.route if self.forward is not None else "")
        if r is None:
            return False
        self.reply(r)
        return True

    def _cors(self, policy: cors.CorsPolicy) -> bool:
        """Envoy's CORS filter, past the fault filter and before the router: True when it answered
        a preflight; else an allowed origin's CORS headers are kept for whatever response comes."""
        c = cors.evaluate(policy, self.head)
        if c is None:
            return False
        if isinstance(c, LocalReply):
            self.reply(dataclasses.replace(c, route=self.forward.route if self.forward is not None else ""))
            return True
        self._rare().cors = c
        return False

    def _mirror(self) -> None:
        """Shadows for the mirrors this request is picked for (not for upgrades: a raw relay
        cannot be copied)."""
        pol = self.forward.policy if self.forward is not None else None
        if pol is None or not pol.mirrors or self.upgrade or self.up_head is None:
            return
        picked = mirror.pick(pol.mirrors, self.engine.rng)
        if picked:
            self._rare().shadows = shadow.start_shadows(self.engine, picked, self.forward, self.up_head, self.downstream,
                                                self.body, list(self.pending), self.req_ended, pol.timeout)

    def _faults_end(self, x: _Rare) -> None:
        """At the end: DI leads the response flags; a pending delay is dropped; shadows whose
        request body will never be complete are cut."""
        if x.delay is not None:
            x.delay.cancel()
            x.delay = None
        if x.call is not None:      # the held request went away: its check is dropped
            x.call.cancel()
            x.call = None
        if x.fault_flags:
            self.record.response_flags = fault.merge_flags(x.fault_flags, self.record.response_flags)
        if x.shadows:
            shadow.cut(x.shadows)
            x.shadows = []

    # --- timeouts and retries (waypoint.resilience) ----------------------------------------------

    def _resilience(self, fwd: Forward) -> None:
        """This request's timeouts and retry policy, from its route (Istio's defaults without one)."""
        p = fwd.policy
        rp = p.retry if p is not None and p.retry is not None else retries.DEFAULT
        if rp.num_retries > 0 and not self.upgrade:
            self.retry_policy = rp
            if self.body != BODY_NONE:
                self.replay = []
        route_timeout = p.timeout if p is not None else 0.0
        timeout = request_timeout(route_timeout, self.head.grpc, self.head.header("grpc-timeout")) \
            if self.head.grpc else route_timeout
        per_try = p.per_try_timeout if p is not None and not self.upgrade else 0.0
        if timeout or per_try:
            x = self._rare()
            x.timeout, x.per_try_timeout = timeout, per_try

    def _new_try(self) -> None:
        """A retry: a fresh `_Try` for the pools and the try's upstream leg to call back, the one
        before it dead. The first try needs none: it is the exchange itself, and the only way a
        try is abandoned is `_schedule_retry`, which aborts its upstream leg and ends its pool
        claim first, so nothing of it calls the exchange again (the h2c wait queue checks the
        claim: `Pools.holds`)."""
        x = self._rare()
        if x.try_ is not None:
            x.try_.live = False
        x.try_ = _Try(self)
        self._arm_timeouts()

    def _arm_timeouts(self) -> None:
        """Once the request is whole and a try has started (so a fault delay before the first try,
        as Envoy's fault filter before its router, does not count): the route timeout starts, and
        the per-try timeout of the open try."""
        x = self.x
        if x is None or not self.req_ended or self.target is None:
            return
        loop = self.engine.loop
        if x.timeout and x.timer is None:
            x.timer = loop.call_later(x.timeout, self._route_expired)
            x.deadline = loop.time() + x.timeout
        if x.per_try_timeout and x.try_timer is None and x.backoff is None:
            x.try_timer = loop.call_later(x.per_try_timeout, self._per_try_expired)

    def _circuit(self):  # type: ignore[no-untyped-def]
        t = self.target
        return t.cluster.retries if t is not None and t.cluster is not None else None

    def _retry_failure(self, kind: str, sent: bool) -> bool:
        """A try failed locally before a response head: True when another try was scheduled.
        `sent`: this try had sent its head upstream (for `reset-before-request`)."""
        rp = self.retry_policy
        if rp is None:
            return False
        x = self.x
        rs = x.rstate if x is not None else None
        would = retries.would_retry_failure(rp, kind, started=sent or (rs is not None and rs.started))
        return (would or rs is not None) and self._retry(would, sent)

    def _retry(self, would: bool, sent: bool = True) -> bool:
        """Decide on a try's outcome; schedule the next try and return True, or note why not.
        `sent`: the try had sent its head upstream (a response says so)."""
        x = self._rare()
        rs = x.rstate
        if rs is None:
            assert self.retry_policy is not None
            rs = x.rstate = retries.RetryState(self.retry_policy, self._circuit(), self.engine.rng)
        rs.started = rs.started or sent
        if self.resp_started or self.done or not x.replayable:
            would = False
        verdict = rs.decide(would)
        if verdict == retries.RETRY:
            self._schedule_retry(x, rs)
            return True
        if verdict == retries.LIMIT:
            x.retry_flag = "URX"
        elif verdict == retries.OVERFLOW:
            x.retry_flag = "UO"
        return False

    def _schedule_retry(self, x: _Rare, rs: retries.RetryState) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.abort()
        self.engine.pools.attempt_over(self.leg)    # the abandoned try no longer counts against pool limits
        if x.try_ is not None:
            x.try_.live = False
        if x.try_timer is not None:
            x.try_timer.cancel()
            x.try_timer = None
        self._attempt_end()
        t = self.target
        if t is not None:
            rs.tried.append(t.address)
        self.reset_code = None
        self.record.response_flags = ""
        x.backoff = self.engine.loop.call_later(rs.delay, self._next_try)

    def _next_try(self) -> None:
        """After the backoff: a new endpoint (not one tried before, when retryIgnorePreviousHosts),
        a new attempt, the buffered request body replayed."""
        x = self._rare()
        x.backoff = None
        if self.done:
            return
        rs, fwd, e = x.rstate, self.forward, self.engine
        assert rs is not None and fwd is not None and self.up_head is not None
        exclude = rs.exclude()
        cluster = self.target.cluster if self.target is not None else None
        if exclude and cluster is not None and _hashing(cluster.policy):
            exclude = frozenset()   # Istio: no previous-hosts predicate with consistent hashing
        try:
            if rs.policy.remote_localities:     # retryRemoteLocalities: the cluster leaves the priorities tried
                target = e.upstream(fwd, self.up_head, self.downstream, exclude, rs.tried)
            else:
                target = e.upstream(fwd, self.up_head, self.downstream, exclude)
        except Exception:
            log.exception("choosing an upstream failed for %s", fwd.service)
            target = None
        if target is None:
            self.reply(LocalReply(503, b"no healthy upstream", flags="UH", route=fwd.route, reason="no endpoint"))
            return
        self.target = target
        self.record.upstream, self.record.upstream_protocol = target.address, target.protocol
        self.pending = deque(self.replay or ())
        self.pending_bytes = 0
        if not self.req_ended:
            self.down.resume_request()      # a pause by the abandoned try's leg no longer applies
        if self.head.grpc and x.deadline:
            self._grpc_time_left(x)
        self._attempt_start()
        self._new_try()
        e.pools.acquire(target, self.leg)

    def _grpc_time_left(self, x: _Rare) -> None:
        """A retry of a gRPC request tells the upstream the time it has: min(per-try timeout, what
        is left of the route timeout), as Envoy's router rewrites `grpc-timeout` for each retry
        (doRetry: setTimeoutHeaders with the elapsed time). The first try's header said the
        whole timeout; a retry sent that again would outlive the request."""
        h = self.up_head
        assert h is not None
        elapsed = x.timeout - (x.deadline - self.engine.loop.time())
        value = upstream_grpc_timeout(x.timeout, x.per_try_timeout, elapsed)
        if value is not None:
            headers = [(k, v) for k, v in h.headers if k != "grpc-timeout"] + [("grpc-timeout", value)]
            self.up_head = RequestHead(h.method, h.path, h.authority, h.scheme, headers, h.version, h.grpc)

    def _replay_overflowed(self, x: _Rare) -> None:
        """The body outgrew `retry_buffer_bytes` while a retry waited for its backoff: the next try
        could only send the body's tail, so there is none. Envoy's router answers this case 507
        (router.cc decodeData: "exceeded request buffer limit while retrying upstream", details
        request_payload_exceeded_retry_buffer_limit) and counts retry_or_shadow_abandoned."""
        if x.backoff is not None:
            x.backoff.cancel()
            x.backoff = None
        c = self._circuit()
        if c is not None:
            c.count("retry_or_shadow_abandoned")
        route = self.forward.route if self.forward else ""
        self.reply(LocalReply(507, RETRY_BUFFER_OVERFLOW_BODY, route=route,
                              reason="request_payload_exceeded_retry_buffer_limit"))

    def _per_try_expired(self) -> None:
        self._rare().try_timer = None
        if self.done:
            return
        c = self._circuit()
        if c is not None:
            c.count("upstream_rq_per_try_timeout")
        if self.resp_started:       # (the timer is cancelled at the response head; never cut a response)
            return
        self._attempt_result(attempt.Outcome(attempt.TIMEOUT))
        if self._retry_failure(retries.PER_TRY_TIMEOUT, self.up is not None):
            return
        self._timed_out("upstream per-try timeout")

    def _route_expired(self) -> None:
        self._rare().timer = None
        if self.done:
            return
        c = self._circuit()
        if c is not None:
            c.count("upstream_rq_timeout")
        if self._attempt == 1:
            self._attempt_result(attempt.Outcome(attempt.TIMEOUT))
        self._timed_out("upstream request timeout")

    def _timed_out(self, detail: str) -> None:
        """504 UT, or a reset once the response head went downstream (Envoy's onUpstreamAbort)."""
        up, self.up = self.up, None
        if up is not None:
            up.abort()
        if self.resp_started:
            self.record.response_flags = "UT"
            self.record.detail = detail
            self.down.send_reset()
            self.finish()
            return
        route = self.forward.route if self.forward else ""
        self.reply(LocalReply(504, TIMEOUT_BODY, flags="UT", route=route, reason=detail))

    # --- attempts, as reported to the target's cluster (waypoint.traffic.cluster) ----------------

    def _attempt_start(self) -> None:
        t = self.target
        if self.trace is not None:      # each try its own client span, its context sent upstream
            self.trace.try_start(self.up_head, t)
        if t is not None and t.cluster is not None:
            self._attempt = 1
            t.cluster.attempt_started(t.address)

    def _attempt_result(self, outcome: attempt.Outcome) -> None:
        t = self.target
        if self.trace is not None:
            self.trace.try_result(outcome)
        if self._attempt == 1 and t is not None and t.cluster is not None:
            self._attempt = 2
            t.cluster.attempt_result(t.address, outcome)

    def _attempt_end(self) -> None:
        t = self.target
        if self.trace is not None:
            self.trace.try_end()
        if self._attempt and t is not None and t.cluster is not None:
            self._attempt = 0
            t.cluster.attempt_ended(t.address)

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._attempt_end()
        rec = self.record
        x = self.x
        if x is not None:
            _cancel_timers(x)
            if x.rstate is not None:
                x.rstate.end()
            flag = x.retry_flag
            if flag and flag not in rec.response_flags.split(","):
                rec.response_flags = f"{rec.response_flags},{flag}" if rec.response_flags else flag
            self._faults_end(x)
            self.engine.pools.attempt_over(self.leg)    # its request no longer counts against pool limits
            x.try_ = None   # the try keeps its exchange, not the other way round: no cycle outlives the request
        else:
            self.engine.pools.attempt_over(self)
        rec.duration_ms = (time.monotonic() - self._t0) * 1000
        e = self.engine
        e.exchanges.discard(self)
        try:
            if self.trace is not None:
                self.trace.finish(rec)
            e.access_log(rec)
            e.stats(rec)
        except Exception:
            log.exception("tracing, access-log or stats sink failed")
        self.down.exchange_done(self)


class _Rare:
    """An exchange's state that most requests never touch: retries (beyond the first try's
    leg), timeouts, fault injection, mirrors, an upgraded relay. Made on first use
    (`Exchange._rare`), so a plain request stores and reads none of it (docs/performance.md §43)."""

    __slots__ = ("retried", "raw_ends", "rstate", "replayable", "try_", "timeout", "per_try_timeout",
                 "retry_flag", "timer", "try_timer", "backoff", "shadows", "fault_flags", "delay", "deadline", "cors",
                 "hold", "hold_state", "call", "continued")

    def __init__(self) -> None:
        self.retried = False            # a stale pooled connection was replaced once (upstream_reset)
        self.raw_ends = 0               # sides of an upgraded relay that closed
        self.rstate: retries.RetryState | None = None           # created at the first retriable outcome
        self.replayable = True          # False: the body outgrew retry_buffer_bytes, no more retries
        self.try_: _Try | None = None   # the current try from the first retry on
        self.timeout = 0.0              # the route timeout of this request (s); 0: none
        self.per_try_timeout = 0.0
        self.retry_flag = ""            # URX (retries exhausted) or UO (retry budget), added to the flags
        self.timer: asyncio.TimerHandle | None = None       # the route timeout
        self.deadline = 0.0                                 # when it expires (loop time); 0: not started
        self.try_timer: asyncio.TimerHandle | None = None   # the per-try timeout
        self.backoff: asyncio.TimerHandle | None = None     # the wait before the next try
        self.shadows: list[Shadow] = []     # mirrored copies in flight (waypoint/http/shadow.py)
        self.fault_flags = ""               # DI when a delay was injected (waypoint.resilience.fault)
        self.delay: asyncio.TimerHandle | None = None
        self.cors: cors.CorsResponse | None = None  # an allowed origin's CORS headers (waypoint.routing.cors)
        self.hold: Hold | None = None       # held for an external authorization check
        self.hold_state = 0                 # _BUFFERING, _CALLING, _CHECKED
        self.call: authzcall.AuthzCall | None = None
        self.continued = False              # 100 Continue was sent (for a check that needs the body)


_BUFFERING, _CALLING, _CHECKED = 1, 2, 3


def _cancel_timers(x: _Rare) -> None:
    for h in (x.timer, x.try_timer, x.backoff):
        if h is not None:
            h.cancel()
    x.timer = x.try_timer = x.backoff = None


def _hashing(policy: object) -> bool:
    """Does the cluster balance by consistent hash (then retries may go to the same host)?"""
    return bool(getattr(policy, "hash_header", "") or getattr(policy, "hash_cookie", "")
                or getattr(policy, "hash_source_ip", False) or getattr(policy, "hash_query_param", ""))


class _Try:
    """One try of an exchange, as the pools and its upstream leg see it. Once the exchange moves on
    (a retry, a timeout) the try is dead: its late callbacks are dropped and a late connection
    is handed back.

    What the pools and legs read is spelled out (no `__getattr__` forwarding: that cost a failed
    lookup and a Python call per read, ~6 reads per request). `body`, `up_head` and `upgrade` are
    fixed before the first try starts, so they are copied; the rest reads the exchange live."""

    __slots__ = ("ex", "live", "body", "up_head", "upgrade")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.live = True
        self.body = ex.body
        self.up_head = ex.up_head
        self.upgrade = ex.upgrade

    @property
    def down(self) -> DownLeg:
        return self.ex.down

    @property
    def target(self) -> UpstreamTarget | None:
        return self.ex.target

    @property
    def resp_started(self) -> bool:
        return self.ex.resp_started

    def raw_end(self) -> None:
        self.ex.raw_end()

    @property
    def done(self) -> bool:
        return not self.live or self.ex.done

    @property
    def reset_code(self) -> int | None:
        return self.ex.reset_code

    @reset_code.setter
    def reset_code(self, code: int | None) -> None:
        if self.live:
            self.ex.reset_code = code

    def bind(self, up: UpLeg) -> None:
        if self.live:
            self.ex.bind(up, True)
        else:
            up.abort()

    def connect_failed(self, detail: str) -> None:
        if self.live:
            self.ex.connect_failed(detail, True)

    def overflow(self) -> None:
        if self.live:
            self.ex.overflow(True)

    def upstream_reset(self, flags: str, reason: str, *, retryable: bool = False) -> None:
        if self.live:
            self.ex.upstream_reset(flags, reason, retryable=retryable, current=True)

    def response_head(self, status: int, headers: Headers, end: bool = False) -> None:
        if self.live:
            self.ex.response_head(status, headers, end, True)

    def response_data(self, data: bytes) -> None:
        if self.live:
            self.ex.response_data(data, True)

    def response_end(self, trailers: Headers | None) -> None:
        if self.live:
            self.ex.response_end(trailers, True)

    def request_pause(self) -> None:
        if self.live:
            self.ex.request_pause(True)

    def request_resume(self) -> None:
        if self.live:
            self.ex.request_resume(True)


def _grpc_message(msg: str) -> str:
    """grpc-message is percent-encoded (gRPC over HTTP/2 spec, "Responses")."""
    out = []
    for ch in msg.encode("utf-8"):
        out.append(chr(ch) if 0x20 <= ch <= 0x7E and ch != 0x25 else f"%{ch:02X}")
    return "".join(out)
