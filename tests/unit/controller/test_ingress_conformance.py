"""Gateway API conformance for Gateways (the GATEWAY_HTTP profile, not the mesh one), the status and
translation half, as pure tests.

Each test is one upstream Go test of kubernetes-sigs/gateway-api `conformance/tests/` (commit
4564255, the one ../shared/upstream/ is from): its YAML, kept unchanged in
tests/fixtures/gateway-api-conformance/ (Apache 2.0, LICENSE there), goes through the REAL
validation, translation (controller.translate) and status (controller.waypoints.ingress_status),
and what the Go test asserts is asserted here: listener `supportedKinds`, `attachedRoutes` and
conditions compared as upstream's `gatewayListenersMatch` compares them (an expected reason of ""
matches any reason; expected kinds must be present, none expected means none), route parents'
conditions as `HTTPRouteMustHaveCondition` does. What upstream sends on the wire is checked here on
the gateway's decision (`waypoint.ingress` selects the listener and virtual host, `route()` the
backend); tests/lab/test_ingress_conformance.py sends some of it with real curl.

Adapted, as upstream's suite itself does at run time: `{GATEWAY_CLASS_NAME}` is `ambit`,
`{GATEWAY_CONTROLLER_NAME}` `ambit.io/gateway-controller`; Namespaces
carry the `kubernetes.io/metadata.name` label the API server adds; the suite's generated Secrets
(`tls-validity-checks-certificate`, and `certificate` in gateway-conformance-web-backend) and CA
ConfigMaps are made here; each ingress Gateway's LoadBalancer Service has an address (the cloud's part).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambit.model import target_port
from controller.sources.kube import KubeSource, make_api_client
from controller.translate import translate
from controller.translate.ingress import CONTROLLER_NAME
from controller.validation import validate_object
from controller.waypoints import gatewayclasses, ingress_status, labstatus
from controller.waypoints.reconcile import KubeWaypointReconciler
from controller.waypoints.render import WaypointDeploySettings
from tests.support.kube_emulator import KubeEmulator
from tests.support.kube_source import running
from tests.support.wait import wait_for
from tests.unit.controller.test_config_translate import pod
from tests.unit.controller.test_ingress import tls_secret
from tests.unit.waypoint.support import HEADER_MODIFIER_CASES
from waypoint import ingress as wi
from waypoint.endpoints import protocol_of, service_port
from waypoint.request import Downstream, Forward, LocalReply, RequestHead
from waypoint.resilience.retry import (
    CONNECT_FAILURE,
    PER_TRY_TIMEOUT,
    RESET,
    RETRY,
    RetryState,
    would_retry_failure,
    would_retry_response,
)
from waypoint.routing import route

Obj = dict[str, Any]
CONF = Path(__file__).resolve().parents[2] / "fixtures" / "gateway-api-conformance"
INFRA, APP, WEB = "gateway-conformance-infra", "gateway-conformance-app-backend", "gateway-conformance-web-backend"
GROUP = "gateway.networking.k8s.io"


def load(name: str) -> list[Obj]:
    """An upstream manifest, as the suite applies it (class and controller names filled in,
    generation 1)."""
    text = (CONF / f"{name}.yaml").read_text().replace("{GATEWAY_CLASS_NAME}", "ambit").replace(
        "{GATEWAY_CONTROLLER_NAME}", CONTROLLER_NAME)
    out = []
    for o in yaml.safe_load_all(text):
        if not o:
            continue
        md = o.setdefault("metadata", {})
        md.setdefault("generation", 1)
        if o["kind"] == "Namespace":
            md.setdefault("labels", {})["kubernetes.io/metadata.name"] = md["name"]
        out.append(o)
    return out


def base() -> list[Obj]:
    """conformance/base/manifests.yaml's Namespaces, Services and Gateways, and the Secrets the suite
    generates."""
    objs = [o for o in load("base-manifests") if o["kind"] in ("Namespace", "Service", "Gateway")]
    for i, o in enumerate(o for o in objs if o["kind"] == "Service"):
        o["spec"]["clusterIP"] = f"10.96.7.{i + 1}"
    ca = tls_secret("ca", ns=INFRA, host="conformance CA")["stringData"]["tls.crt"]
    return objs + [tls_secret("tls-validity-checks-certificate", ns=INFRA, host="example.org"),
                   tls_secret("certificate", ns=WEB)] + [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"ca.crt": ca}}
        for name, ns in (("tls-validity-checks-ca-certificate", INFRA),
                         ("tls-validity-checks-per-port-ca-certificate", INFRA), ("web-backend-cm", WEB))]


def valid(objs: list[Obj]) -> list[Obj]:
    for o in objs:
        assert not validate_object(o), (o["kind"], o["metadata"]["name"], validate_object(o))
    return objs


def load_balancers(objs: list[Obj]) -> list[Obj]:
    """Each Gateway's LoadBalancer Service, with an address (what the cloud does)."""
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": g["metadata"]["name"],
             "namespace": g["metadata"]["namespace"]}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}
            for g in objs if g["kind"] == "Gateway"]


