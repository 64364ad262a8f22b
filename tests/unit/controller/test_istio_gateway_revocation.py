"""An Istio Gateway server's client certificate revocation (the credentialName Secret's `ca.crl`)
and pins (`verifyCertificateSpki`, `verifyCertificateHash`), as the controller validates and
translates them: what the schema refuses, naming the field; what the ingress gateway receives."""

from __future__ import annotations

import base64
import datetime
import hashlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.validation import validate_object
from tests.unit.controller.test_ingress import tls_secret
from tests.unit.controller.test_istio_gateway import istio_gateway, listeners

NOW = datetime.datetime.now(datetime.UTC)
DIGEST = hashlib.sha256(b"a client certificate").digest()


def server(mode: str = "MUTUAL", **tls: Any) -> dict[str, Any]:
    return {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["a.example.com"],
            "tls": {"mode": mode, "credentialName": "partners", **tls}}


@pytest.mark.parametrize(("tls", "path", "reason"), [
    ({"verifyCertificateSpki": ["not base64!"]}, "verifyCertificateSpki[0]", "is not base64"),
    ({"verifyCertificateSpki": [base64.b64encode(DIGEST[:20]).decode()]}, "verifyCertificateSpki[0]",
     "decodes to 20 bytes, not a SHA-256 digest (32)"),
    ({"verifyCertificateHash": [DIGEST.hex(), "xyz" + DIGEST.hex()[3:]]}, "verifyCertificateHash[1]",
     "is not a hex SHA-256 digest"),
    ({"verifyCertificateHash": [DIGEST.hex()[:-2]]}, "verifyCertificateHash[0]", "is not a hex SHA-256 digest"),
    ({"verifyCertificateHash": [":".join(DIGEST.hex()[i:i + 4] for i in range(0, 64, 4))]},
     "verifyCertificateHash[0]", "32 pairs separated by colons"),
    ({"caCrl": "/etc/certs/ca.crl"}, "caCrl", "put the CRL in the credentialName Secret's ca.crl key"),
])
def test_bad_pins_and_the_crl_file_are_refused_naming_the_field(tls: dict[str, Any], path: str, reason: str) -> None:
    errs = validate_object(istio_gateway(server(**tls)))
    assert any(e.path == f"spec.servers[0].tls.{path}" and reason in e.reason for e in errs), errs


@pytest.mark.parametrize("field", ["verifyCertificateSpki", "verifyCertificateHash"])
def test_pins_check_client_certificates_so_only_with_mutual_modes(field: str) -> None:
    value = base64.b64encode(DIGEST).decode() if field == "verifyCertificateSpki" else DIGEST.hex()
    errs = validate_object(istio_gateway(server("SIMPLE", **{field: [value]})))
    assert any(e.path == f"spec.servers[0].tls.{field}" and "only with mode MUTUAL or OPTIONAL_MUTUAL" in e.reason
               for e in errs), errs
    assert validate_object(istio_gateway(server("OPTIONAL_MUTUAL", **{field: [value]}))) == []


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert, key


def _crl(ca: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> str:
    return (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(NOW)
            .next_update(NOW + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM).decode())


def _secret(ca_pem: str, crl: str | None) -> dict[str, Any]:
    s = tls_secret("partners")
    s["stringData"]["ca.crt"] = ca_pem
    if crl is not None:
        s["stringData"]["ca.crl"] = crl
    return s


def test_the_secrets_ca_crl_and_the_pins_reach_the_gateway() -> None:
    """ca.crl (Istio's key in a kubernetes.io/tls Secret) goes to the listener, its PEM CRLs only;
    pins go as lowercase hex digests, whatever their form (base64; hex with colons, upper case)."""
    (ca, key), (other, _) = _ca("partners-ca"), _ca("other-ca")
    pems = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in (ca, other))
    crl = _crl(ca, key)
    colons = ":".join(f"{b:02X}" for b in DIGEST)
    got, errors = listeners([_secret(pems, "# partners' CRL\n" + crl), istio_gateway(server(
        verifyCertificateSpki=[base64.b64encode(DIGEST).decode()], verifyCertificateHash=[colons]))])
    [ln] = got.values()
    assert ln.client_crl_pem == crl.strip() + "\n"
    assert ln.client_spki_sha256 == [DIGEST.hex()] and ln.client_cert_sha256 == [DIGEST.hex()]
    # other-ca has no CRL in ca.crl: its certificates would all fail; said, not refused (Envoy accepts it)
    assert [e for e in errors if "other-ca" in e] == [
        "spec.servers[0].tls.credentialName: Secret web/partners: ca.crl has no CRL issued by CA CN=other-ca of its "
        "ca.crt, so every client certificate that CA issued fails verification (revocation is checked for every CA "
        "of a chain once a CRL is given, as Envoy does); add that CA's CRL"], errors


def test_a_bad_ca_crl_leaves_the_server_unserved_and_an_empty_one_is_none() -> None:
    ca, key = _ca("partners-ca")
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    for bad, why in (("garbage", "ca.crl holds no PEM CRL"),
                     ("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----", "ca.crl CRL #1 does not parse")):
        got, errors = listeners([_secret(ca_pem, bad), istio_gateway(server())])
        assert got == {}
        assert any(e.startswith(f"spec.servers[0].tls.credentialName: Secret web/partners: {why}")
                   and e.endswith("the server is not served") for e in errors), errors
    got, errors = listeners([_secret(ca_pem, ""), istio_gateway(server())])
    [ln] = got.values()
    assert errors == [] and ln.client_crl_pem == "" and ln.client_auth == "required"
