"""The outbound route decision, from a real MeshState, without sockets."""

from __future__ import annotations

import pytest

from ambit.model import Endpoint, ServicePort
from tests.unit.ztunnel.meshcfg import config, svc, wl
from ztunnel import routing
from ztunnel.routing import HBONE, PASSTHROUGH, REFUSE, RoundRobin, decide

V1, V2, LEGACY = wl("echo-v1", "10.210.1.10", sa="echo"), wl("echo-v2", "10.210.2.10", sa="echo", node="node2"), \
    wl("web", "10.210.2.20", ns="legacy", enrolled=False)


def test_a_mesh_pod_is_reached_over_hbone_to_15008_with_the_real_port_as_authority() -> None:
    r = decide(config([V1, V2]), "10.210.2.10", 8080)
    assert (r.kind, r.dial, r.authority) == (HBONE, ("10.210.2.10", 15008), "10.210.2.10:8080")
    assert r.identity == "spiffe://cluster.local/ns/demo/sa/echo" and r.workload.name == "echo-v2"


def test_a_non_mesh_pod_and_an_unknown_address_pass_through_unchanged() -> None:
    cfg = config([V1, LEGACY])
    r = decide(cfg, "10.210.2.20", 80)
    assert (r.kind, r.dial, r.identity) == (PASSTHROUGH, ("10.210.2.20", 80), "")
    assert r.workload.name == "web", "a known non-mesh workload is still named in logs"
    r = decide(cfg, "192.0.2.7", 443)
    assert (r.kind, r.dial, r.workload) == (PASSTHROUGH, ("192.0.2.7", 443), None)


def test_a_vip_picks_endpoints_round_robin_and_maps_the_service_port_to_the_target_port() -> None:
    cfg = config([V1, V2], [svc("echo", "10.96.0.10", [V1, V2], port=80, target=8080)])
    lb = RoundRobin()
    routes = [decide(cfg, "10.96.0.10", 80, lb) for _ in range(4)]
    assert [r.target for r in routes] == [("10.210.1.10", 8080), ("10.210.2.10", 8080)] * 2
    assert all(r.kind == HBONE and r.service.name == "echo" and r.dial[1] == 15008 for r in routes)


def test_only_ready_endpoints_are_picked_and_none_ready_is_a_refusal_naming_the_service() -> None:
    cfg = config([V1, V2], [svc("echo", "10.96.0.10", [V1, V2], ready={"echo-v1": False})])
    lb = RoundRobin()
    assert {decide(cfg, "10.96.0.10", 80, lb).target[0] for _ in range(4)} == {"10.210.2.10"}
    cfg = config([V1], [svc("echo", "10.96.0.10", [V1], ready={"echo-v1": False})])
    r = decide(cfg, "10.96.0.10", 80)
    assert r.kind == REFUSE and r.dial is None
    assert "demo/echo" in r.reason and "no ready endpoint" in r.reason


def test_a_port_the_service_does_not_expose_is_not_load_balanced() -> None:
    cfg = config([V1], [svc("echo", "10.96.0.10", [V1], port=80)])
    r = decide(cfg, "10.96.0.10", 81)
    assert (r.kind, r.dial, r.service) == (PASSTHROUGH, ("10.96.0.10", 81), None)


def test_a_vip_with_non_mesh_endpoints_passes_through_to_the_endpoint() -> None:
    cfg = config([LEGACY], [svc("web", "10.96.0.20", [LEGACY], ns="legacy")])
    r = decide(cfg, "10.96.0.20", 80)
    assert (r.kind, r.dial) == (PASSTHROUGH, ("10.210.2.20", 8080))


def test_named_target_ports_use_each_endpoints_own_resolution() -> None:
    s = svc("echo", "10.96.0.10", [V1, V2])
    s.ports = [ServicePort(80, 0, "http", target_port_name="http")]
    s.endpoints = [Endpoint(V1.uid, "10.210.1.10", ports=[ServicePort(80, 9001, "http")]),
                   Endpoint(V2.uid, "10.210.2.10", ports=[ServicePort(80, 9002, "http")])]
    lb = RoundRobin()
    assert [decide(config([V1, V2], [s]), "10.96.0.10", 80, lb).target for _ in range(2)] == \
        [("10.210.1.10", 9001), ("10.210.2.10", 9002)]


WP = wl("wp-0", "10.210.1.200", sa="wp", labels={"gateway.networking.k8s.io/gateway-name": "wp"})


def test_a_service_using_a_waypoint_is_routed_to_a_waypoint_pod_with_the_vip_as_authority() -> None:
    cfg = config([V1, WP], [svc("echo", "10.96.0.10", [V1], waypoint="demo/wp")])
    r = decide(cfg, "10.96.0.10", 80)
    assert (r.kind, r.dial, r.target, r.authority) == (HBONE, ("10.210.1.200", 15008), ("10.96.0.10", 80),
                                                       "10.96.0.10:80")
    assert r.identity == "spiffe://cluster.local/ns/demo/sa/wp" and r.waypoint == "demo/wp"
    assert r.service.name == "echo" and r.workload.name == "wp-0"


def test_a_workload_using_a_waypoint_is_routed_to_it_with_its_own_address_as_authority() -> None:
    v1 = wl("echo-v1", "10.210.1.10", sa="echo")
    v1.waypoint = "demo/wp"
    r = decide(config([v1, WP]), "10.210.1.10", 8080)
    assert (r.kind, r.dial, r.authority, r.identity) == (HBONE, ("10.210.1.200", 15008), "10.210.1.10:8080",
                                                         "spiffe://cluster.local/ns/demo/sa/wp")