def statuses(objs: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    """(kind, ns, name) -> the status the controller writes, for Gateways and routes."""
    tr = translate(objs)
    assert not tr.errors, tr.errors
    return ingress_status.desired(objs + load_balancers(objs), tr.ingress)


def status_of(*manifests: str) -> dict[tuple[str, str, str], Obj]:
    return statuses(base() + [o for m in manifests for o in valid(load(m))])


def cond(type_: str, status: str, reason: str = "") -> tuple[str, str, str]:
    return (type_, status, reason)


def listener(name: str, kinds: list[str], attached: int, *conds: tuple[str, str, str]) -> Obj:
    return {"name": name, "kinds": kinds, "attached": attached, "conditions": conds}


def listeners_match(st: Obj, expected: list[Obj]) -> None:
    """upstream's gatewayListenersMatch: as many listeners; for each, its supportedKinds hold the
    expected ones (none expected: none at all), its attachedRoutes equal, each expected condition
    present with that status and reason ("" any)."""
    got = {ln["name"]: ln for ln in st["listeners"]}
    assert len(got) == len(expected), sorted(got)
    for e in expected:
        a = got[e["name"]]
        kinds = [(k.get("group", GROUP), k["kind"]) for k in a["supportedKinds"]]
        if e["kinds"] == []:
            assert kinds == [], (e["name"], kinds)
        assert all((GROUP, k) in kinds for k in e["kinds"] or ()), (e["name"], kinds)
        assert a["attachedRoutes"] == e["attached"], (e["name"], a["attachedRoutes"])
        have = {c["type"]: (c["status"], c["reason"]) for c in a["conditions"]}
        for t, s, r in e["conditions"]:
            assert t in have and have[t][0] == s and (not r or have[t][1] == r), (e["name"], t, have.get(t))


def listener_has(st: Obj, name: str, *conds: tuple[str, str, str]) -> None:
    """upstream's GatewayListenerMustHaveConditions: the listener's conditions only."""
    [ln] = [ln for ln in st["listeners"] if ln["name"] == name]
    listeners_match({"listeners": [ln]}, [listener(name, [], ln["attachedRoutes"], *conds) | {"kinds": None}])


def gateway_status(out: dict[tuple[str, str, str], Obj], name: str) -> Obj:
    return out[("Gateway", INFRA, name)]


def route_conds(out: dict[tuple[str, str, str], Obj], name: str, gateway: str, kind: str = "HTTPRoute",
                ns: str = INFRA) -> dict[str, tuple[str, str]]:
    """The route's conditions for its parent `gateway` (upstream: parentRef name and namespace)."""
    parents = [p for p in out[(kind, ns, name)]["parents"] if p["parentRef"]["name"] == gateway]
    assert parents, out[(kind, ns, name)]
    return {c["type"]: (c["status"], c["reason"]) for c in parents[0]["conditions"]}


def all_accepted(out: dict[tuple[str, str, str], Obj], gateway: str, *routes: str) -> None:
    """upstream's GatewayAndHTTPRoutesMustBeAccepted and HTTPRouteMustHaveResolvedRefsConditionsTrue."""
    for r in routes:
        assert route_conds(out, r, gateway) == {"Accepted": ("True", "Accepted"),
                                                "ResolvedRefs": ("True", "ResolvedRefs")}


def latest(st: Obj, generation: int) -> None:
    """upstream's ConditionsHaveLatestObservedGeneration, on the object's and its listeners' conditions."""
    conds = list(st["conditions"]) + [c for ln in st.get("listeners") or [] for c in ln["conditions"]]
    assert conds and all(c["observedGeneration"] == generation for c in conds), conds


# -- what the gateway does with a request (the wire half, decided) -----------------------------------

def views(objs: list[Obj]) -> dict[str, wi.IngressView]:
    tr = translate(objs)
    assert not tr.errors, tr.errors
    return {g.name: wi.build(g) for g in tr.ingress.gateways}


def send(view: wi.IngressView, host: str, path: str = "/", port: int = 80, sni: str | None = None,
         method: str = "GET", headers: dict[str, str] | None = None) -> str:
    """What the gateway answers a request for `host` + `path` on `port` ("ns/service", or the status
    of a local reply): on an HTTPS port the SNI (`sni`, default the host) chose a listener first."""
    p = view.ports[port]
    hostname = host.rsplit(":", 1)[0] if ":" in host else host
    if p.protocol == "HTTPS":
        ln = p.listener_for_sni(sni if sni is not None else hostname)
        assert ln is not None, f"the handshake for {sni!r} fails"
        status = p.misdirected(wi.listener_group(ln), hostname)
        if status:
            return str(status)
    vh = p.virtual_host(hostname)
    if vh is None:
        return "404"
    head = RequestHead(method=method, path=path, authority=host, scheme="http",
                       headers=[(k.lower(), v) for k, v in (headers or {}).items()])
    d = route(p.table, head, Downstream(destination_port=port, hostname=vh), random.Random(1))
    if isinstance(d, Forward):
        return d.service or "500"
    assert isinstance(d, LocalReply)
    return str(d.status)


V1, V2, V3 = (f"{INFRA}/infra-backend-v{i}" for i in (1, 2, 3))


# -- Gateway ---------------------------------------------------------------------------------------

def test_gateway_invalid_route_kind() -> None:
    """GatewayInvalidRouteKind."""
    out = status_of("gateway-invalid-route-kind")
    listeners_match(gateway_status(out, "gateway-only-invalid-route-kind"), [
        listener("http", [], 0, cond("ResolvedRefs", "False", "InvalidRouteKinds"))])
    listeners_match(gateway_status(out, "gateway-supported-and-invalid-route-kind"), [
        listener("http", ["HTTPRoute"], 0, cond("ResolvedRefs", "False", "InvalidRouteKinds"))])


@pytest.mark.parametrize("gw", ["gateway-certificate-nonexistent-secret", "gateway-certificate-unsupported-group",
                                "gateway-certificate-unsupported-kind", "gateway-certificate-malformed-secret"])
def test_gateway_invalid_tls_configuration(gw: str) -> None:
    """GatewayInvalidTLSConfiguration."""
    out = status_of("gateway-invalid-tls-configuration")
    listeners_match(gateway_status(out, gw), [
        listener("https", ["HTTPRoute"], 0, cond("ResolvedRefs", "False", "InvalidCertificateRef"))])


def test_gateway_with_attached_routes() -> None:
    """GatewayWithAttachedRoutes and GatewayWithAttachedRoutesWithPort8080."""
    out = status_of("gateway-with-attached-routes", "gateway-with-attached-routes-with-port-8080")
    ok = (cond("Accepted", "True"), cond("ResolvedRefs", "True"))
    listeners_match(gateway_status(out, "gateway-with-one-attached-route"), [listener("http", ["HTTPRoute"], 1, *ok)])
    listeners_match(gateway_status(out, "gateway-with-two-attached-routes"), [listener("http", ["HTTPRoute"], 2, *ok)])
    assert route_conds(out, "http-route-not-accepted", "gateway-with-two-attached-routes")["Accepted"] == (
        "False", "NoMatchingListenerHostname")
    # attachedRoutes counts a route on a listener whose own references do not resolve
    listeners_match(gateway_status(out, "unresolved-gateway-with-one-attached-unresolved-route"), [
        listener("tls", ["HTTPRoute"], 1, cond("Programmed", "False"), cond("ResolvedRefs", "False"))])
    assert route_conds(out, "http-route-4", "unresolved-gateway-with-one-attached-unresolved-route")[
        "ResolvedRefs"][0] == "False"
    listeners_match(gateway_status(out, "gateway-with-two-listeners-and-one-attached-route"), [
        listener("http-unattached", ["HTTPRoute"], 0, *ok), listener("http", ["HTTPRoute"], 1, *ok)])


@pytest.mark.parametrize(("manifest", "want"), [
    ("gateway-secret-invalid-reference-grant", cond("ResolvedRefs", "False", "RefNotPermitted")),
    ("gateway-secret-missing-reference-grant", cond("ResolvedRefs", "False", "RefNotPermitted")),
    ("gateway-secret-reference-grant-all-in-namespace", cond("ResolvedRefs", "True", "ResolvedRefs")),
    ("gateway-secret-reference-grant-specific", cond("ResolvedRefs", "True", "ResolvedRefs")),
])
def test_gateway_secret_reference_grants(manifest: str, want: tuple[str, str, str]) -> None:
    """GatewaySecretInvalidReferenceGrant, GatewaySecretMissingReferenceGrant,
    GatewaySecretReferenceGrantAllInNamespace, GatewaySecretReferenceGrantSpecific."""
    out = status_of(manifest)
    programmed = cond("Programmed", "True" if want[1] == "True" else "False")
    listeners_match(gateway_status(out, manifest), [listener("https", ["HTTPRoute"], 0, want, programmed)])


def test_gateway_modify_listeners() -> None:
    """GatewayModifyListeners: a listener added serves and counts its route; one removed is gone."""
    objs = base() + valid(load("gateway-modify-listeners"))
    gws = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Gateway"}
    add, remove = gws["gateway-add-listener"], gws["gateway-remove-listener"]
    ok = (cond("Accepted", "True"), cond("ResolvedRefs", "True"))
    add["spec"]["listeners"].append({"name": "http", "port": 80, "protocol": "HTTP", "hostname": "data.test.com",
                                     "allowedRoutes": {"namespaces": {"from": "All"}}})
    remove["spec"]["listeners"] = [ln for ln in remove["spec"]["listeners"] if ln["name"] == "http"]
    for g in (add, remove):
        g["metadata"]["generation"] = 2
    out = statuses(valid(objs))
    listeners_match(gateway_status(out, "gateway-add-listener"), [
        listener("https", ["HTTPRoute"], 1, *ok), listener("http", ["HTTPRoute"], 1, *ok)])
    listeners_match(gateway_status(out, "gateway-remove-listener"), [listener("http", ["HTTPRoute"], 1, *ok)])
    for name in ("gateway-add-listener", "gateway-remove-listener"):
        latest(gateway_status(out, name), 2)
    assert sorted(views(objs)["gateway-remove-listener"].ports) == [80]


def test_gateway_observed_generation_bump() -> None:
    """GatewayObservedGenerationBump: every condition follows the new generation."""
    objs = base() + valid(load("gateway-observed-generation-bump"))
    latest(gateway_status(statuses(objs), "gateway-observed-generation-bump"), 1)
    gw = next(o for o in objs if o["metadata"]["name"] == "gateway-observed-generation-bump")
    gw["spec"]["listeners"].append({"name": "alternate", "hostname": "foo.com", "port": 80, "protocol": "HTTP",
                                    "allowedRoutes": {"namespaces": {"from": "All"}}})
    gw["metadata"]["generation"] = 2
    latest(gateway_status(statuses(valid(objs)), "gateway-observed-generation-bump"), 2)


def test_gatewayclass_observed_generation_bump() -> None:
    """GatewayClassObservedGenerationBump: a class of Ambit's controllerName whose name is not one
    of Ambit's built-in classes is Accepted=False (Unsupported: Ambit chooses the role by class
    name); its observedGeneration follows the spec all the same."""
    [gwc] = valid(load("gatewayclass-observed-generation-bump"))
    st = gatewayclasses.desired_status(gwc)
    assert st is not None and [(c["type"], c["observedGeneration"]) for c in st["conditions"]] == [("Accepted", 1)]
    gwc = {**copy.deepcopy(gwc), "status": st}
    gwc["spec"]["description"] = "new"
    gwc["metadata"]["generation"] = 2
    st = gatewayclasses.desired_status(gwc)
    assert st is not None
    assert [(c["type"], c["status"], c["reason"], c["observedGeneration"]) for c in st["conditions"]] == [
        ("Accepted", "False", "Unsupported", 2)]


def test_gateway_invalid_parameters_ref() -> None:
    """GatewayInvalidParametersRef: Accepted=False InvalidParameters, at the Gateway's generation."""
    objs = base() + valid(load("gateway-invalid-parameters-ref"))
    tr = translate(objs)
    out = ingress_status.desired(objs + load_balancers(objs), tr.ingress,
                                 invalid=labstatus.invalid_parameters(objs, "ambit-system"))
    st = gateway_status(out, "gateway-invalid-parameters-ref")
    assert {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}["Accepted"] == (
        "False", "InvalidParameters")
    latest(st, 1)


def test_gateway_with_invalid_client_certificate_validation() -> None:
    """GatewayWithInvalidClientCertificateValidation (extended): each listener's own CA references
    decide its status; the others are served."""
    st = gateway_status(status_of("gateway-with-invalid-clientcertificate-validation"),
                        "gateway-with-invalid-client-cert-validation")
    not_valid = (cond("Accepted", "False", "NoValidCACertificate"), cond("Programmed", "False"))
    listener_has(st, "https", cond("ResolvedRefs", "True"), cond("Accepted", "True"), cond("Programmed", "True"))
    listener_has(st, "https-unresolved", cond("ResolvedRefs", "False", "InvalidCACertificateRef"), *not_valid)
    listener_has(st, "https-invalid-kind", cond("ResolvedRefs", "False", "InvalidCACertificateKind"), *not_valid)
    listener_has(st, "https-grant-missing", cond("ResolvedRefs", "False", "RefNotPermitted"), *not_valid)
    # the Gateway says some of its listeners are not valid (Gateway API's ListenersNotValid)
    assert {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}["Accepted"] == (
        "True", "ListenersNotValid")


def test_a_gateway_without_a_valid_listener_is_not_accepted() -> None:
    """Gateway API's ListenersNotValid with `Accepted=False` once no listener is valid (upstream's
    GatewayListenerUnsupportedProtocol asks it of a Gateway whose only listener is not accepted):
    here the invalid client-CA listeners of GatewayWithInvalidClientCertificateValidation alone."""
    objs = base() + valid(load("gateway-with-invalid-clientcertificate-validation"))
    gw = next(o for o in objs if o["metadata"]["name"] == "gateway-with-invalid-client-cert-validation")
    gw["spec"]["listeners"] = [ln for ln in gw["spec"]["listeners"] if ln["name"] != "https"]
    st = gateway_status(statuses(objs), "gateway-with-invalid-client-cert-validation")
    assert {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]} == {
        "Accepted": ("False", "ListenersNotValid"), "Programmed": ("False", "Invalid")}


