"""The exchange's timeouts and retries without sockets, mitmproxy-playbook style: a fake loop whose
clock only moves when the test says so, a fixed random source, fake legs and pools that record what
the exchange asks of them. Feed events (a try bound, a response head, time passing), assert the
actions (what went downstream, which tries were aborted, which endpoints were asked for)."""

from __future__ import annotations

import heapq
import random
from types import SimpleNamespace
from typing import Any

import pytest

from ambit.model import Retry, TrafficPolicy
from waypoint.http.engine import UpstreamTarget
from waypoint.http.exchange import BODY_LENGTH, BODY_NONE, Exchange
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream, Forward, RequestHead
from waypoint.resilience.policy import RoutePolicy
from waypoint.resilience.retry import compile_retry
from waypoint.traffic.cluster import Cluster, ClusterKey


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """`time()`, `call_later()`; time moves only with `advance()`."""

    def __init__(self) -> None:
        self.now = 100.0
        self._q: list[tuple[float, int, Handle, Any]] = []
        self._n = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, cb: Any) -> Handle:
        h = Handle()
        self._n += 1
        heapq.heappush(self._q, (self.now + delay, self._n, h, cb))
        return h

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while self._q and self._q[0][0] <= end + 1e-12:
            when, _, h, cb = heapq.heappop(self._q)
            self.now = when
            if not h.cancelled:
                cb()
        self.now = end


class Down:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def send_head(self, status: int, headers: list, end: bool) -> None:
        self.events.append(("head", status, dict(headers), end))

    def send_data(self, data: bytes) -> None:
        self.events.append(("data", data))

    def send_end(self, trailers: Any) -> None:
        self.events.append(("end",))

    def send_reset(self) -> None:
        self.events.append(("reset",))

    def retract_head(self) -> bool:
        return False        # (a head here has gone out)

    def send_continue(self) -> None: ...
    def pause_request(self) -> None: ...
    def resume_request(self) -> None: ...

    def exchange_done(self, ex: object) -> None:
        self.events.append(("done",))


class Up:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.ended = False
        self.aborted = False

    def send_data(self, data: bytes) -> None:
        self.sent.append(data)

    def send_end(self, trailers: Any) -> None:
        self.ended = True

    def abort(self) -> None:
        self.aborted = True

    def pause_response(self) -> None: ...
    def resume_response(self) -> None: ...


class Book:
    """One exchange in a fake engine; `tries` are the (target, leg) the pools were asked for."""

    def __init__(self, policy: RoutePolicy | None, *, endpoints: tuple[str, ...] = ("10.0.0.1:80", "10.0.0.2:80"),
                 traffic: TrafficPolicy | None = None, body: str = BODY_NONE, rng: float = 0.5,
                 grpc: bool = False, headers: list | None = None) -> None:
        self.loop = FakeLoop()
        self.cluster = Cluster(ClusterKey("ns/svc", 80), traffic or TrafficPolicy(), self.loop.time, random.Random(1))
        self.tries: list[tuple[UpstreamTarget, Any]] = []
        self.asked: list[frozenset[str]] = []
        self.records: list[Any] = []
        eps = list(endpoints)

        def upstream(fwd: Forward, head: RequestHead, down: Downstream, exclude: frozenset[str]) -> UpstreamTarget:
            self.asked.append(exclude)
            free = [e for e in eps if e not in exclude] or eps
            a = free[0]
            return UpstreamTarget(a, a, None, "http1", self.cluster)  # type: ignore[arg-type]

        self.released: list[Any] = []       # tries whose pool claim was given back (pools.attempt_over)
        pools = SimpleNamespace(acquire=lambda target, leg, fresh=False: self.tries.append((target, leg)),
                                attempt_over=self.released.append)
        self.engine = SimpleNamespace(
            settings=HttpSettings(), rng=FixedRandom(rng), loop=self.loop, pools=pools, exchanges=set(),
            decide=lambda head, down: Forward(service="ns/svc", port=80, route="r", policy=policy),
            upstream=upstream, access_log=self.records.append, stats=lambda rec: None)
        self.down = Down()
        head = RequestHead("POST" if body != BODY_NONE else "GET", "/", "svc", headers=list(headers or []),
                           version="2" if grpc else "1.1", grpc=grpc)
        self.ex = Exchange(self.engine, self.down, head, Downstream(), body=body)  # type: ignore[arg-type]
        self.engine.exchanges.add(self.ex)
        self.ex.start()

    def bind(self) -> tuple[Any, Up]:
        """The pools bind the latest try to a fresh upstream leg."""
        leg = self.tries[-1][1]
        up = Up()
        leg.bind(up)
        return leg, up

    @property
    def stats(self) -> dict[str, float]:
        return self.cluster.stats()


