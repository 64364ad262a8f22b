"""Locality load balancing (DestinationRule `localityLbSetting`), as Istio and Envoy do it: priorities
by region/zone/subzone (only with outlier detection), failover when a priority's endpoints are
ejected (overprovisioning factor 1.4), `failover` from/to regions, `failoverPriority` labels,
`distribute` weights and `enabled: false`, and a route's `retryRemoteLocalities` (Envoy's
previous_priorities retry priority, update_frequency 2). The pure selection first, then the
cluster, then the waypoint with its own Workload's locality. No sockets: the draws are injected
(the retries on the wire: test_remote_localities_wire.py)."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from ambit.configclient import ConfigUpdate
from ambit.model import Service, TrafficPolicy, WaypointRoutes, Workload
from tests.unit.waypoint.test_wiring import FRONTEND, SVC, V1, V2, V2B, proxy
from tests.unit.waypoint.traffic.test_cluster import Clock, fail
from waypoint.request import Forward, RequestHead
from waypoint.traffic.cluster import Cluster, ClusterKey
from waypoint.traffic.locality import (
    Plan,
    Setting,
    label_priority,
    matches,
    pick_hosts,
    plan,
    retry_priorities,
)

OWN = "us-east/us-east-1a/rack1"
# two endpoints per locality: same subzone, same zone, same region, another region
PLACES = {"a1": OWN, "a2": OWN, "b1": "us-east/us-east-1a/rack2", "b2": "us-east/us-east-1a/rack2",
          "c1": "us-east/us-east-1b/", "c2": "us-east/us-east-1b/", "d1": "eu-west/eu-west-1a/",
          "d2": "eu-west/eu-west-1a/"}
HOSTS = list(PLACES)


def places(hosts: list[str] = HOSTS, labels: dict[str, dict[str, str]] | None = None):  # type: ignore[no-untyped-def]
    return [(PLACES[h], (labels or {}).get(h, {})) for h in hosts]


def setting(**kw: object) -> Setting:
    return Setting.of(TrafficPolicy(**kw))  # type: ignore[arg-type, return-value]


def test_failover_priorities_are_subzone_zone_region_then_the_rest_and_need_outlier_detection() -> None:
    p = plan(setting(outlier_detection=True), OWN, {}, HOSTS, places())
    assert p == Plan((("a1", "a2"), ("b1", "b2"), ("c1", "c2"), ("d1", "d2")))
    # all healthy: every request stays in the waypoint's own subzone
    assert {tuple(pick_hosts(p, None, random.Random(i).random) or ()) for i in range(50)} == {("a1", "a2")}
    # without outlier detection Istio does not prioritise (nothing could ever fail over), nor with enabled: false
    assert Setting.of(TrafficPolicy()) is None
    assert Setting.of(TrafficPolicy(outlier_detection=True, locality_disabled=True)) is None
    # every endpoint in one priority (e.g. no locality known anywhere): nothing to do per request
    assert plan(setting(outlier_detection=True), "", {}, ["x", "y"], [("", {}), ("", {})]) is None


def test_ejections_spill_over_to_the_next_priority_by_the_overprovisioning_factor() -> None:
    p = Plan((("a1", "a2", "a3", "a4"), ("b1", "b2")))
    ejected: set[str] = set()

    def healthy(h: str) -> bool:
        return h not in ejected

    def share(draws: int = 1000) -> float:
        rng = random.Random(7)
        got = [pick_hosts(p, healthy, rng.random) for _ in range(draws)]
        return sum(1 for g in got if g and g[0].startswith("b")) / draws
    ejected.add("a1")                   # 1.4 * 3/4 > 1: priority 0 still takes everything
    assert share() == 0.0
    assert pick_hosts(p, healthy, lambda: 0.0) == ["a2", "a3", "a4"]      # never an ejected endpoint
    ejected.add("a2")                   # 1.4 * 2/4 = 0.7: 30% spills to priority 1
    assert pick_hosts(p, healthy, lambda: 0.69) == ["a3", "a4"]
    assert pick_hosts(p, healthy, lambda: 0.71) == ["b1", "b2"]
    assert 0.25 < share() < 0.35
    ejected.update({"a3", "a4"})        # priority 0 all ejected: all of it fails over
    assert share() == 1.0
    ejected.update({"b1", "b2"})
    assert pick_hosts(p, healthy, lambda: 0.5) is None                    # no healthy upstream: 503 UH


def test_min_health_percent_panics_per_priority_as_envoy() -> None:
    p = Plan((("a1", "a2", "a3", "a4"), ("b1", "b2")))
    panics: list[int] = []
    ejected = {"a1", "a2", "a3", "b1"}      # P0 1/4 healthy (0.35), P1 1/2 (0.7): enough, no panic

    def pick(x: float, percent: float = 50) -> list[str] | None:
        return pick_hosts(p, lambda h: h not in ejected, lambda: x, percent, lambda: panics.append(1))
    assert pick(0.1) == ["a4"] and pick(0.9) == ["b2"] and not panics
    ejected.add("b2")                       # P1 gone: availability 0.35 < 1, P0 25% < 50%: all of P0
    assert pick(0.9) == ["a1", "a2", "a3", "a4"] and panics == [1]
    assert pick(0.9, 0) == ["a4"]           # minHealthPercent 0 (Istio's default): no panic
    ejected.add("a4")                       # nothing healthy: priority 0, in panic
    assert pick(0.9) == ["a1", "a2", "a3", "a4"] and pick(0.9, 0) is None
    d = Plan((("a1", "a2"), ("b1", "b2")), (80.0, 20.0))
    ejected = {"a1", "a2", "b1"}            # distribute: 1 of 4 healthy, 25% < 50%: weights ignored
    assert pick_hosts(d, lambda h: h not in ejected, lambda: 0.1, 50) == ["a1", "a2", "b1", "b2"]
    assert pick_hosts(d, lambda h: h not in ejected, lambda: 0.1) == ["b2"]


def test_retry_remote_localities_leaves_the_priorities_tried_after_every_second_try() -> None:
    p = Plan((("a1", "a2"), ("b1", "b2"), ("d1", "d2")))

    def after(*tried: str) -> list[str] | None:
        """The hosts the next try of a request may go to, after tries to `tried` (draw 0: the first
        priority with load)."""
        return pick_hosts(p, None, lambda: 0.0, excluded=retry_priorities(p, tried, None))
    # the first try and the first retry: the unmodified load, all local
    assert after() == ["a1", "a2"] and after("a1") == ["a1", "a2"]
    # the third try leaves the priority of the first two; the fourth keeps that (no update)
    assert after("a1", "a2") == ["b1", "b2"] and after("a1", "a2", "b1") == ["b1", "b2"]
    # the fifth leaves the priorities of the first four
    assert after("a1", "a2", "b1", "b2") == ["d1", "d2"]
    assert retry_priorities(p, ("a1", "b1"), None) == {0, 1}
    assert after("a1", "b1") == ["d1", "d2"]
    # a host no longer in the plan counts for no priority
    assert retry_priorities(p, ("gone", "a1"), None) == {0}
    # every priority tried: Envoy resets to the unmodified load and forgets the tries so far, so
    # the next exclusion comes two tries later and counts only those two
    assert retry_priorities(p, ("a1", "b1", "d1", "d2"), None) == frozenset()
    assert after("a1", "b1", "d1", "d2") == ["a1", "a2"]
    assert after("a1", "b1", "d1", "d2", "a1") == ["a1", "a2"]
    assert retry_priorities(p, ("a1", "b1", "d1", "d2", "a1", "a2"), None) == {0}
    # the priorities left have no healthy endpoint: a reset too (the unmodified load, which
    # spills by the priorities' health, here all of it to the local one)
    q = Plan((("a1", "a2"), ("b1",)))
    assert retry_priorities(q, ("a1", "a2"), lambda h: h != "b1") == frozenset()
    assert pick_hosts(q, lambda h: h != "b1", lambda: 0.99, excluded=frozenset({0})) == ["a1", "a2"]
    # `distribute` is one priority: nothing to leave
    d = Plan((("a1", "a2"), ("b1", "b2")), (80.0, 20.0))
    assert retry_priorities(d, ("a1", "a2", "a1"), None) == frozenset()


def test_retry_remote_localities_shares_the_load_left_by_health_and_panics_as_without() -> None:
    p = Plan((("a1", "a2"), ("b1", "b2"), ("c1", "c2", "c3", "c4", "c5")))
    ejected = {"b2", "c2", "c3", "c4", "c5"}        # P1 1.4 * 1/2 = 0.7, P2 1.4 * 1/5 = 0.28

    def healthy(h: str) -> bool:
        return h not in ejected
    assert pick_hosts(p, healthy, lambda: 0.99) == ["a1", "a2"]              # P0 healthy: all its load
    # without P0, 0.7 + 0.28 < 1 is normalised, as Envoy's load: 71.4% to P1, 28.6% to P2
    ex = retry_priorities(p, ("a1", "a2"), healthy)
    assert ex == {0}
    assert pick_hosts(p, healthy, lambda: 0.71, excluded=ex) == ["b1"]
    assert pick_hosts(p, healthy, lambda: 0.72, excluded=ex) == ["c1"]
    # panic (minHealthPercent) is decided on the unmodified availability: here 100% (P0 healthy),
    # so P2, 20% healthy < 50%, sends to its healthy endpoint only, as without the exclusion
    panics: list[int] = []
    assert pick_hosts(p, healthy, lambda: 0.9, 50, lambda: panics.append(1), excluded=ex) == ["c1"]
    assert not panics
    ejected.update({"a1", "a2"})                    # now the availability is below 100%: P2 panics
    assert pick_hosts(p, healthy, lambda: 0.9, 50, lambda: panics.append(1), excluded=ex) == [
        "c1", "c2", "c3", "c4", "c5"] and panics == [1]


def test_failover_from_to_regions_and_failover_priority_labels() -> None:
    # in us-east, fail over to eu-west before any other region
    hosts = ["a1", "d1", "x1"]
    pl = [(OWN, {}), ("eu-west/eu-west-1a/", {}), ("ap-south/ap-south-1a/", {})]
    p = plan(setting(outlier_detection=True, locality_failover=[["us-east", "eu-west"]]), OWN, {}, hosts, pl)
    assert p == Plan((("a1",), ("d1",), ("x1",)))
    p = plan(setting(outlier_detection=True, locality_failover=[["us-east", "ap-south"]]), OWN, {}, hosts, pl)
    assert p == Plan((("a1",), ("x1",), ("d1",)))
    # failoverPriority: the leading labels that agree with the waypoint's decide the priority
    keys = ("topology.istio.io/network", "topology.kubernetes.io/region")
    own = {"topology.istio.io/network": "n1"}
    assert label_priority(keys, {**own, "topology.kubernetes.io/region": "r"},
                          {"topology.istio.io/network": "n1", "topology.kubernetes.io/region": "r"}) == 0
    assert label_priority(keys, {**own, "topology.kubernetes.io/region": "r"},
                          {"topology.istio.io/network": "n2", "topology.kubernetes.io/region": "r"}) == 2
    assert label_priority(("version=v2",), {}, {"version": "v2"}) == 0      # key=value: the value given
    assert label_priority(("tier", "version"), {"version": "v1"}, {"version": "v1"}) == 0  # missing on both: equal
    labels = {"a1": {"tier": "gold"}, "b1": {"tier": "gold"}, "c1": {"tier": "silver"}, "d1": {"tier": "gold"}}
    hosts = ["a1", "b1", "c1", "d1"]
    p = plan(setting(outlier_detection=True, locality_failover_priority=["tier", "topology.kubernetes.io/region"]),
             OWN, {"tier": "gold"}, hosts, places(hosts, labels))
    assert p == Plan((("a1", "b1"), ("d1",), ("c1",)))      # gold+us-east, gold, then the rest


def test_distribute_splits_by_locality_weights_and_sends_nothing_elsewhere() -> None:
    s = setting(locality_distribute=[["us-east/us-east-1a/*", {"us-east/us-east-1a/*": 80, "eu-west/*": 20}]])
    assert s is not None                # applies without outlier detection
    p = plan(s, OWN, {}, HOSTS, places())
    assert p is not None
    rng = random.Random(3)
    got = Counter(h for _ in range(4000) for h in (pick_hosts(p, None, rng.random) or ())[:1])
    zone_a = got["a1"] + got["b1"]
    assert got["c1"] == 0 and got["c2"] == 0                    # us-east-1b: in no `to`
    assert 0.77 < zone_a / 4000 < 0.83 and 0.17 < got["d1"] / 4000 < 0.23
    # a rule whose `from` does not match the waypoint changes nothing
    assert plan(setting(locality_distribute=[["eu-west/*", {"us-east/*": 100}]]), OWN, {}, HOSTS, places()) is None
    assert matches(OWN, "us-east/*") and matches(OWN, "us-east") and not matches(OWN, "us-east/us-east-1b")


def test_the_cluster_fails_over_when_its_local_endpoints_are_ejected() -> None:
    clock = Clock()
    c = Cluster(ClusterKey("demo/web", 80), TrafficPolicy(outlier_detection=True, max_ejection_percent=100,
                                                          lb="ROUND_ROBIN"),
                clock, random.Random(1), "web", (OWN, {}))
    hosts = ["a1", "a2", "d1", "d2"]
    pl = places(hosts)
    assert {c.choose(hosts, places=pl) for _ in range(20)} == {"a1", "a2"}
    assert [(e["address"], e["priority"]) for e in c.dump()["endpoints"]] == [  # type: ignore[index]
        ("a1", 0), ("a2", 0), ("d1", 1), ("d2", 1)]                     # /clusters shows the priorities
    fail(c, "a1", 5)
    fail(c, "a2", 5)
    assert {c.choose(hosts, places=pl) for _ in range(20)} == {"d1", "d2"}
    clock.t += 31.0                     # back from ejection: back home
    assert {c.choose(hosts, places=pl) for _ in range(20)} == {"a1", "a2"}
    plain = Cluster(ClusterKey("demo/web", 80), TrafficPolicy(lb="ROUND_ROBIN"), clock, random.Random(1), "web",
                    (OWN, {}))
    assert plain.locality is None       # no outlier detection: balanced over all, as before
    assert {plain.choose(hosts, places=pl) for _ in range(20)} == set(hosts)


def test_the_cluster_draws_a_retry_without_the_priorities_tried_unless_it_hashes() -> None:
    hosts = ["a1", "a2", "d1", "d2"]
    pl = places(hosts)
    policy = TrafficPolicy(outlier_detection=True, lb="ROUND_ROBIN")
    c = Cluster(ClusterKey("demo/web", 80), policy, Clock(), random.Random(1), "web", (OWN, {}))
    assert {c.choose(hosts, places=pl, tried=("a1",)) for _ in range(10)} == {"a1", "a2"}
    assert {c.choose(hosts, places=pl, tried=("a1", "a2")) for _ in range(10)} == {"d1", "d2"}
    # consistent hashing: Envoy's ring hash and Maglev balancers never consult the retry priority
    hashed = dataclasses.replace(policy, lb="CONSISTENT_HASH", hash_header="x-user")
    h = Cluster(ClusterKey("demo/web", 80), hashed, Clock(), random.Random(1), "web", (OWN, {}))
    assert {h.choose(hosts, places=pl, tried=("a1", "a2")) for _ in range(10)} <= {"a1", "a2"}


def test_the_waypoint_prefers_endpoints_in_its_own_zone_from_its_own_workload() -> None:
    zone = {"uid-v1": "r1/z1/", "uid-v2": "r1/z2/", "uid-v2b": "r1/z2/"}
    me = Workload(uid="uid-wp", name="waypoint-0", namespace="default", ips=["10.0.3.1"], node="node2",
                  service_account="waypoint", identity="", locality="r1/z2/")
    policy = TrafficPolicy(outlier_detection=True)
    p = proxy(routes=(WaypointRoutes(hostname=SVC.hostname, namespace="default", service="default/myapp",
                                     waypoint="default/waypoint", policy=policy),))
    wls = [dataclasses.replace(w, locality=zone[w.uid]) for w in (V1, V2, V2B)] + [me]
    p.config.apply(ConfigUpdate(Workload.TYPE, "2", {}, frozenset(), {w.uid: w for w in wls}))
    p.config.apply(ConfigUpdate(Service.TYPE, "2", {}, frozenset(), {SVC.resource_name: SVC}))
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert down is not None
    fwd = Forward("default/myapp", 80, "", SVC.hostname)
    got = Counter(t.address for t in (p.upstream(fwd, RequestHead("GET", "/", "myapp"), down) for _ in range(30))
                  if t is not None)
    assert set(got) == {"10.0.1.2:8080", "10.0.1.3:8080"}     # v2 and v2b run in the waypoint's zone
    # v1's node is relabelled into the waypoint's zone (the Service and its endpoints unchanged),
    # after other workload updates: the plan follows the endpoints' localities, not only their set
    for version, z in (("3", "r1/z1/"), ("4", "r1/z1/"), ("5", "r1/z2/")):
        zone["uid-v1"] = z
        wls = [dataclasses.replace(w, locality=zone[w.uid]) for w in (V1, V2, V2B)] + [me]
        p.config.apply(ConfigUpdate(Workload.TYPE, version, {}, frozenset(), {w.uid: w for w in wls}))
        got = Counter(t.address for t in (p.upstream(fwd, RequestHead("GET", "/", "myapp"), down)
                                          for _ in range(60)) if t is not None)
    assert set(got) == {"10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"}
