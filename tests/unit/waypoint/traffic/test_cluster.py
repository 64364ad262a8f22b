"""The cluster's choice: candidates filtered by outlier state (with the panic threshold), the
retry's exclude set, then the balancer (or the hash table); attempt hooks feeding active counts
and outlier detection; stats, dump and logs; the policy merge (host, port, subset) end to end from
a DestinationRule through the controller's translation."""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest

from ambit.model import Service, TrafficPolicy, WaypointRoutes
from controller.translate import translate
from tests.unit.controller.test_config_translate import service
from waypoint.http.attempt import RESPONSE, Outcome
from waypoint.request import Downstream, RequestHead
from waypoint.traffic.cluster import Cluster, ClusterKey, Clusters, effective_policy

H = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]
E503 = Outcome(RESPONSE, 503)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def cluster(clock: Clock | None = None, **kw: object) -> Cluster:
    return Cluster(ClusterKey("demo/web", 80), TrafficPolicy(**kw), clock or Clock(), random.Random(1),  # type: ignore[arg-type]
                   "web.demo.svc.cluster.local")


def fail(c: Cluster, host: str, n: int) -> None:
    for _ in range(n):
        c.attempt_started(host)
        c.attempt_result(host, E503)
        c.attempt_ended(host)


def test_default_is_least_request_and_active_counts_come_from_the_attempt_hooks() -> None:
    c = cluster()
    assert c.lb == "LEAST_REQUEST" and c.name == "outbound|80||web.demo.svc.cluster.local"
    for _ in range(3):
        c.attempt_started(H[0])
    c.attempt_started(H[1])
    assert c.active == {H[0]: 3, H[1]: 1}
    got = Counter(c.choose(H[:2]) for _ in range(400))
    assert got[H[1]] > got[H[0]] * 2                 # fewer active requests: chosen more
    c.attempt_ended(H[0])
    c.attempt_ended(H[1])
    assert c.active == {H[0]: 2}
    assert [e["active"] for e in c.dump()["endpoints"]] == [2, 0]  # type: ignore[index]


def test_round_robin_and_exclude_with_fallback_to_any() -> None:
    c = cluster(lb="ROUND_ROBIN")
    picks = [c.choose(H) for _ in range(8)]
    assert Counter(picks) == {h: 2 for h in H}
    assert all(c.choose(H, frozenset(H[:3])) == H[3] for _ in range(5))
    assert c.choose(H, frozenset(H)) in H               # everything tried: any


def test_ejected_endpoints_are_skipped_and_come_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    c = cluster(clock, lb="ROUND_ROBIN", outlier_detection=True, consecutive_5xx_errors=2, interval=1.0,
                base_ejection_time=5.0, max_ejection_percent=50)
    c.choose(H)
    with caplog.at_level(logging.WARNING, "ambit.waypoint.cluster"):
        fail(c, H[0], 2)
    assert f"cluster {c.name}: endpoint {H[0]} ejected (consecutive_5xx, ejection 1, for 5s)" in caplog.text
    assert H[0] not in {c.choose(H) for _ in range(12)}
    st = c.stats()
    assert (st["outlier_detection_ejections_active"], st["outlier_detection_ejections_enforced_total"],
            st["outlier_detection_ejections_enforced_consecutive_5xx"], st["membership_healthy"],
            st["membership_total"]) == (1, 1, 1, 3, 4)
    [e] = [e for e in c.dump()["endpoints"] if e["ejected"]]  # type: ignore[union-attr]
    assert (e["address"], e["ejections"], e["ejected_for"]) == (H[0], 1, 5.0)
    clock.t += 4.5
    assert c.dump()["endpoints"][0]["ejected_for"] == 0.5  # type: ignore[index]
    clock.t += 0.5
    with caplog.at_level(logging.INFO, "ambit.waypoint.cluster"):
        assert H[0] in {c.choose(H) for _ in range(8)}
    assert f"cluster {c.name}: endpoint {H[0]} returned to service" in caplog.text
    assert c.stats()["outlier_detection_ejections_active"] == 0