def policy(**kw: Any) -> RoutePolicy:
    retry = kw.pop("retry", None)
    return RoutePolicy(retry=compile_retry(retry), **kw)


def test_route_timeout_fires_on_the_fake_clock_and_answers_504_ut() -> None:
    b = Book(policy(timeout=1.0))
    _, up = b.bind()
    b.loop.advance(0.999)
    assert b.down.events == [] and not up.aborted
    b.loop.advance(0.002)
    assert b.down.events[0][:2] == ("head", 504) and ("data", b"upstream request timeout") in b.down.events
    assert up.aborted and b.records[0].response_flags == "UT"
    assert b.stats["upstream_rq_timeout"] == 1 and b.cluster.retries.active_requests == 0


def test_route_timeout_starts_when_the_request_is_whole() -> None:
    b = Book(policy(timeout=1.0), body=BODY_LENGTH)
    _, up = b.bind()
    b.ex.request_data(b"abc")
    b.loop.advance(5.0)                     # still uploading: no route timeout yet
    assert b.down.events == []
    b.ex.request_end()
    b.loop.advance(1.0)
    assert b.down.events[0][:2] == ("head", 504)


def test_timeout_after_the_head_resets_the_stream() -> None:
    b = Book(policy(timeout=1.0))
    leg, up = b.bind()
    leg.response_head(200, [("content-length", "10")])
    leg.response_data(b"12345")
    b.loop.advance(1.0)
    assert b.down.events[-2:] == [("reset",), ("done",)] and up.aborted
    assert b.records[0].response_flags == "UT"


def test_per_try_timeout_retries_elsewhere_after_the_backoff_and_drops_the_old_try() -> None:
    b = Book(policy(per_try_timeout=0.2, retry=Retry(attempts=2, retry_on=["5xx"])), rng=0.5)
    leg1, up1 = b.bind()
    b.loop.advance(0.2)
    assert up1.aborted and len(b.tries) == 1        # in backoff: 0.5 x 25 ms
    assert b.released == [leg1]     # the abandoned try's pool claim is given back during the backoff
    assert b.stats["upstream_rq_per_try_timeout"] == 1 and b.stats["upstream_rq_retry"] == 1
    b.loop.advance(0.0124)
    assert len(b.tries) == 1
    b.loop.advance(0.0002)
    assert len(b.tries) == 2 and b.asked[-1] == {"10.0.0.1:80"} and b.tries[-1][0].address == "10.0.0.2:80"
    leg1.response_head(200, [], True)               # the abandoned try answers late: dropped
    assert b.down.events == []
    leg2, up2 = b.bind()
    leg2.response_head(200, [("x", "y")], True)
    assert b.down.events[0][:2] == ("head", 200) and b.records[0].upstream == "10.0.0.2:80"
    assert b.stats["upstream_rq_retry_success"] == 1 and b.cluster.retries.active_retries == 0
    assert b.cluster.retries.active_requests == 0
    assert b.released == [leg1, leg2]


def test_route_timeout_covers_every_try() -> None:
    b = Book(policy(timeout=0.5, per_try_timeout=0.2, retry=Retry(attempts=5, retry_on=["reset"], backoff=0.01)),
             rng=0.0)
    for _ in range(3):
        b.bind()
        b.loop.advance(0.2)                         # each try times out, the next starts at once (rng 0)
    assert b.down.events[0][:2] == ("head", 504) and len(b.tries) == 3
    assert b.stats["upstream_rq_timeout"] == 1 and b.stats["upstream_rq_per_try_timeout"] == 2


def test_retriable_status_then_exhausted_forwards_the_last_answer_with_urx() -> None:
    b = Book(policy(retry=Retry(attempts=1, retry_on=["503"])), rng=0.0)
    leg, up = b.bind()
    leg.response_head(503, [], True)
    assert up.aborted and b.down.events == []
    b.loop.advance(0)
    leg, _ = b.bind()
    leg.response_head(503, [("x-from", "2")], True)
    assert b.down.events[0][:3] == ("head", 503, {"x-from": "2"})
    assert b.records[0].response_flags == "URX" and b.stats["upstream_rq_retry_limit_exceeded"] == 1


def test_default_policy_retries_connect_failure_but_not_503() -> None:
    b = Book(None, rng=0.0)
    b.tries[-1][1].connect_failed("refused")
    b.loop.advance(0)
    leg, _ = b.bind()
    leg.response_head(503, [], True)
    assert b.down.events[0][:2] == ("head", 503) and len(b.tries) == 2
    assert b.records[0].response_flags == ""


