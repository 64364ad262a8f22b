"""A Service's traffic distribution at ztunnel (trafficDistribution: PreferClose / PreferSameZone /
PreferSameNode), from a real MeshState through `decide`: as Istio's ztunnel, a client reaches only
the ready endpoints that share the most of its region, zone (subzone, node), and spills over a
whole scope at a time when none is left closer."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ambit.configclient import ConfigUpdate
from ambit.model import Endpoint, Service, ServicePort, Workload
from tests.unit.ztunnel.meshcfg import config, svc, wl
from ztunnel import distribution
from ztunnel.routing import REFUSE, RoundRobin, decide

VIP = "10.96.0.40"


def placed(name: str, ip: str, node: str, locality: str) -> Workload:
    return replace(wl(name, ip, node=node), locality=locality)


CLIENT = placed("client", "10.210.1.5", "node1", "r1/za/s1")
SAME_NODE = placed("same-node", "10.210.1.10", "node1", "r1/za/s1")
SAME_ZONE = placed("same-zone", "10.210.3.10", "node3", "r1/za/s2")
SAME_REGION = placed("same-region", "10.210.2.10", "node2", "r1/zb/s1")
FAR = placed("far", "10.210.4.10", "node4", "r2/zc/s1")
ALL = [SAME_NODE, SAME_ZONE, SAME_REGION, FAR]


def targets(service: Service, workloads: list[Workload], client: Workload = CLIENT, n: int = 8) -> set[str]:
    cfg = config([client, *workloads], [service])
    lb = RoundRobin()
    out = set()
    for _ in range(n):
        r = decide(cfg, VIP, 80, lb, client.namespace, client.node, client.uid)
        assert r.kind != REFUSE, r.reason
        out.add(r.workload.name)
    return out


def service(distribution_: str, ready: dict[str, bool] | None = None, endpoints: list[Workload] = ALL) -> Service:
    s = svc("near", VIP, endpoints, ready=ready)
    s.traffic_distribution = distribution_
    return s


def test_prefer_same_zone_keeps_a_client_in_its_zone_and_spreads_over_the_zone() -> None:
    assert targets(service("PreferSameZone"), ALL) == {"same-node", "same-zone"}
    assert targets(service(""), ALL) == {"same-node", "same-zone", "same-region", "far"}, \
        "without a preference every ready endpoint is balanced over"


def test_prefer_same_zone_spills_to_the_region_then_anywhere_as_endpoints_become_unready() -> None:
    down = {"same-node": False, "same-zone": False}
    assert targets(service("PreferSameZone", down), ALL) == {"same-region"}
    assert targets(service("PreferSameZone", {**down, "same-region": False}), ALL) == {"far"}


def test_prefer_same_node_prefers_the_node_then_subzone_zone_region() -> None:
    assert targets(service("PreferSameNode"), ALL) == {"same-node"}
    assert targets(service("PreferSameNode", {"same-node": False}), ALL) == {"same-zone"}
    other_subzone_same_node = placed("odd", "10.210.1.11", "node1", "r1/za/s9")
    # the node scope comes after subzone: a pod on the client's node in another subzone (a pod's own
    # istio-locality label) ranks below a pod of the client's subzone on another node
    same_subzone = placed("same-subzone", "10.210.3.11", "node3", "r1/za/s1")
    pods = [SAME_NODE, other_subzone_same_node, same_subzone]
    assert targets(service("PreferSameNode", {"same-node": False}, pods), pods) == {"same-subzone"}


def test_without_topology_labels_prefer_same_node_still_prefers_the_clients_node() -> None:
    bare = [replace(w, locality="") for w in ALL]
    client = replace(CLIENT, locality="")
    assert targets(service("PreferSameNode", endpoints=bare), bare, client) == {"same-node"}
    assert targets(service("PreferSameZone", endpoints=bare), bare, client) == {w.name for w in bare}


def test_internal_traffic_policy_local_takes_precedence() -> None:
    s = service("PreferSameZone")
    s.node_local = True
    assert targets(s, ALL) == {"same-node"}


def test_the_cache_follows_config_updates() -> None:
    """The closest endpoints are cached per view: an update that makes the zone unready moves the
    client's next connection on at once."""
    cfg = config([CLIENT, *ALL], [service("PreferSameZone")])
    lb = RoundRobin()
    first = {decide(cfg, VIP, 80, lb, "demo", "node1", CLIENT.uid).workload.name for _ in range(4)}
    assert first == {"same-node", "same-zone"}
    s = service("PreferSameZone", {"same-node": False, "same-zone": False})
    state = {s.resource_name: s}
    cfg.apply(ConfigUpdate(Service.TYPE, "v2", state, frozenset(), state))
    assert {decide(cfg, VIP, 80, lb, "demo", "node1", CLIENT.uid).workload.name for _ in range(4)} == {"same-region"}


def test_a_service_entry_with_the_annotation_prefers_close_mesh_endpoints() -> None:
    entry = Service(name="db.internal", namespace="demo", hostname="db.internal", vips=["240.0.0.9"],
                    ports=[ServicePort(5432, 5432, "tcp")], kind="ServiceEntry", location="MESH_INTERNAL",
                    resolution="STATIC", traffic_distribution="PreferSameZone",
                    endpoints=[Endpoint("", w.ips[0]) for w in ALL])
    cfg = config([CLIENT, *ALL], [entry])
    lb = RoundRobin()
    got = {decide(cfg, "240.0.0.9", 5432, lb, "demo", "node1", CLIENT.uid).target[0] for _ in range(8)}
    assert got == {SAME_NODE.ips[0], SAME_ZONE.ips[0]}


@pytest.mark.parametrize("client, endpoint, scopes, want", [
    (("r1", "za", "s1", "n1"), ("r1", "za", "s1", "n1"), 4, 4),
    (("r1", "za", "s1", "n1"), ("r1", "zb", "s1", "n1"), 4, 1),
    (("r1", "za", "s1", "n1"), ("r2", "za", "s1", "n1"), 2, 0),
    (("r1", "za", "s1", "n1"), ("r1", "za", "s2", "n2"), 2, 2),
])
def test_rank_counts_the_leading_scopes_shared(client, endpoint, scopes, want) -> None:
    assert distribution.rank(client, endpoint, scopes) == want


def test_a_service_entry_endpoints_own_locality_ranks_it() -> None:
    """Endpoints that are no pods (a ServiceEntry's VMs or external hosts) are ranked by their own
    `locality` (Istio's WorkloadEntry field)."""
    entry = Service(name="db.vm", namespace="demo", hostname="db.vm", vips=["240.0.0.10"],
                    ports=[ServicePort(5432, 5432, "tcp")], kind="ServiceEntry", location="MESH_EXTERNAL",
                    resolution="STATIC", traffic_distribution="PreferSameZone",
                    endpoints=[Endpoint("", "192.0.2.1", locality="r2/zc"), Endpoint("", "192.0.2.2", locality="r1/za"),
                               Endpoint("", "192.0.2.3", locality="r1/zb"), Endpoint("", "192.0.2.4")])
    cfg = config([CLIENT], [entry])
    lb = RoundRobin()
    assert {decide(cfg, "240.0.0.10", 5432, lb, "demo", "node1", CLIENT.uid).target[0] for _ in range(6)} == \
        {"192.0.2.2"}
