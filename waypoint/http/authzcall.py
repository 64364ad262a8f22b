"""An external authorization check in flight: the sub-request a held `Exchange` sends to its
authorizer (waypoint.request.Hold; waypoint/authz/extauthz*.py build it and read the answer).

Like a shadow (waypoint/http/shadow.py) it stands in for an `Exchange` towards the pools and the
upstream legs, so the check goes through the waypoint's own upstream machinery: the engine's
`upstream` for the authorizer's Service port (its cluster, load balancing, HBONE to the endpoint's
ztunnel), the connection pools, attempts reported to the authorizer's cluster. It is no task: the
legs call it back, a timer bounds it, and it ends by calling `done(reply, why)` once, with the
whole response (the body kept up to MAX_BODY: an authorizer's denial body is a page, not a stream)
or None and why it failed. `cancel()` (the held request went away) ends it without a call back.

A traced request's check has its own client span (waypoint/telemetry/tracing_sdk.py `CheckSpan`),
begun before the upstream is chosen (so a check with no endpoint is in the trace too) and ended
with the check, whichever way it ends; an untraced one has none, and its check carries the
unsampled context its upstream gets when a tracer is configured, else no trace headers. A tunnel's
check (waypoint/app.py `_tunnel_check`) is never traced: Envoy's network ext_authz filter passes
the null span.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from waypoint.http import attempt
from waypoint.http.subrequest import SubRequest
from waypoint.request import SubReply

if TYPE_CHECKING:
    from waypoint.http.engine import Engine, UpstreamTarget
    from waypoint.http.legs import Headers, UpLeg
    from waypoint.request import Downstream, Hold, RequestHead
    from waypoint.telemetry.tracing_sdk import CheckSpan, RequestTrace

log = logging.getLogger("waypoint.http")

MAX_BODY = 64 * 1024        # the most of an authorizer's response body kept (the rest is dropped)
BODY_LENGTH = "length"      # waypoint.http.exchange's framing of a body of known length (no import: a cycle)

Done = Callable[[SubReply | None, str], None]


class AuthzCall(SubRequest):
    __slots__ = ("engine", "head", "up_head", "body", "data", "target", "up", "resp_started", "reset_code",
                 "done", "status", "headers", "chunks", "kept", "_timer", "_attempt", "_done", "span")

    upgrade = False
    down = None         # nothing downstream: the response is collected

    def __init__(self, engine: Engine, head: RequestHead, data: bytes, target: UpstreamTarget, done: Done,
                 span: CheckSpan | None = None) -> None:
        self.engine = engine
        self.head = self.up_head = head
        self.body = BODY_LENGTH
        self.data = data
        self.target = target
        self.up: UpLeg | None = None
        self.resp_started = False
        self.reset_code: int | None = None
        self.done = False
        self.status = 0
        self.headers: Headers = []
        self.chunks: list[bytes] = []
        self.kept = 0
        self._timer: asyncio.TimerHandle | None = None
        self._attempt = False
        self._done: Done | None = done
        self.span = span

    def start(self, timeout: float) -> None:
        self._send(timeout)

    def cancel(self) -> None:
        self._done = None
        self._end(None, "cancelled", "canceled")

    # --- as an Exchange, for the pools and the upstream legs -------------------------------------

    def bind(self, up: UpLeg) -> None:
        if self.done:
            up.abort()
            return
        self.up = up
        if self.data:
            up.send_data(self.data)
        up.send_end(None)

    def request_pause(self) -> None:
        """The check's body went whole (it is small and sent at once)."""

    def request_resume(self) -> None:
        """See `request_pause`."""

    def connect_failed(self, detail: str) -> None:
        self._result(attempt.Outcome(attempt.CONNECT_FAILURE))
        self._end(None, f"connect failed: {detail}", attempt.CONNECT_FAILURE)

    def overflow(self) -> None:
        self._end(None, "the authorizer's connection limit is reached (overflow)", "overflow")

    def upstream_reset(self, flags: str, reason: str, *, retryable: bool = False) -> None:
        self.up = None
        if not self.resp_started:
            self._result(attempt.Outcome(attempt.RESET))
        self._end(None, f"upstream reset ({reason})", attempt.RESET)

    def response_head(self, status: int, headers: Headers, end: bool = False) -> None:
        if self.done:
            return
        self.resp_started = True
        self.status = status
        self.headers = headers
        self._result(attempt.Outcome(attempt.RESPONSE, status))
        if end:
            self.up = None
            self._end(self._reply(headers), "")

    def response_data(self, data: bytes) -> None:
        if self.done or self.kept >= MAX_BODY:
            return
        data = data[:MAX_BODY - self.kept]
        self.chunks.append(data)
        self.kept += len(data)

    def response_end(self, trailers: Headers | None) -> None:
        self.up = None
        self._end(self._reply(trailers), "")

    def response_pause(self) -> None:
        """Nothing downstream to fill."""

    def response_resume(self) -> None:
        """Nothing downstream to fill."""

    def raw_end(self) -> None:
        """No upgrades."""

    # --- the end ----------------------------------------------------------------------------------

    def _reply(self, trailers: Headers | None) -> SubReply:
        return SubReply(self.status, tuple(self.headers), b"".join(self.chunks),
                        tuple(trailers) if trailers is not None else None)

    def _timed_out(self) -> None:
        self._end(None, "timed out", attempt.TIMEOUT)

    def _end(self, reply: SubReply | None, why: str, outcome: str = "") -> None:
        if self.done:
            return
        self._stop()
        span, self.span = self.span, None
        if span is not None:
            t = self.target
            span.end(reply, t.protocol, t.address, outcome)
        done, self._done = self._done, None
        if done is not None:
            done(reply, why)


