"""Client certificate validation of a Gateway API ingress Gateway (`spec.tls.frontend`): the CA
bundles its `caCertificateRefs` name (ConfigMaps, or kubernetes.io/tls Secrets, key `ca.crt`)
become the HTTPS listeners' client CA (`client_auth` "required"), `perPort` overriding `default`;
a reference that does not resolve is the listener's `ResolvedRefs=False` with Gateway API's reason,
and a listener none of whose references resolves is `Accepted=False NoValidCACertificate` and not
served (never served without the validation asked for). What cannot be honoured is refused."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.translate import translate
from controller.validation import validate_object
from controller.waypoints import ingress_status
from tests.unit.controller.test_ingress import BASE, HTTP, gateway, grant, https, route, tls_secret


def ca_pem(cn: str = "client-ca") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CA1, CA2 = ca_pem("ca-one"), ca_pem("ca-two")


def configmap(name: str, data: dict[str, str], ns: str = "web") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}


def cm_ref(name: str, **kw: Any) -> dict[str, Any]:
    return {"group": "", "kind": "ConfigMap", "name": name, **kw}


def with_tls(gw: dict[str, Any], tls: dict[str, Any]) -> dict[str, Any]:
    return {**gw, "spec": {**gw["spec"], "tls": tls}}


def validation(*refs: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"validation": {"caCertificateRefs": list(refs), **kw}}


A = https("a", "a.example.com", "cert-a")
B = {**https("b", "b.example.com", "cert-b"), "port": 8443}
CERTS = [tls_secret("cert-a"), tls_secret("cert-b", host="b.example.com")]


def run(gw: dict[str, Any], *objs: dict[str, Any]):
    tr = translate(BASE + CERTS + [gw, route("r"), *objs])
    assert not tr.errors, tr.errors
    served = {ln.name: ln for g in tr.ingress.gateways for ln in g.listeners}
    status = {ls.name: ls for ls in tr.ingress.listeners["web/gw"]}
    return tr, served, status


def test_default_and_per_port_validation_give_https_listeners_their_client_ca() -> None:
    ca_secret = {**tls_secret("cert-b", host="b.example.com"), "metadata": {"name": "ca-in-secret", "namespace": "web"}}
    ca_secret["stringData"] = {**ca_secret["stringData"], "ca.crt": CA2}
    gw = with_tls(gateway(HTTP, A, B), {"frontend": {
        "default": validation(cm_ref("client-ca"), mode="AllowValidOnly"),
        "perPort": [{"port": 8443, "tls": validation({"group": "", "kind": "Secret", "name": "ca-in-secret"})}]}})
    _, served, status = run(gw, configmap("client-ca", {"ca.crt": CA1, "other": "x" * 1000}), ca_secret)
    assert (served["a"].client_auth, served["a"].client_ca_pem) == ("required", CA1)
    assert (served["b"].client_auth, served["b"].client_ca_pem) == ("required", CA2)   # perPort overrides
    assert (served["http"].client_auth, served["http"].client_ca_pem) == ("", "")      # plain HTTP: nothing
    assert all(s.resolved[:2] == (True, "ResolvedRefs") and s.accepted[0] for s in status.values())
    # a perPort entry without validation turns it off on its port
    gw = with_tls(gateway(HTTP, A, B), {"frontend": {"default": validation(cm_ref("client-ca")),
                                                     "perPort": [{"port": 8443, "tls": {}}]}})
    _, served, _ = run(gw, configmap("client-ca", {"ca.crt": CA1}))
    assert (served["a"].client_auth, served["b"].client_auth) == ("required", "")
    # without spec.tls, no listener asks for a client certificate
    _, served, _ = run(gateway(HTTP, A, B))
    assert {ln.client_auth for ln in served.values()} == {""}


@pytest.mark.parametrize(("ref", "objs", "reason", "message"), [
    (cm_ref("gone"), [], "InvalidCACertificateRef", "ConfigMap web/gone does not exist"),
    (cm_ref("client-ca"), [configmap("client-ca", {"ca.pem": CA1})], "InvalidCACertificateRef", "has no key ca.crt"),
    (cm_ref("client-ca"), [configmap("client-ca", {"ca.crt": "not a certificate"})], "InvalidCACertificateRef",
     "ca.crt does not hold PEM certificates"),
    ({"group": "", "kind": "Secret", "name": "opaque"}, [], "InvalidCACertificateRef",
     "does not exist or is not of type kubernetes.io/tls"),
    ({"group": "", "kind": "Service", "name": "echo"}, [], "InvalidCACertificateKind", "Service web/echo"),
    ({"group": "example.io", "kind": "ConfigMap", "name": "client-ca"}, [configmap("client-ca", {"ca.crt": CA1})],
     "InvalidCACertificateKind", "group example.io"),
    (cm_ref("client-ca", namespace="team"), [configmap("client-ca", {"ca.crt": CA1}, ns="team")],
     "RefNotPermitted", "no ReferenceGrant"),
    # a grant for Secrets does not permit ConfigMaps
    (cm_ref("client-ca", namespace="team"), [configmap("client-ca", {"ca.crt": CA1}, ns="team"),
                                             grant("Gateway", "web", "Secret")], "RefNotPermitted", "no ReferenceGrant"),
])
def test_a_listener_whose_ca_references_all_fail_is_not_served(ref: dict[str, Any], objs: list[dict[str, Any]],
                                                              reason: str, message: str) -> None:
    gw = with_tls(gateway(HTTP, A), {"frontend": {"default": validation(ref)}})
    tr, served, status = run(gw, *objs)
    assert "a" not in served and "http" in served
    assert status["a"].resolved[:2] == (False, reason) and message in status["a"].resolved[2], status["a"]
    assert status["a"].accepted[:2] == (False, "NoValidCACertificate")
    svc = {"kind": "Service", "metadata": {"name": "gw", "namespace": "web"},
           "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
    s = ingress_status.desired([gw, svc], tr.ingress)[("Gateway", "web", "gw")]
    conds = {c["type"]: (c["status"], c["reason"]) for c in s["listeners"][1]["conditions"]}
    assert conds == {"Accepted": ("False", "NoValidCACertificate"), "Conflicted": ("False", "NoConflicts"),
                     "Programmed": ("False", "Invalid"), "ResolvedRefs": ("False", reason)}


def test_cross_namespace_ca_with_a_grant_and_a_partly_bad_list() -> None:
    team_ca = configmap("client-ca", {"ca.crt": CA2}, ns="team")
    gw = with_tls(gateway(HTTP, A), {"frontend": {"default": validation(
        cm_ref("client-ca", namespace="team"), cm_ref("gone"))}})
    # the grant permits the ConfigMap in team; the missing one is reported, and the listener
    # verifies against the CA that resolved (fewer CAs trusted, never none)
    tr, served, status = run(gw, team_ca, grant("Gateway", "web", "ConfigMap", "client-ca"))
    assert (served["a"].client_auth, served["a"].client_ca_pem) == ("required", CA2)
    assert status["a"].resolved[:2] == (False, "InvalidCACertificateRef") and status["a"].accepted[0]
    svc = {"kind": "Service", "metadata": {"name": "gw", "namespace": "web"},
           "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
    s = ingress_status.desired([gw, svc], tr.ingress)[("Gateway", "web", "gw")]
    conds = {c["type"]: (c["status"], c["reason"]) for c in s["listeners"][1]["conditions"]}
    assert conds["Accepted"] == ("True", "Accepted") and conds["Programmed"] == ("True", "Programmed")
    assert conds["ResolvedRefs"] == ("False", "InvalidCACertificateRef")


@pytest.mark.parametrize(("tls", "listeners", "path", "reason"), [
    ({"frontend": {"default": validation(cm_ref("c"), mode="AllowInsecureFallback")}}, (A,),
     "spec.tls.frontend.default.validation.mode", "fails verification"),
    ({"backend": {"clientCertificateRef": {"name": "c"}}}, (A,), "spec.tls.backend", "HBONE"),
    ({"frontend": {"perPort": [{"port": 443, "tls": validation(cm_ref("c"))},
                               {"port": 443, "tls": validation(cm_ref("d"))}]}}, (A,),
     "spec.tls.frontend.perPort[1].port", "configured twice"),
    ({"frontend": {"default": {"validation": {"caCertificateRefs": []}}}}, (A,),
     "spec.tls.frontend.default.validation.caCertificateRefs", ""),
])
def test_schema_refuses_what_cannot_be_honoured(tls: dict[str, Any], listeners: tuple[dict[str, Any], ...],
                                               path: str, reason: str) -> None:
    errs = validate_object(with_tls(gateway(*listeners), tls))
    assert any(e.path == path and reason in e.reason for e in errs), errs


@pytest.mark.parametrize(("tls", "listeners", "path", "reason"), [
    ({"frontend": {"perPort": [{"port": 80, "tls": validation(cm_ref("c"))}]}}, (HTTP, A),
     "spec.tls.frontend.perPort[0].port", "no HTTPS listener is on port 80"),
    ({"frontend": {"default": validation(cm_ref("c"))}}, (HTTP,), "spec.tls.frontend.default", "no HTTPS listener"),
])
def test_validation_no_https_listener_takes_is_accepted_and_warned(
        tls: dict[str, Any], listeners: tuple[dict[str, Any], ...], path: str, reason: str) -> None:
    """A `default` or perPort entry no HTTPS listener takes validates nothing: Gateway API accepts it
    and leaves the other listeners of the port alone (they were all refused with the Gateway
    before); `ambit apply` says it applies to nothing."""
    gw = with_tls(gateway(*listeners), tls)
    assert validate_object(gw) == []
    tr, served, _ = run(gw)
    assert [(w.path, reason in w.reason) for w in tr.ingress.warnings] == [(path, True)]
    assert "http" in served


def test_schema_accepts_valid_only_and_refuses_tls_on_a_waypoint() -> None:
    ok = with_tls(gateway(HTTP, A, B), {"frontend": {"default": validation(cm_ref("c"), mode="AllowValidOnly"),
                                                     "perPort": [{"port": 8443, "tls": validation(cm_ref("d"))}]}})
    assert validate_object(ok) == []
    wp = with_tls(gateway({"name": "mesh", "port": 15008, "protocol": "HBONE"}, cls="ambit-waypoint"),
                  {"frontend": {"default": validation(cm_ref("c"))}})
    assert any(e.path == "spec.tls" and "waypoint" in e.reason for e in validate_object(wp))


def test_a_ca_bundle_with_non_ascii_comments_loads_at_the_gateway() -> None:
    """A ca.crt with non-ASCII text around its PEM blocks (Mozilla's cacert.pem names CAs such as
    "Főtanúsítvány") is a valid bundle: the listener is served and its context trusts the CA.
    Before, the text went to the gateway as written and OpenSSL, which takes only ASCII PEM in a
    str, raised TypeError building the listener's context."""
    from waypoint.ingress_listen import listener_context
    gw = with_tls(gateway(HTTP, A), {"frontend": {"default": validation(cm_ref("client-ca"))}})
    _, served, _ = run(gw, configmap("client-ca", {"ca.crt": "# NetLock Arany (Class Gold) Főtanúsítvány\n" + CA1}))
    ctx = listener_context(served["a"])
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "ca-one"),),)]
