"""TLSRoute and TCPRoute at an ingress Gateway, as pure functions: attachment to TLS (passthrough) and
TCP listeners, SNI hostname intersection, weighted backends in the IngressGateway model, the
status (parents' conditions, listeners' supportedKinds) and the schema's refusals."""

from __future__ import annotations

from typing import Any

import pytest

from controller.kinds import unsupported_kind
from controller.translate import translate
from controller.validation import validate_object
from controller.waypoints import ingress_status
from tests.unit.controller.test_ingress import BASE, GW, HTTP, gateway, route

PASS = {"name": "pass", "port": 8443, "protocol": "TLS", "hostname": "*.example.com",
        "tls": {"mode": "Passthrough"}}
TCP = {"name": "tcp", "port": 5432, "protocol": "TCP"}


def tls_route(name: str, hostnames: list[str], backends: list[dict[str, Any]], version: str = "v1",
              **parent: Any) -> dict[str, Any]:
    return {"apiVersion": f"gateway.networking.k8s.io/{version}", "kind": "TLSRoute",
            "metadata": {"name": name, "namespace": "web"},
            "spec": {"parentRefs": [{"name": "gw", **parent}], "hostnames": hostnames,
                     "rules": [{"backendRefs": backends}]}}


def tcp_route(name: str, backends: list[dict[str, Any]], **parent: Any) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
            "metadata": {"name": name, "namespace": "web"},
            "spec": {"parentRefs": [{"name": "gw", **parent}], "rules": [{"backendRefs": backends}]}}


def test_tls_and_tcp_routes_attach_by_kind_and_sni_and_carry_weighted_backends() -> None:
    objs = [gateway(HTTP, PASS, TCP),
            tls_route("a", ["a.example.com", "a.example.org"], [{"name": "echo", "port": 80, "weight": 3},
                                                                {"name": "gone", "port": 80, "weight": 1}],
                      version="v1alpha2"),
            tls_route("a-again", ["a.example.com"], [{"name": "echo", "port": 80}]),   # younger: loses the name
            tls_route("elsewhere", ["x.example.org"], [{"name": "echo", "port": 80}]),
            tcp_route("db", [{"name": "echo", "port": 80}]),
            route("web-only")]
    tr = translate(BASE + objs)
    assert not tr.errors, tr.errors
    routes = tr.ingress.routes
    assert routes[("TLSRoute", "web", "a")][0].accepted[:2] == (True, "Accepted")
    assert routes[("TLSRoute", "web", "a")][0].resolved[:2] == (False, "BackendNotFound")
    assert routes[("TLSRoute", "web", "elsewhere")][0].accepted[:2] == (False, "NoMatchingListenerHostname")
    assert routes[("TCPRoute", "web", "db")][0].accepted[:2] == (True, "Accepted")
    # the HTTPRoute attaches to the HTTP listener only: TLS/TCP listeners do not take it
    assert routes[("HTTPRoute", "web", "web-only")][0].accepted[:2] == (True, "Accepted")
    lns = {ln.name: ln for ln in tr.ingress.gateways[0].listeners}
    assert [wr.hostname for wr in lns["http"].hosts] == ["*"]
    [a] = lns["pass"].hosts          # only the listener's *.example.com side of route a
    assert a.hostname == "a.example.com" and lns["pass"].protocol == "TLS"
    assert [(d.host, d.service, d.port, d.weight) for d in a.tcp[0].destinations] == [
        ("echo.web.svc.cluster.local", "web/echo", 80, 3),
        ("gone.web.svc.cluster.local", "", 80, 1)]     # unresolved: its share of connections is rejected
    [db] = lns["tcp"].hosts
    assert db.hostname == "*" and db.tcp[0].destinations[0].service == "web/echo"
    st = {ls.name: ls for ls in tr.ingress.listeners["web/gw"]}
    assert (st["http"].attached, st["pass"].attached, st["tcp"].attached) == (1, 2, 1)
    assert (st["pass"].kinds, st["tcp"].kinds, st["http"].kinds) == (("TLSRoute",), ("TCPRoute",),
                                                                      ("HTTPRoute", "GRPCRoute"))
    status = ingress_status.desired([*objs], tr.ingress)
    kinds = {ln["name"]: [k["kind"] for k in ln["supportedKinds"]] for ln in status[("Gateway", "web", "gw")]["listeners"]}
    assert kinds == {"http": ["HTTPRoute", "GRPCRoute"], "pass": ["TLSRoute"], "tcp": ["TCPRoute"]}
    parent = status[("TLSRoute", "web", "a")]["parents"][0]
    assert {c["type"]: c["reason"] for c in parent["conditions"]} == {"Accepted": "Accepted",
                                                                      "ResolvedRefs": "BackendNotFound"}


def test_a_route_kind_the_listener_cannot_carry_is_not_allowed() -> None:
    only_tcp = {**PASS, "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}}
    tr = translate(BASE + [gateway(only_tcp), tls_route("a", ["a.example.com"], [{"name": "echo", "port": 80}]),
                           tcp_route("db", [{"name": "echo", "port": 80}], sectionName="pass")])
    assert tr.ingress.routes[("TLSRoute", "web", "a")][0].accepted[:2] == (False, "NotAllowedByListeners")
    assert tr.ingress.routes[("TCPRoute", "web", "db")][0].accepted[:2] == (False, "NotAllowedByListeners")
    [ls] = tr.ingress.listeners["web/gw"]
    assert ls.resolved[:2] == (False, "InvalidRouteKinds") and ls.kinds == ()


def test_the_kinds_are_served_and_their_schema_refuses_what_is_not_built() -> None:
    assert unsupported_kind(GW, "TLSRoute") is None and unsupported_kind(GW, "TCPRoute") is None
    assert not validate_object(tls_route("a", ["a.example.com"], [{"name": "echo", "port": 80}]))
    assert not validate_object(tcp_route("db", [{"name": "echo", "port": 80}]))
    two_rules = tcp_route("db", [{"name": "echo", "port": 80}])
    two_rules["spec"]["rules"] *= 2
    mesh = tcp_route("db", [{"name": "echo", "port": 80}], kind="Service", group="")
    no_port = tls_route("a", ["a.example.com"], [{"name": "echo"}])
    for obj, path, why in ((two_rules, "spec.rules", "one rule"),
                           (mesh, "spec.parentRefs[0]", "must name an ingress Gateway"),
                           (no_port, "spec.rules[0].backendRefs[0].port", "required")):
        errs = validate_object(obj)
        assert any(e.path == path and why in e.reason for e in errs), errs


@pytest.mark.parametrize("listener", [PASS, TCP])
def test_tls_and_tcp_listeners_are_valid(listener: dict[str, Any]) -> None:
    assert not validate_object(gateway(listener))


def test_a_route_on_a_waypoint_gateway_is_warned_about_not_dropped_silently() -> None:
    waypoint = {**gateway({"name": "mesh", "port": 15008, "protocol": "HBONE"}, cls="ambit-waypoint")}
    tr = translate(BASE + [waypoint, tcp_route("db", [{"name": "echo", "port": 80}])])
    assert not tr.errors, tr.errors
    [w] = tr.ingress.warnings
    assert w.ref == "TCPRoute/web/db" and w.path == "spec.parentRefs[0]" and "ambit-waypoint" in w.reason
