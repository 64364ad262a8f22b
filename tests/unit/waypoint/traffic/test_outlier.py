"""Outlier detection, playbook style: feed outcomes and clock ticks, assert ejections, returns,
backoff and counters (Envoy's outlier_detection_impl.cc semantics)."""

from __future__ import annotations

from ambit.model import TrafficPolicy
from waypoint.http.attempt import CONNECT_FAILURE, RESET, RESPONSE, TIMEOUT, Outcome
from waypoint.traffic.outlier import OutlierConfig, OutlierDetector

OK = Outcome(RESPONSE, 200)
E500 = Outcome(RESPONSE, 500)
E503 = Outcome(RESPONSE, 503)
CF = Outcome(CONNECT_FAILURE)


def detector(**kw: object) -> tuple[OutlierDetector, list[tuple]]:
    events: list[tuple] = []
    cfg = OutlierConfig(**{"consecutive_5xx": 3, "interval": 1.0, "base_ejection_time": 10.0,
                           "max_ejection_percent": 100, **kw})  # type: ignore[arg-type]
    d = OutlierDetector(cfg, 0.0, lambda *e: events.append(e))
    d.set_hosts(["a", "b", "c", "d"])
    return d, events


def feed(d: OutlierDetector, host: str, outcomes: list[Outcome], now: float = 0.0) -> None:
    for o in outcomes:
        d.result(host, o, now)


def test_consecutive_5xx_ejects_inline_and_a_success_resets_the_count() -> None:
    d, ev = detector()
    feed(d, "a", [E500, E503, OK, E500, E500])
    assert not d.is_ejected("a")
    feed(d, "a", [E500], now=0.2)
    assert d.is_ejected("a") and ev == [("eject", "a", "consecutive_5xx", 10.0)]
    assert d.counters["ejections_enforced_consecutive_5xx"] == 1 and d.counters["ejections_enforced_total"] == 1
    assert d.counters["ejections_detected_consecutive_5xx"] == 1 and d.ejected_count == 1


def test_local_failures_count_as_5xx_without_split() -> None:
    d, _ = detector()
    feed(d, "a", [CF, Outcome(RESET), Outcome(TIMEOUT)])
    assert d.is_ejected("a")


def test_gateway_errors_detector() -> None:
    d, ev = detector(consecutive_5xx=0, consecutive_gateway=2)
    feed(d, "a", [E500, E500, E500, E500])
    assert not d.is_ejected("a")                     # 500 is no gateway error, and 5xx is off (0)
    feed(d, "a", [E503, Outcome(TIMEOUT)])
    assert d.is_ejected("a") and ev[0][2] == "consecutive_gateway_failure"
    assert d.counters["ejections_enforced_consecutive_gateway_failure"] == 1


def test_grpc_failures_count_by_their_grpc_status() -> None:
    """A gRPC failure is HTTP 200 with grpc-status in a trailers-only head; Envoy's router counts
    it mapped to HTTP (UNAVAILABLE 503, INTERNAL 500, DEADLINE_EXCEEDED 504), so a gRPC backend
    that keeps answering UNAVAILABLE is ejected like one answering 503."""
    unavailable, internal = Outcome(RESPONSE, 200, "14"), Outcome(RESPONSE, 200, "13")
    d, ev = detector()
    feed(d, "a", [unavailable, internal, Outcome(RESPONSE, 200, "4")])
    assert d.is_ejected("a") and ev == [("eject", "a", "consecutive_5xx", 10.0)]
    d, _ = detector(consecutive_5xx=0, consecutive_gateway=2)
    feed(d, "a", [unavailable, unavailable])
    assert d.is_ejected("a")
    # client-side codes are no server error, and an OK resets the count
    d, _ = detector()
    feed(d, "b", [Outcome(RESPONSE, 200, c) for c in ("3", "5", "7", "16", "1")])
    feed(d, "b", [unavailable, unavailable, Outcome(RESPONSE, 200, "0"), unavailable])
    assert not d.is_ejected("b")
    feed(d, "c", [Outcome(RESPONSE, 200, "x"), Outcome(RESPONSE, 200, "99"), internal])   # InvalidCode: 500
    assert d.is_ejected("c")