def test_gateway_invalid_default_frontend_client_certificate_validation() -> None:
    """GatewayInvalidDefaultFrontendClientCertificateValidation (extended): a `perPort` validation
    on a port without HTTPS listeners does not touch the HTTP listener there (it is served; Ambit
    warns that the entry applies to nothing), and an unusable `default` leaves the HTTPS listener
    unserved, Accepted=False NoValidCACertificate."""
    objs = base() + valid(load("gateway-invalid-default-frontend-client-certificate-validation"))
    name = "invalid-default-client-validation-config"
    st = gateway_status(statuses(objs), name)
    listener_has(st, "http", cond("ResolvedRefs", "True"), cond("Accepted", "True"), cond("Programmed", "True"))
    listener_has(st, "https", cond("ResolvedRefs", "False", "InvalidCACertificateRef"),
                 cond("Accepted", "False", "NoValidCACertificate"), cond("Programmed", "False"))
    view = views(objs)[name]
    assert sorted(view.ports) == [80] and send(view, "example.org") == V1
    assert [(w.path, "applies to nothing" in w.reason) for w in translate(objs).ingress.warnings] == [
        ("spec.tls.frontend.perPort[0].port", True)]


def _isolation_cases() -> list[tuple[str, str, str]]:
    """GatewayHTTPListenerIsolation's requests: each path reaches only the listener it is named
    after, and only for the Hosts that listener is the most specific match for."""
    owner = {"bar.com": "/empty-hostname", "bar.example.com": "/wildcard-example-com",
             "bar.foo.example.com": "/wildcard-foo-example-com", "abc.foo.example.com": "/abc-foo-example-com"}
    return [(host, path, V1 if owner[host] == path else "404") for host in owner for path in owner.values()]


@pytest.mark.parametrize("gw", ["http-listener-isolation", "http-listener-isolation-with-hostname-intersection"])
@pytest.mark.parametrize(("host", "path", "want"), _isolation_cases())
def test_gateway_http_listener_isolation(gw: str, host: str, path: str, want: str) -> None:
    """GatewayHTTPListenerIsolation (extended): a request is served by the routes of the one listener
    its Host selects (the most specific hostname), never by a less specific listener's route whose
    own hostnames would match it."""
    objs = base() + valid(load("gateway-http-listener-isolation")
                          + load("gateway-http-listener-isolation-with-hostname-intersection"))
    assert send(views(objs)[gw], host, path) == want


# -- HTTPRoute -------------------------------------------------------------------------------------

def test_httproute_hostname_intersection() -> None:
    """HTTPRouteHostnameIntersection."""
    objs = base() + valid(load("httproute-hostname-intersection"))
    out = statuses(objs)
    gw = "httproute-hostname-intersection"
    all_accepted(out, gw, "specific-host-matches-listener-specific-host", "specific-host-matches-listener-wildcard-host",
                 "wildcard-host-matches-listener-specific-host", "wildcard-host-matches-listener-wildcard-host")
    assert route_conds(out, "no-intersecting-hosts", gw)["Accepted"] == ("False", "NoMatchingListenerHostname")
    view = views(objs)[gw]
    cases = [("very.specific.com", "/s1", V1), ("very.specific.com:1234", "/s1", V1), ("non.matching.com", "/s1", "404"),
             ("foo.nonmatchingwildcard.io", "/s1", "404"), ("foo.wildcard.io", "/s1", "404"),
             ("very.specific.com", "/non-matching-prefix", "404"),
             ("foo.wildcard.io", "/s2", V2), ("bar.wildcard.io", "/s2", V2), ("foo.bar.wildcard.io", "/s2", V2),
             ("non.matching.com", "/s2", "404"), ("wildcard.io", "/s2", "404"), ("very.specific.com", "/s2", "404"),
             ("foo.wildcard.io", "/non-matching-prefix", "404"),
             ("very.specific.com", "/s3", V3), ("non.matching.com", "/s3", "404"), ("foo.specific.com", "/s3", "404"),
             ("foo.wildcard.io", "/s3", "404"),
             ("foo.anotherwildcard.io", "/s4", V1), ("bar.anotherwildcard.io", "/s4", V1),
             ("foo.bar.anotherwildcard.io", "/s4", V1), ("anotherwildcard.io", "/s4", "404"),
             ("foo.wildcard.io", "/s4", "404"), ("very.specific.com", "/s4", "404"),
             ("foo.anotherwildcard.io", "/non-matching-prefix", "404")]
    assert [(h, p, send(view, h, p)) for h, p, _ in cases] == cases


H = dict[str, str]


