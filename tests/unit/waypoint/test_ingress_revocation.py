"""Client certificate revocation (the credentialName Secret's `ca.crl`) and pinning
(`verifyCertificateSpki` / `verifyCertificateHash`) at the ingress gateway, on the wire: an Istio
Gateway and its Secrets through the controller's real validation and translation, the gateway's real
HTTPS listeners on loopback, curl with client certificates, and an origin that echoes.

Why the second MUTUAL host without a CRL on the same port: the gateway swaps each listener's
context in by SNI, and OpenSSL keeps the verify flags of the context a handshake began with, so a
revocation check set on one listener's context was ignored (tried) or, set on the port's, would
have failed every certificate of the listeners without a CRL. The check is the listener's own."""

from __future__ import annotations

import base64
import datetime
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambit.model import IngressGateway
from tests.unit.waypoint.test_ingress import _free_port
from tests.unit.waypoint.test_ingress_mtls import _Bench, _curl
from waypoint.ingress_listen import IngressListeners

pytestmark = pytest.mark.timeout(60)

HOST, OTHER = "mtls.example.com", "optional.example.com"     # served certificates the bench issued
NOW = datetime.datetime.now(datetime.UTC)
PEM = serialization.Encoding.PEM


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class ClientPki:
    """A client CA (its key kept, to sign CRLs) and client certificates "alice" and "bob" as files."""

    def __init__(self, tmp: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.ca = (x509.CertificateBuilder().subject_name(_name("client-ca")).issuer_name(_name("client-ca"))
                   .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                  critical=True)
                   .sign(self.key, hashes.SHA256()))
        self.certs: dict[str, x509.Certificate] = {}
        self.files: dict[str, tuple[Path, Path]] = {}
        for who in ("alice", "bob"):
            k = ec.generate_private_key(ec.SECP256R1())
            c = (x509.CertificateBuilder().subject_name(_name(who)).issuer_name(self.ca.subject)
                 .public_key(k.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(hours=1))
                 .sign(self.key, hashes.SHA256()))
            cert, key = tmp / f"{who}.crt", tmp / f"{who}.key"
            cert.write_bytes(c.public_bytes(PEM))
            key.write_bytes(k.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            self.certs[who], self.files[who] = c, (cert, key)

    def crl(self, *revoked: str) -> str:
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.ca.subject)
             .last_update(NOW - datetime.timedelta(minutes=5)).next_update(NOW + datetime.timedelta(hours=1)))
        for who in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(self.certs[who].serial_number)
                                          .revocation_date(NOW - datetime.timedelta(minutes=1)).build())
        return b.sign(self.key, hashes.SHA256()).public_bytes(PEM).decode()

    def cert(self, who: str) -> tuple[str, ...]:
        return ("--cert", str(self.files[who][0]), "--key", str(self.files[who][1]))

    def spki_b64(self, who: str) -> str:
        spki = self.certs[who].public_key().public_bytes(serialization.Encoding.DER,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def hash_colons(self, who: str) -> str:
        return ":".join(f"{b:02X}" for b in hashlib.sha256(self.certs[who].public_bytes(serialization.Encoding.DER))
                        .digest())


def _secret(name: str, b: _Bench, host: str, ca: str, crl: str | None) -> dict[str, Any]:
    data = {"tls.crt": b.certs[host].cert_pem, "tls.key": b.certs[host].key_pem, "ca.crt": ca}
    if crl is not None:
        data["ca.crl"] = crl
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "demo"}, "stringData": data}


