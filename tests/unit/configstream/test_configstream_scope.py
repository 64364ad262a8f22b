"""Per-subscriber scoping: what each kind of subscriber receives (pure function)."""

from __future__ import annotations

from ambit.configclient import NodeInfo
from ambit.model import Authorization, PeerAuthn, Service, Workload
from controller.configserver import TYPE_ORDER, scope, scope_key

from .helpers import authz, peerauthn, service, workload

A1 = workload("a1", "node-a", ip="10.0.1.1")
A2 = workload("a2", "node-a", ip="10.0.1.2", ns="shop")
B1 = workload("b1", "node-b", ip="10.0.2.1", ns="shop", waypoint="shop/wp")
B2 = workload("b2", "node-b", ip="10.0.2.2", ns="pay")
REVIEWS = service("reviews", ns="shop", endpoints=[A2], waypoint="shop/wp")
PAY = service("pay", ns="pay", endpoints=[B2])
SNAP = {
    Workload.TYPE: [A1, A2, B1, B2],
    Service.TYPE: [REVIEWS, PAY],
    Authorization.TYPE: [authz("root-deny", ns="istio-system", scope="global", action="DENY"),
                         authz("shop-allow", ns="shop"), authz("pay-allow", ns="pay")],
    PeerAuthn.TYPE: [peerauthn("mesh", ns="istio-system"), peerauthn("pay", ns="pay")],
}


def names(resources):
    return sorted(r.resource_name for r in resources)


def test_agent_receives_only_the_workloads_of_its_node():
    agent = NodeInfo("agent", "node-a")
    assert names(scope(agent, Workload.TYPE, SNAP)) == ["a1", "a2"]
    assert names(scope(NodeInfo("agent", "node-b"), Workload.TYPE, SNAP)) == ["b1", "b2"]
    assert scope(NodeInfo("agent", "node-c"), Workload.TYPE, SNAP) == []


def test_ztunnel_receives_every_workload_service_and_policy():
    zt = NodeInfo("ztunnel", "node-a")
    for t, resources in SNAP.items():
        assert names(scope(zt, t, SNAP)) == names(resources), t


def test_waypoint_receives_what_it_fronts_and_the_pods_behind_it():
    wp = NodeInfo("waypoint", "wp-pod-1", waypoint="shop/wp")
    # every Service: its routes may send to any backend, in any namespace, fronted by it or not
    assert names(scope(wp, Service.TYPE, SNAP)) == names(SNAP[Service.TYPE])
    # Every workload: it routes to those behind it (b1 fronted directly, a2 backing the Service)
    # and resolves its clients, wherever they run.
    assert names(scope(wp, Workload.TYPE, SNAP)) == names(SNAP[Workload.TYPE])
    # Mesh-wide policy plus the namespace of what it fronts; not the pay namespace.
    assert names(scope(wp, Authorization.TYPE, SNAP)) == ["istio-system/root-deny", "shop/shop-allow"]
    assert names(scope(wp, PeerAuthn.TYPE, SNAP)) == names(SNAP[PeerAuthn.TYPE])


def test_a_waypoint_fronting_nothing_gets_no_policy_of_other_namespaces():
    wp = NodeInfo("waypoint", "x", waypoint="other/wp")
    assert names(scope(wp, Authorization.TYPE, SNAP)) == ["istio-system/root-deny"]


def test_scoping_filters_without_copying_so_versions_are_shared():
    zt = NodeInfo("ztunnel", "node-a")
    agent = NodeInfo("agent", "node-a")
    assert scope(zt, Workload.TYPE, SNAP)[0] is A1
    assert scope(agent, Workload.TYPE, SNAP)[0] is A1


def test_scope_key_groups_subscribers_that_get_equal_views():
    assert scope_key(NodeInfo("ztunnel", "node-a")) == scope_key(NodeInfo("ztunnel", "node-b"))
    assert scope_key(NodeInfo("agent", "node-a")) != scope_key(NodeInfo("agent", "node-b"))
    assert scope_key(NodeInfo("waypoint", "p1", waypoint="shop/wp")) == scope_key(
        NodeInfo("waypoint", "p2", waypoint="shop/wp"))


def test_missing_type_scopes_to_nothing_and_policy_goes_before_pods_before_services():
    assert scope(NodeInfo("ztunnel", "n"), "ambit.io/Unmodelled", SNAP) == []
    order = list(TYPE_ORDER)
    assert order.index(Authorization.TYPE) < order.index(Workload.TYPE) < order.index(Service.TYPE)


def test_telemetry_reaches_every_ztunnel_and_the_waypoints_it_can_apply_to():
    from ambit.model import TelemetryPolicy
    tels = [TelemetryPolicy("mesh", "istio-system", scope="global"), TelemetryPolicy("shop", "shop"),
            TelemetryPolicy("pay", "pay", scope="workload", selector={"app": "pay"})]
    snap = {**SNAP, TelemetryPolicy.TYPE: tels}
    assert names(scope(NodeInfo("ztunnel", "node-a"), TelemetryPolicy.TYPE, snap)) == ["istio-system/mesh",
                                                                                        "pay/pay", "shop/shop"]
    wp = NodeInfo("waypoint", "node-b", waypoint="shop/wp")
    assert names(scope(wp, TelemetryPolicy.TYPE, snap)) == ["istio-system/mesh", "shop/shop"]


def test_an_ingress_gateway_alone_receives_its_keys_and_every_service():
    from ambit.model import IngressGateway, IngressListener, TlsCertificate
    edge = IngressGateway("edge", "shop", listeners=[IngressListener(
        "https", 443, "HTTPS", certificates=[TlsCertificate("shop/cert", "CERT", "KEY")])])
    other = IngressGateway("other", "pay")
    snap = {**SNAP, IngressGateway.TYPE: [edge, other]}
    gw = NodeInfo("waypoint", "edge-0", "shop/edge")
    assert names(scope(gw, IngressGateway.TYPE, snap)) == ["shop/edge"]
    assert names(scope(gw, Service.TYPE, snap)) == ["pay/pay", "shop/reviews"]   # it routes to any Service
    for node in (NodeInfo("ztunnel", "node-a"), NodeInfo("agent", "node-a"), NodeInfo("waypoint", "wp-0", "shop/wp")):
        assert scope(node, IngressGateway.TYPE, snap) == [], node
    assert names(scope(NodeInfo("waypoint", "wp-0", "shop/wp"), Service.TYPE, snap)) == ["pay/pay", "shop/reviews"]