def start(engine: Engine, hold: Hold, downstream: Downstream, body: bytes | None, partial: bool,
          done: Done, trace: RequestTrace | None = None,
          context: Sequence[tuple[str, str]] = ()) -> AuthzCall | None:
    """Send the check `hold` describes (with the request's buffered `body`, when it includes one);
    None when it could not be sent (no endpoint: `done` was called with why). `trace`: the
    request's, when it is traced; the check is then a span of it. `context`: else, the unsampled
    trace headers the check carries in place of any it has (`Tracing.untraced_context`)."""
    span: CheckSpan | None = None
    fwd = hold.forward
    try:
        head, data = hold.build(body, partial)
        if trace is not None:
            span = trace.check_span(head, hold.h2, fwd.hostname, fwd.port, hold.span_tags)
        elif context:
            names = {k for k, _ in context}
            head.headers = [*((k, v) for k, v in head.headers if k not in names), *context]
        target = engine.upstream(fwd, head, _own(downstream), frozenset())
    except Exception as e:
        log.exception("building the ext_authz check for %s failed", fwd.service)
        if span is not None:
            span.end(None, "", "", "internal_error")
        done(None, f"the check could not be built: {e}")
        return None
    if target is None:
        if span is not None:
            span.end(None, "", "", "no_healthy_upstream")
        done(None, f"no healthy endpoint of {fwd.hostname or fwd.service} port {fwd.port}")
        return None
    if hold.h2 and target.protocol != "h2":     # gRPC: HTTP/2 whatever the Service port's name says
        target = dataclasses.replace(target, protocol="h2", key=f"{target.key} h2")
    call = AuthzCall(engine, head, data, target, done, span)
    call.start(hold.timeout)
    return call


def _own(down: Downstream) -> Downstream:
    """The check is the waypoint's own request, not the client's: no client address goes in the
    tunnel's Forwarded header, and the tunnel is pooled as the waypoint's."""
    return dataclasses.replace(down, source_ip="", source_identity="", source_labels=())