def test_split_counts_local_origin_failures_apart() -> None:
    d, ev = detector(split=True, consecutive_local=2)
    feed(d, "a", [CF, E500, CF, E500])               # a response resets the local count
    assert not d.is_ejected("a")
    feed(d, "a", [CF, CF])
    assert d.is_ejected("a") and ev[0][2] == "consecutive_local_origin_failure"
    feed(d, "b", [E500, CF, CF, E500])               # two local failures in a row eject, 5xx around or not
    assert d.is_ejected("b") and ev[1][2] == "consecutive_local_origin_failure"
    d2, _ = detector(split=True, consecutive_local=5)
    feed(d2, "c", [E500, CF, E500, CF, E500])
    assert d2.is_ejected("c")


def test_return_at_the_first_sweep_after_the_ejection_time_with_counters_reset() -> None:
    d, ev = detector()
    feed(d, "a", [E500] * 3, now=0.5)
    assert d.returns_at("a") == 11.0                 # ejected 0.5 + 10 s, the sweep after is at 11
    d.sweep(10.9)
    assert d.is_ejected("a")
    d.sweep(11.0)
    assert not d.is_ejected("a") and ev[-1] == ("return", "a", "", 0.0)
    feed(d, "a", [E500, E500], now=11.5)
    assert not d.is_ejected("a")                     # counts afresh after the return


def test_backoff_doubles_the_ejection_and_decays_while_healthy() -> None:
    d, ev = detector()
    feed(d, "a", [E500] * 3, now=0.0)
    d.sweep(10.0)                                    # back at 10
    feed(d, "a", [E500] * 3, now=10.2)
    assert ev[-1] == ("eject", "a", "consecutive_5xx", 20.0)      # 2 x base
    d.sweep(30.2)
    assert d.is_ejected("a")
    d.sweep(31.0)                                    # back at 31 (sweep after 30.2)
    assert not d.is_ejected("a") and d.hosts["a"].backoff == 2
    d.sweep(32.0)                                    # a whole interval in service: backoff 2 -> 1
    assert d.hosts["a"].backoff == 1
    d.sweep(40.0)
    assert d.hosts["a"].backoff == 0
    feed(d, "a", [E500] * 3, now=40.5)
    assert ev[-1][3] == 10.0                         # forgiven: base again


def test_ejection_time_is_capped_at_max_ejection_time() -> None:
    d, ev = detector(base_ejection_time=200.0)
    t = 0.0
    for _ in range(4):
        feed(d, "a", [E500] * 3, now=t)
        t = d.returns_at("a") or t
        d.sweep(t)
    assert [e[3] for e in ev if e[0] == "eject"] == [200.0, 300.0, 300.0, 300.0]


def test_max_ejection_percent_and_envoys_two_host_default() -> None:
    d, _ = detector(max_ejection_percent=50)
    for h in "abc":
        feed(d, h, [E500] * 3)
    assert [h for h in "abcd" if d.is_ejected(h)] == ["a", "b"]     # 3/4 would exceed 50 %
    assert d.counters["ejections_overflow"] == 1
    # Istio's default 10 %: with two endpoints, (0 + 1) / 2 = 50 % > 10 %: none is ever ejected
    d2 = OutlierDetector(OutlierConfig.from_policy(TrafficPolicy(outlier_detection=True)), 0.0)  # type: ignore[arg-type]
    d2.set_hosts(["a", "b"])
    feed(d2, "a", [E500] * 5)
    assert not d2.is_ejected("a") and d2.counters["ejections_overflow"] == 1


def test_panic_threshold_is_min_health_percent() -> None:
    d, _ = detector(min_health_percent=60)
    feed(d, "a", [E500] * 3)
    assert not d.panic(["a", "b", "c", "d"])        # 75 % in service
    feed(d, "b", [E500] * 3)
    assert d.panic(["a", "b", "c", "d"])            # 50 % < 60 %
    d0, _ = detector()
    feed(d0, "a", [E500] * 3)
    assert not d0.panic(["a"])                      # 0 disables panic


def test_hosts_that_leave_drop_their_state_and_sweeps_catch_up() -> None:
    d, _ = detector()
    feed(d, "a", [E500] * 3)
    d.set_hosts(["b", "c"])
    assert d.ejected_count == 0 and "a" not in d.hosts
    d.sweep(1e9)                                    # a long idle: bounded catch-up
    assert d.next_sweep > 1e9


