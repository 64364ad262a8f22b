"""DestinationRule `tls.credentialName`: validation by Istio's rules, the Secret read in the namespace
of the waypoint that originates (Istio's formats: `cert`/`key`/`cacert`/`crl` or `tls.crt`/`tls.key`/
`ca.crt`/`ca.crl`, and a `<name>-cacert` Secret for the CA), what is wrong said on the rule, and the
key sent to the waypoints of that namespace alone. Before, `credentialName` was accepted with a
warning that it was not supported."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from ambit.configclient.node import NodeInfo
from ambit.model import ClientCredential, IngressGateway, TlsCertificate
from controller.ca.authority import generate_root
from controller.configserver.scope import scope
from controller.configserver.server import redact_keys
from controller.translate import translate
from controller.validation import validate_object
from controller.waypoints.advisories import advisories
from tests.support.testca import make_ca, make_leaf, pem

Obj = dict[str, Any]
HOST = "api.example.com"


def _dr(tls: Obj, ns: str = "apps", **extra: Any) -> Obj:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "api", "namespace": ns},
            "spec": {"host": HOST, "trafficPolicy": {"tls": tls}, **extra}}


def _errors(obj: Obj) -> dict[str, str]:
    return {e.path: e.reason for e in validate_object(obj)}


# -- validation ---------------------------------------------------------------------------------------

def test_credential_name_with_files_is_refused_as_istio_refuses_it() -> None:
    errs = _errors(_dr({"mode": "MUTUAL", "credentialName": "c", "clientCertificate": "/c.pem", "caCrl": "/x.crl"}))
    assert set(errs) == {"spec.trafficPolicy.tls.clientCertificate", "spec.trafficPolicy.tls.caCrl"}
    assert "credentialName" in errs["spec.trafficPolicy.tls.caCrl"]


def test_mutual_from_files_needs_both_the_certificate_and_the_key() -> None:
    errs = _errors(_dr({"mode": "MUTUAL", "clientCertificate": "/c.pem"}))
    assert list(errs) == ["spec.trafficPolicy.tls.privateKey"]
    assert not _errors(_dr({"mode": "MUTUAL", "credentialName": "client"}))


def test_insecure_skip_verify_refuses_what_would_be_verified() -> None:
    errs = _errors(_dr({"mode": "SIMPLE", "insecureSkipVerify": True, "credentialName": "c", "subjectAltNames": ["a"]}))
    assert set(errs) == {"spec.trafficPolicy.tls.credentialName", "spec.trafficPolicy.tls.subjectAltNames"}
    # MUTUAL may take its client certificate from the Secret with verification off
    assert not _errors(_dr({"mode": "MUTUAL", "insecureSkipVerify": True, "credentialName": "c"}))


def test_a_bad_name_and_configmap_credentials_are_refused_with_the_reason() -> None:
    assert "Secret name" in _errors(_dr({"mode": "SIMPLE", "credentialName": "Not_A_Name"}))[
        "spec.trafficPolicy.tls.credentialName"]
    why = _errors(_dr({"mode": "SIMPLE", "credentialName": "configmap://apps/ca"}))["spec.trafficPolicy.tls.credentialName"]
    assert "not supported" in why and "BackendTLSPolicy" in why


def test_istios_other_credential_forms() -> None:
    """`kubernetes://name` is Istio's explicit spelling of `name`; a Secret of another namespace,
    `builtin://` and `kubernetes-gateway://` are refused with the reason."""
    assert not _errors(_dr({"mode": "MUTUAL", "credentialName": "kubernetes://partner"}))
    creds = _creds(_mesh({"mode": "MUTUAL", "credentialName": "kubernetes://partner"},
                         _secret("partner", "egress", {"tls.crt": CLIENT_CERT, "tls.key": CLIENT_KEY, "ca.crt": pem(CA)})))
    assert creds["egress/partner"].cert_pem == CLIENT_CERT
    for name, why in (("kubernetes://other/partner", "another namespace"), ("builtin://", "builtin://"),
                      ("kubernetes-gateway://ns/x", "Gateway API")):
        assert why in _errors(_dr({"mode": "SIMPLE", "credentialName": name}))["spec.trafficPolicy.tls.credentialName"]


def test_port_level_and_subset_tls_are_checked_too() -> None:
    dr = _dr({"mode": "DISABLE"}, subsets=[{"name": "v1", "trafficPolicy": {"portLevelSettings": [
        {"port": {"number": 443}, "tls": {"mode": "MUTUAL", "credentialName": "c", "privateKey": "/k"}}]}}])
    assert list(_errors(dr)) == ["spec.subsets[0].trafficPolicy.portLevelSettings[0].tls.privateKey"]


# -- translation ----------------------------------------------------------------------------------------

CA, CA_KEY = make_ca("partner-ca")
CLIENT_CERT, CLIENT_KEY = make_leaf(CA, CA_KEY, "client.apps")


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _secret(name: str, ns: str, data: dict[str, str], type_: str = "Opaque") -> Obj:
    return {"apiVersion": "v1", "kind": "Secret", "type": type_, "metadata": {"name": name, "namespace": ns},
            "data": {k: _b64(v) for k, v in data.items()}}


def _mesh(tls: Obj, *secrets: Obj) -> list[Obj]:
    """A ServiceEntry in `apps` bound to waypoint `egress/egress` (another namespace), its rule, secrets."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "egress"}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "egress", "namespace": "egress"},
         "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [
             {"name": "mesh", "port": 15008, "protocol": "HBONE", "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "other", "namespace": "other"},
         "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
         "metadata": {"name": "api", "namespace": "apps", "labels": {"istio.io/use-waypoint": "egress",
                                                                     "istio.io/use-waypoint-namespace": "egress"}},
         "spec": {"hosts": [HOST], "addresses": ["240.240.0.1"], "resolution": "STATIC",
                  "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 443}],
                  "endpoints": [{"address": "192.0.2.10"}]}},
        _dr(tls), *secrets]


