"""Gateway API routes on mesh parents (controller.translate.parents): a waypoint listener's
allowedRoutes, sectionName/port on Service and waypoint parents, parents that do not exist,
cross-namespace backends and ReferenceGrant, and what the user is told (the `ambit apply`
warnings, the route's `status.parents`). Requests are decided by the waypoint's real router."""

from __future__ import annotations

import copy
from typing import Any

from controller.translate import translate
from controller.waypoints.advisories import advisories
from controller.waypoints.labstatus import desired_statuses
from tests.unit.waypoint.support import decide, req, to
from waypoint.request import Forward, LocalReply
from waypoint.routing import build_table

GW = "gateway.networking.k8s.io/v1"
HOST = "reviews.demo.svc.cluster.local"


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def service(name: str, ns: str, ports: dict[str, int], ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "selector": {"app": name},
                     "ports": [{"name": n, "port": p} for n, p in ports.items()]}}


def waypoint(**listener: Any) -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "waypoint", "namespace": "demo"},
            "spec": {"gatewayClassName": "ambit-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE", **listener}]}}


def route(name: str, parent: dict[str, Any], ns: str = "demo", backend: dict[str, Any] | None = None,
          kind: str = "HTTPRoute") -> dict[str, Any]:
    """A route whose only rule sets `x-route: <name>` on responses, so a decision shows whether it applied."""
    return {"apiVersion": GW, "kind": kind, "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": [parent], "rules": [{
                "filters": [{"type": "ResponseHeaderModifier",
                             "responseHeaderModifier": {"set": [{"name": "x-route", "value": name}]}}],
                "backendRefs": [backend or {"name": "reviews", "namespace": "demo", "port": 9080}]}]}}


WAYPOINT_PARENT = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint", "namespace": "demo"}
SERVICE_PARENT = {"group": "", "kind": "Service", "name": "reviews", "namespace": "demo"}


def world(*extra: dict[str, Any], gw: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [namespace("demo", **{"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "waypoint"}),
            namespace("other", team="friends"), namespace("payments"),
            service("reviews", "demo", {"http": 9080, "http-admin": 9090}, "10.96.0.10"),
            service("ledger", "payments", {"http": 80}, "10.96.3.3"),
            gw or waypoint(), *extra]


def applied(objs: list[dict[str, Any]], port: int = 9080, source_namespace: str = "") -> str:
    """Which route (its x-route header) a GET to reviews:`port` gets; "" for the Service's default route."""
    t = translate(objs)
    assert t.errors == [], [str(e) for e in t.errors]
    d = decide(build_table(t.waypoint_routes), req("/"), to("reviews", port=port, ns="demo",
                                                               source_namespace=source_namespace))
    assert isinstance(d, Forward), d
    return dict(d.response_headers.set).get("x-route", "")


def warnings(objs: list[dict[str, Any]], ref: str) -> list[tuple[str, str, str]]:
    return [(a.path, a.cause, a.reason) for a in advisories(objs) if a.ref == ref]


def parents_status(objs: list[dict[str, Any]], kind: str, ns: str, name: str) -> list[dict[str, Any]]:
    """The `status.parents` the controller writes on the route (the lab's writer; a cluster's is the same)."""
    statuses = desired_statuses(objs, translation=translate(objs))
    return statuses[(kind, ns, name)]["parents"]


def conditions(parent: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in parent["conditions"]}


# -- gap 1: a waypoint listener's allowedRoutes ----------------------------------------------------

def test_a_waypoint_takes_routes_from_its_own_namespace_only_by_default() -> None:
    mine, foreign = route("mine", WAYPOINT_PARENT), route("foreign", WAYPOINT_PARENT, ns="other")
    assert applied(world(foreign)) == ""                 # the other namespace cannot reroute demo's Service
    assert applied(world(mine, foreign)) == "mine"
    [(path, cause, reason)] = warnings(world(foreign), "HTTPRoute/other/foreign")
    assert (path, cause) == ("spec.parentRefs[0]", "NotAllowedByListeners")
    assert "waypoint demo/waypoint" in reason and "namespace other" in reason and "allowedRoutes" in reason
    [parent] = parents_status(world(foreign), "HTTPRoute", "other", "foreign")
    assert parent["controllerName"] == "ambit.io/gateway-controller"
    assert parent["parentRef"]["name"] == "waypoint"
    assert conditions(parent)["Accepted"] == ("False", "NotAllowedByListeners")
    [parent] = parents_status(world(mine), "HTTPRoute", "demo", "mine")
    assert conditions(parent) == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


def grant(to_ns: str, from_ns: str) -> dict[str, Any]:
    """HTTPRoutes of `from_ns` may send to every Service of `to_ns`."""
    return {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": f"from-{from_ns}", "namespace": to_ns},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": from_ns}],
                     "to": [{"group": "", "kind": "Service"}]}}


