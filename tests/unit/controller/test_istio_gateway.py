"""Istio's networking.istio.io Gateway + VirtualService(gateways: [...]) as pure functions: the
(group, kind)-keyed registry, the schema's refusals, and the translation into the same
IngressListeners a Gateway API Gateway produces (controller.translate.istio_gateway)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.kinds import by_name, spec_of
from controller.translate import translate
from controller.validation import validate_object
from tests.unit.controller.test_ingress import BASE, HTTP, gateway, tls_secret

NET = "networking.istio.io/v1"

# the ingress gateway's pods: a Gateway API Gateway of class ambit labelled as Istio's installer labels its own
INGRESS = {**gateway(HTTP), "spec": {**gateway(HTTP)["spec"], "infrastructure": {"labels": {"istio": "ingressgateway"}}}}


def istio_gateway(*servers: dict[str, Any], name: str = "bookinfo-gateway", ns: str = "web",
                  selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": NET, "kind": "Gateway", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector or {"istio": "ingressgateway"}, "servers": list(servers)}}


def vs(name: str, hosts: list[str], gateways: list[str], ns: str = "web", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": NET, "kind": "VirtualService", "metadata": {"name": name, "namespace": ns},
            "spec": {"hosts": hosts, "gateways": gateways, "http": [
                {"match": [{"uri": {"prefix": "/productpage"}}], "route": [{"destination": {"host": "echo",
                                                                                            "port": {"number": 80}}}]}],
                     **spec}}


HTTP_8080 = {"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}


def listeners(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    tr = translate(BASE + [INGRESS, *objs])
    return ({ln.name: ln for ln in tr.ingress.gateways[0].listeners if ln.name != "http"},
            [f"{e.path}: {e.reason}" for e in tr.errors + tr.ingress.warnings])


def test_registry_is_keyed_by_group_and_kind() -> None:
    ist, gapi = spec_of(istio_gateway(HTTP_8080)), spec_of(INGRESS)
    assert ist is not None and gapi is not None and ist is not gapi
    assert "servers" in ist.spec_schema.fields and "listeners" in gapi.spec_schema.fields
    assert by_name("gateway") is gapi and by_name("gateway.networking.istio.io") is ist
    assert spec_of({**istio_gateway(HTTP_8080), "apiVersion": "networking.ambit.io/v1"}) is ist


def test_bookinfo_gateway_and_virtual_service() -> None:
    """Istio's samples/bookinfo/networking/bookinfo-gateway.yaml, in shape."""
    got, errors = listeners([istio_gateway(HTTP_8080), vs("bookinfo", ["*"], ["bookinfo-gateway"])])
    assert errors == []
    ln = got["web/bookinfo-gateway/http/*"]
    assert (ln.port, ln.protocol, ln.hostname) == (8080, "HTTP", "")
    [vhost] = ln.hosts
    [r] = vhost.http
    assert vhost.hostname == "*" and r.matches[0].path.value == "/productpage"
    assert r.destinations[0].host == "echo.web.svc.cluster.local" and r.source == "VirtualService/web/bookinfo"


def test_bound_virtual_service_is_not_a_mesh_route_unless_mesh_is_listed() -> None:
    tr = translate(BASE + [INGRESS, istio_gateway(HTTP_8080), vs("edge", ["echo"], ["web/bookinfo-gateway"]),
                           vs("both", ["echo"], ["bookinfo-gateway", "mesh"])])
    assert [s for w in tr.waypoint_routes for s in w.sources] == ["VirtualService/web/both"]
    [ln] = [ln for ln in tr.ingress.gateways[0].listeners if ln.port == 8080]
    assert sorted(r.source for h in ln.hosts for r in h.http) == ["VirtualService/web/both",
                                                                   "VirtualService/web/edge"]