def test_config_from_policy_and_defaults() -> None:
    assert OutlierConfig.from_policy(TrafficPolicy()) is None
    c = OutlierConfig.from_policy(TrafficPolicy(outlier_detection=True))
    assert c is not None and (c.consecutive_5xx, c.interval, c.base_ejection_time, c.max_ejection_percent,
                              c.min_health_percent, c.max_ejection_time) == (5, 10.0, 30.0, 10, 0, 300.0)


def test_a_late_outcome_from_an_endpoint_that_left_is_ignored() -> None:
    """Requests still in flight to a pod that left the Service (a rolling update) fail after the
    cluster dropped it. Envoy ignores their results (onConsecutiveErrorWorker: the host has no
    monitor any more); a phantom endpoint must not come back, be ejected, and use up
    maxEjectionPercent (or count in its denominator) for the endpoints that are really there."""
    d, ev = detector(max_ejection_percent=25)
    d.set_hosts(["b", "c", "d"])                    # "a" left
    feed(d, "a", [E503] * 3)
    assert "a" not in d.hosts and d.ejected_count == 0 and ev == []
    feed(d, "b", [E500] * 3)                        # 1/3 > 25 %: not ejected, as with 3 endpoints
    assert not d.is_ejected("b") and d.counters["ejections_overflow"] == 1


# -- outlierDetectionHttpErrorCodes ---------------------------------------------------------------
# Istio turns the list into an Envoy error_matcher on `:status`; Envoy's router then reports a
# matched answer as its own status if 5xx, else as 500, and an unmatched one as 200
# (router_outlier_detection_test.cc OverwriteCodeBasedOnMatcher).

E429 = Outcome(RESPONSE, 429)


def test_a_listed_status_that_is_no_5xx_ejects() -> None:
    """A backend that keeps answering 429 is ejected once 429 is listed (counted as a 500)."""
    d, ev = detector(error_codes=frozenset({429}))
    feed(d, "a", [E429, E429, E429])
    assert d.is_ejected("a") and ev == [("eject", "a", "consecutive_5xx", 10.0)]
    d, _ = detector()                               # without the list a 429 is a success
    feed(d, "a", [E429] * 5)
    assert not d.is_ejected("a")


def test_an_unlisted_5xx_is_a_success_that_resets_the_count() -> None:
    d, _ = detector(error_codes=frozenset({429}))
    feed(d, "a", [E500, E503, Outcome(RESPONSE, 504)] * 3)
    assert not d.is_ejected("a")
    feed(d, "a", [E429, E429, E500, E429, E429])    # the 500 breaks the run as a 200 would
    assert not d.is_ejected("a")
    feed(d, "a", [E429])
    assert d.is_ejected("a")


def test_a_listed_non_5xx_counts_as_500_so_not_as_a_gateway_error() -> None:
    d, _ = detector(consecutive_5xx=0, consecutive_gateway=2, error_codes=frozenset({429, 503}))
    feed(d, "a", [E429] * 4)                        # a 500: no gateway error, and 5xx is off
    assert not d.is_ejected("a")
    feed(d, "a", [E503, E503])                      # a listed 5xx counts as itself
    assert d.is_ejected("a") and d.counters["ejections_enforced_consecutive_gateway_failure"] == 1


def test_local_origin_failures_still_count_with_a_list() -> None:
    """The matcher sees answers only: a connect failure, reset or timeout counts as before."""
    d, _ = detector(error_codes=frozenset({429}))
    feed(d, "a", [CF, Outcome(RESET), Outcome(TIMEOUT)])
    assert d.is_ejected("a")


def test_a_grpc_answer_is_matched_by_its_http_status() -> None:
    """The matcher reads `:status`, which is 200 for a gRPC trailers-only failure: UNAVAILABLE is
    no error unless 200 is listed, and then it counts as its mapped 503."""
    unavailable = Outcome(RESPONSE, 200, "14")
    d, _ = detector(error_codes=frozenset({503}))
    feed(d, "a", [unavailable] * 4)
    assert not d.is_ejected("a")
    d, _ = detector(consecutive_5xx=0, consecutive_gateway=2, error_codes=frozenset({200}))
    feed(d, "a", [unavailable] * 2)
    assert d.is_ejected("a")


def test_the_list_comes_from_the_policy() -> None:
    c = OutlierConfig.from_policy(TrafficPolicy(outlier_detection=True, outlier_http_error_codes=[429, 503]))
    assert c is not None and c.error_codes == {429, 503}
    c = OutlierConfig.from_policy(TrafficPolicy(outlier_detection=True))
    assert c is not None and c.error_codes == frozenset()
