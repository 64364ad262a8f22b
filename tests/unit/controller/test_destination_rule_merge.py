"""Several DestinationRules for one host are merged as Istio merges them (pilot/pkg/model/
destination_rule.go mergeDestinationRule), and `ambit apply` says what a younger one loses."""

from __future__ import annotations

from typing import Any

from controller.translate import translate
from controller.waypoints.advisories import advisories

HOST = "reviews.demo.svc.cluster.local"
BASE = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"ambit.io/use-waypoint": "wp"}}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "demo"},
     "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ratings", "namespace": "demo"},
     "spec": {"clusterIP": "10.96.0.11", "selector": {"app": "ratings"}, "ports": [{"name": "http", "port": 9080}]}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "wp", "namespace": "demo"},
     "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
]


def dr(name: str, day: int, host: str = "reviews", **spec: Any) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": "demo", "creationTimestamp": f"2026-01-0{day}T00:00:00Z"},
            "spec": {"host": host, **spec}}


def subset(name: str, version: str) -> dict:
    return {"name": name, "labels": {"version": version}}


def routes(objs: list[dict], host: str = HOST) -> Any:
    return next(w for w in translate(BASE + objs).waypoint_routes if w.hostname == host)


def dropped(objs: list[dict]) -> list[tuple[str, str]]:
    return [(a.ref, a.path) for a in advisories(BASE + objs) if a.cause == "Merged"]


LB = {"loadBalancer": {"simple": "ROUND_ROBIN"}}
POOL = {"connectionPool": {"tcp": {"maxConnections": 1}}}


def test_unique_subsets_are_concatenated_oldest_first_and_the_older_policy_is_kept() -> None:
    """The audit's case: an older rule with a load balancer only and a younger one with subset v1
    and a connection pool. Istio routes to v1; the younger policy is dropped, and `ambit apply`
    says so."""
    objs = [dr("reviews-subsets", 2, subsets=[subset("v1", "v1")], trafficPolicy=POOL),
            dr("reviews-lb", 1, trafficPolicy=LB), dr("reviews-more", 3, subsets=[subset("v2", "v2")])]
    wr = routes(objs)
    assert [(s.name, s.labels) for s in wr.subsets] == [("v1", {"version": "v1"}), ("v2", {"version": "v2"})]
    assert (wr.policy.lb, wr.policy.max_connections) == ("ROUND_ROBIN", 0)
    assert [s for s in wr.sources if s.startswith("DestinationRule/")] == [
        "DestinationRule/demo/reviews-lb", "DestinationRule/demo/reviews-subsets", "DestinationRule/demo/reviews-more"]
    [(ref, path)] = dropped(objs)
    assert (ref, path) == ("DestinationRule/demo/reviews-subsets", "spec.trafficPolicy")
    [a] = [a for a in advisories(BASE + objs) if a.cause == "Merged"]
    assert a.reason.startswith("not applied: DestinationRule/demo/reviews-lb is older and already sets the "
                               f"trafficPolicy for {HOST}")


def test_a_younger_policy_is_used_when_no_older_rule_has_one() -> None:
    objs = [dr("a", 1, subsets=[subset("v1", "v1")]), dr("b", 2, trafficPolicy=POOL),
            dr("c", 3, trafficPolicy=LB)]
    wr = routes(objs)
    assert (wr.policy.max_connections, wr.policy.lb) == (1, "")
    assert [s.name for s in wr.subsets] == ["v1"]
    assert dropped(objs) == [("DestinationRule/demo/c", "spec.trafficPolicy")]


def test_a_subset_name_an_older_rule_defines_stays_the_older_ones() -> None:
    objs = [dr("young", 2, subsets=[subset("v1", "new"), subset("v3", "v3")]), dr("old", 1, subsets=[subset("v1", "v1")])]
    wr = routes(objs)
    assert [(s.name, s.labels["version"]) for s in wr.subsets] == [("v1", "v1"), ("v3", "v3")]
    assert dropped(objs) == [("DestinationRule/demo/young", "spec.subsets[0]")]
    [a] = [a for a in advisories(BASE + objs) if a.cause == "Merged"]
    assert 'DestinationRule/demo/old is older and already defines subset "v1"' in a.reason


def test_rules_merge_per_host_and_the_exact_host_beats_a_wildcard() -> None:
    """Istio merges only rules naming the same host, and a Service takes the most specific host's
    rules (MostSpecificHostMatch): an older wildcard rule does not shadow a younger exact one."""
    objs = [dr("all", 1, host="*.demo.svc.cluster.local", trafficPolicy=LB, subsets=[subset("w", "w")]),
            dr("exact", 2, host="reviews.demo.svc.cluster.local", trafficPolicy=POOL)]
    wr = routes(objs)
    assert (wr.policy.max_connections, wr.policy.lb, wr.subsets) == (1, "", [])
    other = routes(objs, "ratings.demo.svc.cluster.local")
    assert (other.policy.lb, [s.name for s in other.subsets]) == ("ROUND_ROBIN", ["w"])
    assert dropped(objs) == []