def test_a_waypoint_without_pods_refuses_rather_than_bypass_it() -> None:
    r = decide(config([V1], [svc("echo", "10.96.0.10", [V1], waypoint="demo/wp")]), "10.96.0.10", 80)
    assert r.kind == REFUSE and "waypoint demo/wp, which has no pod" in r.reason


def test_waypoint_pods_round_robin() -> None:
    wp1 = wl("wp-1", "10.210.2.200", sa="wp", labels={"gateway.networking.k8s.io/gateway-name": "wp"})
    cfg = config([V1, WP, wp1], [svc("echo", "10.96.0.10", [V1], waypoint="demo/wp")])
    lb = RoundRobin()
    assert {decide(cfg, "10.96.0.10", 80, lb).dial[0] for _ in range(4)} == {"10.210.1.200", "10.210.2.200"}


def test_a_waypoint_pod_not_ready_yet_gets_no_tunnel_while_another_is_ready() -> None:
    # A rolling update of the waypoint's Deployment: the new pod runs (a workload) but its probe has
    # not passed, so its Service's endpoint is not ready: every tunnel goes to the ready pod. Once
    # no pod is ready (or the Service is not known), every pod is a candidate again.
    new = wl("wp-1", "10.210.2.200", sa="wp", labels={"gateway.networking.k8s.io/gateway-name": "wp"})
    echo = svc("echo", "10.96.0.10", [V1], waypoint="demo/wp")
    for own in (svc("wp", "10.96.0.200", [WP, new], port=15008, target=15008, ready={"wp-1": False}),
                svc("wp", "10.96.0.200", [WP, new], port=15008, target=15008, ready={"wp-1": False}, by_ip=True)):
        lb = RoundRobin()
        cfg = config([V1, WP, new], [echo, own])
        assert {decide(cfg, "10.96.0.10", 80, lb).dial[0] for _ in range(4)} == {"10.210.1.200"}
    none_ready = svc("wp", "10.96.0.200", [WP, new], port=15008, target=15008, ready={"wp-0": False, "wp-1": False})
    for services in ([echo, none_ready], [echo]):
        lb = RoundRobin()
        assert {decide(config([V1, WP, new], services), "10.96.0.10", 80, lb).dial[0]
                for _ in range(4)} == {"10.210.1.200", "10.210.2.200"}


def test_an_endpoint_is_matched_to_its_workload_by_ip_when_the_uid_is_unknown() -> None:
    s = svc("echo", "10.96.0.10", [V1])
    s.endpoints = [Endpoint("", "10.210.1.10")]
    assert decide(config([V1], [s]), "10.96.0.10", 80).identity == V1.identity


@pytest.mark.parametrize("value, want", [("10.1.2.3:80", ("10.1.2.3", 80)), ("[fd00::1]:8080", ("fd00::1", 8080))])
def test_addresses_round_trip(value: str, want: tuple[str, int]) -> None:
    assert routing.parse_addr(value) == want
    assert routing.format_addr(*want) == value


@pytest.mark.parametrize("bad", ["10.1.2.3", "host:80", "10.1.2.3:0", "10.1.2.3:70000", "10.1.2.3:x"])
def test_bad_addresses_are_refused_naming_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match="10.1.2.3|host"):
        routing.parse_addr(bad)


@pytest.mark.parametrize("value, want", [("010.1.2.3:80", None), ("[FD00:0::1]:80", ("fd00::1", 80)),
                                         ("[::ffff:10.1.2.3]:443", ("::ffff:a01:203", 443))])
def test_addresses_are_canonical_and_a_bad_one_is_refused_every_time(value: str, want: tuple[str, int] | None) -> None:
    """The parsed IP is cached (canonical_ip): a second parse gives the same answer, and a refused
    value is refused again (errors are not cached)."""
    for _ in range(2):
        if want is None:
            with pytest.raises(ValueError, match="010.1.2.3"):
                routing.parse_addr(value)
        else:
            assert routing.parse_addr(value) == want


def test_internal_traffic_policy_local_keeps_a_client_on_its_own_nodes_endpoints() -> None:
    s = svc("agent", "10.96.0.30", [V1, V2])
    s.node_local = True
    cfg = config([V1, V2], [s])
    lb = RoundRobin()
    assert {decide(cfg, "10.96.0.30", 80, lb, "demo", "node2").target[0] for _ in range(4)} == {"10.210.2.10"}
    assert {decide(cfg, "10.96.0.30", 80, lb, "demo", "node1").target[0] for _ in range(4)} == {"10.210.1.10"}
    s.node_local = False
    assert {decide(cfg, "10.96.0.30", 80, lb, "demo", "node2").target[0] for _ in range(4)} == \
        {"10.210.1.10", "10.210.2.10"}, "Cluster (the default) balances over every node"


def test_internal_traffic_policy_local_with_no_endpoint_on_the_node_refuses_as_kube_proxy_drops() -> None:
    s = svc("agent", "10.96.0.30", [V1])
    s.node_local = True
    r = decide(config([V1], [s]), "10.96.0.30", 80, None, "demo", "node3")
    assert r.kind == REFUSE and r.dial is None
    assert "internalTrafficPolicy Local" in r.reason and "node3" in r.reason and "demo/agent" in r.reason