def test_https_with_credential_name_host_intersection_and_namespace_form() -> None:
    server = {"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
              "hosts": ["web/*.example.com", "team/b.example.com"],
              "tls": {"mode": "SIMPLE", "credentialName": "cert-a", "minProtocolVersion": "TLSV1_3"}}
    got, errors = listeners([tls_secret("cert-a"), istio_gateway(server),
                             vs("a", ["a.example.com", "other.org"], ["bookinfo-gateway"]),
                             vs("b", ["b.example.com"], ["web/bookinfo-gateway"], ns="team"),
                             vs("c", ["c.example.com"], ["web/bookinfo-gateway"], ns="other")])
    assert errors == []
    wild, b = got["web/bookinfo-gateway/https/web/*.example.com"], got["web/bookinfo-gateway/https/team/b.example.com"]
    assert (wild.port, wild.protocol, wild.hostname, wild.tls_min_version) == (443, "HTTPS", "*.example.com", "1.3")
    assert wild.certificates[0].name == "web/cert-a" and "BEGIN PRIVATE KEY" in wild.certificates[0].key_pem
    # ns/host admits that namespace's VirtualServices only, and only the hosts both sides accept
    assert [h.hostname for h in wild.hosts] == ["a.example.com"]
    assert [(h.hostname, [r.source for r in h.http]) for h in b.hosts] == [("b.example.com", ["VirtualService/team/b"])]
    # the hosts of one server share its TLS connections (a Host of the other is not misdirected)
    assert wild.server == b.server == "web/bookinfo-gateway/https"


def test_https_redirect_and_match_level_gateways() -> None:
    redirect = {"port": {"number": 80, "name": "http-redirect", "protocol": "HTTP"}, "hosts": ["a.example.com"],
                "tls": {"httpsRedirect": True}}
    narrowed = vs("narrow", ["*.example.com"], ["bookinfo-gateway", "mesh"])   # "*" is refused with "mesh"
    narrowed["spec"]["http"][0]["match"] = [{"uri": {"prefix": "/mesh-only"}, "gateways": ["mesh"]}]
    got, errors = listeners([istio_gateway(redirect, HTTP_8080), narrowed])
    # port 80 is also the Gateway API listener's (HTTP, no hostname): the Istio server shares it
    [vhost] = got["web/bookinfo-gateway/http-redirect/a.example.com"].hosts
    assert vhost.hostname == "a.example.com"
    [r] = vhost.http
    assert (r.redirect.scheme, r.redirect.code, r.redirect.derive_port) == ("https", 301, "FROM_PROTOCOL_DEFAULT")
    # the only match is bound to the mesh: nothing of it at the gateway
    assert [r for h in got["web/bookinfo-gateway/http/*"].hosts for r in h.http] == [] and errors == []


def test_a_bound_virtual_services_prefix_rewrite_redirect_is_served_at_the_gateway() -> None:
    """The ingress gateway takes the VirtualService's routes through the same translation as the
    mesh (and the same `location` in the waypoint): the matched prefix is swapped."""
    moved = vs("moved", ["*"], ["bookinfo-gateway"])
    moved["spec"]["http"] = [{"match": [{"uri": {"prefix": "/reviews/"}}],
                              "redirect": {"prefixRewrite": "/productpage/", "redirectCode": 308}}]
    assert validate_object(moved) == []
    got, errors = listeners([istio_gateway(HTTP_8080), moved])
    [r] = [r for h in got["web/bookinfo-gateway/http/*"].hosts for r in h.http]
    assert (r.redirect.path, r.redirect.path_mode, r.redirect.code) == ("/productpage/", "prefix", 308)
    assert r.matches[0].path.value == "/reviews/" and errors == []


def test_http_source_matches_are_reported_and_not_served_at_the_ingress_gateway() -> None:
    """Clients of an ingress gateway are outside the mesh: an http match on sourceLabels or
    sourceNamespace can never match there. Said, as for tls/tcp matches, and left out: a route
    whose every match is left out is not served there (it must not become a catch-all)."""
    edge = vs("edge", ["*.svc.cluster.local"], ["bookinfo-gateway", "mesh"])     # "*" is refused with "mesh"
    dest = edge["spec"]["http"][0]["route"]
    edge["spec"]["http"] = [
        {"match": [{"uri": {"prefix": "/admin"}, "sourceLabels": {"app": "curl"}}], "route": dest},
        {"match": [{"uri": {"prefix": "/a"}, "sourceNamespace": "ops"}, {"uri": {"prefix": "/b"}}], "route": dest},
        {"route": dest}]
    tr = translate(BASE + [INGRESS, istio_gateway(HTTP_8080), edge])
    assert [f"{e.path}: {e.reason}" for e in tr.ingress.warnings] == [
        f"spec.http[{i}].match[0]: {attr} cannot be matched at ingress gateway web/bookinfo-gateway (its clients "
        "are outside the mesh); this match is not served there" for i, attr in ((0, "sourceLabels"),
                                                                                (1, "sourceNamespace"))]
    [ln] = [ln for ln in tr.ingress.gateways[0].listeners if ln.port == 8080]
    [vhost] = ln.hosts
    assert [[m.path.value if m.path else None for m in r.matches] for r in vhost.http] == [["/b"], []]
    # the mesh keeps every match: in-mesh clients do carry labels and a namespace
    mesh = next(w for w in tr.waypoint_routes if w.http)
    assert [m.source_labels for m in mesh.http[0].matches] == [{"app": "curl"}]