@pytest.mark.parametrize(("manifest", "cases"), [
    ("httproute-path-match-order", [
        ("GET", "/match/exact/one", {}, V3), ("GET", "/match/exact", {}, V2), ("GET", "/match", {}, V1),
        ("GET", "/match/prefix/one/any", {}, V2), ("GET", "/match/prefix/any", {}, V1), ("GET", "/match/any", {}, V3)]),
    ("httproute-method-matching", [
        ("POST", "/", {}, V1), ("GET", "/", {}, V2), ("HEAD", "/", {}, "404"), ("GET", "/path1", {}, V1),
        ("PUT", "/", {"version": "one"}, V2), ("POST", "/path2", {"version": "two"}, V3), ("PATCH", "/path3", {}, V1),
        ("DELETE", "/path4", {"version": "three"}, V1), ("PUT", "/", {}, "404"), ("DELETE", "/path4", {}, "404"),
        ("PATCH", "/path5", {}, V1), ("PATCH", "/", {"version": "four"}, V2)]),
    ("httproute-exact-path-matching", [
        ("GET", "/one", {}, V1), ("GET", "/two", {}, V2), ("GET", "/", {}, "404"), ("GET", "/one/example", {}, "404"),
        ("GET", "/two/", {}, "404"), ("GET", "/Two", {}, "404")]),
    ("httproute-header-matching", [
        ("GET", "/", {"Version": "one"}, V1), ("GET", "/", {"Version": "two"}, V2),
        ("GET", "/", {"Version": "two", "Color": "orange"}, V1), ("GET", "/", {"Version": "two", "Color": "blue"}, V2),
        ("GET", "/", {"Color": "orange"}, "404"), ("GET", "/", {"Some-Other-Header": "one"}, "404"),
        ("GET", "/", {"Color": "blue"}, V1), ("GET", "/", {"Color": "green"}, V1), ("GET", "/", {"Color": "red"}, V2),
        ("GET", "/", {"Color": "yellow"}, V2), ("GET", "/", {"Color": "purple"}, "404")]),
])
def test_httproute_matching_at_the_gateway(manifest: str, cases: list[tuple[str, str, H, str]]) -> None:
    """HTTPRoutePathMatchOrder, HTTPRouteMethodMatching, HTTPRouteExactPathMatching,
    HTTPRouteHeaderMatching: the gateway's manifests (parentRef `same-namespace`), through the
    ingress's listener and virtual host selection to `route()`."""
    objs = base() + valid(load(manifest))
    view = views(objs)["same-namespace"]
    assert [(m, p, h, send(view, "example.com", p, method=m, headers=h)) for m, p, h, _ in cases] == cases


def test_httproute_matching_across_routes() -> None:
    """HTTPRouteMatchingAcrossRoutes: two routes' rules on one host keep Gateway API's precedence."""
    view = views(base() + valid(load("httproute-matching-across-routes")))["same-namespace"]
    cases = [("example.com", "/", {}, V1), ("example.com", "/example", {}, V1), ("example.net", "/example", {}, V1),
             ("example.com", "/example", {"Version": "one"}, V1), ("example.com", "/v2", {}, V2),
             ("example.net", "/v2", {}, V1), ("example.com", "/v2/example", {}, V2),
             ("example.com", "/", {"Version": "two"}, V2)]
    assert [(host, p, h, send(view, host, p, headers=h)) for host, p, h, _ in cases] == cases


@pytest.mark.parametrize(("gw", "port", "authority", "cases"), [
    ("same-namespace", 80, "192.0.2.1", [
        ("/scheme-nil-and-port-nil", "http://example.org"), ("/scheme-nil-and-port-80", "http://example.org"),
        ("/scheme-nil-and-port-8080", "http://example.org:8080"), ("/scheme-https-and-port-nil", "https://example.org"),
        ("/scheme-https-and-port-443", "https://example.org"),
        ("/scheme-https-and-port-8443", "https://example.org:8443")]),
    ("same-namespace-with-http-listener-on-8080", 8080, "192.0.2.1:8080", [
        ("/scheme-nil-and-port-nil", "http://example.org:8080"), ("/scheme-nil-and-port-80", "http://example.org"),
        ("/scheme-https-and-port-nil", "https://example.org")]),
    ("same-namespace-with-https-listener", 443, "example.org", [
        ("/scheme-nil-and-port-nil", "https://example.org"), ("/scheme-nil-and-port-443", "https://example.org"),
        ("/scheme-nil-and-port-8443", "https://example.org:8443"), ("/scheme-http-and-port-nil", "http://example.org"),
        ("/scheme-http-and-port-80", "http://example.org"), ("/scheme-http-and-port-8080", "http://example.org:8080")]),
])
def test_httproute_redirect_port_and_scheme(gw: str, port: int, authority: str, cases: list[tuple[str, str]]) -> None:
    """HTTPRouteRedirectPortAndScheme (extended): without a port the redirect keeps the listener's
    (no scheme) or takes the scheme's well-known one, which is left out of the Location."""
    p = views(base() + valid(load("httproute-redirect-port-and-scheme")))[gw].ports[port]
    scheme = "https" if port == 443 else "http"
    got = []
    for path, _ in cases:
        vh = p.virtual_host(authority.split(":")[0])
        assert vh is not None
        d = route(p.table, RequestHead(method="GET", path=path, authority=authority, scheme=scheme, headers=[]),
                  Downstream(destination_port=port, hostname=vh), random.Random(1))
        assert isinstance(d, LocalReply) and d.status == 302, d
        got.append((path, dict(d.headers)["location"].removesuffix(path)))
    assert got == cases


def forward(manifest: str, path: str, host: str = "example.com", headers: H | None = None) -> Forward:
    """The gateway's decision for a request through upstream's `same-namespace` Gateway."""
    p = views(base() + valid(load(manifest)))["same-namespace"].ports[80]
    vh = p.virtual_host(host)
    assert vh is not None
    d = route(p.table, RequestHead(method="GET", path=path, authority=host, scheme="http",
                                   headers=[(k.lower(), v) for k, v in (headers or {}).items()]),
              Downstream(destination_port=80, hostname=vh), random.Random(1))
    assert isinstance(d, Forward), d
    return d


def joined(pairs: list[tuple[str, str]]) -> H:
    """Headers as upstream's echo reports them: names lower-cased, repeated ones joined with ","."""
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k.lower(), []).append(v)
    return {k: ",".join(v) for k, v in out.items()}


