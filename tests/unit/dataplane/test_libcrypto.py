"""The libcrypto binding (ambit/dataplane/libcrypto): keys, CSRs, certificate fields and chain checks,
each checked against the `cryptography` package as the oracle, and a data plane that never imports
`cryptography` (docs/performance.md, round 13: ~12 MB per proxy)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ambit.dataplane.libcrypto import OpenSSLError, build, lib
from ambit.dataplane.libcrypto.csr import make_key_and_csr
from ambit.dataplane.libcrypto.x509 import Certificate, ChainError, verify_chain
from ambit.dataplane.trust import TrustBundle, UntrustedCertificate, spiffe_id_of

ROOT = Path(__file__).resolve().parents[3]
PEM = serialization.Encoding.PEM
ID = "spiffe://cluster.local/ns/demo/sa/client"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _cert(subject: str, key, issuer=None, issuer_key=None, *, ca: bool = False, uris: tuple[str, ...] = (),
          dns: tuple[str, ...] = (), eku=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH),
          serial: int = 1000, days: float = 1, start: dt.datetime = NOW - dt.timedelta(hours=1)) -> x509.Certificate:
    """A certificate made by `cryptography` (the oracle), with the extensions RFC 5280 wants."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)] if subject else [])
    issuer_name = issuer.subject if issuer is not None else name
    signer = issuer_key or key
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(serial).not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
         .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                      crl_sign=ca, encipher_only=False, decipher_only=False), critical=True))
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=not subject)
    if eku and not ca:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return b.sign(signer, hashes.SHA256())


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _ours(*certs: x509.Certificate) -> list[Certificate]:
    return [c for x in certs for c in Certificate.load_pems(x.public_bytes(PEM))]


@pytest.fixture(scope="module")
def pki():
    """A root, an intermediate under it, and keys to sign leaves with."""
    root_key, inter_key = _key(), _key()
    root = _cert("root", root_key, ca=True, days=30, serial=1)
    inter = _cert("inter", inter_key, root, root_key, ca=True, days=10, serial=2)
    return {"root": root, "root_key": root_key, "inter": inter, "inter_key": inter_key}


def _queue_empty() -> bool:
    return lib().ERR_get_error() == 0


def test_committed_cdefs_module_is_what_the_declarations_generate() -> None:
    # Fails after an edit of build.CDEF until `python -m ambit.dataplane.libcrypto.build` is run.
    assert build.TARGET.read_text() == build.generate()


def test_key_and_csr_are_what_a_ca_expects() -> None:
    key_pem, csr_pem = make_key_and_csr(ID)
    csr = x509.load_pem_x509_csr(csr_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")          # PKCS#8, as ssl loads it
    assert csr.is_signature_valid and isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert csr.public_key() == key.public_key()
    assert list(csr.subject) == []
    (ext,) = list(csr.extensions)
    assert ext.critical and ext.value == x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ID)])
    assert make_key_and_csr(ID)[0] != key_pem                           # a fresh key each time


@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF_FFFF_FFFF, (1 << 158) + 12345])
def test_certificate_fields_match_the_oracle(pki, serial: int) -> None:
    leaf_key = _key()
    leaf = _cert("", leaf_key, pki["inter"], pki["inter_key"], uris=(ID,), serial=serial, days=0.5)
    (ours,) = _ours(leaf)
    assert ours.serial == leaf.serial_number == serial
    assert ours.not_before == leaf.not_valid_before_utc.timestamp()
    assert ours.not_after == leaf.not_valid_after_utc.timestamp()
    assert ours.uri_sans() == [ID]
    assert ours.der == leaf.public_bytes(serialization.Encoding.DER)
    assert ours.fingerprint() == leaf.fingerprint(hashes.SHA256())
    assert Certificate.load_pems(ours.pem()) == [ours]
    pem = leaf_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert ours.matches_key(pem)
    other = _key().private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert not ours.matches_key(other) and _queue_empty()


def test_uri_sans_none_several_and_mixed(pki) -> None:
    k = pki["inter_key"]
    none, dns_only, two = _ours(_cert("a", _key(), pki["inter"], k),
                                _cert("b", _key(), pki["inter"], k, dns=("b.example",)),
                                _cert("", _key(), pki["inter"], k, uris=(ID, ID + "2"), dns=("c.example",)))
    assert none.uri_sans() is None and dns_only.uri_sans() == [] and two.uri_sans() == [ID, ID + "2"]
    with pytest.raises(UntrustedCertificate, match="no subjectAltName"):
        spiffe_id_of(none)
    with pytest.raises(UntrustedCertificate, match="exactly one URI SAN, has 0"):
        spiffe_id_of(dns_only)
    with pytest.raises(UntrustedCertificate, match="exactly one URI SAN, has 2"):
        spiffe_id_of(two)


def test_a_chain_from_several_pems_in_order(pki) -> None:
    blob = pki["inter"].public_bytes(PEM) + b"junk between blocks\n" + pki["root"].public_bytes(PEM)
    assert [c.serial for c in Certificate.load_pems(blob)] == [2, 1] and _queue_empty()