def test_all_ejected_gives_no_endpoint_unless_in_panic() -> None:
    c = cluster(outlier_detection=True, consecutive_5xx_errors=1, max_ejection_percent=100)
    c.choose(H[:2])
    fail(c, H[0], 1)
    fail(c, H[1], 1)
    assert c.choose(H[:2]) is None                   # minHealthPercent 0: no panic, 503 UH
    p = cluster(outlier_detection=True, consecutive_5xx_errors=1, max_ejection_percent=100, min_health_percent=50)
    p.choose(H)
    fail(p, H[0], 1)
    assert H[0] not in {p.choose(H) for _ in range(20)}      # 75 % in service: no panic
    fail(p, H[1], 1)
    fail(p, H[2], 1)
    assert {p.choose(H) for _ in range(40)} == set(H)         # 25 % < 50 %: panic, over all
    assert p.stats()["lb_healthy_panic"] == 40


def test_consistent_hash_sticks_skips_ejected_and_excluded_and_sets_the_cookie() -> None:
    c = cluster(lb="CONSISTENT_HASH", hash_header="x-user", outlier_detection=True, consecutive_5xx_errors=1,
                max_ejection_percent=100)
    key = c.hash_key(RequestHead("GET", "/", "web", headers=[("x-user", "ann")]), Downstream())
    assert key is not None
    first = c.choose(H, key=key)
    assert all(c.choose(H, key=key) == first for _ in range(10))
    others = {u: c.choose(H, key=c.hash_key(RequestHead("GET", "/", "web", headers=[("x-user", u)]), None))
              for u in ("bob", "cy", "dee", "eve", "fay", "gus")}
    second = c.choose(H, frozenset({first}), key)
    assert second != first                           # a retry that ignores previous hosts
    fail(c, first, 1)
    assert c.choose(H, key=key) == second            # ejected: the next host on the ring
    for u, h in others.items():                      # keys of other hosts do not move
        if h != first:
            assert c.choose(H, key=c.hash_key(RequestHead("GET", "/", "web", headers=[("x-user", u)]), None)) == h
    nokey = c.hash_key(RequestHead("GET", "/", "web"), None)
    assert nokey is not None and nokey.value is None and len({c.choose(H, key=nokey) for _ in range(40)}) == 3
    ck = cluster(lb="CONSISTENT_HASH", hash_cookie="s", hash_cookie_ttl=10.0)
    k = ck.hash_key(RequestHead("GET", "/", "web", headers=[("x-request-id", "r")]), None)
    assert k is not None and k.set_cookie.startswith('s="') and ck.dump()["lb"] == "CONSISTENT_HASH/RING_HASH"
    assert cluster(lb="CONSISTENT_HASH", hash_ring="MAGLEV", hash_ring_size=251).dump()["lb"] == "CONSISTENT_HASH/MAGLEV"


def test_warmup_ramps_a_new_endpoint_for_round_robin() -> None:
    clock = Clock()
    c = cluster(clock, lb="ROUND_ROBIN", warmup_duration=10.0)
    c.choose(H[:2])                                  # the first endpoints: warm
    new = "10.0.0.9:80"
    c.choose(H[:2] + [new])
    clock.t += 2.0                                   # factor 0.2
    got = Counter(c.choose(H[:2] + [new]) for _ in range(220))
    assert got[new] == 20                            # 0.2 / 2.2 of the picks
    assert c.dump()["endpoints"][2]["warmup_factor"] == 0.2  # type: ignore[index]
    clock.t += 10.0
    got = Counter(c.choose(H[:2] + [new]) for _ in range(300))
    assert got == {H[0]: 100, H[1]: 100, new: 100}
    assert cluster(lb="RANDOM", warmup_duration=10.0).warmup is None     # RR and LR only, as Envoy


def translated(objs: list[dict[str, object]]) -> tuple[dict[str, WaypointRoutes], dict[str, Service]]:
    t = translate(objs)
    return {r.service: r for r in t.waypoint_routes if r.service}, {s.resource_name: s for s in t.services}