def test_httproute_rewrite_host() -> None:
    """HTTPRouteRewriteHost (extended): the backend sees the rewritten Host, with the rule's header
    edits."""
    decided = {p: forward("httproute-rewrite-host", p, "rewrite.example")
               for p in ("/one", "/two", "/rewrite-host-and-modify-headers")}
    got = [(p, d.service, d.authority) for p, d in decided.items()]
    assert got == [("/one", V1, "one.example.org"), ("/two", V2, "example.org"),
                   ("/rewrite-host-and-modify-headers", V2, "test.example.org")]
    sent = {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"}
    d = forward("httproute-rewrite-host", "/rewrite-host-and-modify-headers", "rewrite.example", sent)
    seen = joined(d.request_headers.apply([(k.lower(), v) for k, v in sent.items()]))
    assert seen == {"x-header-add": "header-val-1", "x-header-add-append": "append-val-1,header-val-2",
                    "x-header-set": "set-overwrites-values"}


# ResponseHeaderModifier's cases are RequestHeaderModifier's, but for what its backend sends on
# /multiple and its route's extra adds on /case-insensitivity
RESPONSE_EXTRA = {"/multiple": ({"X-Header-Remove-1": "val"}, {}),
                  "/case-insensitivity": ({}, {"x-lowercase-add": "lowercase-add", "x-mixedcase-add-1": "mixedcase-add-1",
                                               "x-mixedcase-add-2": "mixedcase-add-2",
                                               "x-uppercase-add": "uppercase-add"})}


@pytest.mark.parametrize(("path", "backend_sets", "want", "absent"), [
    (p, {**sent, **RESPONSE_EXTRA.get(p, ({}, {}))[0]}, {**want, **RESPONSE_EXTRA.get(p, ({}, {}))[1]}, absent)
    for p, sent, want, absent in HEADER_MODIFIER_CASES])
def test_httproute_response_header_modifier(path: str, backend_sets: H, want: H, absent: list[str]) -> None:
    """HTTPRouteResponseHeaderModifier: the response headers the client gets from what the backend
    answered."""
    d = forward("httproute-response-header-modifier", path)
    got = joined(d.response_headers.apply([(k.lower(), v) for k, v in backend_sets.items()]))
    assert {k: got.get(k) for k in want} == want and not set(absent) & set(got)


def test_httproute_request_mirror() -> None:
    """HTTPRouteRequestMirror (extended): infra-backend-v1 answers, every request is mirrored to
    infra-backend-v2 (with the rule's header edits)."""
    for path in ("/mirror", "/mirror-and-modify-headers"):
        d = forward("httproute-request-mirror", path)
        assert d.service == V1 and d.policy is not None
        assert [(m.service, m.port, m.per_million) for m in d.policy.mirrors] == [(V2, 8080, 1_000_000)]


@pytest.mark.parametrize(("manifest", "cases"), [
    ("httproute-timeout-request", [("/request-timeout", 0.5), ("/disable-request-timeout", 0.0)]),
    ("httproute-timeout-backend-request", [("/backend-timeout", 0.5), ("/disable-backend-timeout", 0.0)]),
])
def test_httproute_timeouts(manifest: str, cases: list[tuple[str, float]]) -> None:
    """HTTPRouteTimeoutRequest, HTTPRouteTimeoutBackendRequest (extended): 500ms bounds the request
    (a backend 1 s late: 504, tests/lab/test_ingress_conformance.py), "0s" disables it."""
    policies = [(p, forward(manifest, p).policy) for p, _ in cases]
    assert [(p, pol.timeout if pol else 0.0) for p, pol in policies] == cases


def test_httproute_listener_hostname_matching() -> None:
    """HTTPRouteListenerHostnameMatching: listeners of one port, each with its hostname and route."""
    objs = base() + valid(load("httproute-listener-hostname-matching"))
    all_accepted(statuses(objs), "httproute-listener-hostname-matching", "backend-v1", "backend-v2", "backend-v3")
    view = views(objs)["httproute-listener-hostname-matching"]
    cases = [("bar.com", V1), ("foo.bar.com", V2), ("baz.bar.com", V3), ("boo.bar.com", V3),
             ("multiple.prefixes.bar.com", V3), ("multiple.prefixes.foo.com", V3), ("foo.com", "404"),
             ("no.matching.host", "404")]
    assert [(h, send(view, h)) for h, _ in cases] == cases


def test_httproute_listener_port_matching() -> None:
    """HTTPRouteListenerPortMatching (extended): parentRef `port` picks the listeners; the Host's
    port is not part of the name matched."""
    objs = base() + valid(load("httproute-listener-port-matching"))
    all_accepted(statuses(objs), "httproute-listener-port-matching", "backend-v1", "backend-v2", "backend-v3")
    view = views(objs)["httproute-listener-port-matching"]
    cases = [("foo.com", 80, V1), ("foo.com:8080", 8080, V2), ("bar.com:8080", 8080, V2), ("foo.com:8090", 8090, V3),
             ("bar.com:8090", 8090, "404")]
    assert [(h, p, send(view, h, port=p)) for h, p, _ in cases] == cases


@pytest.mark.parametrize(("manifest", "route_name", "gw", "accepted", "resolved"), [
    ("httproute-cross-namespace", "cross-namespace", "backend-namespaces", ("True", "Accepted"),
     ("True", "ResolvedRefs")),
    ("httproute-invalid-cross-namespace-parent-ref", "invalid-cross-namespace-parent-ref", "same-namespace",
     ("False", "NotAllowedByListeners"), None),
    ("httproute-invalid-cross-namespace-backend-ref", "invalid-cross-namespace-backend-ref", "same-namespace",
     ("True", "Accepted"), ("False", "RefNotPermitted")),
    ("httproute-invalid-nonexistent-backendref", "invalid-nonexistent-backend-ref", "same-namespace",
     ("True", "Accepted"), ("False", "BackendNotFound")),
    ("httproute-partially-invalid-via-invalid-reference-grant", "invalid-reference-grant", "same-namespace",
     ("True", "Accepted"), ("False", "RefNotPermitted")),
    ("httproute-reference-grant", "reference-grant", "same-namespace", ("True", "Accepted"),
     ("True", "ResolvedRefs")),
    ("httproute-invalid-reference-grant", "reference-grant", "same-namespace", ("True", "Accepted"),
     ("False", "RefNotPermitted")),
    ("httproute-disallowed-kind", "disallowed-kind", "tlsroutes-only", ("False", "NotAllowedByListeners"), None),
    ("httproute-invalid-parentref-not-matching-listener-port", "httproute-listener-not-matching-route-port",
     "same-namespace", ("False", "NoMatchingParent"), ("True", "ResolvedRefs")),
    ("httproute-invalid-parentref-not-matching-section-name", "httproute-listener-not-matching-section-name",
     "same-namespace", ("False", "NoMatchingParent"), ("True", "ResolvedRefs")),
    ("httproute-invalid-parentref-section-name-not-matching-port", "httproute-listener-section-name-not-matching-port",
     "gateway-with-one-not-matching-port-and-section-name-route", ("False", "NoMatchingParent"),
     ("True", "ResolvedRefs")),
    ("httproute-observed-generation-bump", "observed-generation-bump", "same-namespace", ("True", "Accepted"),
     ("True", "ResolvedRefs")),
    ("httproute-omitted-backendrefs", "omitted-backendrefs", "same-namespace", ("True", "Accepted"),
     ("True", "ResolvedRefs")),
])
def test_httproute_parent_status(manifest: str, route_name: str, gw: str, accepted: tuple[str, str],
                                 resolved: tuple[str, str] | None) -> None:
    """HTTPRouteCrossNamespace, HTTPRouteInvalidCrossNamespaceParentRef,
    HTTPRouteInvalidCrossNamespaceBackendRef, HTTPRouteInvalidNonExistentBackendRef,
    HTTPRoutePartiallyInvalidViaInvalidReferenceGrant, HTTPRouteReferenceGrant,
    HTTPRouteInvalidReferenceGrant, HTTPRouteDisallowedKind, HTTPRouteInvalidParentRefNotMatchingListenerPort,
    HTTPRouteInvalidParentRefNotMatchingSectionName, HTTPRouteInvalidParentRefSectionNameNotMatchingPort,
    HTTPRouteObservedGenerationBump, HTTPRouteOmittedBackendRefs: the parent's conditions."""
    objs = base() + valid(load(manifest))
    route_ns = next(o for o in objs if o["kind"] == "HTTPRoute" and o["metadata"]["name"] == route_name)[
        "metadata"]["namespace"]
    got = route_conds(statuses(objs), route_name, gw, ns=route_ns)
    assert got["Accepted"] == accepted
    if resolved is not None:
        assert got["ResolvedRefs"] == resolved
    if accepted[0] == "False":          # GatewayMustHaveZeroRoutes
        assert all(ln["attachedRoutes"] == 0 for ln in gateway_status(statuses(objs), gw)["listeners"])


def test_httproute_observed_generation_bump() -> None:
    """HTTPRouteObservedGenerationBump: the parent's conditions follow the route's generation."""
    objs = base() + valid(load("httproute-observed-generation-bump"))
    r = next(o for o in objs if o["kind"] == "HTTPRoute")
    r["metadata"]["generation"] = 2
    r["spec"]["rules"][0]["backendRefs"][0]["port"] = 8080
    [parent] = statuses(objs)[("HTTPRoute", INFRA, "observed-generation-bump")]["parents"]
    assert {c["observedGeneration"] for c in parent["conditions"]} == {2}


@pytest.mark.parametrize(("manifest", "cases"), [
    ("httproute-invalid-nonexistent-backendref", [("/", "500")]),
    ("httproute-invalid-cross-namespace-backend-ref", [("/", "500")]),
    ("httproute-partially-invalid-via-invalid-reference-grant", [("/v2", "500"), ("/", f"{APP}/app-backend-v1")]),
    ("httproute-reference-grant", [("/", f"{WEB}/web-backend")]),
    ("httproute-invalid-reference-grant", [("/", "500")]),
    ("httproute-omitted-backendrefs", [("/forward", V1), ("/omitted-no-forward", "500"),
                                       ("/empty-no-forward", "500")]),
    ("httproute-cross-namespace", [("/", f"{WEB}/web-backend")]),
])
def test_httproute_unresolved_backends_answer_500(manifest: str, cases: list[tuple[str, str]]) -> None:
    """The requests of HTTPRouteInvalidNonExistentBackendRef, HTTPRouteInvalidCrossNamespaceBackendRef,
    HTTPRoutePartiallyInvalidViaInvalidReferenceGrant, HTTPRouteReferenceGrant,
    HTTPRouteInvalidReferenceGrant, HTTPRouteOmittedBackendRefs, HTTPRouteCrossNamespace."""
    objs = base() + valid(load(manifest))
    route_obj = next(o for o in objs if o["kind"] == "HTTPRoute")
    gw = route_obj["spec"]["parentRefs"][0]["name"]
    view = views(objs)[gw]
    assert [(p, send(view, "example.com", p)) for p, _ in cases] == cases


def test_httproute_multiple_gateways() -> None:
    """HTTPRouteMultipleGateways: one route on two Gateways, each with a route of its own."""
    objs = base() + valid(load("httproute-multiple-gateways"))
    out = statuses(objs)
    for r, gws in (("multiple-gateways-shared-route", ("same-namespace", "all-namespaces")),
                   ("same-namespace-dedicated-route", ("same-namespace",)),
                   ("all-namespaces-dedicated-route", ("all-namespaces",))):
        for g in gws:
            assert route_conds(out, r, g)["Accepted"] == ("True", "Accepted")
    v = views(objs)
    assert [send(v["same-namespace"], "x", "/shared"), send(v["same-namespace"], "x", "/")] == [V1, V2]
    assert [send(v["all-namespaces"], "x", "/shared"), send(v["all-namespaces"], "x", "/")] == [V1, V3]


def test_httproute_https_listener() -> None:
    """HTTPRouteHTTPSListener."""
    objs = base() + valid(load("httproute-https-listener"))
    all_accepted(statuses(objs), "same-namespace-with-https-listener", "httproute-https-test",
                 "httproute-https-test-no-hostname")
    view = views(objs)["same-namespace-with-https-listener"]
    cases = [("example.org", V1), ("unknown-example.org", "404"), ("second-example.org", V2)]
    assert [(h, send(view, h, port=443)) for h, _ in cases] == cases


def test_httproute_https_listener_detect_misdirected_requests() -> None:
    """HTTPRouteHTTPSListenerDetectMisdirectedRequests (extended): 421 for a Host another listener
    of the port serves than the one the SNI chose."""
    objs = base() + valid(load("httproute-https-listener-detect-misdirected-requests"))
    view = views(objs)["same-namespace-with-https-listener"]
    cases = [("example.org", "example.org", V1), ("example.org", "second-example.org", "421"),
             ("example.org", "unknown-example.org", "404"),
             ("second-example.org", "second-example.org", V2), ("second-example.org", "example.org", "421"),
             ("second-example.org", "unknown-example.org", "421"),
             ("third-example.wildcard.org", "third-example.wildcard.org", V3),
             ("third-example.wildcard.org", "fith-example.wildcard.org", V3),
             ("third-example.wildcard.org", "fourth-example.wildcard.org", "421"),
             ("third-example.wildcard.org", "second-example.org", "421"),
             ("third-example.wildcard.org", "unknown-example.org", "421"),
             ("fourth-example.wildcard.org", "fourth-example.wildcard.org", V1),
             ("fourth-example.wildcard.org", "fith-example.wildcard.org", "421"),
             ("unknown-example.org", "example.org", V1), ("unknown-example.org", "unknown-example.org", "404")]
    got = [(sni, h, send(view, h, "/detect-misdirected-requests", port=443, sni=sni)) for sni, h, _ in cases]
    assert got == cases


# -- TLSRoute --------------------------------------------------------------------------------------

def test_tlsroute_status() -> None:
    """TLSRouteInvalidNoMatchingListener, TLSRouteInvalidNoMatchingListenerHostname,
    TLSRouteInvalidBackendRefNonExistent, TLSRouteInvalidReferenceGrant, TLSRouteSimpleSameNamespace,
    TLSRouteListenerPassthroughSupportedKinds."""
    out = status_of("tlsroute-invalid-no-matching-listener", "tlsroute-invalid-no-matching-listener-hostname",
                    "tlsroute-invalid-backendref-nonexistent", "tlsroute-listener-passthrough-supported-kinds")
    for r, gw, want in (("tlsroute-not-allowed-protocol-http", "gateway-tlsroute-http-only", "NotAllowedByListeners"),
                        ("tlsroute-not-allowed-protocol-https", "gateway-tlsroute-https-only", "NotAllowedByListeners"),
                        ("tlsroute-no-matching-section-name", "gateway-tlsroute-tls-passthrough-only",
                         "NoMatchingParent"),
                        ("tlsroute-hostname-mismatch-1", "gateway-tls-exact-hostname", "NoMatchingListenerHostname"),
                        ("tlsroute-hostname-mismatch-2", "gateway-tls-wildcard-hostname",
                         "NoMatchingListenerHostname")):
        assert route_conds(out, r, gw, "TLSRoute")["Accepted"] == ("False", want)
        assert all(ln["attachedRoutes"] == 0 for ln in gateway_status(out, gw)["listeners"])
    assert route_conds(out, "invalid-backend-ref-nonexistent", "gateway-tlsroute-invalid-backend-ref-nonexistent",
                       "TLSRoute") == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
    listeners_match(gateway_status(out, "gateway-tlsroute-passthrough-supported-kind"), [
        listener("tls-passthrough", ["TLSRoute"], 0, cond("ResolvedRefs", "False", "InvalidRouteKinds"))])
    for manifest, want in (("tlsroute-simple-same-namespace", ("True", "ResolvedRefs")),
                           ("tlsroute-invalid-reference-grant", ("False", "RefNotPermitted"))):
        objs = base() + valid(load(manifest))
        r = next(o for o in objs if o["kind"] == "TLSRoute")
        got = route_conds(statuses(objs), r["metadata"]["name"], r["spec"]["parentRefs"][0]["name"], "TLSRoute",
                          ns=r["metadata"]["namespace"])
        assert got == {"Accepted": ("True", "Accepted"), "ResolvedRefs": want}


@pytest.mark.parametrize(("gw", "cases"), [
    ("gw-tlsroute-exact-hostname-x-1", [("abc.example.com", "tls-backend"), ("other.example.com", None)]),
    ("gw-tlsroute-more-specific-wc-hostname-x-2", [("abc.example.com", "tls-backend"),
                                                  ("other.example.com", "tls-backend-2"), ("abc.other.com", None)]),
    ("gw-tlsroute-less-specific-wc-hostname-x-3", [("abc.example.com", "tls-backend"),
                                                  ("other.example.com", "tls-backend-2"), ("abc.other.org", None)]),
    ("gw-tlsroute-empty-hostname-x-4", [("abc.example.com", "tls-backend"), ("other.com", "tls-backend-2"),
                                        ("abc.other.org", None)]),
])
def test_tlsroute_hostname_intersection(gw: str, cases: list[tuple[str, str | None]]) -> None:
    """TLSRouteHostnameIntersection: the ClientHello's SNI picks the TLSRoute of the intersection."""
    objs = base() + valid(load("tlsroute-hostname-intersection"))
    out = statuses(objs)
    for r in (o for o in objs if o["kind"] == "TLSRoute" and o["spec"]["parentRefs"][0]["name"] == gw):
        assert route_conds(out, r["metadata"]["name"], gw, "TLSRoute")["Accepted"] == ("True", "Accepted")
    port = views(objs)[gw].ports[443]
    got = []
    for sni, _ in cases:
        name = port.l4_host(sni)
        got.append((sni, None if name is None else port.l4[name].destinations[0].host.split(".")[0]))
    assert got == cases


@pytest.mark.parametrize("kind", ["HTTPRoute", "TLSRoute"])
def test_backendref_unknown_kind(kind: str) -> None:
    """HTTPRouteInvalidBackendRefUnknownKind, TLSRouteInvalidBackendRefUnknownKind: the route is
    accepted, `ResolvedRefs=False InvalidKind`, and that backend's share of requests gets 500 (its
    connections are closed), even where a Service has the name it gives."""
    objs = base() + valid(load(f"{kind.lower()}-invalid-backendref-unknown-kind"))
    r = next(o for o in objs if o["kind"] == kind)
    gw = r["spec"]["parentRefs"][0]["name"]
    assert route_conds(statuses(objs), r["metadata"]["name"], gw, kind) == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "InvalidKind")}
    view = views(objs)[gw]
    if kind == "HTTPRoute":
        assert send(view, "example.com", "/v2") == "500"
        # and `ambit apply` says so (ambit analyze: AMB0139)
        assert [(n.path, n.cause) for n in translate(objs).parents.notices if "unknown-kind" in n.ref] == [
            ("spec.rules[0].backendRefs[0]", "InvalidKind")]
    else:
        port = view.ports[443]
        [dest] = port.l4[port.l4_host("example.com") or ""].destinations
        assert dest.service == ""