def _creds(objs: list[Obj]) -> dict[str, ClientCredential]:
    tr = translate(objs)
    assert not tr.errors, tr.errors
    return {c.resource_name: c for c in tr.credentials.credentials}


def _notes(objs: list[Obj]) -> dict[str, str]:
    return {a.path: a.reason for a in advisories(objs, translation=translate(objs)) if a.ref == "DestinationRule/apps/api"}


def test_the_secret_is_read_in_the_waypoints_namespace_not_the_rules() -> None:
    objs = _mesh({"mode": "MUTUAL", "credentialName": "partner"},
                 _secret("partner", "egress", {"tls.crt": CLIENT_CERT, "tls.key": CLIENT_KEY, "ca.crt": pem(CA)},
                         "kubernetes.io/tls"),
                 _secret("partner", "apps", {"tls.crt": "not this one", "tls.key": "x"}))
    creds = _creds(objs)
    c = creds["egress/partner"]
    assert (c.cert_pem, c.key_pem, c.ca_pem, c.error) == (CLIENT_CERT, CLIENT_KEY, pem(CA), "")
    assert creds["other/partner"].error.startswith("Secret other/partner does not exist")
    assert "apps/partner" not in creds          # no waypoint there
    assert not _notes(objs)


def test_generic_keys_and_the_cacert_secret_as_istio_reads_them() -> None:
    other, _ = make_ca("not-this-ca")
    crl = "-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n"
    objs = _mesh({"mode": "MUTUAL", "credentialName": "partner"},
                 _secret("partner", "egress", {"cert": CLIENT_CERT, "key": CLIENT_KEY, "cacert": pem(other)}),
                 _secret("partner-cacert", "egress", {"cacert": pem(CA)}))
    c = _creds(objs)["egress/partner"]
    assert (c.cert_pem, c.ca_pem, c.error) == (CLIENT_CERT, pem(CA), "")      # the -cacert Secret's CA wins
    objs[-1] = _secret("partner-cacert", "egress", {"ca.crt": pem(CA), "ca.crl": crl})
    assert "CRL #1 does not parse" in _creds(objs)["egress/partner"].error


def test_what_the_waypoint_cannot_originate_with_is_said_on_the_rule() -> None:
    missing = _notes(_mesh({"mode": "SIMPLE", "credentialName": "partner"}))
    why = missing["spec.trafficPolicy.tls.credentialName"]
    assert "Secret egress/partner does not exist" in why and "waypoint egress/egress" in why and "503 UF" in why
    ca_only = _mesh({"mode": "MUTUAL", "credentialName": "partner"}, _secret("partner-cacert", "egress", {"ca.crt": pem(CA)}))
    assert "no client certificate and key" in _notes(ca_only)["spec.trafficPolicy.tls.credentialName"]
    no_ca = _mesh({"mode": "SIMPLE", "credentialName": "partner"},
                  _secret("partner", "egress", {"tls.crt": CLIENT_CERT, "tls.key": CLIENT_KEY}, "kubernetes.io/tls"))
    assert "no CA certificate" in _notes(no_ca)["spec.trafficPolicy.tls.credentialName"]
    # verification off needs no CA
    assert not _notes(_mesh({"mode": "MUTUAL", "credentialName": "partner", "insecureSkipVerify": True},
                            _secret("partner", "egress", {"tls.crt": CLIENT_CERT, "tls.key": CLIENT_KEY},
                                    "kubernetes.io/tls")))
    bad_key = _mesh({"mode": "MUTUAL", "credentialName": "partner"},
                    _secret("partner", "egress", {"tls.crt": CLIENT_CERT, "tls.key": "garbage", "ca.crt": pem(CA)}))
    assert "do not hold a PEM certificate and key" in _notes(bad_key)["spec.trafficPolicy.tls.credentialName"]


