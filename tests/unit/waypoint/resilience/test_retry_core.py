"""The retry core, budget and timeouts without sockets: feed outcomes, assert the verdicts."""

from __future__ import annotations

import random

import pytest

from ambit.model import Retry, TrafficPolicy
from waypoint.resilience import retry as r
from waypoint.resilience.budget import UNLIMITED, RetryCircuit
from waypoint.resilience.policy import compile_policy
from waypoint.resilience.timeouts import (
    grpc_timeout_value,
    parse_grpc_timeout,
    request_timeout,
    upstream_grpc_timeout,
)


class FixedRandom(random.Random):
    """A random source that always returns `value` (tests the backoff bounds exactly)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# --- policy compilation (istio retry.go, gateway conversion.go) ------------------------------------

def test_unset_is_istio_default_and_503_is_not_retried() -> None:
    assert r.compile_retry(None) is None           # the exchange applies DEFAULT
    d = r.DEFAULT
    assert d.num_retries == 2 and d.retry_on == r.DEFAULT_ON and not d.codes and d.ignore_previous_hosts
    assert not r.would_retry_response(d, 503)
    assert r.would_retry_response(d, 200, grpc_status="14")     # unavailable
    assert r.would_retry_response(d, 200, grpc_status="1")      # cancelled
    assert not r.would_retry_response(d, 200, grpc_status="4")
    assert r.would_retry_failure(d, r.CONNECT_FAILURE) and r.would_retry_failure(d, r.REFUSED_STREAM)
    assert not r.would_retry_failure(d, r.RESET) and not r.would_retry_failure(d, r.PER_TRY_TIMEOUT)


def test_attempts_zero_disables() -> None:
    assert r.compile_retry(Retry(attempts=0, retry_on=["5xx"])).num_retries == 0


def test_retry_on_codes_and_unknown() -> None:
    p = r.compile_retry(Retry(attempts=3, retry_on=["gateway-error", "409", "bogus"], backoff=0.1))
    assert p.retry_on == {"gateway-error", "retriable-status-codes"} and p.codes == {409}
    assert p.unknown == ("bogus",) and p.base_interval == 0.1 and p.max_interval == pytest.approx(1.0)
    assert r.would_retry_response(p, 409) and r.would_retry_response(p, 502)
    assert not r.would_retry_response(p, 500)
    # an empty retryOn keeps Istio's default conditions; HTTPRoute codes add retriable-status-codes
    h = r.compile_retry(Retry(attempts=2, codes=[500, 503]))
    assert h.retry_on == r.DEFAULT_ON and h.codes == {500, 503} and r.would_retry_response(h, 503)
    # retryRemoteLocalities reaches the policy (off by default, as Istio: no retry priority)
    assert r.compile_retry(Retry(attempts=2, remote_localities=True)).remote_localities
    assert not h.remote_localities and not r.DEFAULT.remote_localities


@pytest.mark.parametrize(("on", "status", "want"), [
    ("5xx", 500, True), ("5xx", 404, False), ("gateway-error", 500, False), ("gateway-error", 504, True),
    ("retriable-4xx", 409, True), ("retriable-4xx", 429, False),
])
def test_would_retry_response(on: str, status: int, want: bool) -> None:
    p = r.compile_retry(Retry(attempts=1, retry_on=[on]))
    assert r.would_retry_response(p, status) is want


def test_overloaded_answer_is_never_retried() -> None:
    p = r.compile_retry(Retry(attempts=1, retry_on=["5xx"]))
    assert not r.would_retry_response(p, 503, overloaded=True)


@pytest.mark.parametrize(("on", "kind", "want"), [
    ("5xx", r.PER_TRY_TIMEOUT, True), ("gateway-error", r.RESET, True), ("reset", r.PER_TRY_TIMEOUT, True),
    ("connect-failure", r.RESET, False), ("connect-failure", r.CONNECT_FAILURE, True),
    ("refused-stream", r.REFUSED_STREAM, True), ("refused-stream", r.RESET, False),
    ("unavailable", r.PER_TRY_TIMEOUT, False),
])
def test_would_retry_failure(on: str, kind: str, want: bool) -> None:
    assert r.would_retry_failure(r.compile_retry(Retry(attempts=1, retry_on=[on])), kind) is want


@pytest.mark.parametrize(("kind", "started", "want"), [
    (r.CONNECT_FAILURE, False, True), (r.RESET, False, True), (r.PER_TRY_TIMEOUT, False, True),
    (r.RESET, True, False), (r.REFUSED_STREAM, True, False), (r.CONNECT_FAILURE, True, False),
])
def test_reset_before_request_retries_only_until_a_try_sent_its_head(kind: str, started: bool, want: bool) -> None:
    """Envoy's wouldRetryFromReset: `reset-before-request` retries a failure while no byte of the
    request went upstream (router `upstream_request_started_`, sticky over the tries)."""
    p = r.compile_retry(Retry(attempts=1, retry_on=["reset-before-request"]))
    assert p.retry_on == {"reset-before-request"} and p.unknown == ()
    assert r.would_retry_failure(p, kind, started=started) is want


def test_an_envoy_ratelimited_answer_is_retried_under_envoy_ratelimited_only() -> None:
    """Envoy's wouldRetryFromHeaders: `x-envoy-ratelimited` decides alone, whatever the status."""
    rl = r.compile_retry(Retry(attempts=1, retry_on=["envoy-ratelimited"]))
    assert r.would_retry_response(rl, 429, ratelimited=True) and not r.would_retry_response(rl, 429)
    five = r.compile_retry(Retry(attempts=1, retry_on=["5xx"]))
    assert r.would_retry_response(five, 503) and not r.would_retry_response(five, 503, ratelimited=True)


