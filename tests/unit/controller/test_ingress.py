"""Ingress Gateways as pure functions: listener/route attachment (sectionName, port, allowedRoutes,
hostname intersection), backend and certificate references, the IngressGateway the gateway pods
receive, the status Gateway API asks for, and the schema's refusals (controller.translate.ingress,
controller.waypoints.ingress_status, controller.kinds.gateway)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.translate import translate
from controller.translate.ingress import intersect, route_hostnames
from controller.validation import validate_object
from controller.waypoints import ingress_status

GW = "gateway.networking.k8s.io/v1"


def tls_secret(name: str, ns: str = "web", host: str = "a.example.com") -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": ns},
            "stringData": {"tls.crt": cert.public_bytes(serialization.Encoding.PEM).decode(),
                           "tls.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()).decode()}}


def gateway(*listeners: dict[str, Any], cls: str = "ambit") -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "gw", "namespace": "web", "generation": 2},
            "spec": {"gatewayClassName": cls, "listeners": list(listeners)}}


def route(name: str, ns: str = "web", hostnames: list[str] | None = None, backend_ns: str | None = None,
          backend: str = "echo", **parent: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"name": backend, "port": 80}
    if backend_ns:
        b["namespace"] = backend_ns
    spec: dict[str, Any] = {"parentRefs": [{"name": "gw", "namespace": "web", **parent}],
                            "rules": [{"backendRefs": [b]}]}
    if hostnames:
        spec["hostnames"] = hostnames
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns}, "spec": spec}


BASE = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": {"ingress": "yes"}}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "web"},
     "spec": {"clusterIP": "10.96.0.50", "selector": {"app": "echo"}, "ports": [{"port": 80}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "team"},
     "spec": {"clusterIP": "10.96.0.51", "selector": {"app": "echo"}, "ports": [{"port": 80}]}},
]
HTTP = {"name": "http", "port": 80, "protocol": "HTTP"}


def https(name: str, host: str, secret: str, **tls: Any) -> dict[str, Any]:
    return {"name": name, "port": 443, "protocol": "HTTPS", "hostname": host,
            "tls": {"certificateRefs": [{"name": secret}], **tls}}


def verdicts(objs: list[dict[str, Any]]) -> dict[str, tuple[bool, str]]:
    tr = translate(BASE + objs)
    assert not tr.errors, tr.errors
    return {k[2]: (ps[0].accepted[0], ps[0].accepted[1]) for k, ps in tr.ingress.routes.items()}


@pytest.mark.parametrize(("listener", "route_host", "want"), [
    ("", "a.example.com", "a.example.com"),
    ("a.example.com", "a.example.com", "a.example.com"),
    ("*.example.com", "a.example.com", "a.example.com"),
    ("*.example.com", "a.b.example.com", "a.b.example.com"),
    ("a.example.com", "*.example.com", "a.example.com"),
    ("*.example.com", "*.a.example.com", "*.a.example.com"),
    ("*.a.example.com", "*.example.com", "*.a.example.com"),
    ("*.example.com", "example.com", None),
    ("a.example.com", "b.example.com", None),
    ("*.example.com", "a.example.org", None),
])
def test_hostname_intersection(listener: str, route_host: str, want: str | None) -> None:
    assert intersect(listener, route_host) == want


def test_route_hostnames_with_empty_sides() -> None:
    assert route_hostnames("", []) == ["*"]
    assert route_hostnames("a.example.com", []) == ["a.example.com"]
    assert route_hostnames("*.example.com", ["a.example.com", "x.org"]) == ["a.example.com"]
    assert route_hostnames("a.example.com", ["x.org"]) == []


def test_attachment_by_section_port_namespace_and_hostname() -> None:
    sel = {"name": "team", "port": 8080, "protocol": "HTTP",
           "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"ingress": "yes"}}}}}
    everyone = {"name": "all", "port": 8081, "protocol": "HTTP", "hostname": "*.example.com",
                "allowedRoutes": {"namespaces": {"from": "All"}}}
    got = verdicts([gateway(HTTP, sel, everyone),
                    route("same"),                                            # Same namespace: http
                    route("team", ns="team", sectionName="team"),
                    route("team-on-http", ns="team", sectionName="http"),      # http admits web only
                    route("other-on-team", ns="other", sectionName="team"),    # the selector does not match
                    route("by-port", ns="other", port=8081, hostnames=["x.example.com"]),
                    route("no-host", ns="other", port=8081, hostnames=["x.example.org"]),
                    route("no-section", sectionName="nope")])
    assert got == {"same": (True, "Accepted"), "team": (True, "Accepted"),
                   "team-on-http": (False, "NotAllowedByListeners"),
                   "other-on-team": (False, "NotAllowedByListeners"),
                   "by-port": (True, "Accepted"), "no-host": (False, "NoMatchingListenerHostname"),
                   "no-section": (False, "NoMatchingParent")}


def test_backend_refs_resolved_not_found_and_not_permitted() -> None:
    tr = translate(BASE + [gateway({**HTTP, "allowedRoutes": {"namespaces": {"from": "All"}}}),
                           route("ok"), route("missing", backend="nope"), route("cross", backend_ns="team"),
                           route("cross-ns", ns="team", hostnames=["t.example.com"])])
    res = {k[2]: ps[0].resolved[:2] for k, ps in tr.ingress.routes.items()}
    assert res == {"ok": (True, "ResolvedRefs"), "missing": (False, "BackendNotFound"),
                   "cross": (False, "RefNotPermitted"), "cross-ns": (True, "ResolvedRefs")}
    # an unresolved backend keeps no Service: the waypoint engine answers 500 for it (Gateway API)
    hosts = {wr.hostname: wr for wr in tr.ingress.gateways[0].listeners[0].hosts}
    services = {r.source: r.destinations[0].service for r in hosts["*"].http}
    assert services == {"HTTPRoute/web/ok": "web/echo", "HTTPRoute/web/missing": "",
                        "HTTPRoute/web/cross": ""}
    assert hosts["t.example.com"].http[0].destinations[0].service == "team/echo"
    # routes attached to an ingress Gateway are no waypoint routes
    assert not tr.waypoint_routes


def grant(frm_kind: str, frm_ns: str, to_kind: str, name: str = "", ns: str = "team") -> dict[str, Any]:
    to = {"group": "", "kind": to_kind, **({"name": name} if name else {})}
    return {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": f"g-{frm_kind.lower()}-{name or 'all'}", "namespace": ns},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": frm_kind, "namespace": frm_ns}],
                     "to": [to]}}


def test_reference_grants_permit_cross_namespace_backends_and_certificates() -> None:
    team_svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "namespace": "team"},
                "spec": {"clusterIP": "10.96.0.52", "selector": {"app": "other"}, "ports": [{"port": 80}]}}
    cross_https = {**https("x", "x.example.com", "x"), "tls": {"certificateRefs": [{"name": "cert-x",
                                                                                    "namespace": "team"}]}}
    objs = [team_svc, tls_secret("cert-x", ns="team", host="x.example.com"), gateway(HTTP, cross_https),
            route("cross", backend_ns="team"), route("cross-other", backend_ns="team", backend="other")]
    # no grant: neither is permitted
    tr = translate(BASE + objs)
    assert {k[2]: ps[0].resolved[:2] for k, ps in tr.ingress.routes.items()} == {
        "cross": (False, "RefNotPermitted"), "cross-other": (False, "RefNotPermitted")}
    assert tr.ingress.listeners["web/gw"][1].resolved[:2] == (False, "RefNotPermitted")
    # grants in the target namespace: HTTPRoutes from web to the Service named echo only; Gateways
    # from web to every Secret. A grant elsewhere, or for another kind, permits nothing.
    tr = translate(BASE + objs + [grant("HTTPRoute", "web", "Service", "echo"), grant("Gateway", "web", "Secret"),
                                  grant("HTTPRoute", "web", "Service", ns="web"),
                                  grant("GRPCRoute", "web", "Service", "other")])
    assert not tr.errors, tr.errors
    assert {k[2]: ps[0].resolved[:2] for k, ps in tr.ingress.routes.items()} == {
        "cross": (True, "ResolvedRefs"), "cross-other": (False, "RefNotPermitted")}
    assert tr.ingress.listeners["web/gw"][1].resolved[:2] == (True, "ResolvedRefs")
    listeners = {ln.name: ln for ln in tr.ingress.gateways[0].listeners}
    assert listeners["x"].certificates[0].name == "team/cert-x"
    services = {r.source: r.destinations[0].service for r in listeners["http"].hosts[0].http}
    assert services == {"HTTPRoute/web/cross": "team/echo", "HTTPRoute/web/cross-other": ""}


def test_grpc_routes_attach_too_and_unsupported_route_kinds_are_reported() -> None:
    grpc = {"apiVersion": GW, "kind": "GRPCRoute", "metadata": {"name": "g", "namespace": "web"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                {"matches": [{"method": {"service": "echo.Echo"}}], "backendRefs": [{"name": "echo", "port": 80}]}]}}
    tcp_only = {"name": "tcp-kinds", "port": 81, "protocol": "HTTP",
                "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}}
    tr = translate(BASE + [gateway(HTTP, tcp_only), grpc, route("r")])
    assert tr.ingress.routes[("GRPCRoute", "web", "g")][0].accepted[:2] == (True, "Accepted")
    [star] = tr.ingress.gateways[0].listeners[0].hosts
    assert [(r.source, r.grpc, r.matches[0].path.value) for r in star.http] == [
        ("GRPCRoute/web/g", True, "/echo.Echo/"), ("HTTPRoute/web/r", False, "/")]
    st = {ls.name: ls.resolved[:2] for ls in tr.ingress.listeners["web/gw"]}
    assert st["tcp-kinds"] == (False, "InvalidRouteKinds")


def test_listeners_certificates_and_virtual_hosts() -> None:
    tr = translate(BASE + [tls_secret("a"), tls_secret("b", host="b.example.com"),
                           {**tls_secret("plain"), "type": "Opaque"},
                           {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                            "metadata": {"name": "junk", "namespace": "web"},
                            "stringData": {"tls.crt": "nope", "tls.key": "nope"}},
                           gateway(HTTP, https("a", "a.example.com", "a", options={"ambit.io/min-tls-version": "1.3"}),
                                   https("b", "b.example.com", "b"), https("c", "c.example.com", "plain"),
                                   https("d", "d.example.com", "junk"),
                                   {**https("e", "e.example.com", "a"),
                                    "tls": {"certificateRefs": [{"name": "a", "namespace": "team"}]}}),
                           route("r", hostnames=["a.example.com", "b.example.com"])])
    g = tr.ingress.gateways[0]
    # HTTPS listeners without a usable certificate are not served at all
    assert [(ln.name, ln.port, ln.tls_min_version, len(ln.certificates)) for ln in g.listeners] == [
        ("http", 80, "", 0), ("a", 443, "1.3", 1), ("b", 443, "", 1)]
    assert [[h.hostname for h in ln.hosts] for ln in g.listeners] == [
        ["a.example.com", "b.example.com"], ["a.example.com"], ["b.example.com"]]
    st = {ls.name: (ls.attached, ls.resolved[:2]) for ls in tr.ingress.listeners["web/gw"]}
    assert st == {"http": (1, (True, "ResolvedRefs")), "a": (1, (True, "ResolvedRefs")),
                  "b": (1, (True, "ResolvedRefs")), "c": (0, (False, "InvalidCertificateRef")),
                  "d": (0, (False, "InvalidCertificateRef")), "e": (0, (False, "RefNotPermitted"))}
    # the keys travel to that gateway only
    assert g.resource_name == "web/gw" and "BEGIN PRIVATE KEY" in g.listeners[1].certificates[0].key_pem


def test_conflicting_listeners_are_reported_and_not_served() -> None:
    gw = gateway(HTTP, {"name": "same-host", "port": 80, "protocol": "HTTP"},
                 https("tls-on-80", "a.example.com", "a") | {"port": 80}, {"name": "alt", "port": 81, "protocol": "HTTP"})
    tr = translate(BASE + [tls_secret("a"), gw])
    assert [ln.name for ln in tr.ingress.gateways[0].listeners] == ["http", "alt"]
    st = ingress_status.gateway_status(gw, None, tr.ingress.listeners["web/gw"])
    got = {ln["name"]: {c["type"]: (c["status"], c["reason"]) for c in ln["conditions"]} for ln in st["listeners"]}
    assert got["same-host"]["Conflicted"] == ("True", "HostnameConflict")
    assert got["tls-on-80"]["Conflicted"] == ("True", "ProtocolConflict")
    assert got["tls-on-80"]["Programmed"] == ("False", "Invalid")
    assert got["http"]["Conflicted"] == ("False", "NoConflicts") and got["alt"]["Accepted"] == ("True", "Accepted")


def test_status_conditions_and_addresses() -> None:
    gw = gateway(HTTP, https("a", "a.example.com", "missing"))
    routes = [route("r"), route("off", sectionName="a", hostnames=["x.org"])]
    tr = translate(BASE + [gw, *routes])
    svc = {"kind": "Service", "metadata": {"name": "gw", "namespace": "web"},
           "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
    out = ingress_status.desired([gw, svc, *routes], tr.ingress)
    s = out[("Gateway", "web", "gw")]
    assert {c["type"]: (c["status"], c["reason"]) for c in s["conditions"]} == {
        "Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    assert s["addresses"] == [{"type": "IPAddress", "value": "203.0.113.7"}]
    lst = {ln["name"]: {c["type"]: (c["status"], c["reason"]) for c in ln["conditions"]} for ln in s["listeners"]}
    assert lst["http"]["Programmed"] == ("True", "Programmed")
    assert lst["a"]["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert lst["a"]["Programmed"] == ("False", "Invalid")
    r = out[("HTTPRoute", "web", "off")]["parents"][0]
    assert r["controllerName"] == "ambit.io/gateway-controller" and r["parentRef"]["sectionName"] == "a"
    assert {c["type"]: c["reason"] for c in r["conditions"]} == {"Accepted": "NoMatchingListenerHostname",
                                                                  "ResolvedRefs": "ResolvedRefs"}
    # without a load balancer address: accepted, not programmed
    s = ingress_status.desired([gw], tr.ingress)[("Gateway", "web", "gw")]
    assert {c["type"]: c["reason"] for c in s["conditions"]}["Programmed"] == "AddressNotAssigned"
    # written once: the same status again changes nothing
    gw2 = {**gw, "status": out[("Gateway", "web", "gw")]}
    written = [{**o, "status": out[("HTTPRoute", "web", o["metadata"]["name"])]} for o in routes]
    assert ingress_status.desired([gw2, svc, *written], tr.ingress) == {}


@pytest.mark.parametrize(("listener", "path", "reason"), [
    ({"name": "u", "port": 9000, "protocol": "UDP"}, "spec.listeners[0].protocol", "not supported"),
    ({"name": "p", "port": 443, "protocol": "HTTPS", "tls": {"mode": "Passthrough", "certificateRefs": [{"name": "a"}]}},
     "spec.listeners[0].tls.mode", "use protocol TLS"),
    ({"name": "t", "port": 9000, "protocol": "TCP", "hostname": "a.example.com"}, "spec.listeners[0].hostname",
     "must not be set when protocol is TCP"),
    ({"name": "t", "port": 9000, "protocol": "TCP", "tls": {"mode": "Passthrough"}}, "spec.listeners[0].tls",
     "must not be set"),
    ({"name": "s", "port": 8443, "protocol": "TLS"}, "spec.listeners[0].tls", "required"),
    ({"name": "s", "port": 8443, "protocol": "TLS", "tls": {"certificateRefs": [{"name": "a"}]}},
     "spec.listeners[0].tls.mode", "must use mode Passthrough"),
    ({"name": "s", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough", "certificateRefs": [{"name": "a"}]}},
     "spec.listeners[0].tls.certificateRefs", "backend presents its own certificate"),
    ({"name": "n", "port": 443, "protocol": "HTTPS"}, "spec.listeners[0].tls", "required"),
    ({"name": "o", "port": 443, "protocol": "HTTPS",
      "tls": {"certificateRefs": [{"name": "a"}], "options": {"ambit.io/min-tls-version": "1.1"}}},
     "spec.listeners[0].tls.options.ambit.io/min-tls-version", "must be one of 1.2, 1.3"),
    ({"name": "o", "port": 443, "protocol": "HTTPS",
      "tls": {"certificateRefs": [{"name": "a"}], "options": {"x.io/ciphers": "all"}}},
     "spec.listeners[0].tls.options.x.io/ciphers", "unknown TLS option"),
    ({"name": "v", "port": 443, "protocol": "HTTPS",
      "tls": {"certificateRefs": [{"name": "a"}], "frontendValidation": {}}},
     "spec.listeners[0].tls.frontendValidation", "not supported"),
])
def test_schema_refuses_what_is_not_built(listener: dict[str, Any], path: str, reason: str) -> None:
    errs = validate_object(gateway(listener))
    assert any(e.path == path and reason in e.reason for e in errs), errs