def test_a_ca_key_is_never_made_a_client_credential() -> None:
    """The mesh's CA Secret in cert-manager's layout (tls.crt is the CA, tls.key its signing key): a
    rule naming it must not get the key sent to a waypoint. A self-signed client certificate
    (CA:TRUE without keyCertSign, as `openssl req -x509` makes them) is the client's own, and serves."""
    mesh_ca = generate_root("cluster.local")
    ca_key = mesh_ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode()
    objs = _mesh({"mode": "MUTUAL", "credentialName": "ambit-ca"},
                 _secret("ambit-ca", "egress", {"tls.crt": pem(mesh_ca.cert), "tls.key": ca_key,
                                                "ca.crt": pem(mesh_ca.cert)}, "kubernetes.io/tls"))
    c = _creds(objs)["egress/ambit-ca"]
    assert c.key_pem == "" and "is a CA certificate that signs certificates" in c.error
    own_key = CA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()).decode()
    objs = _mesh({"mode": "MUTUAL", "credentialName": "self"},
                 _secret("self", "egress", {"tls.crt": pem(CA), "tls.key": own_key, "ca.crt": pem(CA)}))
    c = _creds(objs)["egress/self"]
    assert (c.error, c.key_pem) == ("", own_key)


def test_a_rule_for_a_host_that_originates_no_tls_gets_no_key_sent() -> None:
    """A Service's pods are reached over HBONE (the rule's tls is warned as not applied): no
    credential is made for it, whatever Secret it names."""
    objs = _mesh({"mode": "MUTUAL", "credentialName": "partner"},
                 _secret("partner", "egress", {"tls.crt": CLIENT_CERT, "tls.key": CLIENT_KEY, "ca.crt": pem(CA)}))
    [rule] = [o for o in objs if o["kind"] == "DestinationRule"]
    rule["spec"]["host"] = "reviews.apps.svc.cluster.local"      # now for no entry's host
    assert not _creds(objs)


def test_credential_name_with_a_mode_that_reads_none_is_warned() -> None:
    notes = _notes(_mesh({"mode": "DISABLE", "credentialName": "partner"}))
    assert "SIMPLE and MUTUAL only" in notes["spec.trafficPolicy.tls.credentialName"]
    assert not _creds(_mesh({"mode": "DISABLE", "credentialName": "partner"}))      # and nothing is read


# -- who gets the key ---------------------------------------------------------------------------------

def test_a_credential_goes_to_the_waypoints_of_its_namespace_only() -> None:
    creds = [ClientCredential("partner", "egress", CLIENT_CERT, CLIENT_KEY), ClientCredential("partner", "other")]
    snap = {ClientCredential.TYPE: creds}

    def got(node: NodeInfo) -> list[str]:
        return [c.resource_name for c in scope(node, ClientCredential.TYPE, snap)]
    assert got(NodeInfo(kind="waypoint", name="egress-7f", waypoint="egress/egress")) == ["egress/partner"]
    assert got(NodeInfo(kind="waypoint", name="gw-1", waypoint="egress/ingress")) == ["egress/partner"]
    assert got(NodeInfo(kind="waypoint", name="w", waypoint="apps/waypoint")) == []
    assert got(NodeInfo(kind="ztunnel", name="node1")) == []
    assert got(NodeInfo(kind="agent", name="node1")) == []


def test_the_debug_config_dump_never_shows_a_private_key() -> None:
    gw = IngressGateway("gw", "web")
    gw.listeners = []
    body = {"cred": ClientCredential("partner", "egress", CLIENT_CERT, CLIENT_KEY).to_dict(),
            "cert": TlsCertificate("web/cert", CLIENT_CERT, CLIENT_KEY).__dict__}
    out = redact_keys(body)
    assert CLIENT_KEY not in str(out) and out["cred"]["cert_pem"] == CLIENT_CERT
    assert out["cred"]["key_pem"] == out["cert"]["key_pem"] == "<redacted>"


@pytest.mark.parametrize("mode", ["SIMPLE", "MUTUAL"])
def test_the_policy_names_the_credential_for_its_mode(mode: str) -> None:
    tr = translate(_mesh({"mode": mode, "credentialName": "partner"}))
    assert '"credential_name": "partner"' in str([w.to_dict() for w in tr.waypoint_routes]).replace("'", '"')


def test_analyze_reports_an_unusable_credential_only_when_the_files_hold_secrets() -> None:
    from ambitctl.analyze import analyze
    objs = _mesh({"mode": "MUTUAL", "credentialName": "partner"})
    assert not [f for f in analyze(objs, complete=False) if f.code == "AMB0130"]     # it may be in the cluster
    [f] = [f for f in analyze(objs, complete=True) if f.code == "AMB0130"]
    assert (f.ref, f.path) == ("DestinationRule/apps/api", "spec.trafficPolicy.tls.credentialName")
    ca_only = _mesh({"mode": "MUTUAL", "credentialName": "partner"}, _secret("partner", "egress", {"ca.crt": pem(CA)}))
    [f] = [f for f in analyze(ca_only, complete=False) if f.code == "AMB0130"]
    assert "no client certificate and key" in f.message