def test_clusters_keep_state_while_the_policy_is_unchanged() -> None:
    cs = Clusters(Clock(), random.Random(0))
    objs = [service("web", {"app": "web"}, [{"name": "http", "port": 80}])]
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "w", "namespace": "demo"},
          "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}}
    cs.update(*translated(objs + [dr]))
    a = cs.get("demo/web", 80)
    a.attempt_started(H[0])
    cs.update(*translated(objs + [dr, service("other", {"app": "o"}, [{"name": "http", "port": 80}])]))
    assert cs.get("demo/web", 80) is a              # an unrelated change keeps the cluster's state
    dr["spec"]["trafficPolicy"]["loadBalancer"]["simple"] = "RANDOM"
    cs.update(*translated(objs + [dr]))
    assert cs.get("demo/web", 80) is not a and cs.get("demo/web", 80).lb == "RANDOM"


def test_a_cluster_goes_with_its_service_port_or_subset_even_under_the_default_policy() -> None:
    """A deleted Service without a DestinationRule has the same (default) policy as before: its
    cluster, its state and its envoy_cluster_* series must still go (they stayed forever, one per
    Service ever sent to), as Envoy drops a cluster CDS no longer sends."""
    cs = Clusters(Clock(), random.Random(0))
    web = service("web", {"app": "web"}, [{"name": "http", "port": 80}, {"name": "http-alt", "port": 81}])
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "w", "namespace": "demo"},
          "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"v": "1"}}]}}
    for i in range(300):            # Services created, sent to and deleted
        svc = service(f"s{i}", {"app": "s"}, [{"name": "http", "port": 80}])
        cs.update(*translated([web, svc]))
        cs.get(f"demo/s{i}", 80).attempt_started(H[0])
        cs.update(*translated([web]))
    assert [c.key for c in cs] == []
    cs.update(*translated([web, dr]))
    kept = cs.get("demo/web", 80)
    for port, subset in ((80, "v1"), (81, "")):
        cs.get("demo/web", port, subset)
    cs.update(*translated([service("web", {"app": "web"}, [{"name": "http", "port": 80}]), dr]))
    assert sorted((c.key.port, c.key.subset) for c in cs) == [(80, ""), (80, "v1")]     # port 81 gone
    cs.update(*translated([service("web", {"app": "web"}, [{"name": "http", "port": 80}])]))
    assert [c for c in cs] == [kept]                                                # subset v1 gone


def test_subset_and_port_level_policies_merge_as_istio() -> None:
    """Istio's MergeSubsetTrafficPolicy: a port-level entry replaces the policy it is in for its
    port (inheriting nothing), a subset's policy overrides per part, a subset's port-level entry
    replaces all four parts (here: no outlier detection, as that entry sets none)."""
    objs = [service("web", {"app": "web"}, [{"name": "http", "port": 80}, {"name": "http-alt", "port": 81}])]
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "w", "namespace": "demo"},
          "spec": {"host": "web",
                   "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"},
                                     "outlierDetection": {"consecutive5xxErrors": 7},
                                     "portLevelSettings": [{"port": {"number": 81},
                                                            "loadBalancer": {"simple": "ROUND_ROBIN"},
                                                            "outlierDetection": {"consecutive5xxErrors": 2}}]},
                   "subsets": [{"name": "plain", "labels": {"v": "1"}},
                               {"name": "lr", "labels": {"v": "2"},
                                "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}},
                               {"name": "own", "labels": {"v": "3"},
                                "trafficPolicy": {"portLevelSettings": [{"port": {"number": 81},
                                                                         "loadBalancer": {"consistentHash": {
                                                                             "httpHeaderName": "x-u"}}}]}}]}}
    t = translate(objs + [dr])
    wr = {r.hostname: r for r in t.waypoint_routes}["web.demo.svc.cluster.local"]

    def pol(port: int, subset: str = "") -> tuple[str, int | None]:
        p = effective_policy(wr, port, subset)
        return p.lb, p.consecutive_5xx_errors if p.outlier_detection else None

    assert pol(80) == ("RANDOM", 7)
    assert pol(81) == ("ROUND_ROBIN", 2)                 # port level over host
    assert pol(80, "plain") == ("RANDOM", 7)             # a subset without a policy: the host's
    assert pol(81, "plain") == ("ROUND_ROBIN", 2)
    assert pol(80, "lr") == ("LEAST_REQUEST", 7)         # the subset's part over the host's
    assert pol(81, "lr") == ("LEAST_REQUEST", 2)         # ... and over the host's port level
    assert pol(80, "own") == ("RANDOM", 7)
    assert pol(81, "own") == ("CONSISTENT_HASH", None)   # the subset's port level replaces all: no OD
    assert effective_policy(None, 80, "") == TrafficPolicy()


