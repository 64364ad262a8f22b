"""VirtualService and DestinationRule `exportTo`, honoured as Istio honours it: by the namespace of
the proxy that would apply the object (the waypoint serving a host, an ingress gateway), through
the real translation (controller.translate), `ambit apply`'s advisories and `ambit analyze`."""

from __future__ import annotations

from typing import Any

import pytest

from ambitctl.analyze import analyze
from controller.translate import translate
from controller.validation import validate_object
from controller.waypoints.advisories import advisories
from tests.unit.controller.test_config_translate import ns, pod, service
from tests.unit.controller.test_istio_gateway import HTTP_8080, istio_gateway
from tests.unit.controller.test_istio_gateway import vs as gateway_vs

NET = "networking.istio.io/v1"
GW = "gateway.networking.k8s.io/v1"
GW_LABEL = "gateway.networking.k8s.io/gateway-name"
HOST = "reviews.shop.svc.cluster.local"


def waypoint(namespace: str) -> dict[str, Any]:
    """A waypoint that admits Services of every namespace (a cross-namespace waypoint)."""
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "wp", "namespace": namespace},
            "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [
                {"name": "mesh", "port": 15008, "protocol": "HBONE",
                 "allowedRoutes": {"namespaces": {"from": "All"}}}]}}


def mesh(waypoint_ns: str = "shop") -> list[dict[str, Any]]:
    """Service reviews in namespace shop, served by waypoint `wp` of `waypoint_ns`."""
    labels = {"ambit.io/use-waypoint": "wp"}
    if waypoint_ns != "shop":
        labels["ambit.io/use-waypoint-namespace"] = waypoint_ns
    return [ns("shop", **{"ambit.io/dataplane-mode": "ambient"}), ns("mesh-gw"), ns("other"),
            service("reviews", {"app": "reviews"}, [{"name": "http", "port": 9080}], namespace="shop",
                    labels=labels),
            pod("reviews-1", "10.0.0.1", namespace="shop", labels={"app": "reviews", "version": "v1"}),
            waypoint(waypoint_ns)]


