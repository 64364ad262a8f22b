"""The circuit breaker's pure core (waypoint/traffic/breaker.py): limits from a DestinationRule's
connectionPool over the node defaults, admission, overflow counting, the open gauges."""

from __future__ import annotations

from ambit.model import TrafficPolicy
from tests.unit.waypoint.support import translated
from waypoint.traffic.breaker import Breaker, Limits

NODE = Limits(max_connections=1024, max_pending=1024, max_requests=1024, connect_timeout=10.0, idle_timeout=60.0)


def test_unset_fields_keep_the_node_defaults_set_fields_replace_them() -> None:
    assert Limits.of(None, NODE) == NODE
    assert Limits.of(TrafficPolicy(), NODE) == NODE
    lim = Limits.of(TrafficPolicy(max_connections=1, http1_max_pending_requests=1, http2_max_requests=5000,
                                  max_requests_per_connection=1, connect_timeout=0.5, http_idle_timeout=2.0,
                                  h2_upgrade=True), NODE)
    assert lim == Limits(max_connections=1, max_pending=1, max_requests=5000, max_requests_per_connection=1,
                         connect_timeout=0.5, idle_timeout=2.0, h2_upgrade=True)


def test_the_seed_circuit_breaker_through_the_real_translation() -> None:
    """shared/examples/istio/circuit-breaker.yaml, as the controller translates it."""
    from tests.unit.waypoint.support import EXAMPLES, load_yaml, namespace, service
    objs = [namespace("default", **{"ambit.io/dataplane-mode": "ambient"}),
            service("myapp", "default", {"http": 80})]
    for d in load_yaml(EXAMPLES / "istio" / "circuit-breaker.yaml"):
        d["metadata"].setdefault("namespace", "default")
        objs.append(d)
    [wr] = [w for w in translated(objs).waypoint_routes if w.hostname.startswith("myapp.")]
    lim = Breaker(wr.policy).configure(NODE)
    # maxConnections 10, http2MaxRequests 10, maxRequestsPerConnection 10; pending unset → node's
    assert (lim.max_connections, lim.max_requests, lim.max_requests_per_connection, lim.max_pending) \
        == (10, 10, 10, 1024)


def test_connections_are_admitted_up_to_the_limit_and_overflow_is_counted() -> None:
    b = Breaker(TrafficPolicy(max_connections=2))
    b.configure(NODE)
    assert b.try_connect() and b.try_connect()
    assert b.stats()["circuit_breakers_default_cx_open"] == 1
    assert not b.try_connect() and not b.try_connect()
    s = b.stats()
    assert (s["upstream_cx_active"], s["upstream_cx_overflow"], s["upstream_cx_total"]) == (2, 2, 2)
    b.connection_closed("max_requests")
    b.connect_failed(timeout=True)
    s = b.stats()
    assert (s["upstream_cx_active"], s["circuit_breakers_default_cx_open"], s["upstream_cx_max_requests"],
            s["upstream_cx_connect_timeout"], s["upstream_cx_connect_fail"]) == (0, 0, 1, 1, 1)
    assert s["circuit_breakers_default_remaining_cx"] == 2


def test_pending_and_active_requests_overflow_as_envoy_counts_them() -> None:
    b = Breaker(TrafficPolicy(http1_max_pending_requests=1, http2_max_requests=1))
    b.configure(NODE)
    assert b.try_pending()
    assert not b.try_pending()                  # queue full: overflow
    assert b.stats()["circuit_breakers_default_rq_pending_open"] == 1
    b.pending_done()
    assert b.try_request()
    assert not b.try_request()                  # max_requests: Envoy counts it as pending overflow too
    s = b.stats()
    assert (s["upstream_rq_pending_overflow"], s["upstream_rq_active"], s["circuit_breakers_default_rq_open"],
            s["upstream_rq_pending_active"]) == (2, 1, 1, 0)
    b.request_done()
    assert b.idle and b.stats()["circuit_breakers_default_rq_open"] == 0


def test_connection_spent_after_max_requests_per_connection() -> None:
    b = Breaker(TrafficPolicy(max_requests_per_connection=2))
    b.configure(NODE)
    assert not b.connection_spent(1) and b.connection_spent(2)
    unlimited = Breaker()
    unlimited.configure(NODE)
    assert not unlimited.connection_spent(10**6)


def test_limits_follow_new_node_defaults() -> None:
    b = Breaker(TrafficPolicy(max_connections=3))
    assert b.configure(NODE).max_pending == 1024
    other = Limits(max_pending=7)
    lim = b.configure(other)
    assert (lim.max_connections, lim.max_pending) == (3, 7)