# -- endpoint weights (a ServiceEntry's endpoints[].weight), as Envoy's balancers read them --------

def weighted(hosts: list[str], weights: list[int]):  # noqa: ANN201 - locality.Places
    from waypoint.traffic.locality import Places
    return Places((("", {}) for _ in hosts), (), weights)


@pytest.mark.parametrize("lb", ["ROUND_ROBIN", "LEAST_REQUEST"])
def test_endpoint_weights_share_the_requests_in_proportion(lb: str) -> None:
    c = cluster(lb=lb)
    got = Counter(c.choose(H[:3], places=weighted(H[:3], [1, 3, 6])) for _ in range(1000))
    assert got == {H[0]: 100, H[1]: 300, H[2]: 600}, got        # smooth weighted: exact over a whole cycle
    assert [e.get("weight") for e in c.dump()["endpoints"]] == [1, 3, 6]  # type: ignore[union-attr]


def test_least_request_divides_an_endpoints_weight_by_its_active_requests_plus_one() -> None:
    c = cluster(lb="LEAST_REQUEST")
    for _ in range(3):
        c.attempt_started(H[1])                 # weight 4 over 4 active: as loaded as weight 1 over 0
    got = Counter(c.choose(H[:2], places=weighted(H[:2], [1, 4])) for _ in range(1000))
    assert got == {H[0]: 500, H[1]: 500}, got


def test_random_draws_by_weight() -> None:
    """Envoy's random balancer ignores endpoint weights; Ambit honours what it accepts (a silently
    ignored weight is what the project rules out), as Istio's ztunnel draws by weight."""
    c = cluster(lb="RANDOM")
    got = Counter(c.choose(H[:2], places=weighted(H[:2], [1, 9])) for _ in range(4000))
    assert abs(got[H[0]] / 4000 - 0.1) < 0.03, got
    plain = cluster(lb="RANDOM")
    assert Counter(plain.choose(H[:2]) for _ in range(4000))[H[0]] > 1600, "unweighted: uniform"


def test_equal_weights_keep_the_unweighted_balancers() -> None:
    c = cluster(lb="ROUND_ROBIN")
    c.choose(H[:3], places=weighted(H[:3], [5, 5, 5]))
    assert c.weights is None and "weight" not in c.dump()["endpoints"][0]  # type: ignore[index]


@pytest.mark.parametrize("ring", ["RING_HASH", "MAGLEV"])
def test_a_hash_tables_share_follows_the_weights_and_weights_that_change_rebuild_it(ring: str) -> None:
    from waypoint.traffic.balancer import HashBalancer
    hb = HashBalancer(ring)
    rng = random.Random(3)
    ks = [rng.getrandbits(64) for _ in range(20000)]
    got = Counter(hb.pick(H[:2], H[:2], k, (1, 3)) for k in ks)
    assert abs(got[H[1]] / len(ks) - 0.75) < 0.05, got
    got = Counter(hb.pick(H[:2], H[:2], k, (3, 1)) for k in ks)         # another table, not the cached one
    assert abs(got[H[0]] / len(ks) - 0.75) < 0.05, got
