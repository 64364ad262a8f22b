"""The two translation changes retries need: HTTPRoute `retry.attempts` defaults to 2 (Istio's
gateway conversion), DestinationRule `retryBudget.budgetInterval` reaches the model."""

from __future__ import annotations

from tests.unit.controller.test_config_translate import SVCS, httproute, routes_for
from waypoint.resilience.policy import compile_policy

HOST = "reviews.demo.svc.cluster.local"


def test_httproute_retry_without_attempts_gets_istios_two() -> None:
    wr = routes_for(SVCS + [httproute("r", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "backendRefs": [{"name": "reviews", "port": 9080}],
         "retry": {"codes": [503]}, "timeouts": {"backendRequest": "250ms"}},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/b"}}], "backendRefs": [{"name": "reviews", "port": 9080}],
         "retry": {"attempts": 0, "codes": [503]}},
    ])], HOST)
    a, b = (compile_policy(r) for r in wr.http)
    assert a.retry.num_retries == 2 and a.retry.codes == {503} and a.per_try_timeout == 0.25
    assert "retriable-status-codes" in a.retry.retry_on and "unavailable" in a.retry.retry_on
    assert b.retry.num_retries == 0


def test_retry_budget_interval_is_translated() -> None:
    wr = routes_for(SVCS + [{
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "r", "namespace": "demo"},
        "spec": {"host": HOST, "trafficPolicy": {
            "retryBudget": {"percent": 25, "minRetryConcurrency": 1, "budgetInterval": "10s"},
            "connectionPool": {"http": {"maxRetries": 7}}}},
    }], HOST)
    p = wr.policy
    assert (p.retry_budget, p.retry_budget_percent, p.retry_budget_min_concurrency, p.retry_budget_interval,
            p.max_retries) == (True, 25.0, 1, 10.0, 7)


def test_httproute_backend_request_without_retry_is_the_route_timeout() -> None:
    """Istio's gateway conversion: without `retry`, `timeouts.backendRequest` becomes the route
    timeout (replacing `request`), which covers the whole response; with `retry`, each try's."""
    wr = routes_for(SVCS + [httproute("r", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "backendRefs": [{"name": "reviews", "port": 9080}],
         "timeouts": {"request": "2s", "backendRequest": "500ms"}},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/b"}}], "backendRefs": [{"name": "reviews", "port": 9080}],
         "timeouts": {"request": "2s", "backendRequest": "500ms"}, "retry": {"codes": [503]}},
    ])], HOST)
    a, b = (compile_policy(r) for r in wr.http)
    assert (a.timeout, a.per_try_timeout, a.retry) == (0.5, 0.0, None)
    assert (b.timeout, b.per_try_timeout) == (2.0, 0.5)


def test_an_empty_httproute_retry_is_istios_two_attempts() -> None:
    """`retry: {}` asks for retries with every default (Istio: 2 attempts); it used to be read as
    no retry at all."""
    wr = routes_for(SVCS + [httproute("r", [
        {"backendRefs": [{"name": "reviews", "port": 9080}], "retry": {}}])], HOST)
    [p] = (compile_policy(r) for r in wr.http)
    assert p.retry is not None and p.retry.num_retries == 2