def test_what_cannot_be_served_is_reported() -> None:
    https = {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["a.example.com"],
             "tls": {"mode": "SIMPLE", "credentialName": "missing"}}
    clash = {"port": {"number": 80, "name": "h2", "protocol": "HTTPS"}, "hosts": ["*"],
             "tls": {"mode": "SIMPLE", "credentialName": "cert-a"}}
    got, errors = listeners([tls_secret("cert-a"), istio_gateway(https, clash),
                             istio_gateway(HTTP_8080, name="nowhere", selector={"app": "none"}),
                             vs("t", ["*"], ["bookinfo-gateway"], tcp=[{"route": [{"destination": {"host": "echo"}}]}])])
    # (the tcp route: served by TCP servers only; this Gateway has none, as in Istio nothing takes it)
    assert got == {}
    assert any(e.startswith("spec.servers[0].tls.credentialName: Secret web/missing does not exist") for e in errors)
    assert any("port 80 host * on ingress gateway web/gw: ProtocolConflict" in e for e in errors)
    assert any(e.startswith("spec.selector: selects no ingress gateway's pods") for e in errors)


def test_tls_passthrough_and_tcp_servers_take_the_virtual_services_tls_and_tcp_routes() -> None:
    """Istio's ingress-sni-passthrough task (nginx-gateway, PASSTHROUGH, tls.match.sniHosts) and its
    TCP traffic shifting task (tcp-echo-gateway, tcp routes with weights), in shape."""
    passthrough = {"port": {"number": 443, "name": "https", "protocol": "TLS"}, "hosts": ["*.example.com"],
                   "tls": {"mode": "PASSTHROUGH"}}
    tcp = {"port": {"number": 31400, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}
    dest = {"destination": {"host": "echo", "port": {"number": 80}}}
    nginx = vs("nginx", ["nginx.example.com", "other.example.org"], ["bookinfo-gateway"], http=[], tls=[
        {"match": [{"port": 443, "sniHosts": ["nginx.example.com"]}], "route": [dest]},
        {"match": [{"sniHosts": ["other.example.org"]}], "route": [dest]},          # outside the server's host
        {"match": [{"sniHosts": ["nginx.example.com"]}], "route": [dest]},          # shadowed by the first
        {"match": [{"port": 8443, "sniHosts": ["nginx.example.com"]}], "route": [dest]},  # another port
        {"match": [{"sniHosts": ["nginx.example.com"], "sourceLabels": {"app": "a"}}], "route": [dest]}])
    echo = vs("tcp-echo", ["*"], ["bookinfo-gateway"], http=[], tcp=[
        {"match": [{"port": 31400}], "route": [{**dest, "weight": 80},
                                               {"destination": {"host": "echo", "subset": "v2",
                                                                "port": {"number": 80}}, "weight": 20}]}])
    got, errors = listeners([istio_gateway(passthrough, tcp), nginx, echo])
    assert errors == ["spec.tls[4].match[0]: sourceLabels cannot be matched at ingress gateway web/bookinfo-gateway "
                      "(its clients are outside the mesh); this match is not served there"]
    p = got["web/bookinfo-gateway/https/*.example.com"]
    assert (p.port, p.protocol, p.hostname) == (443, "TLS", "*.example.com")
    [h] = p.hosts
    assert h.hostname == "nginx.example.com" and h.tcp[0].source == "VirtualService/web/nginx"
    assert h.tcp[0].destinations[0].service == "web/echo"
    t = got["web/bookinfo-gateway/tcp/*"]
    [star] = t.hosts
    assert (t.protocol, t.hostname, star.hostname) == ("TCP", "", "*")
    assert [(d.subset, d.weight) for d in star.tcp[0].destinations] == [("", 80), ("v2", 20)]


@pytest.mark.parametrize(("server", "path", "reason"), [
    ({"port": {"number": 5353, "name": "dns", "protocol": "UDP"}, "hosts": ["*"]},
     "spec.servers[0].port.protocol", '"UDP" is not supported by Ambit\'s ingress gateway yet'),
    ({"port": {"number": 443, "name": "p", "protocol": "HTTPS"}, "hosts": ["*"], "tls": {"mode": "PASSTHROUGH"}},
     "spec.servers[0].tls.mode", '"PASSTHROUGH" is not supported'),
    ({"port": {"number": 443, "name": "p", "protocol": "TLS"}, "hosts": ["*"], "tls": {"mode": "SIMPLE", "credentialName": "c"}},
     "spec.servers[0].tls.mode", '"SIMPLE" is not supported by Ambit\'s ingress gateway on a TLS server'),
    ({"port": {"number": 443, "name": "p", "protocol": "TLS"}, "hosts": ["*"],
      "tls": {"mode": "PASSTHROUGH", "credentialName": "c"}},
     "spec.servers[0].tls.credentialName", "not used with PASSTHROUGH"),
    ({"port": {"number": 443, "name": "p", "protocol": "TLS"}, "hosts": ["*"]}, "spec.servers[0].tls", "required"),
    ({"port": {"number": 31400, "name": "p", "protocol": "TCP"}, "hosts": ["*"], "tls": {"mode": "PASSTHROUGH"}},
     "spec.servers[0].tls", "must not be set when protocol is TCP"),
    ({"port": {"number": 443, "name": "p", "protocol": "HTTPS"}, "hosts": ["*"], "tls": {"mode": "SIMPLE"}},
     "spec.servers[0].tls.credentialName", "required"),
    ({"port": {"number": 443, "name": "p", "protocol": "HTTPS"}, "hosts": ["*"],
      "tls": {"mode": "SIMPLE", "serverCertificate": "/etc/certs/cert.pem"}},
     "spec.servers[0].tls.serverCertificate", "serverCertificate is not supported"),
    ({"port": {"number": 443, "name": "p", "protocol": "HTTPS"}, "hosts": ["*"],
      "tls": {"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_0"}},
     "spec.servers[0].tls.minProtocolVersion", "TLS 1.2 and 1.3 only"),
    ({"port": {"number": 443, "name": "p", "protocol": "HTTPS"}, "hosts": ["*"],
      "tls": {"mode": "SIMPLE", "credentialName": "c", "subjectAltNames": ["spiffe://partner/app"]}},
     "spec.servers[0].tls.subjectAltNames", "only with mode MUTUAL or OPTIONAL_MUTUAL"),
    ({"port": {"number": 443, "name": "p", "protocol": "HTTPS"}, "hosts": ["*"],
      "tls": {"mode": "MUTUAL", "credentialName": "c", "caCertificates": "/etc/certs/ca.pem"}},
     "spec.servers[0].tls.caCertificates", "the CA is the Secret's ca.crt"),
    ({"port": {"number": 443, "name": "p", "protocol": "HTTPS"}, "hosts": ["*"], "tls": {"mode": "ISTIO_MUTUAL"}},
     "spec.servers[0].tls.mode", '"ISTIO_MUTUAL" is not supported'),
    ({"port": {"number": 80, "name": "p", "protocol": "HTTP"}, "hosts": ["*"], "bind": "0.0.0.0"},
     "spec.servers[0].bind", "bind is not supported"),
    ({"port": {"number": 80, "name": "p", "protocol": "HTTP"}, "hosts": ["a/b/c"]},
     "spec.servers[0].hosts[0]", 'must be "host" or "namespace/host"'),
])
def test_schema_refuses_what_is_not_built(server: dict[str, Any], path: str, reason: str) -> None:
    errs = validate_object(istio_gateway(server))
    assert any(e.path == path and reason in e.reason for e in errs), errs


ISTIO_DOCS = {
    # samples/bookinfo/networking/bookinfo-gateway.yaml
    "bookinfo": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
    # tasks/traffic-management/ingress/ingress-control (httpbin-gateway)
    "httpbin": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["httpbin.example.com"]}],
    # tasks/traffic-management/ingress/secure-ingress: several hosts, one credential each
    "mygateway": [{"port": {"number": 443, "name": "https-httpbin", "protocol": "HTTPS"},
                   "tls": {"mode": "SIMPLE", "credentialName": "httpbin-credential"}, "hosts": ["httpbin.example.com"]},
                  {"port": {"number": 443, "name": "https-helloworld", "protocol": "HTTPS"},
                   "tls": {"mode": "SIMPLE", "credentialName": "helloworld-credential"},
                   "hosts": ["helloworld.example.com"]}],
}