def test_grpc_unavailable_in_a_trailers_only_head_is_retried() -> None:
    b = Book(None, rng=0.0, grpc=True)
    leg, _ = b.bind()
    leg.response_head(200, [("grpc-status", "14")], True)
    b.loop.advance(0)
    leg, _ = b.bind()
    leg.response_head(200, [("grpc-status", "0")], True)
    assert b.down.events[0][:2] == ("head", 200) and b.records[0].grpc_status == "0"


def test_grpc_timeout_header_sets_the_deadline_and_504_becomes_unavailable() -> None:
    b = Book(policy(timeout=5.0), grpc=True, headers=[("grpc-timeout", "300m")])
    b.bind()
    b.loop.advance(0.3)
    head = b.down.events[0]
    assert head[1] == 200 and head[2]["grpc-status"] == "14" and head[3] is True
    assert head[2]["grpc-message"] == "upstream request timeout"


def test_overflow_sends_the_original_failure_with_uo() -> None:
    tp = TrafficPolicy(retry_budget=True, retry_budget_percent=0.0, retry_budget_min_concurrency=0)
    b = Book(policy(retry=Retry(attempts=3, retry_on=["5xx"])), traffic=tp)
    leg, _ = b.bind()
    leg.response_head(500, [], True)
    assert b.down.events[0][:2] == ("head", 500) and len(b.tries) == 1
    assert b.records[0].response_flags == "UO" and b.stats["upstream_rq_retry_overflow"] == 1


def test_body_is_replayed_and_a_body_over_the_limit_disables_retries() -> None:
    b = Book(policy(retry=Retry(attempts=1, retry_on=["5xx"])), body=BODY_LENGTH, rng=0.0)
    leg, up1 = b.bind()
    b.ex.request_data(b"hello ")
    b.ex.request_data(b"world")
    b.ex.request_end()
    leg.response_head(502, [], True)
    b.loop.advance(0)
    _, up2 = b.bind()
    assert b"".join(up2.sent) == b"hello world" and up2.ended

    small = HttpSettings(retry_buffer_bytes=8)
    b = Book(policy(retry=Retry(attempts=1, retry_on=["5xx"])), body=BODY_LENGTH)
    b.engine.settings = small
    leg, _ = b.bind()
    b.ex.request_data(b"0123456789")
    b.ex.request_end()
    leg.response_head(502, [], True)
    assert b.down.events[0][:2] == ("head", 502) and len(b.tries) == 1


def test_a_client_leaving_during_backoff_releases_the_retry() -> None:
    b = Book(policy(retry=Retry(attempts=2, retry_on=["5xx"])), rng=0.9)
    leg, _ = b.bind()
    leg.response_head(500, [], True)
    assert b.cluster.retries.active_retries == 1
    b.ex.request_abort()
    b.loop.advance(1.0)
    assert len(b.tries) == 1 and b.cluster.retries.active_retries == 0
    assert b.records[0].response_flags == "DC"


@pytest.mark.parametrize("kind", ["reset", "refused"])
def test_resets_follow_retry_on(kind: str) -> None:
    b = Book(policy(retry=Retry(attempts=1, retry_on=["refused-stream"])), rng=0.0)
    leg, _ = b.bind()
    if kind == "refused":
        leg.reset_code = 7
    leg.upstream_reset("UR", "remote reset")
    retried = len(b.down.events) == 0
    assert retried is (kind == "refused")


def test_reset_before_request_retries_until_a_try_sent_its_head() -> None:
    """Envoy: `reset-before-request` retries a failure only while no try has sent a byte upstream
    (the router's `upstream_request_started_`, kept over the tries)."""
    b = Book(policy(retry=Retry(attempts=3, retry_on=["reset-before-request"])), rng=0.0)
    b.tries[-1][1].connect_failed("refused")        # nothing sent: retried
    b.loop.advance(0)
    assert len(b.tries) == 2 and b.down.events == []
    leg, _ = b.bind()                               # this try's head went upstream
    leg.upstream_reset("UR", "remote reset")
    assert b.down.events[0][:2] == ("head", 503) and len(b.tries) == 2
    assert b.records[0].response_flags == "UR"

    b = Book(policy(retry=Retry(attempts=3, retry_on=["reset-before-request", "503"])), rng=0.0)
    b.tries[-1][1].connect_failed("refused")
    b.loop.advance(0)
    leg, _ = b.bind()
    leg.response_head(503, [], True)                # reached the upstream; retried as a status code
    b.loop.advance(0)
    assert len(b.tries) == 3 and b.down.events == []
    b.tries[-1][1].connect_failed("refused")        # an earlier try had started: no more
    assert b.down.events[0][:2] == ("head", 503) and len(b.tries) == 3
    assert b.records[0].response_flags == "UF"