def vs(namespace: str = "shop", export: list[str] | None = None, name: str = "reviews",
       host: str = "reviews.shop.svc.cluster.local") -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": [host], "http": [{"match": [{"uri": {"prefix": "/v1"}}],
                                                      "route": [{"destination": {"host": HOST}}]}]}
    if export is not None:
        spec["exportTo"] = export
    return {"apiVersion": NET, "kind": "VirtualService", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def dr(namespace: str = "shop", export: list[str] | None = None, name: str = "reviews", host: str = HOST,
       lb: str = "ROUND_ROBIN", created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    spec: dict[str, Any] = {"host": host, "trafficPolicy": {"loadBalancer": {"simple": lb}},
                            "subsets": [{"name": f"{name}-v1", "labels": {"version": "v1"}}]}
    if export is not None:
        spec["exportTo"] = export
    return {"apiVersion": NET, "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created}, "spec": spec}


def routes_of(objs: list[dict[str, Any]]) -> Any:
    tr = translate(objs)
    assert tr.errors == []
    return next((w for w in tr.waypoint_routes if w.hostname == HOST), None)


def exported_notes(objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a.ref, a.reason) for a in advisories(objs) if a.cause == "NotExported"]


# -- VirtualService at waypoints ---------------------------------------------------------------------

def test_a_virtual_service_exported_to_its_own_namespace_applies_at_a_waypoint_there() -> None:
    wr = routes_of([*mesh("shop"), vs(export=["."])])
    assert wr is not None and wr.waypoint == "shop/wp"
    assert [r.source for r in wr.http] == ["VirtualService/shop/reviews"]
    assert exported_notes([*mesh("shop"), vs(export=["."])]) == []


def test_a_virtual_service_not_exported_to_a_cross_namespace_waypoint_adds_no_routes_there() -> None:
    objs = [*mesh("mesh-gw"), vs(export=["."])]
    wr = routes_of(objs)
    assert wr is None or (wr.http == [] and "VirtualService/shop/reviews" not in wr.sources)
    [(ref, why)] = exported_notes(objs)
    assert ref == "VirtualService/shop/reviews"
    assert why.startswith("not exported to namespace mesh-gw (exportTo: .), where waypoint mesh-gw/wp runs: its "
                          f"routes are not applied to {HOST}")
    assert [(f.code, f.ref, f.path) for f in analyze(objs, complete=True) if f.code == "AMB0124"] == [
        ("AMB0124", "VirtualService/shop/reviews", "spec.exportTo")]


@pytest.mark.parametrize("namespace, export", [("shop", [".", "mesh-gw"]), ("shop", ["mesh-gw"]), ("shop", ["*"]),
                                               ("shop", None), ("mesh-gw", ["."])])
def test_a_virtual_service_exported_to_the_waypoints_namespace_applies(namespace: str,
                                                                        export: list[str] | None) -> None:
    objs = [*mesh("mesh-gw"), vs(namespace, export)]
    wr = routes_of(objs)
    assert wr is not None and [r.source for r in wr.http] == [f"VirtualService/{namespace}/reviews"]
    assert exported_notes(objs) == []


def test_a_virtual_service_from_another_namespace_exported_only_there_does_not_apply() -> None:
    objs = [*mesh("shop"), vs("other", ["."])]
    wr = routes_of(objs)
    assert wr is None or wr.http == []
    assert [ref for ref, _ in exported_notes(objs)] == ["VirtualService/other/reviews"]


def test_a_waypoint_takes_routes_only_from_the_services_namespace_and_its_own() -> None:
    """Istio's waypoints (listener_waypoint.go getVirtualServiceForWaypoint): a VirtualService for
    shop's Service, exported everywhere, applies from shop or from the waypoint's namespace, not from
    a third one (where, in a sidecar mesh, it would route only that namespace's own clients; a
    waypoint serves every client). Said, with the fix, by `ambit apply` and `ambit analyze`."""
    for where in ("shop", "mesh-gw"):
        wr = routes_of([*mesh("mesh-gw"), vs(where)])
        assert wr is not None and [r.source for r in wr.http] == [f"VirtualService/{where}/reviews"], where
    objs = [*mesh("mesh-gw"), vs("other")]
    wr = routes_of(objs)
    assert wr is None or wr.http == []
    [(ref, path, why)] = [(a.ref, a.path, a.reason) for a in advisories(objs) if a.cause == "OutsideWaypointScope"]
    assert (ref, path) == ("VirtualService/other/reviews", "metadata.namespace")
    assert "waypoint mesh-gw/wp takes VirtualService routes only from the namespace of the Service (shop) or " \
           "its own (mesh-gw)" in why
    assert [(f.code, f.ref) for f in analyze(objs, complete=True) if f.code == "AMB0126"] == [
        ("AMB0126", "VirtualService/other/reviews")]
    # a waypoint in the Service's own namespace: the same rule (shop only)
    assert routes_of([*mesh("shop"), vs("other")]) is None or routes_of([*mesh("shop"), vs("other")]).http == []


# -- DestinationRule at waypoints --------------------------------------------------------------------

def test_a_destination_rule_not_exported_to_the_waypoints_namespace_is_not_in_force() -> None:
    hidden = [*mesh("mesh-gw"), dr(export=["."])]
    wr = routes_of(hidden)
    assert wr is None or (wr.subsets == [] and wr.policy is None)
    [(ref, why)] = exported_notes(hidden)
    assert ref == "DestinationRule/shop/reviews" and "its policy and subsets are not applied to" in why
    for export in ([".", "mesh-gw"], ["*"], None):
        wr = routes_of([*mesh("mesh-gw"), dr(export=export)])
        assert wr is not None and [s.name for s in wr.subsets] == ["reviews-v1"] and wr.policy.lb == "ROUND_ROBIN"
    wr = routes_of([*mesh("shop"), dr(export=["."])])          # a waypoint of its own namespace sees it
    assert wr is not None and [s.name for s in wr.subsets] == ["reviews-v1"]


def test_a_hidden_rule_neither_shadows_a_visible_wildcard_nor_wins_a_merge() -> None:
    # Istio looks for the most specific host among the rules the proxy sees
    wr = routes_of([*mesh("mesh-gw"), dr(export=["."]),
                    dr("other", ["*"], name="wild", host="*.svc.cluster.local", lb="RANDOM")])
    assert wr is not None and [s.name for s in wr.subsets] == ["wild-v1"] and wr.policy.lb == "RANDOM"
    # the older rule is hidden: the younger one's trafficPolicy is the one in force, not dropped
    wr = routes_of([*mesh("mesh-gw"), dr(export=["."], created="2026-01-01T00:00:00Z"),
                    dr("other", ["mesh-gw"], name="young", lb="LEAST_CONN", created="2026-02-01T00:00:00Z")])
    assert wr is not None and [s.name for s in wr.subsets] == ["young-v1"] and wr.policy.lb == "LEAST_REQUEST"
    assert wr.sources == ["DestinationRule/other/young"]
    # and `ambit apply` does not say the younger one's policy is dropped (AMB0107): it is not
    objs = [*mesh("mesh-gw"), dr(export=["."], created="2026-01-01T00:00:00Z"),
            dr("other", ["mesh-gw"], name="young", lb="LEAST_CONN", created="2026-02-01T00:00:00Z")]
    assert [a for a in advisories(objs) if a.cause == "Merged"] == []
    seen = [*objs[:-2], dr(export=["*"]), objs[-1]]      # both seen there: merged, the younger's policy dropped
    assert [(a.ref, a.path) for a in advisories(seen) if a.cause == "Merged"] == [
        ("DestinationRule/other/young", "spec.trafficPolicy")]


# -- Istio ingress gateways ----------------------------------------------------------------------------

# Ambit's ingress gateway in namespace istio-ingress (its pods run there), with Istio's installer label
INGRESS = {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "ingress", "namespace": "istio-ingress"},
           "spec": {"gatewayClassName": "ambit", "infrastructure": {"labels": {"istio": "ingressgateway"}},
                    "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}
EDGE = [ns("web"), ns("istio-ingress"), service("echo", {"app": "echo"}, [{"port": 80}], namespace="web"), INGRESS]


def served(objs: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str, str]]]:
    tr = translate(EDGE + objs)
    assert tr.errors == []
    [model] = tr.ingress.gateways
    return (sorted({r.source for ln in model.listeners for h in ln.hosts for r in h.http}),
            [(w.ref, w.path, w.reason) for w in tr.ingress.warnings])


def test_a_virtual_service_exported_only_to_its_namespace_is_not_served_by_a_gateway_elsewhere() -> None:
    sources, warnings = served([istio_gateway(HTTP_8080), gateway_vs("bookinfo", ["*"], ["bookinfo-gateway"],
                                                                    exportTo=["."])])
    assert sources == []
    assert warnings == [("VirtualService/web/bookinfo", "spec.exportTo", (
        "not exported to namespace istio-ingress (exportTo: .), where ingress gateway istio-ingress/ingress runs, "
        "which serves Gateway web/bookinfo-gateway: it is not served there, as in Istio (a gateway applies only the "
        "VirtualServices exported to its own namespace); add istio-ingress to exportTo"))]
    found = analyze(EDGE + [istio_gateway(HTTP_8080), gateway_vs("bookinfo", ["*"], ["bookinfo-gateway"],
                                                                 exportTo=["."])], complete=True)
    assert [(f.code, f.severity, f.ref, f.path) for f in found if f.code == "AMB0124"] == [
        ("AMB0124", "Warning", "VirtualService/web/bookinfo", "spec.exportTo")]


@pytest.mark.parametrize("export", [["istio-ingress", "."], ["istio-ingress"], ["*"], None])
def test_a_virtual_service_exported_to_the_gateways_namespace_is_served(export: list[str] | None) -> None:
    extra = {"exportTo": export} if export is not None else {}
    sources, warnings = served([istio_gateway(HTTP_8080), gateway_vs("bookinfo", ["*"], ["bookinfo-gateway"],
                                                                    **extra)])
    assert sources == ["VirtualService/web/bookinfo"] and warnings == []


def test_the_proxys_namespace_counts_not_the_istio_gateway_objects() -> None:
    # the Istio Gateway object lives in web, like the VirtualService; its pods run in istio-ingress
    gw = istio_gateway(HTTP_8080, ns="web")
    assert served([gw, gateway_vs("bookinfo", ["*"], ["web/bookinfo-gateway"], exportTo=["web"])])[0] == []
    # and the other way round: the Gateway object elsewhere, the VirtualService exported to the pods' namespace
    gw = istio_gateway(HTTP_8080, ns="other")
    assert served([ns("other"), gw, gateway_vs("bookinfo", ["*"], ["other/bookinfo-gateway"],
                                               exportTo=["istio-ingress"])])[0] == ["VirtualService/web/bookinfo"]


def test_a_destination_rule_an_ingress_gateway_applies_outside_its_export_is_said() -> None:
    rule = {"apiVersion": NET, "kind": "DestinationRule", "metadata": {"name": "echo", "namespace": "web"},
            "spec": {"host": "echo", "exportTo": ["."], "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}}
    objs = EDGE + [istio_gateway(HTTP_8080), gateway_vs("bookinfo", ["*"], ["bookinfo-gateway"],
                                                        exportTo=["istio-ingress"]), rule]
    [(ref, why)] = exported_notes(objs)
    assert ref == "DestinationRule/web/echo" and why.startswith(
        "not exported to namespace istio-ingress (exportTo: .), yet applied by ingress gateway "
        "istio-ingress/ingress to the traffic it routes to echo.web.svc.cluster.local")


# -- what is no longer warned, and what is refused -------------------------------------------------------

def test_honoured_export_to_is_not_warned_as_unsupported() -> None:
    found = [a for a in advisories([*mesh("shop"), vs(export=["."]), dr(export=[".", "other"])])
             if a.path == "spec.exportTo"]
    assert found == []


@pytest.mark.parametrize("export, path, why", [
    (["~"], "spec.exportTo[0]", 'exportTo "~" (no one) is allowed for ServiceEntries only'),
    (["*", "."], "spec.exportTo", 'cannot have both "*" (every namespace) and other entries'),
    ([".", "."], "spec.exportTo[1]", 'duplicate entry "."'),
    (["Not_A_Namespace"], "spec.exportTo[0]", "must be a lowercase RFC 1123 label"),
])
@pytest.mark.parametrize("make", [vs, dr])
def test_istio_refuses_these_export_to_values_and_so_does_ambit(make: Any, export: list[str], path: str,
                                                                  why: str) -> None:
    errs = validate_object(make(export=export))
    assert any(e.path == path and e.reason.startswith(why) for e in errs), errs


@pytest.mark.parametrize("make", [vs, dr])
def test_valid_export_to_values_pass(make: Any) -> None:
    for export in (["."], ["*"], [".", "istio-ingress"], ["team-a", "team-b"]):
        assert validate_object(make(export=export)) == []


def test_a_destination_rule_another_waypoint_applies_outside_its_export_is_said() -> None:
    # reviews' waypoint (in mesh-gw) routes to ratings, which no waypoint serves: ratings' rule,
    # exported to shop only, is applied by that waypoint all the same (one choice per host)
    ratings = service("ratings", {"app": "ratings"}, [{"name": "http", "port": 9080}], namespace="shop",
                      cluster_ip="10.96.0.11")
    to_ratings = vs(export=["mesh-gw"])
    to_ratings["spec"]["http"][0]["route"] = [{"destination": {"host": "ratings"}}]
    objs = [*mesh("mesh-gw"), ratings, to_ratings, dr(export=["."], name="ratings", host="ratings")]
    [(ref, why)] = exported_notes(objs)
    assert ref == "DestinationRule/shop/ratings" and why.startswith(
        "not exported to namespace mesh-gw (exportTo: .), yet applied by waypoint mesh-gw/wp to the traffic it routes "
        "to ratings.shop.svc.cluster.local")