def test_allowed_routes_all_and_selector_admit_other_namespaces() -> None:
    foreign = route("foreign", WAYPOINT_PARENT, ns="other")     # (it sends to demo/reviews: granted)
    assert applied(world(foreign, grant("demo", "other"),
                         gw=waypoint(allowedRoutes={"namespaces": {"from": "All"}}))) == "foreign"
    selected = waypoint(allowedRoutes={"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "friends"}}}})
    assert applied(world(foreign, grant("demo", "other"), gw=selected)) == "foreign"
    others = waypoint(allowedRoutes={"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "foes"}}}})
    assert applied(world(foreign, grant("demo", "other"), gw=others)) == ""


def test_allowed_routes_kinds_narrow_what_a_waypoint_takes() -> None:
    only_grpc = waypoint(allowedRoutes={"kinds": [{"kind": "GRPCRoute"}]})
    mine = route("mine", WAYPOINT_PARENT)
    assert applied(world(mine, gw=only_grpc)) == ""
    assert [c for _, c, _ in warnings(world(mine, gw=only_grpc), "HTTPRoute/demo/mine")] == ["NotAllowedByListeners"]


# -- gap 5: sectionName (and port) on a mesh parent ---------------------------------------------------

def test_section_name_on_a_service_parent_narrows_the_route_to_that_port() -> None:
    admin = route("admin", {**SERVICE_PARENT, "sectionName": "http-admin"})
    assert applied(world(admin), port=9090) == "admin"
    assert applied(world(admin), port=9080) == ""        # the 'http' port keeps its default route
    assert warnings(world(admin), "HTTPRoute/demo/admin") == []


def test_a_port_the_service_does_not_have_attaches_nowhere_and_says_so() -> None:
    for parent, why in (({**SERVICE_PARENT, "sectionName": "grpc"}, "no port named 'grpc'"),
                        ({**SERVICE_PARENT, "port": 7070}, "no port number 7070"),
                        ({**SERVICE_PARENT, "sectionName": "http", "port": 9090}, "no port named 'http' and number 9090")):
        r = route("r", parent)
        assert applied(world(r), port=9080) == applied(world(r), port=9090) == "", parent
        [(path, cause, reason)] = warnings(world(r), "HTTPRoute/demo/r")
        assert (path, cause) == ("spec.parentRefs[0]", "NoMatchingParent") and why in reason, reason
        assert "its ports: http 9080, http-admin 9090" in reason
        [parent_status] = parents_status(world(r), "HTTPRoute", "demo", "r")
        assert conditions(parent_status)["Accepted"] == ("False", "NoMatchingParent")


def test_section_name_and_port_on_a_waypoint_parent_name_its_listener() -> None:
    for parent, attached in (({"sectionName": "mesh"}, True), ({"port": 15008}, True),
                             ({"sectionName": "other"}, False), ({"port": 9080}, False)):
        r = route("r", {**WAYPOINT_PARENT, **parent})
        assert applied(world(r), port=9090) == ("r" if attached else ""), parent   # every Service port
        causes = [c for _, c, _ in warnings(world(r), "HTTPRoute/demo/r")]
        assert causes == ([] if attached else ["NoMatchingParent"]), parent


# -- gap 6: references to Gateways that do not exist --------------------------------------------------

def test_a_parent_gateway_that_does_not_exist_is_warned_about() -> None:
    typo = route("typo", {**WAYPOINT_PARENT, "name": "waypiont"})
    typo["spec"]["hostnames"] = ["reviews"]             # hostnames do not attach it anywhere either
    assert applied(world(typo)) == ""
    [(path, cause, reason)] = warnings(world(typo), "HTTPRoute/demo/typo")
    assert (path, cause) == ("spec.parentRefs[0]", "ParentNotFound") and 'no Gateway "demo/waypiont"' in reason
    tcp = {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
           "metadata": {"name": "db", "namespace": "demo"},
           "spec": {"parentRefs": [{"name": "edgee"}], "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]}}
    assert [(p, c) for p, c, _ in warnings(world(tcp), "TCPRoute/demo/db")] == [("spec.parentRefs[0]", "ParentNotFound")]


def test_virtual_service_gateways_that_name_no_istio_gateway_are_warned_about() -> None:
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "front", "namespace": "demo"},
          "spec": {"hosts": ["shop.example.com"], "gateways": ["publik", "mesh"],
                   "http": [{"match": [{"gateways": ["edge/public"]}], "route": [{"destination": {"host": "reviews"}}]}]}}
    istio_gw = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "public", "namespace": "edge"},
                "spec": {"selector": {"istio": "ingressgateway"},
                         "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}
    found = warnings(world(vs, istio_gw), "VirtualService/demo/front")
    assert [(p, c) for p, c, _ in found if c == "ParentNotFound"] == [("spec.gateways[0]", "ParentNotFound")]
    assert 'no Istio Gateway (networking.istio.io) "demo/publik"' in found[0][2]
    # a Gateway API Gateway of that name is not an Istio Gateway
    gwapi = copy.deepcopy(waypoint())
    gwapi["metadata"]["name"] = "publik"
    assert ("spec.gateways[0]", "ParentNotFound") in [(p, c) for p, c, _ in warnings(world(vs, istio_gw, gwapi),
                                                                                     "VirtualService/demo/front")]


def test_a_waypoint_parent_no_service_uses_is_warned_about() -> None:
    objs = [o for o in world(route("r", WAYPOINT_PARENT)) if o.get("kind") != "Namespace" or o["metadata"]["name"] != "demo"]
    objs.append(namespace("demo", **{"ambit.io/dataplane-mode": "ambient"}))      # nothing uses the waypoint
    [(_, cause, reason)] = warnings(objs, "HTTPRoute/demo/r")
    assert cause == "NoWaypoint" and "no Service uses waypoint demo/waypoint" in reason


# -- gap 16: cross-namespace backends need a ReferenceGrant --------------------------------------------

GRANT = grant("payments", "demo")


def test_a_cross_namespace_backend_without_a_grant_is_answered_500_and_said() -> None:
    xns = route("xns", SERVICE_PARENT, backend={"name": "ledger", "namespace": "payments", "port": 80})
    t = translate(world(xns))
    d = decide(build_table(t.waypoint_routes), req("/"), to("reviews", port=9080, ns="demo"))
    assert isinstance(d, LocalReply) and d.status == 500
    [(path, cause, reason)] = warnings(world(xns), "HTTPRoute/demo/xns")
    assert (path, cause) == ("spec.rules[0].backendRefs[0]", "RefNotPermitted")
    assert "payments/ledger" in reason and "ReferenceGrant in namespace payments" in reason
    [parent] = parents_status(world(xns), "HTTPRoute", "demo", "xns")
    assert conditions(parent) == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "RefNotPermitted")}
    # with the grant, the backend is used
    t = translate(world(xns, GRANT))
    d = decide(build_table(t.waypoint_routes), req("/"), to("reviews", port=9080, ns="demo"))
    assert isinstance(d, Forward) and d.service == "payments/ledger"
    assert warnings(world(xns, GRANT), "HTTPRoute/demo/xns") == []


def test_a_consumer_route_to_its_own_parent_service_needs_no_grant() -> None:
    """GAMMA (conformance mesh-consumer-route): a route in the client's namespace, attached to the
    Service, sends to that Service in the Service's namespace without a ReferenceGrant."""
    consumer = route("consumer", SERVICE_PARENT, ns="other")
    assert applied(world(consumer), source_namespace="other") == "consumer"
    assert warnings(world(consumer), "HTTPRoute/other/consumer") == []
    # through a waypoint parent the same backend is an ordinary cross-namespace reference
    gw_all = waypoint(allowedRoutes={"namespaces": {"from": "All"}})
    via_waypoint = route("via", WAYPOINT_PARENT, ns="other")
    assert [c for _, c, _ in warnings(world(via_waypoint, gw=gw_all), "HTTPRoute/other/via")] == ["RefNotPermitted"]