def test_an_answer_carrying_x_envoy_ratelimited_follows_envoy_ratelimited() -> None:
    b = Book(policy(retry=Retry(attempts=1, retry_on=["envoy-ratelimited"])), rng=0.0)
    leg, _ = b.bind()
    leg.response_head(429, [("x-envoy-ratelimited", "true")], True)
    b.loop.advance(0)
    assert len(b.tries) == 2 and b.down.events == []
    b = Book(policy(retry=Retry(attempts=1, retry_on=["5xx"])), rng=0.0)
    leg, _ = b.bind()
    leg.response_head(503, [("x-envoy-ratelimited", "true")], True)    # 5xx does not retry a rate limit
    assert b.down.events[0][:2] == ("head", 503) and len(b.tries) == 1


def test_the_first_try_is_the_exchange_and_a_retry_still_happens_with_late_first_try_calls_dropped() -> None:
    """No `_Try` for the first try (it is the exchange itself); a retriable 503 still starts a
    second try on a fresh `_Try`, and whatever the abandoned first leg calls afterwards (data, end,
    a reset, a connect failure, backpressure, a late bind) changes nothing."""
    b = Book(policy(retry=Retry(attempts=2, retry_on=["5xx"])), rng=0.5)
    leg1, up1 = b.bind()
    assert leg1 is b.ex and b.ex.x is None          # a plain try keeps no retry state at all
    leg1.response_head(503, [])
    assert up1.aborted and b.released == [b.ex] and b.down.events == []
    b.loop.advance(0.0125)
    leg2 = b.tries[-1][1]
    assert len(b.tries) == 2 and leg2 is not b.ex
    paused: list[str] = []
    b.down.pause_request = lambda: paused.append("pause")  # type: ignore[method-assign]
    leg1.response_data(b"late")
    leg1.response_end(None)
    leg1.upstream_reset("UC", "connection termination")
    leg1.connect_failed("late")
    leg1.overflow()
    leg1.request_pause()
    late = Up()
    leg1.bind(late)
    assert late.aborted and b.down.events == [] and paused == [] and len(b.tries) == 2
    _, up2 = b.bind()
    leg2.response_head(200, [], True)
    assert b.down.events[0][:2] == ("head", 200) and b.records[0].upstream == "10.0.0.2:80"
    assert b.records[0].response_flags == "" and not up2.aborted
    assert b.released == [b.ex, leg2]


def test_a_request_without_retries_or_timeouts_makes_no_rare_state() -> None:
    b = Book(policy(retry=Retry(attempts=0)))
    leg, _ = b.bind()
    leg.response_head(200, [], True)
    assert leg is b.ex and b.ex.x is None and b.records[0].status == 200


def test_a_per_try_timeout_on_the_first_try_still_fires_without_retries() -> None:
    b = Book(policy(per_try_timeout=0.2, retry=Retry(attempts=0)))
    leg, up = b.bind()
    assert leg is b.ex
    b.loop.advance(0.2)
    assert up.aborted and b.down.events[0][:2] == ("head", 504) and b.records[0].response_flags == "UT"
    assert b.stats["upstream_rq_per_try_timeout"] == 1


def test_a_body_outgrowing_the_retry_buffer_during_the_backoff_is_not_retried_truncated_but_answered_507() -> None:
    """The first try failed before sending; while the retry waits for its backoff the body passes
    `retry_buffer_bytes`. The retry could only send the body's tail (with the end), a corrupt
    request: Envoy answers 507 instead, and so does the waypoint."""
    b = Book(policy(retry=Retry(attempts=2, retry_on=["connect-failure"])), body=BODY_LENGTH, rng=0.5)
    b.engine.settings = HttpSettings(retry_buffer_bytes=10)
    b.ex.request_data(b"AAAA")
    b.tries[-1][1].connect_failed("refused")       # retried after a backoff
    b.ex.request_data(b"BBBBBBBBBB")               # 14 bytes kept: over the limit, in the backoff
    b.loop.advance(1.0)
    assert len(b.tries) == 1                        # no second try with the start of the body missing
    assert b.down.events[0][:2] == ("head", 507)
    assert ("data", b"exceeded request buffer limit while retrying upstream") in b.down.events
    assert b.records[0].detail == "request_payload_exceeded_retry_buffer_limit"
    assert b.stats["retry_or_shadow_abandoned"] == 1 and b.cluster.retries.active_retries == 0
    b.ex.request_data(b"CC")                        # the rest of the upload is dropped
    b.ex.request_end()
    assert len(b.tries) == 1