# -- what Ambit refuses where upstream expects a status (docs/ingress.md, "Conformance") -----------

@pytest.mark.parametrize(("manifest", "name", "path"), [
    ("gateway-invalid-listeners-unsupported-protocol", "gateway-supported-and-unsupported-protocols",
     "spec.listeners[1].protocol"),
    ("tlsroute-listener-terminate-not-supported", "gateway-tlsroute-terminate-unsupported",
     "spec.listeners[0].tls.mode"),
    ("tlsroute-listener-mixed-termination-not-supported", "gateway-tlsroute-mixed-termination-not-supported",
     "spec.listeners[0].tls.mode"),
])
def test_refused_instead_of_listener_status(manifest: str, name: str, path: str) -> None:
    """GatewayListenerUnsupportedProtocol and TLSRouteListener(Mixed)TerminateNotSupported want the
    Gateway accepted with the listener `Accepted=False` (UnsupportedProtocol, UnsupportedValue);
    Ambit refuses the Gateway naming the field (`ambit apply`; in a cluster the version
    validation refused gets `Accepted=False Invalid` and the last valid one stays in force),
    as it refuses every field it does not serve."""
    gw = next(o for o in load(manifest) if o["metadata"]["name"] == name)
    assert path in {e.path for e in validate_object(gw)}