@pytest.mark.parametrize(("data", "message"), [
    (b"", "PEM certificate 1 of 1"),
    (b"not a certificate", "PEM certificate 1 of 1"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "PEM certificate 1 of 1"),
])
def test_bad_pem_is_a_value_error_and_leaves_no_openssl_error_behind(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Certificate.load_pems(data)
    assert _queue_empty()      # `ssl` reads the same per-thread queue: nothing stale is left for it


def test_a_broken_certificate_after_a_good_one_is_not_silently_dropped(pki) -> None:
    good = pki["root"].public_bytes(PEM)
    broken = good.replace(b"MII", b"MIX", 1)
    with pytest.raises(OpenSSLError, match="PEM certificate 2 of 2"):
        Certificate.load_pems(good + broken)


def test_verify_chain_through_an_intermediate(pki) -> None:
    leaf = _cert("", _key(), pki["inter"], pki["inter_key"], uris=(ID,))
    chain = _ours(leaf, pki["inter"])
    (root,) = _ours(pki["root"])
    verify_chain([root], chain)
    assert TrustBundle([root]).verify(chain).uri == ID
    with pytest.raises(ChainError, match="unable to get local issuer certificate"):
        verify_chain([root], chain[:1])                                     # the intermediate is missing


def test_verify_chain_refuses_what_rfc_5280_and_the_client_purpose_refuse(pki) -> None:
    (root,) = _ours(pki["root"])
    inter, ik = pki["inter"], pki["inter_key"]
    stranger_key = _key()
    stranger = _cert("stranger", stranger_key, ca=True)
    cases = {
        "certificate has expired": (_ours(_cert("", _key(), inter, ik, uris=(ID,)), inter),
                                    NOW + dt.timedelta(days=2)),
        "certificate is not yet valid": (_ours(_cert("", _key(), inter, ik, uris=(ID,)), inter),
                                         NOW - dt.timedelta(days=1)),
        "unable to get local issuer certificate": (_ours(_cert("", _key(), stranger, stranger_key, uris=(ID,))),
                                                   None),
        "unsuitable certificate purpose": (_ours(_cert("", _key(), inter, ik, uris=(ID,),
                                                        eku=(ExtendedKeyUsageOID.SERVER_AUTH,)), inter), None),
        "invalid CA certificate": (_ours(_cert("", _key(), _cert("not-ca", ik, pki["root"], pki["root_key"]), ik,
                                               uris=(ID,)), _cert("not-ca", ik, pki["root"], pki["root_key"])),
                                   None),
    }
    for reason, (chain, at) in cases.items():
        with pytest.raises(ChainError, match=reason):
            verify_chain([root], chain, at=None if at is None else at.timestamp())
        assert _queue_empty(), reason
        with pytest.raises(UntrustedCertificate, match="does not chain to the trust bundle"):
            TrustBundle([root]).verify(chain, now=at)


def test_the_bundle_deduplicates_and_rotates_roots(pki) -> None:
    (root,) = _ours(pki["root"])
    (other,) = _ours(_cert("other", _key(), ca=True))
    b = TrustBundle([root, root, other])
    assert b.roots == [root, other]
    assert TrustBundle.from_pems(b.pems()).fingerprint() == b.fingerprint()
    assert b.without_root(other).roots == [root] and b.without_root(other).with_root(other).fingerprint() == b.fingerprint()
    with pytest.raises(ValueError, match="entry 1 is not PEM certificates"):
        TrustBundle.from_pems([root.pem(), "garbage"])


PROBE = """
import json, sys
import ztunnel.proxy, ztunnel.identity_setup, waypoint.app
from ambit.dataplane import tls
from ambit.dataplane.identity import WorkloadCertificate, make_key_and_csr
from tests.unit.dataplane.memtls import handshake
doc = json.loads(sys.stdin.read())
make_key_and_csr(doc["client"])
def cert(who):
    return WorkloadCertificate.from_pems(doc[who], doc[who + "_key"].encode(), doc[who + "_chain"], doc["bundle"])
client, server = cert("client"), cert("server")
c, s = handshake(tls.client_context(client), tls.server_context(server))
print(json.dumps({"client_sees": tls.verify_peer(c, doc["server"]).uri, "server_sees": tls.peer_identity(s).uri,
                  "serial": client.serial, "crypto": sorted(m for m in sys.modules if m.startswith("cryptography"))}))
"""


def test_a_data_plane_gets_its_certificate_and_shakes_hands_without_the_cryptography_package(ca) -> None:
    """A fresh interpreter importing both proxies makes a key and CSR, takes certificates signed by a
    real CA, handshakes mTLS and reads the peer's identity: `cryptography` is never imported."""
    from tests.unit.conftest import sid
    doc = {"client": sid("demo", "client"), "server": sid("demo", "server"), "bundle": ca.trust_bundle().pems()}
    for who in ("client", "server"):
        key_pem, csr = make_key_and_csr(doc[who])
        doc[f"{who}_key"], doc[f"{who}_chain"] = key_pem.decode(), ca.sign_csr(csr, doc[who], dt.timedelta(hours=1))
    p = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps(doc), capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    leaf = x509.load_pem_x509_certificate(doc["client_chain"][0].encode())
    assert out == {"client_sees": doc["server"], "server_sees": doc["client"], "serial": leaf.serial_number,
                   "crypto": []}
