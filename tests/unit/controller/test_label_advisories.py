"""Ambit labels and Service fields that do nothing as written are said out loud
(controller.waypoints.label_advisories), through `ambit apply` and `ambit analyze`."""

from __future__ import annotations

from pathlib import Path

import yaml

from controller.waypoints.advisories import NOT_ENFORCED, advisories
from tests.unit.controller.test_waypoint_advisories import ns, run, svc, waypoint


def pod(name: str, namespace: str = "demo", **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels},
            "spec": {"nodeName": "node1", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": "10.210.1.9", "podIPs": [{"ip": "10.210.1.9"}]}}


def found(objects: list[dict]) -> dict[tuple[str, str], str]:
    out = {}
    for a in advisories(objects):
        assert a.condition == NOT_ENFORCED
        out[(a.ref, a.path)] = a.reason
    return out


def test_a_misspelt_dataplane_mode_is_named_on_the_namespace_and_the_pod() -> None:
    got = found([ns("shop", **{"ambit.io/dataplane-mode": "ambeint"}),
                 pod("p", "shop", **{"istio.io/dataplane-mode": "ambiant"})])
    assert "'ambeint' is neither 'ambient' nor 'none': the namespace's pods are not enrolled" in \
        got[("Namespace/shop", "metadata.labels[ambit.io/dataplane-mode]")]
    assert "this pod is not enrolled" in got[("Pod/shop/p", "metadata.labels[istio.io/dataplane-mode]")]
    assert found([ns("shop", **{"ambit.io/dataplane-mode": "ambient"}),
                  pod("p", "shop", **{"ambit.io/dataplane-mode": "none"})]) == {}


def test_a_pod_naming_a_waypoint_that_serves_services_only_is_told_its_traffic_bypasses_it() -> None:
    got = found([ns("demo", **{"ambit.io/dataplane-mode": "ambient"}), waypoint(),
                 pod("db-0", **{"ambit.io/use-waypoint": "waypoint"})])
    assert got == {("Pod/demo/db-0", "metadata.labels[ambit.io/use-waypoint]"): (
        "waypoint demo/waypoint has waypoint-for 'service', which does not take traffic addressed to this pod's IP: "
        "that traffic does not go through it (its L7 policy and routes do not apply); label the waypoint "
        "waypoint-for 'workload' or 'all', or name another waypoint")}
    # the same label is bound once the waypoint takes workload traffic; a namespace label is never flagged
    assert found([ns("demo", **{"ambit.io/use-waypoint": "waypoint"}), waypoint(**{"istio.io/waypoint-for": "all"}),
                  pod("db-0", **{"ambit.io/use-waypoint": "waypoint"})]) == {}


def test_a_service_naming_a_workload_only_waypoint_is_told() -> None:
    got = found([waypoint(**{"ambit.io/waypoint-for": "workload"}), svc("ratings", **{"istio.io/use-waypoint": "waypoint"})])
    assert "does not take traffic addressed to this Service's VIP" in \
        got[("Service/demo/ratings", "metadata.labels[istio.io/use-waypoint]")]


def test_service_balancing_fields_the_mesh_does_not_apply_are_named() -> None:
    sticky = svc("cart")
    sticky["spec"]["sessionAffinity"] = "ClientIP"
    local = svc("agent", **{"ambit.io/use-waypoint": "waypoint"})
    local["spec"]["internalTrafficPolicy"] = "Local"
    got = found([waypoint(), sticky, local])
    assert "ClientIP is not applied to mesh clients" in got[("Service/demo/cart", "spec.sessionAffinity")]
    assert "goes through waypoint demo/waypoint, which balances over the endpoints of every node" in \
        got[("Service/demo/agent", "spec.internalTrafficPolicy")]
    plain = svc("agent")
    plain["spec"]["internalTrafficPolicy"] = "Local"      # no waypoint: ztunnel applies it, nothing to say
    assert found([plain]) == {}
    close = svc("near")
    close["spec"]["trafficDistribution"] = "PreferClose"   # applied by ztunnel and the waypoint: nothing to say
    assert found([close]) == {}


def test_traffic_distributions_ambit_cannot_read_or_does_not_apply_are_named() -> None:
    newer = svc("near")
    newer["spec"]["trafficDistribution"] = "PreferSameRack"     # a newer Kubernetes' value
    typo = svc("far")
    typo["metadata"]["annotations"] = {"networking.istio.io/traffic-distribution": "PreferCloze"}
    space = ns("shop")
    space["metadata"]["annotations"] = {"networking.istio.io/traffic-distribution": "nearby"}
    local = svc("agent")
    local["spec"].update(internalTrafficPolicy="Local", trafficDistribution="PreferSameZone")
    entry = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
             "metadata": {"name": "ext", "namespace": "demo",
                          "annotations": {"networking.istio.io/traffic-distribution": "PreferClose"}},
             "spec": {"hosts": ["ext.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                      "resolution": "NONE"}}
    got = found([newer, typo, space, local, entry])
    assert "'PreferSameRack' is not a traffic distribution Ambit knows" in \
        got[("Service/demo/near", "spec.trafficDistribution")]
    assert "'PreferCloze' is not a traffic distribution Ambit knows" in \
        got[("Service/demo/far", "metadata.annotations[networking.istio.io/traffic-distribution]")]
    assert "'nearby' is not" in got[("Namespace/shop", "metadata.annotations[networking.istio.io/traffic-distribution]")]
    assert "internalTrafficPolicy Local already keeps each client on its own node" in \
        got[("Service/demo/agent", "spec.trafficDistribution")]
    assert "resolution NONE" in \
        got[("ServiceEntry/demo/ext", "metadata.annotations[networking.istio.io/traffic-distribution]")]


def test_ambit_apply_prints_the_warning_and_creates_the_object(lab_dir: Path) -> None:
    rc, out, err = run("apply", "-f", "-", stdin=yaml.safe_dump(ns("shop", **{"ambit.io/dataplane-mode": "ambeint"})))
    assert rc == 0 and "namespace/shop created" in out
    assert "Warning: Namespace/shop: metadata.labels[ambit.io/dataplane-mode]: 'ambeint' is neither" in err


def test_an_ingress_use_waypoint_label_ambit_does_not_apply_is_named() -> None:
    """Ambit's ingress gateways always go through a Service's waypoint (its pods accept tunnels only
    from it): `false` and values Istio does not read as booleans are not applied, and said so."""
    got = found([waypoint(), svc("ratings", **{"istio.io/use-waypoint": "waypoint",
                                               "istio.io/ingress-use-waypoint": "false"}),
                 ns("shop", **{"ambit.io/ingress-use-waypoint": "yes"})])
    assert got[("Service/demo/ratings", "metadata.labels[istio.io/ingress-use-waypoint]")].startswith(
        "false: not applied: Ambit's ingress gateways always send a Service that uses a waypoint through that waypoint")
    assert got[("Namespace/shop", "metadata.labels[ambit.io/ingress-use-waypoint]")].startswith(
        "'yes' is not a boolean (Istio reads it as false and logs a warning): not applied")
    assert found([waypoint(), svc("ratings", **{"istio.io/use-waypoint": "waypoint",
                                                "istio.io/ingress-use-waypoint": "true"})]) == {}


def _edge(subset_host_waypoint: bool) -> list[dict]:
    """An ingress gateway (Gateway API pods, served Istio's way too) whose VirtualService route
    names a subset of `reviews`, which uses the waypoint when `subset_host_waypoint`."""
    reviews = svc("reviews", **({"istio.io/use-waypoint": "waypoint"} if subset_host_waypoint else {}))
    return [waypoint(), reviews,
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": "edge", "namespace": "demo"},
             "spec": {"gatewayClassName": "ambit", "infrastructure": {"labels": {"istio": "edge"}},
                      "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "edge-istio", "namespace": "demo"},
             "spec": {"selector": {"istio": "edge"},
                      "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "demo"},
             "spec": {"host": "reviews", "subsets": [{"name": "v2", "labels": {"version": "v2"}}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "front", "namespace": "demo"},
             "spec": {"hosts": ["shop.example.com"], "gateways": ["edge-istio"],
                      "http": [{"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "reviews"}}]},
                               {"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]}}]


def test_an_ingress_route_subset_of_a_service_reached_through_its_waypoint_is_named() -> None:
    got = found(_edge(True))
    assert got[("VirtualService/demo/front", "spec.http[1].route[0].destination.subset")] == (
        "subset 'v2' of reviews.demo.svc.cluster.local is not applied by ingress gateway demo/edge: it sends the "
        "Service's traffic through its waypoint demo/waypoint, which chooses the endpoint by the Service's own routes "
        "(route there by subset with a VirtualService for the Service, as Istio's gateways need with "
        "istio.io/ingress-use-waypoint)")
    assert not any(ref == "VirtualService/demo/front" for ref, _ in found(_edge(False)))


def test_a_waypoint_route_subset_of_a_service_bound_to_another_waypoint_is_named() -> None:
    """myapp's waypoint sends reviews (bound to waypoint `other`) through `other`, which chooses the
    endpoint: the subset myapp's route names is not applied; one of a Service of its own is."""
    reviews = svc("reviews", **{"istio.io/use-waypoint": "other"})
    myapp = svc("myapp", **{"istio.io/use-waypoint": "waypoint"})
    myapp["spec"]["clusterIP"] = "10.96.0.11"
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "demo"},
          "spec": {"host": "reviews", "subsets": [{"name": "v2", "labels": {"version": "v2"}}]}}
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "myapp", "namespace": "demo"},
          "spec": {"hosts": ["myapp"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]}}
    got = found([waypoint(), waypoint("other"), reviews, myapp, dr, vs])
    assert got[("VirtualService/demo/myapp", "spec.http[0].route[0].destination.subset")].startswith(
        "subset 'v2' of reviews.demo.svc.cluster.local is not applied by waypoint demo/waypoint: it sends the "
        "Service's traffic through its waypoint demo/other")
    reviews["metadata"]["labels"]["istio.io/use-waypoint"] = "waypoint"      # the same waypoint: applied
    assert not any(ref == "VirtualService/demo/myapp" for ref, _ in found([waypoint(), reviews, myapp, dr, vs]))
