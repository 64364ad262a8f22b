"""A Service's `trafficDistribution` at the waypoint, as Istio configures Envoy for it
(istio/istio pilot/pkg/networking/core/loadbalancer/loadbalancer.go `GetEffectiveLbSetting`,
pilot/pkg/model/service.go `ForcesSupportUnhealthyEndpoints`, cluster_traffic_policy.go):

- PreferSameZone (PreferClose) is a `failoverPriority` [region, zone], PreferSameNode [region, zone,
  subzone, node], forced on without outlier detection;
- the Service's UNREADY endpoints go to Envoy as unhealthy hosts: they count in their priority's
  total (a zone with 1 ready endpoint of 4 keeps 1.4 x 1/4 = 35% of the traffic), never get any;
- panic is off for such a Service, `minHealthPercent` or not;
- a DestinationRule `localityLbSetting` overrides the priorities (`enabled: false`: none at all).

Before, the field was read by no component: the waypoint spread over every ready endpoint. The
pure plan first, then the cluster, then the waypoint's own path (its Workload's zone and node,
the View's endpoints, `upstream`); on the wire: test_traffic_distribution_wire.py."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from ambit.configclient import ConfigUpdate
from ambit.model import Endpoint, Service, ServicePort, TrafficPolicy, WaypointRoutes, Workload
from tests.unit.waypoint.traffic.test_cluster import Clock, fail
from waypoint.app import WaypointProxy, _choose_among
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.request import Forward, RequestHead
from waypoint.settings import load
from waypoint.traffic.cluster import Cluster, ClusterKey
from waypoint.traffic.locality import HOSTNAME_LABEL, PREFER, Plan, Setting, health, pick_hosts, plan

HOST = "web.demo.svc.cluster.local"
VIP = "10.96.0.20"
OWN_ZONE, OTHER_ZONE, OTHER_REGION = "r1/z1/", "r1/z2/", "r2/z1/"
# name -> (locality, node): four endpoints in the waypoint's zone (a1 on its node), two in another
# zone of its region, one in another region
PODS = {"a1": (OWN_ZONE, "n1"), "a2": (OWN_ZONE, "n2"), "a3": (OWN_ZONE, "n2"), "a4": (OWN_ZONE, "n3"),
        "b1": (OTHER_ZONE, "n4"), "b2": (OTHER_ZONE, "n5"), "c1": (OTHER_REGION, "n6")}
IP = {n: f"10.0.1.{i + 1}" for i, n in enumerate(PODS)}
NAME = {f"{ip}:8080": n for n, ip in IP.items()}


def _apply(cfg: WaypointConfig, t: str, items: dict[str, object], version: str = "1") -> None:
    cfg.apply(ConfigUpdate(t, version, {}, frozenset(), items))


def service(distribution: str, unready: frozenset[str] = frozenset()) -> Service:
    return Service(name="web", namespace="demo", hostname=HOST, vips=[VIP], ports=[ServicePort(80, 8080, "http", "HTTP")],
                   endpoints=[Endpoint(f"uid-{n}", IP[n], ready=n not in unready) for n in PODS],
                   waypoint="default/waypoint", traffic_distribution=distribution)


def waypoint(distribution: str, policy: TrafficPolicy | None = None,
             unready: frozenset[str] = frozenset()) -> WaypointProxy:
    """A waypoint in OWN_ZONE on node n1, in front of `web` (its endpoints `unready` not ready)."""
    s = load(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "n1"])
    cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
    pods = [Workload(uid=f"uid-{n}", name=f"web-{n}", namespace="demo", ips=[IP[n]], node=node,
                     service_account="web", identity="spiffe://cluster.local/ns/demo/sa/web", locality=loc)
            for n, (loc, node) in PODS.items()]
    pods.append(Workload(uid="uid-wp", name="waypoint-0", namespace="default", ips=["10.0.3.1"], node="n1",
                         service_account="waypoint", identity="", locality=OWN_ZONE))
    _apply(cfg, Workload.TYPE, {w.uid: w for w in pods})
    svc = service(distribution, unready)
    _apply(cfg, Service.TYPE, {svc.resource_name: svc})
    if policy is not None:
        wr = WaypointRoutes(hostname=HOST, namespace="demo", service="demo/web", waypoint="default/waypoint",
                            policy=policy)
        _apply(cfg, WaypointRoutes.TYPE, {wr.resource_name: wr})
    return WaypointProxy(s, cfg, None, rng=random.Random(5))


def spread(p: WaypointProxy, n: int = 200) -> Counter[str]:
    """Where `n` requests to the Service go (endpoint names)."""
    down, why = p.downstream("spiffe://cluster.local/ns/default/sa/frontend", "10.0.2.5", f"{VIP}:80")
    assert down is not None, why
    fwd = Forward("demo/web", 80, "", HOST)
    got: Counter[str] = Counter()
    for _ in range(n):
        t = p.upstream(fwd, RequestHead("GET", "/", HOST), down)
        got[NAME[t.address] if t is not None else "503"] += 1
    return got


def zone_a(got: Counter[str]) -> int:
    return sum(v for k, v in got.items() if k.startswith("a"))


# --- the pure plan ----------------------------------------------------------------------------


def test_the_setting_is_istios_failover_priority_forced_without_outlier_detection() -> None:
    zone = Setting.of(TrafficPolicy(), "PreferSameZone")
    assert zone is not None and zone.forced and not zone.outlier_detection
    assert zone.failover_priority == ("topology.kubernetes.io/region", "topology.kubernetes.io/zone")
    assert Setting.of(TrafficPolicy(), "PreferClose") == zone
    assert PREFER["PreferSameNode"][-1] == HOSTNAME_LABEL == "kubernetes.io/hostname"
    # the DestinationRule's own localityLbSetting wins (no outlier detection: no failover at all)
    assert Setting.of(TrafficPolicy(locality_set=True), "PreferSameZone") is None
    assert Setting.of(TrafficPolicy(locality_set=True, locality_disabled=True, outlier_detection=True),
                      "PreferSameZone") is None
    assert Setting.of(TrafficPolicy(), "") is None
    hosts = ["a1", "b1", "c1"]
    places = [(OWN_ZONE, {}), (OTHER_ZONE, {}), (OTHER_REGION, {})]
    assert plan(zone, OWN_ZONE, {}, hosts, places) == Plan((("a1",), ("b1",), ("c1",)))


def test_unready_endpoints_count_in_their_priority_and_never_get_traffic() -> None:
    zone = Setting.of(TrafficPolicy(), "PreferSameZone")
    assert zone is not None
    p = plan(zone, OWN_ZONE, {}, ["a1", "b1"], [(OWN_ZONE, {}), (OTHER_ZONE, {})],
             [(a, (OWN_ZONE, {})) for a in ("a2", "a3", "a4")])
    assert p == Plan((("a1", "a2", "a3", "a4"), ("b1",)), unready=frozenset({"a2", "a3", "a4"}))
    ok = health(p.unready, None)
    rng = random.Random(11)
    got = Counter(tuple(pick_hosts(p, ok, rng.random) or ()) for _ in range(4000))
    assert set(got) == {("a1",), ("b1",)}               # never an unready endpoint
    assert 0.32 < got[("a1",)] / 4000 < 0.38            # 1.4 x 1/4 = 35% stays in the zone
    # all of the zone unready: all of it to the next priority
    p = plan(zone, OWN_ZONE, {}, ["b1"], [(OTHER_ZONE, {})], [(a, (OWN_ZONE, {})) for a in ("a1", "a2")])
    assert p is not None and pick_hosts(p, health(p.unready, None), lambda: 0.0) == ["b1"]


# --- the cluster ------------------------------------------------------------------------------


def test_panic_is_off_for_a_service_with_traffic_distribution_whatever_min_health_percent() -> None:
    policy = TrafficPolicy(outlier_detection=True, min_health_percent=50, max_ejection_percent=100, lb="ROUND_ROBIN")
    hosts = ["a1", "a2", "a3", "a4", "b1"]
    places = [(OWN_ZONE, {})] * 4 + [(OTHER_ZONE, {})]
    with_it = Cluster(ClusterKey("demo/web", 80), policy, Clock(), random.Random(1), "web", (OWN_ZONE, {}),
                      "PreferSameZone")
    without = Cluster(ClusterKey("demo/web", 80), policy, Clock(), random.Random(1), "web", (OWN_ZONE, {}))
    for c in (with_it, without):
        c.choose(hosts, places=places)
        for h in ("a1", "a2", "a3", "b1"):
            fail(c, h, 5)
    # 1 healthy of 5: below 50%, so Envoy panics (to ejected endpoints too), unless the Service has
    # trafficDistribution, where Istio sets the threshold to 0
    assert {with_it.choose(hosts, places=places) for _ in range(30)} == {"a4"}
    assert {without.choose(hosts, places=places) for _ in range(30)} > {"a4"}
    assert with_it.stats()["lb_healthy_panic"] == 0


def test_retry_remote_localities_leaves_the_zone_without_outlier_detection_too() -> None:
    c = Cluster(ClusterKey("demo/web", 80), TrafficPolicy(lb="ROUND_ROBIN"), Clock(), random.Random(1), "web",
                (OWN_ZONE, {}), "PreferSameZone")
    hosts = ["a1", "a2", "b1"]
    places = [(OWN_ZONE, {}), (OWN_ZONE, {}), (OTHER_ZONE, {})]
    assert {c.choose(hosts, places=places, tried=("a1",)) for _ in range(20)} == {"a1", "a2"}
    # the third try of a route with retryRemoteLocalities leaves the priority of the first two
    assert {c.choose(hosts, places=places, tried=("a1", "a2")) for _ in range(20)} == {"b1"}


def test_the_cluster_dump_shows_unready_endpoints_with_their_priority() -> None:
    p = waypoint("PreferSameZone", unready=frozenset({"a2", "b2"}))
    spread(p, 1)
    (c,) = p.current_clusters().dump()
    eps = {NAME[e["address"]]: e for e in c["endpoints"]}                      # type: ignore[index, union-attr]
    assert {n: (e.get("priority"), e.get("ready", True)) for n, e in eps.items()} == {
        "a1": (0, True), "a2": (0, False), "a3": (0, True), "a4": (0, True),
        "b1": (1, True), "b2": (1, False), "c1": (2, True)}
    assert c["stats"]["membership_total"] == 7 and c["stats"]["membership_healthy"] == 5  # type: ignore[index]


# --- the waypoint: its own zone and node, the View's endpoints -----------------------------------


def test_prefer_same_zone_keeps_requests_in_the_waypoints_zone_without_outlier_detection() -> None:
    for value in ("PreferSameZone", "PreferClose"):
        got = spread(waypoint(value))
        assert set(got) == {"a1", "a2", "a3", "a4"}, value
    # the same Service without it: every ready endpoint (as before)
    assert set(spread(waypoint(""))) == set(PODS)


def test_opaque_connections_are_balanced_by_the_same_priorities() -> None:
    p = waypoint("PreferSameZone", unready=frozenset({"a2", "a3", "a4"}))
    v = p.config.view
    cluster = p.cluster("demo/web", 80, "", HOST)
    got: Counter[str] = Counter()
    for _ in range(2000):
        pick = _choose_among(v, v.services["demo/web"], 80, None, cluster)
        got[NAME[pick.address] if pick is not None else "none"] += 1
    assert set(got) == {"a1", "b1", "b2"} and 0.30 < got["a1"] / 2000 < 0.40


def entry_spread(p: WaypointProxy, entry: Service, n: int = 100) -> Counter[str]:
    """Where `n` requests to ServiceEntry `entry` (added to the waypoint's config) go."""
    _apply(p.config, Service.TYPE, {**p.config.view.services, entry.resource_name: entry}, "2")
    down, why = p.downstream("spiffe://cluster.local/ns/default/sa/frontend", "10.0.2.5", f"{entry.vips[0]}:80")
    assert down is not None, why
    fwd = Forward(entry.resource_name, 80, "", entry.hostname)
    return Counter(t.address if t is not None else "503"
                   for t in (p.upstream(fwd, RequestHead("GET", "/", entry.hostname), down) for _ in range(n)))


def test_service_entry_addresses_have_no_locality_and_are_balanced_as_before() -> None:
    p = waypoint("PreferSameZone")
    entry = Service(name="ext.example.com", namespace="demo", hostname="ext.example.com", vips=["240.0.0.9"],
                    ports=[ServicePort(80, 80, "http", "HTTP")], kind="ServiceEntry", resolution="STATIC",
                    location="MESH_INTERNAL", waypoint="default/waypoint", traffic_distribution="PreferSameZone",
                    endpoints=[Endpoint("", "192.0.2.1"), Endpoint("", "192.0.2.2"),
                               Endpoint("", "192.0.2.3", ready=False)])
    assert set(entry_spread(p, entry)) == {"192.0.2.1:80", "192.0.2.2:80"}
    # and the Service's own endpoints still prefer the zone
    assert set(spread(p)) == {"a1", "a2", "a3", "a4"}


def test_service_entry_endpoints_with_their_own_locality_are_prioritised_by_it() -> None:
    """A ServiceEntry endpoint's `locality` (Istio's WorkloadEntry field) places it: the one in the
    waypoint's zone gets the requests while it is ready."""
    p = waypoint("PreferSameZone")
    entry = Service(name="vm.example.com", namespace="demo", hostname="vm.example.com", vips=["240.0.0.10"],
                    ports=[ServicePort(80, 80, "http", "HTTP")], kind="ServiceEntry", resolution="STATIC",
                    location="MESH_EXTERNAL", waypoint="default/waypoint", traffic_distribution="PreferSameZone",
                    endpoints=[Endpoint("", "192.0.2.1", locality="r2/z1"), Endpoint("", "192.0.2.2", locality="r1/z1"),
                               Endpoint("", "192.0.2.3", locality="r1/z2")])
    assert set(entry_spread(p, entry)) == {"192.0.2.2:80"}


def test_a_zone_whose_endpoints_are_all_unready_fails_over_to_its_region_then_beyond() -> None:
    got = spread(waypoint("PreferSameZone", unready=frozenset({"a1", "a2", "a3", "a4"})))
    assert set(got) == {"b1", "b2"}
    got = spread(waypoint("PreferSameZone", unready=frozenset({"a1", "a2", "a3", "a4", "b1", "b2"})))
    assert set(got) == {"c1"}


def test_one_ready_endpoint_of_four_in_the_zone_keeps_35_percent_and_spills_the_rest() -> None:
    got = spread(waypoint("PreferSameZone", unready=frozenset({"a2", "a3", "a4"})), 2000)
    assert set(got) == {"a1", "b1", "b2"}               # unready never, the other region never
    assert 0.30 < got["a1"] / 2000 < 0.40               # 1.4 x 1/4, not 100% on the last ready pod
    # with outlier detection too, an ejected endpoint counts as unhealthy on top of the unready ones
    p = waypoint("PreferSameZone", TrafficPolicy(outlier_detection=True, max_ejection_percent=100),
                 frozenset({"a3", "a4"}))
    spread(p, 1)
    cluster = next(iter(p.current_clusters()))
    fail(cluster, "10.0.1.2:8080", 5)                 # a2 ejected: 1 healthy of 4 in the zone
    got = spread(p, 2000)
    assert set(got) == {"a1", "b1", "b2"} and 0.30 < got["a1"] / 2000 < 0.40


def test_prefer_same_node_prefers_the_waypoints_own_node_then_its_zone() -> None:
    assert set(spread(waypoint("PreferSameNode"))) == {"a1"}       # a1 runs on n1, as the waypoint
    assert set(spread(waypoint("PreferSameNode", unready=frozenset({"a1"})))) == {"a2", "a3", "a4"}
    assert set(spread(waypoint("PreferSameZone"))) == {"a1", "a2", "a3", "a4"}


def test_a_destination_rule_locality_setting_overrides_the_services_distribution() -> None:
    assert set(spread(waypoint("PreferSameNode"))) == {"a1"}
    # localityLbSetting set without outlier detection: Istio applies no failover at all
    assert set(spread(waypoint("PreferSameNode", TrafficPolicy(locality_set=True)))) == set(PODS)
    # with outlier detection: the rule's (default) locality failover, by zone and subzone, not by node;
    # the Service's unready endpoints still count as unhealthy (Istio sends them whatever the rule)
    policy = TrafficPolicy(locality_set=True, outlier_detection=True)
    assert set(spread(waypoint("PreferSameNode", policy))) == {"a1", "a2", "a3", "a4"}
    got = spread(waypoint("PreferSameNode", policy, frozenset({"a2", "a3", "a4"})), 2000)
    assert set(got) == {"a1", "b1", "b2"} and 0.30 < got["a1"] / 2000 < 0.40


def test_a_rules_failover_priority_on_the_node_label_compares_nodes_as_istio() -> None:
    # Istio adds kubernetes.io/hostname (the node) to every proxy's and endpoint's labels; before,
    # pods carry no such label, so the key matched everywhere and prioritised nothing
    policy = TrafficPolicy(outlier_detection=True, locality_set=True, locality_failover_priority=[HOSTNAME_LABEL])
    assert set(spread(waypoint("", policy))) == {"a1"}


def test_locality_enabled_false_turns_the_services_distribution_off() -> None:
    assert set(spread(waypoint("PreferSameZone", TrafficPolicy()))) == {"a1", "a2", "a3", "a4"}
    off = TrafficPolicy(locality_set=True, locality_disabled=True)
    assert set(spread(waypoint("PreferSameZone", off))) == set(PODS)
    assert set(spread(waypoint("PreferSameZone", dataclasses.replace(off, outlier_detection=True)))) == set(PODS)


def test_the_cluster_follows_the_service_gaining_and_losing_its_distribution() -> None:
    p = waypoint("", unready=frozenset({"a2"}))
    assert set(spread(p)) == set(PODS) - {"a2"}
    (c,) = p.current_clusters().dump()
    assert len(c["endpoints"]) == 6 and c["stats"]["membership_total"] == 6   # type: ignore[arg-type, index]
    for version, value in (("2", "PreferSameZone"), ("3", "")):
        svc = service(value, frozenset({"a2"}))
        _apply(p.config, Service.TYPE, {svc.resource_name: svc}, version)
        want = {"a1", "a3", "a4"} if value else set(PODS) - {"a2"}
        assert set(spread(p)) == want, value