# -- retry (HTTPRouteRetry, HTTPRouteRetryConnectionError, HTTPRouteRetryWithTimeouts) ---------------

@pytest.mark.parametrize(("manifest", "path", "retries", "codes", "per_try", "timeout"), [
    ("httproute-retry", "/retry/code-500-attempts-3", 3, {500}, 0.0, 0.0),
    ("httproute-retry", "/retry/code-all-attempts-2", 2, {500, 502, 503, 504}, 0.0, 0.0),
    ("httproute-retry-connection-error", "/retry/no-status-code-attempts-3", 3, set(), 0.0, 0.0),
    ("httproute-retry-with-timeouts", "/retry/backend-request-timeout-200ms", 2, set(), 0.2, 0.0),
    ("httproute-retry-with-timeouts", "/retry/request-timeout-200ms", 5, {500}, 0.2, 0.4),
])
def test_httproute_retry(manifest: str, path: str, retries: int, codes: set[int], per_try: float,
                         timeout: float) -> None:
    """HTTPRouteRetry, HTTPRouteRetryConnectionError, HTTPRouteRetryWithTimeouts (extended):
    `attempts` is the number of retries after the first try (upstream's echo fails `succeedAfter`
    tries: attempts 3 serves succeedAfter 2, not 4); only the listed `codes` are retried (a 503 on
    the codes-500 rule is not); a reset connection and a try past `timeouts.backendRequest` (each
    try's timeout under `retry`) are retried, as Gateway API says an implementation SHOULD and
    upstream's tests do. Istio's conversion retried neither (connect-failure only): a reset after
    the request was sent, or a per-try timeout, was the client's 503 / 504 at once.
    On the wire: tests/lab/test_ingress_conformance.py `test_retry`."""
    pol = forward(manifest, path).policy
    assert pol is not None and pol.retry is not None
    r = pol.retry
    assert (r.num_retries, set(r.codes), pol.per_try_timeout, pol.timeout) == (retries, codes, per_try, timeout)
    assert [would_retry_response(r, s) for s in (500, 502, 503, 504)] == [s in codes for s in (500, 502, 503, 504)]
    assert [would_retry_failure(r, k) for k in (CONNECT_FAILURE, RESET, PER_TRY_TIMEOUT)] == [True, True, True]


def test_httproute_retry_attempts_zero_retries_nothing() -> None:
    """`retry: {attempts: 0}` turns retries off, even Ambit's default ones (Istio's)."""
    objs = base() + valid(load("httproute-retry"))
    r = next(o for o in objs if o["kind"] == "HTTPRoute")
    r["spec"]["rules"][0]["retry"] = {"attempts": 0, "codes": [500]}
    p = views(objs)["same-namespace"].ports[80]
    d = route(p.table, RequestHead(method="GET", path="/retry/code-500-attempts-3", authority="x", scheme="http",
                                   headers=[]), Downstream(destination_port=80, hostname=p.virtual_host("x") or ""),
              random.Random(1))
    assert isinstance(d, Forward) and d.policy is not None and d.policy.retry.num_retries == 0


# -- mirrors (HTTPRouteRequestMultipleMirrors, HTTPRouteRequestPercentageMirror) ---------------------

@pytest.mark.parametrize(("manifest", "path", "mirrors"), [
    ("httproute-request-multiple-mirrors", "/multi-mirror", [(V2, 1_000_000), (V3, 1_000_000)]),
    ("httproute-request-multiple-mirrors", "/multi-mirror-and-modify-request-headers",
     [(V2, 1_000_000), (V3, 1_000_000)]),
    ("httproute-request-percentage-mirror", "/percent-mirror", [(V2, 200_000)]),
    ("httproute-request-percentage-mirror", "/percent-mirror-fraction", [(V2, 500_000)]),
    ("httproute-request-percentage-mirror", "/percent-mirror-and-modify-headers", [(V2, 350_000)]),
])
def test_httproute_request_mirrors(manifest: str, path: str, mirrors: list[tuple[str, int]]) -> None:
    """HTTPRouteRequestMultipleMirrors, HTTPRouteRequestPercentageMirror (extended): infra-backend-v1
    answers; each mirror gets its share (`percent`, or `fraction` numerator/denominator: 25/50 is
    half), with the rule's header edits. The share
    is drawn per request (tests/unit/waypoint/resilience/test_mirror.py counts it)."""
    objs = base() + valid(load(manifest))
    all_accepted(statuses(objs), "same-namespace", next(o for o in objs if o["kind"] == "HTTPRoute")["metadata"]["name"])
    d = forward(manifest, path, headers={"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"})
    assert d.service == V1 and d.policy is not None
    assert [(m.service, m.port, m.per_million) for m in d.policy.mirrors] == [(s, 8080, pm) for s, pm in mirrors]
    if "modify" in path:
        seen = joined(d.request_headers.apply([("x-header-remove", "remove-val"),
                                               ("x-header-add-append", "append-val-1")]))
        assert seen == {"x-header-add": "header-val-1", "x-header-add-append": "append-val-1,header-val-2",
                        "x-header-set": "set-overwrites-values"}


# -- backend protocol (HTTPRouteBackendProtocolH2C, HTTPRouteBackendProtocolWebSocket) --------------

@pytest.mark.parametrize(("manifest", "port", "protocol"), [
    ("httproute-backend-protocol-h2c", 8081, "h2"),
    ("httproute-backend-protocol-websocket", 8082, "http1"),
])
def test_httproute_backend_protocol(manifest: str, port: int, protocol: str) -> None:
    """HTTPRouteBackendProtocolH2C, HTTPRouteBackendProtocolWebSocket (extended): the route reaches
    infra-backend-v1's port with `appProtocol: kubernetes.io/h2c` (the gateway speaks HTTP/2 with
    prior knowledge to it) or `kubernetes.io/ws` (HTTP/1.1, which carries the WebSocket upgrade;
    the gateway tunnels it: waypoint/http/headers.py). On the wire, with curl
    --http2-prior-knowledge and a WebSocket client: tests/lab/test_ingress_conformance.py."""
    objs = base() + valid(load(manifest))
    name = next(o for o in objs if o["kind"] == "HTTPRoute")["metadata"]["name"]
    all_accepted(statuses(objs), "same-namespace", name)
    d = forward(manifest, "/ws" if port == 8082 else "/")
    assert (d.service, d.port) == (V1, port)
    [svc] = [s for s in translate(objs).services if s.name == "infra-backend-v1" and s.namespace == INFRA]
    assert protocol_of(service_port(svc, port)) == protocol