@pytest.mark.parametrize("name", sorted(ISTIO_DOCS))
def test_istio_documentation_gateways_are_accepted(name: str) -> None:
    assert validate_object(istio_gateway(*ISTIO_DOCS[name], name=name)) == []


def test_an_istio_gateway_before_its_ingress_gateway_is_applied_with_a_warning() -> None:
    """Istio accepts a Gateway whose pods do not exist yet: so does Ambit, and says nothing serves it."""
    from controller.waypoints.advisories import advisories
    objs = BASE + [istio_gateway(HTTP_8080)]
    tr = translate(objs)
    assert tr.errors == []
    found = [(a.ref, a.path, a.condition) for a in advisories(objs, translation=tr)]
    assert ("Gateway/web/bookinfo-gateway", "spec.selector", "NotEnforced") in found


def test_mutual_tls_servers_take_the_client_ca_from_the_secrets_ca_crt() -> None:
    """MUTUAL / OPTIONAL_MUTUAL: the client CA is the credentialName Secret's `ca.crt` (Istio's key
    for it); without one the server is not served rather than served without the check."""
    def server(mode: str, cred: str, **tls: Any) -> dict[str, Any]:
        return {"port": {"number": 443, "name": f"https-{cred}", "protocol": "HTTPS"}, "hosts": [f"{cred}.example.com"],
                "tls": {"mode": mode, "credentialName": cred, **tls}}
    with_ca = tls_secret("partners")
    ca_pem = tls_secret("any-ca")["stringData"]["tls.crt"]
    with_ca["stringData"]["ca.crt"] = ca_pem
    got, errors = listeners([with_ca, tls_secret("noca"), istio_gateway(
        server("MUTUAL", "partners", subjectAltNames=["spiffe://partner/app"]), server("MUTUAL", "noca"))])
    assert any(e.startswith("spec.servers[1].tls.credentialName: Secret web/noca has no ca.crt") for e in errors), errors
    [ln] = [ln for ln in got.values() if ln.hostname == "partners.example.com"]
    assert (ln.client_auth, ln.client_ca_pem, ln.client_sans) == ("required", ca_pem, ["spiffe://partner/app"])
    assert not [ln for ln in got.values() if ln.hostname == "noca.example.com"]
    got, errors = listeners([with_ca, istio_gateway(server("OPTIONAL_MUTUAL", "partners"))])
    assert errors == [] and [ln.client_auth for ln in got.values()] == ["optional"]