def test_route_policy_compiles_retry_and_timeouts() -> None:
    from ambit.model import HttpRoute
    rp = compile_policy(HttpRoute(name="x", timeout=2.0, backend_timeout=0.5, retries=Retry(attempts=1, retry_on=["5xx"])))
    assert rp.timeout == 2.0 and rp.per_try_timeout == 0.5 and rp.retry.retry_on == {"5xx"}
    rp = compile_policy(HttpRoute(name="y", retries=Retry(attempts=2, per_try_timeout=0.3)))
    assert rp.per_try_timeout == 0.3
    assert compile_policy(HttpRoute(name="z")).retry is None


# --- backoff ---------------------------------------------------------------------------------------

def test_backoff_is_jittered_exponential_capped_at_10x() -> None:
    hi = r.Backoff(0.025, 0.25, FixedRandom(0.999999))
    got = [hi.next() for _ in range(6)]
    assert got == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25, 0.25], abs=1e-5)
    lo = r.Backoff(0.025, 0.25, FixedRandom(0.0))
    assert lo.next() == 0.0
    rng = random.Random(7)
    b = r.Backoff(0.025, 0.25, rng)
    for bound in (0.025, 0.05, 0.1, 0.2, 0.25, 0.25):
        assert 0 <= b.next() < bound + 1e-12


# --- the state machine ---------------------------------------------------------------------------------

def test_state_retries_then_limit_and_stats() -> None:
    c = RetryCircuit()
    s = r.RetryState(r.DEFAULT, c, FixedRandom(0.5))
    assert s.decide(True) == r.RETRY and s.delay == pytest.approx(0.0125)
    assert c.active_retries == 1
    assert s.decide(True) == r.RETRY and s.delay == pytest.approx(0.025)
    assert s.decide(True) == r.LIMIT            # 2 retries = 3 tries
    assert c.active_retries == 0
    assert c.counters["upstream_rq_retry"] == 2 and c.counters["upstream_rq_retry_limit_exceeded"] == 1
    assert c.counters["upstream_rq_retry_success"] == 0


def test_state_success_after_retry() -> None:
    c = RetryCircuit()
    s = r.RetryState(r.DEFAULT, c, FixedRandom(0.5))
    assert s.decide(True) == r.RETRY
    assert s.decide(False) == r.NO
    assert c.counters["upstream_rq_retry_success"] == 1 and c.active_retries == 0
    s.end()
    assert c.active_retries == 0


def test_state_end_releases_an_armed_retry() -> None:
    c = RetryCircuit()
    s = r.RetryState(r.DEFAULT, c, FixedRandom(0.5))
    s.decide(True)
    s.end()
    assert c.active_retries == 0


def test_exclude_previous_hosts() -> None:
    s = r.RetryState(r.DEFAULT, None, FixedRandom(0.5))
    s.tried += ["a", "b"]
    assert s.exclude() == {"a", "b"}
    p = r.compile_retry(Retry(attempts=1, ignore_previous_hosts=False))
    s = r.RetryState(p, None, FixedRandom(0.5))
    s.tried.append("a")
    assert s.exclude() == frozenset()


# --- the circuit: retry budget and max_retries -----------------------------------------------------

def test_no_policy_is_unlimited() -> None:
    c = RetryCircuit(TrafficPolicy())
    assert c.limit() == UNLIMITED


def test_max_retries_caps_concurrent_retries() -> None:
    c = RetryCircuit(TrafficPolicy(max_retries=1))
    a = r.RetryState(r.DEFAULT, c, FixedRandom(0.5))
    b = r.RetryState(r.DEFAULT, c, FixedRandom(0.5))
    assert a.decide(True) == r.RETRY
    assert b.decide(True) == r.OVERFLOW
    assert c.counters["upstream_rq_retry_overflow"] == 1 and c.stats()["circuit_breakers_default_rq_retry_open"] == 1
    assert c.stats()["circuit_breakers_default_remaining_retries"] == 0    # Istio's track_remaining
    a.decide(False)
    assert c.stats()["circuit_breakers_default_remaining_retries"] == 1
    assert b.decide(True) == r.RETRY