# -- filters on a backendRef (HTTPRouteBackendRequestRedirect, HTTPRouteBackendURLRewrite,
#    HTTPRouteRequestHeaderModifierBackendWeights) -------------------------------------------------

def decide(manifest: str, path: str, rng: random.Random | None = None) -> Forward | LocalReply:
    """The gateway's decision for GET `path` through upstream's `same-namespace` Gateway."""
    p = views(base() + valid(load(manifest)))["same-namespace"].ports[80]
    vh = p.virtual_host("example.com")
    assert vh is not None
    d = route(p.table, RequestHead(method="GET", path=path, authority="example.com", scheme="http", headers=[]),
              Downstream(destination_port=80, hostname=vh), rng or random.Random(1))
    assert isinstance(d, Forward | LocalReply), d
    return d


def test_httproute_backend_request_redirect() -> None:
    """HTTPRouteBackendRequestRedirect (extended): a RequestRedirect on the rule's backendRef answers
    302 to the replaced path (full, or the matched prefix). Ambit forwarded the request to
    infra-backend-v1 unchanged (200) and only warned that the filter was not applied."""
    objs = base() + valid(load("httproute-backend-request-redirect"))
    all_accepted(statuses(objs), "same-namespace", "backend-request-redirect")
    got = []
    for path in ("/full/original", "/prefix/original"):
        d = decide("httproute-backend-request-redirect", path)
        got.append((path, d.status if isinstance(d, LocalReply) else d.service,
                    dict(d.headers).get("location") if isinstance(d, LocalReply) else None))
    assert got == [("/full/original", 302, "http://example.com/redirected-full"),
                   ("/prefix/original", 302, "http://example.com/redirected-prefix/original")]


def test_httproute_backend_url_rewrite() -> None:
    """HTTPRouteBackendURLRewrite (extended): a URLRewrite on the rule's backendRef rewrites the path
    infra-backend-v1 sees. Ambit sent the original path and only warned."""
    objs = base() + valid(load("httproute-backend-url-rewrite"))
    all_accepted(statuses(objs), "same-namespace", "backend-url-rewrite")
    got = []
    for path in ("/full/original", "/prefix/original"):
        d = decide("httproute-backend-url-rewrite", path)
        assert isinstance(d, Forward), d
        got.append((path, d.service, d.path))
    assert got == [("/full/original", V1, "/rewritten-full"), ("/prefix/original", V1, "/rewritten-prefix/original")]


def test_httproute_request_header_modifier_backend_weights() -> None:
    """HTTPRouteRequestHeaderModifierBackendWeights: each of two weighted backends sets `Backend` to
    its own name; of 100 requests every one reaches the backend its header names."""
    objs = base() + valid(load("httproute-request-header-modifier-backend-weights"))
    all_accepted(statuses(objs), "same-namespace", "request-header-modifier-backend-weights")
    rng, seen = random.Random(7), set()
    for _ in range(100):
        d = decide("httproute-request-header-modifier-backend-weights", "/", rng)
        assert isinstance(d, Forward)
        [backend] = [v for k, v in d.request_headers.apply([]) if k.lower() == "backend"]
        assert d.service == f"{INFRA}/{backend}"
        seen.add(backend)
    assert seen == {"infra-backend-v1", "infra-backend-v2"}


# -- HTTPRouteServiceTypes ------------------------------------------------------------------------

def test_httproute_service_types() -> None:
    """HTTPRouteServiceTypes: a Service without selector whose EndpointSlices were written by hand
    (as upstream's test fills them: infra-backend-v1's pod, with its targetRef), a headless Service
    (clusterIP None, selector), and a headless one with hand-written slices all reach
    infra-backend-v1's pod. On the wire: tests/lab/test_ingress_conformance.py."""
    backend = pod("infra-backend-v1-abc", "10.244.1.7", namespace=INFRA, labels={"app": "infra-backend-v1"})
    objs = base() + valid(load("httproute-service-types")) + [backend]
    for o in objs:
        if o["kind"] == "EndpointSlice" and o["addressType"] == "IPv4":
            o["endpoints"] = [{"addresses": ["10.244.1.7"], "conditions": {"ready": True, "serving": True,
                                                                           "terminating": False},
                               "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "infra-backend-v1-abc",
                                                                   "namespace": INFRA, "uid": "uid-infra-backend-v1-abc"}}]
    all_accepted(statuses(objs), "same-namespace", "service-types")
    view, services = views(objs)["same-namespace"], {s.name: s for s in translate(objs).services}
    got = []
    for name in ("manual-endpointslices", "headless", "headless-manual-endpointslices"):
        svc = f"{INFRA}/{name}"
        assert send(view, "example.com", f"/{name}") == svc
        got.append((name, [(e.ip, e.ready) for e in services[name].endpoints],
                    [target_port(p, e) for p in services[name].ports for e in services[name].endpoints]))
    assert got == [(n, [("10.244.1.7", True)], [3000]) for n in ("manual-endpointslices", "headless",
                                                                 "headless-manual-endpointslices")]


# -- GatewayInfrastructure ------------------------------------------------------------------------

def test_gateway_infrastructure() -> None:
    """GatewayInfrastructure: the Gateway is Accepted (its status, as the controller writes it), and
    what its controller creates for it (the reconciler, against an API server emulator) carries the
    `gateway.networking.k8s.io/gateway-name` label and every `spec.infrastructure` label and
    annotation: the ServiceAccount, the Service and the pods (the Deployment's pod template)."""
    [gw] = valid(load("gateway-infrastructure"))
    conds = {c["type"]: c["status"] for c in gateway_status(statuses(base() + [gw]), gw["metadata"]["name"])[
        "conditions"]}
    assert conds["Accepted"] == "True"
    emu = KubeEmulator().start()
    rec = KubeWaypointReconciler(make_api_client(emu.url), WaypointDeploySettings(image="ambit:test",
                                                                                 controller_address="ctl:15012"))
    name = gw["metadata"]["name"]
    try:
        with running(KubeSource(make_api_client(emu.url), debounce=0.01), rec.reconcile):
            emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": INFRA}})
            emu.create(gw)
            got = {kind: wait_for(lambda v=v, kind=kind: emu.get(v, kind, name, INFRA), timeout=10, what=kind)
                   for v, kind in (("v1", "ServiceAccount"), ("v1", "Service"), ("apps/v1", "Deployment"))}
    finally:
        emu.stop()
    for md in (got["ServiceAccount"]["metadata"], got["Service"]["metadata"],
               got["Deployment"]["spec"]["template"]["metadata"]):
        assert md["labels"]["gateway.networking.k8s.io/gateway-name"] == name
        assert md["labels"]["key2"] == "value2" and md["annotations"]["key1"] == "value1", md


def test_httproute_retry_backoff_is_the_minimum_wait() -> None:
    """Gateway API `retry.backoff` is "the minimum duration a Gateway should wait between retry
    attempts ... as long as unsuccessful backend requests are not retried before the configured
    minimum duration" (jitter and growth allowed above it). Ambit used Envoy's full jitter, whose
    first wait is uniform in [0, backoff): every first retry came early."""
    objs = base() + valid(load("httproute-retry"))
    next(o for o in objs if o["kind"] == "HTTPRoute")["spec"]["rules"][0]["retry"]["backoff"] = "100ms"
    p = views(objs)["same-namespace"].ports[80]
    d = route(p.table, RequestHead(method="GET", path="/retry/code-500-attempts-3", authority="x", scheme="http",
                                   headers=[]), Downstream(destination_port=80, hostname=p.virtual_host("x") or ""),
              random.Random(1))
    assert isinstance(d, Forward) and d.policy is not None
    rng = random.Random(5)
    waits = []
    for _ in range(200):
        state = RetryState(d.policy.retry, None, rng)
        waits.append([state.delay for _ in range(3) if state.decide(True) == RETRY])
    assert all(len(w) == 3 for w in waits)
    assert min(w for ws in waits for w in ws) >= 0.1
    assert max(ws[0] for ws in waits) <= 0.1 + 1e-9        # the first: the backoff itself
    assert max(w for ws in waits for w in ws) <= 1.0        # capped at 10 x, as Envoy caps it