def test_mutual_tls_from_istios_generic_secret_and_its_cacert_secret() -> None:
    """Istio's mutual TLS ingress guide: `kubectl create secret generic NAME --from-file=tls.key=...
    --from-file=tls.crt=... --from-file=ca.crt=...` (type Opaque), and its older layout: `cert` and
    `key`, the client CA in a Secret `NAME-cacert` (`cacert`). Both are served as istiod reads them;
    before, an Opaque Secret left the server unserved ("not kubernetes.io/tls")."""
    def server(cred: str) -> dict[str, Any]:
        return {"port": {"number": 443, "name": f"https-{cred}", "protocol": "HTTPS"}, "hosts": [f"{cred}.example.com"],
                "tls": {"mode": "MUTUAL", "credentialName": cred}}
    tls = tls_secret("x")["stringData"]
    ca_pem = tls_secret("any-ca")["stringData"]["tls.crt"]
    generic = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "generic", "namespace": "web"},
               "stringData": {**tls, "ca.crt": ca_pem}}
    old = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "old", "namespace": "web"},
           "stringData": {"cert": tls["tls.crt"], "key": tls["tls.key"]}}
    old_ca = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "old-cacert", "namespace": "web"},
              "stringData": {"cacert": ca_pem}}
    got, errors = listeners([generic, old, old_ca, istio_gateway(server("generic"), server("old"))])
    assert errors == [], errors
    by_host = {ln.hostname: ln for ln in got.values()}
    for host in ("generic.example.com", "old.example.com"):
        ln = by_host[host]
        assert (ln.client_auth, ln.client_ca_pem, ln.certificates[0].cert_pem) == ("required", ca_pem, tls["tls.crt"])