def test_budget_is_percent_of_active_with_a_minimum() -> None:
    c = RetryCircuit(TrafficPolicy(retry_budget=True, retry_budget_percent=25.0, retry_budget_min_concurrency=2,
                                   max_retries=100))
    assert c.limit() == 2                        # min concurrency; max_retries is ignored with a budget
    for _ in range(40):
        c.request_started()
    assert c.limit() == 10
    states = [r.RetryState(r.DEFAULT, c, FixedRandom(0.5)) for _ in range(15)]
    verdicts = [s.decide(True) for s in states]
    assert verdicts.count(r.RETRY) == 10 and verdicts.count(r.OVERFLOW) == 5
    for _ in range(40):
        c.request_ended()
    assert c.limit() == 2 and c.active_requests == 0


# --- timeouts --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "want"), [
    ("1S", 1.0), ("500m", 0.5), ("2M", 120.0), ("1H", 3600.0), ("100u", 1e-4), ("5n", 5e-9),
    ("", 0.0), (None, 0.0), ("S", 0.0), ("1x", 0.0), ("123456789S", 0.0), ("-1S", 0.0),
    # not 1-8 ASCII digits: ignored, as Envoy ignores them (str.isdigit() takes "²", int() then raises;
    # int() alone takes a sign, spaces and underscores)
    ("\xb2S", 0.0), ("1\xb3S", 0.0), ("\xb9S", 0.0), ("\u0663S", 0.0), ("+1S", 0.0), (" 1S", 0.0), ("1_0S", 0.0),
    ("12345678S", 12345678.0),
])
def test_parse_grpc_timeout(value: str | None, want: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(want)


def test_request_timeout_http_and_grpc() -> None:
    assert request_timeout(0.0, False, None) == 0.0          # Istio: none unless set
    assert request_timeout(1.5, False, "100m") == 1.5          # HTTP ignores grpc-timeout
    assert request_timeout(0.0, True, "200m") == pytest.approx(0.2)   # max_grpc_timeout 0: infinity
    assert request_timeout(1.0, True, "200m") == pytest.approx(0.2)
    assert request_timeout(1.0, True, "5S") == 1.0             # capped at the route timeout
    assert request_timeout(1.0, True, None) == 1.0


def test_budget_interval_counts_requests_started_in_the_window() -> None:
    """Envoy's budget_interval: the base is the requests started in the last interval (buckets of
    a tenth of it), not the requests active now; the fake clock moves the window."""
    now = [0.0]
    c = RetryCircuit(TrafficPolicy(retry_budget=True, retry_budget_percent=50.0, retry_budget_min_concurrency=1,
                                   retry_budget_interval=10.0), clock=lambda: now[0])
    for t in range(20):                 # 20 requests over 2 s, each over at once
        now[0] = t * 0.1
        c.request_started()
        c.request_ended()
    assert c.active_requests == 0 and c.requests_in_interval() == 20 and c.limit() == 10
    now[0] = 11.05                      # the buckets of [0, 1) s expired at 11 s
    assert c.requests_in_interval() == 10 and c.limit() == 5
    now[0] = 13.0
    assert c.requests_in_interval() == 0 and c.limit() == 1


def test_budget_interval_is_ignored_without_a_budget() -> None:
    c = RetryCircuit(TrafficPolicy(retry_budget=False, retry_budget_interval=10.0), clock=lambda: 0.0)
    assert c.interval == 0 and c.limit() == UNLIMITED


def test_budget_interval_window_stays_bounded_when_no_retry_is_ever_asked_for() -> None:
    """The window's buckets expire as requests start, not only when a retry asks for the limit: a
    cluster that never retries must not keep a bucket per tenth of an interval forever."""
    now = [0.0]
    c = RetryCircuit(TrafficPolicy(retry_budget=True, retry_budget_percent=50.0, retry_budget_min_concurrency=1,
                                   retry_budget_interval=1.0), clock=lambda: now[0])
    for _ in range(10_000):             # 1000 s of traffic, 10 requests a second
        c.request_started()
        c.request_ended()
        now[0] += 0.1
    assert len(c._buckets) <= 12
    assert c.requests_in_interval() == 10


def test_the_upstream_grpc_timeout_is_the_deadline_the_waypoint_applies() -> None:
    """Envoy's finalTimeout with max_grpc_timeout set (Istio always sets it): grpc-timeout upstream
    is the per-try timeout, or the request's timeout, in Grpc::Common::toGrpcTimeout's format."""
    assert upstream_grpc_timeout(2.0, 0.0) == "2000m"
    assert upstream_grpc_timeout(2.0, 0.5) == "500m"
    assert upstream_grpc_timeout(0.0, 0.5) == "500m"
    assert upstream_grpc_timeout(2.0, 2.0) == "2000m"        # a per-try timeout not below the route's is dropped
    assert upstream_grpc_timeout(0.0, 0.0) is None            # no timeout: the header is left alone
    assert grpc_timeout_value(0.0001) == "1m"
    assert grpc_timeout_value(99_999.999) == "99999999m" and grpc_timeout_value(100_000.0) == "100000S"
    assert grpc_timeout_value(1e9) == "16666666M" and grpc_timeout_value(1e11) == "27777777H"
    assert grpc_timeout_value(1e15) == "99999999H"
    for v in ("2000m", "100000S", "16666666M", "27777777H"):
        assert parse_grpc_timeout(v) > 0