def translated(b: _Bench, pki: ClientPki, crl: str | None, tls: dict[str, Any] | None = None,
               other_mode: str = "MUTUAL") -> tuple[IngressGateway, list[str]]:
    """An Istio Gateway with a MUTUAL server for HOST (Secret `mtls`, its `ca.crl` = `crl`, and
    `tls` added to the server's tls) and a server for OTHER (Secret `plain-ca`: the same client CA,
    no CRL) on one port, through the controller: (what the gateway pods get, the warnings)."""
    from controller.translate import translate
    ca = pki.ca.public_bytes(PEM).decode()

    def server(host: str, cred: str, mode: str, **more: Any) -> dict[str, Any]:
        return {"port": {"number": b.port, "name": cred, "protocol": "HTTPS"}, "hosts": [host],
                "tls": {"mode": mode, "credentialName": cred, **more}}
    objs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "demo"},
         "spec": {"clusterIP": "10.96.0.50", "selector": {"app": "echo"}, "ports": [{"port": 8080}]}},
        _secret("mtls", b, HOST, ca, crl), _secret("plain-ca", b, OTHER, ca, None),
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "demo"},
         "spec": {"gatewayClassName": "ambit", "infrastructure": {"labels": {"istio": "ingressgateway"}},
                  "listeners": [{"name": "http", "port": _free_port(), "protocol": "HTTP"}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "edge", "namespace": "demo"},
         "spec": {"selector": {"istio": "ingressgateway"},
                  "servers": [server(HOST, "mtls", "MUTUAL", **(tls or {})), server(OTHER, "plain-ca", other_mode)]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "echo", "namespace": "demo"},
         "spec": {"hosts": [HOST, OTHER], "gateways": ["edge"],
                  "http": [{"route": [{"destination": {"host": "echo", "port": {"number": 8080}}}]}]}},
    ]
    from controller.validation import validate_object
    for o in objs:
        assert validate_object(o) == [], validate_object(o)
    tr = translate(objs)
    assert not tr.errors, tr.errors
    (gw,) = tr.ingress.gateways
    return gw, [f"{w.path}: {w.reason}" for w in tr.ingress.warnings]


async def _reapply(b: _Bench, listeners: IngressListeners, gw: IngressGateway, version: str) -> None:
    """Give the open listeners a new translation (a changed Secret or Gateway)."""
    b.apply(gw, version)
    await listeners.update(b.cfg.view.ingress)


async def _served(b: _Bench, pki: ClientPki, host: str, *who: str) -> dict[str, bool]:
    """Whether each client, with its certificate, gets an answer from `host`."""
    return {w: (await _curl(b.port, b.ca, host, *pki.cert(w)))[0] == 0 for w in who}


def test_a_revoked_client_certificate_fails_its_handshake_and_a_new_crl_applies_to_the_next(tmp_path: Path) -> None:
    """The Secret's ca.crl revokes bob: bob's handshake fails, alice is served; the Secret changes to
    revoke alice instead and the next handshakes follow it. The other MUTUAL host on the port, whose
    Secret has no CRL, serves bob all along (its listener checks no revocation, as in Envoy)."""
    b, pki = _Bench(tmp_path), ClientPki(tmp_path)
    gw, warnings = translated(b, pki, pki.crl("bob"))
    assert warnings == []
    b.apply(gw, "1")

    async def main(listeners: IngressListeners) -> None:
        rc, got = await _curl(b.port, b.ca, HOST, *pki.cert("alice"))
        assert rc == 0 and got["x-forwarded-client-cert"].endswith('Subject="CN=alice"'), got
        rc, _ = await _curl(b.port, b.ca, HOST, *pki.cert("bob"))
        assert rc != 0, "a revoked client certificate was served"
        rc, _ = await _curl(b.port, b.ca, HOST)
        assert rc != 0, "MUTUAL served a client without a certificate"
        rc, _ = await _curl(b.port, b.ca, OTHER, *pki.cert("bob"))
        assert rc == 0, "a listener without a CRL checked revocation (another listener's CRL leaked)"
        # the Secret changes: alice revoked, bob no more; the next handshakes follow it
        await _reapply(b, listeners, translated(b, pki, pki.crl("alice"))[0], "2")
        assert await _served(b, pki, HOST, "alice", "bob") == {"alice": False, "bob": True}

    b.run(main)


def test_a_crl_that_does_not_parse_leaves_the_server_unserved_with_a_warning(tmp_path: Path) -> None:
    b, pki = _Bench(tmp_path), ClientPki(tmp_path)
    broken = "-----BEGIN X509 CRL-----\nMIIBAAAA\n-----END X509 CRL-----\n"
    gw, warnings = translated(b, pki, broken)
    assert any(w.startswith("spec.servers[0].tls.credentialName: Secret demo/mtls: ca.crl") and "does not parse" in w
               and w.endswith("the server is not served") for w in warnings), warnings
    assert {ln.hostname for ln in gw.listeners if ln.protocol == "HTTPS"} == {OTHER}
    gw, warnings = translated(b, pki, "not a CRL at all")
    assert any("Secret demo/mtls: ca.crl holds no PEM CRL" in w for w in warnings), warnings
    assert {ln.hostname for ln in gw.listeners if ln.protocol == "HTTPS"} == {OTHER}