def test_a_per_try_timeout_does_not_cut_a_response_already_streaming_downstream() -> None:
    """Envoy ignores a per-try timeout once the response started downstream and lets it run up to
    the route timeout (upstream_request.cc onPerTryTimeout): a slow download is not reset."""
    b = Book(policy(timeout=3.0, per_try_timeout=0.5, retry=Retry(attempts=2, retry_on=["5xx"])))
    leg, up = b.bind()
    leg.response_head(200, [("content-length", "10")])
    leg.response_data(b"12345")
    b.loop.advance(1.0)                             # past the per-try timeout: the response goes on
    assert ("reset",) not in b.down.events and not up.aborted
    leg.response_data(b"67890")
    leg.response_end(None)
    assert b.down.events[-2:] == [("end",), ("done",)] and b.records[0].response_flags == ""
    assert b.stats["upstream_rq_per_try_timeout"] == 0

    b = Book(policy(timeout=3.0, per_try_timeout=0.5, retry=Retry(attempts=2, retry_on=["5xx"])))
    leg, up = b.bind()
    leg.response_head(200, [("content-length", "10")])
    b.loop.advance(3.0)                             # the route timeout still covers the response
    assert b.down.events[-2:] == [("reset",), ("done",)] and b.records[0].response_flags == "UT"


def test_the_upstream_grpc_timeout_carries_the_deadline_the_waypoint_applies() -> None:
    """Envoy rewrites grpc-timeout to the timeout it applies (the per-try one if set), so the gRPC
    server knows its real deadline: a client's 10 s under a 2 s route timeout goes up as 2 s."""
    b = Book(policy(timeout=2.0), grpc=True, headers=[("grpc-timeout", "10S")])
    assert ("grpc-timeout", "2000m") in b.ex.up_head.headers
    assert [k for k, _ in b.ex.up_head.headers].count("grpc-timeout") == 1
    b = Book(policy(timeout=2.0, per_try_timeout=0.5, retry=Retry(attempts=1, retry_on=["5xx"])), grpc=True)
    assert ("grpc-timeout", "500m") in b.ex.up_head.headers
    b = Book(policy(), grpc=True, headers=[("grpc-timeout", "3S")])     # no route timeout: the client's
    assert ("grpc-timeout", "3000m") in b.ex.up_head.headers
    b = Book(policy(), grpc=True)
    assert "grpc-timeout" not in dict(b.ex.up_head.headers)


def test_each_grpc_try_is_told_the_time_left_not_the_whole_timeout() -> None:
    """Envoy's router rewrites `grpc-timeout` for each retry (setTimeoutHeaders with the time
    elapsed): min(per-try timeout, what is left of the route timeout). Every try was told the full
    per-try (or route) timeout, so a late retry's upstream worked on past the request's end."""
    b = Book(policy(timeout=5.0, per_try_timeout=2.0, retry=Retry(attempts=3, retry_on=["5xx"], backoff=0.01)),
             rng=0.0, grpc=True, headers=[("grpc-timeout", "10S")])

    def sent() -> str | None:
        return b.tries[-1][1].up_head.header("grpc-timeout")

    leg, _ = b.bind()
    assert sent() == "2000m"                    # the per-try timeout, below the route's 5 s
    b.loop.advance(1.5)
    leg.response_head(503, [])                  # 1.5 s in: retried (backoff 0 with this random)
    b.loop.advance(0.0)
    assert len(b.tries) == 2 and sent() == "2000m"      # 3.5 s left: the per-try timeout
    b.bind()
    b.loop.advance(2.0)                         # its per-try timeout: 3.5 s in, retried
    assert len(b.tries) == 3 and sent() == "1500m"      # what is left of the 5 s
    b.bind()
    b.loop.advance(1.5)
    assert b.down.events[0][:2] == ("head", 200) and b.down.events[0][2]["grpc-status"] == "14"
    assert b.records[0].response_flags == "UT"


def test_a_grpc_retry_without_a_route_timeout_gets_the_whole_per_try_timeout() -> None:
    b = Book(policy(per_try_timeout=2.0, retry=Retry(attempts=3, retry_on=["5xx"], backoff=0.01)),
             rng=0.0, grpc=True)
    leg, _ = b.bind()
    b.loop.advance(1.5)
    leg.response_head(503, [])
    b.loop.advance(0.0)
    assert [t[1].up_head.header("grpc-timeout") for t in b.tries] == ["2000m", "2000m"]