def test_a_crl_the_gateway_cannot_load_leaves_that_listener_unserved(tmp_path: Path) -> None:
    """Defence behind the controller's check: a listener whose CRL does not load is not served,
    never served without revocation checks (nor by its last context); the port's others are."""
    b, pki = _Bench(tmp_path), ClientPki(tmp_path)
    gw, _ = translated(b, pki, pki.crl("bob"))
    b.apply(gw, "1")

    async def main(listeners: IngressListeners) -> None:
        assert await _served(b, pki, HOST, "alice") == {"alice": True}
        gw, _ = translated(b, pki, pki.crl("bob"))
        [ln] = [ln for ln in gw.listeners if ln.hostname == HOST]
        ln.client_crl_pem = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
        await _reapply(b, listeners, gw, "2")
        assert await _served(b, pki, HOST, "alice", "bob") == {"alice": False, "bob": False}
        assert await _served(b, pki, OTHER, "alice", "bob") == {"alice": True, "bob": True}

    b.run(main)


def test_certificate_pins_admit_the_pinned_client_only(tmp_path: Path) -> None:
    """verifyCertificateSpki (base64) and verifyCertificateHash (hex with colons, upper case): a
    certificate matching either list is served, one matching neither is closed right after its
    handshake, before its request reaches the origin (Python's ssl has no verify callback, so not
    in the handshake, as Envoy does)."""
    b, pki = _Bench(tmp_path), ClientPki(tmp_path)
    gw, _ = translated(b, pki, None, {"verifyCertificateSpki": [pki.spki_b64("alice")]})
    b.apply(gw, "1")

    async def main(listeners: IngressListeners) -> None:
        rc, _ = await _curl(b.port, b.ca, HOST, *pki.cert("alice"))
        assert rc == 0
        seen = b.origin.requests
        rc, _ = await _curl(b.port, b.ca, HOST, *pki.cert("bob"))
        assert rc != 0, "a certificate matching no pin was served"
        assert b.origin.requests == seen, "the request of a client matching no pin reached the origin"
        # both lists: a match in either is enough
        await _reapply(b, listeners, translated(b, pki, None, {"verifyCertificateSpki": [pki.spki_b64("alice")],
                                                               "verifyCertificateHash": [pki.hash_colons("bob")]})[0], "2")
        assert await _served(b, pki, HOST, "alice", "bob") == {"alice": True, "bob": True}
        bob = pki.hash_colons("bob").replace(":", "").lower()
        await _reapply(b, listeners, translated(b, pki, None, {"verifyCertificateHash": [bob]})[0], "3")
        assert await _served(b, pki, HOST, "alice", "bob") == {"alice": False, "bob": True}

    b.run(main)


def test_pins_on_an_optional_mutual_server_spare_clients_without_a_certificate(tmp_path: Path) -> None:
    """OPTIONAL_MUTUAL pinning alice: bob is closed, a client without a certificate served (Envoy
    checks pins on a presented certificate only; Istio's OPTIONAL_MUTUAL asks for none)."""
    b, pki = _Bench(tmp_path), ClientPki(tmp_path)
    gw, _ = translated(b, pki, None, other_mode="OPTIONAL_MUTUAL")
    [opt] = [ln for ln in gw.listeners if ln.hostname == OTHER]
    opt.client_spki_sha256 = [base64.b64decode(pki.spki_b64("alice")).hex()]
    b.apply(gw, "1")

    async def main(listeners: IngressListeners) -> None:
        rc, got = await _curl(b.port, b.ca, OTHER)
        assert rc == 0 and "x-forwarded-client-cert" not in got
        rc, _ = await _curl(b.port, b.ca, OTHER, *pki.cert("alice"))
        assert rc == 0
        rc, _ = await _curl(b.port, b.ca, OTHER, *pki.cert("bob"))
        assert rc != 0

    b.run(main)


def test_the_gateway_refuses_malformed_pins_rather_than_serve_without_them() -> None:
    from ambit.model import IngressListener
    from waypoint.ingress import build
    for ln in (IngressListener("a", 443, "HTTPS", client_auth="required", client_ca_pem="x",
                               client_spki_sha256=["not-hex"]),
               IngressListener("a", 443, "HTTPS", client_crl_pem="-----BEGIN X509 CRL-----")):
        with pytest.raises(ValueError, match="ingress listener a"):
            build(IngressGateway("gw", "demo", listeners=[ln]))
