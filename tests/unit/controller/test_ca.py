"""The mesh CA: roots, storage, CSR checks, node authorization, root rotation, the gRPC service."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import re
import stat

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ambit.api import ca_pb2, ca_pb2_grpc
from ambit.dataplane.libcrypto.x509 import Certificate
from controller.ca import (
    BootstrapTokens,
    CAConfigError,
    CAMaterial,
    CertificateAuthority,
    CertificateServicer,
    CSRRejected,
    DirectoryStorage,
    TrustBundle,
    Unauthenticated,
    UntrustedCertificate,
    add_to_server,
    authorize,
    generate_root,
    load_or_create,
    load_user_provided,
)
from controller.ca.service import requested_ttl

TD = "cluster.local"
ID = f"spiffe://{TD}/ns/demo/sa/client"
PEM = serialization.Encoding.PEM


def make_csr(sans: list[x509.GeneralName] | None = None, key=None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans is not None:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(PEM)


def load_chain(pems: list[str]) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(p.encode()) for p in pems]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority(generate_root(TD), TD)


# --- root -----------------------------------------------------------------------------------------

def test_generated_root_is_a_constrained_p256_ca_for_ten_years() -> None:
    m = generate_root(TD)
    c = m.cert
    assert isinstance(c.public_key(), ec.EllipticCurvePublicKey)
    assert c.public_key().curve.name == "secp256r1"
    assert c.issuer == c.subject
    bc = c.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = c.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and not ku.value.digital_signature
    life = c.not_valid_after_utc - c.not_valid_before_utc
    assert dt.timedelta(days=3649) < life < dt.timedelta(days=3652)
    assert c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == TD


def test_storage_round_trip_key_is_0600_and_never_overwritten(tmp_path) -> None:
    st = DirectoryStorage(tmp_path / "ca")
    assert st.load() is None
    m = load_or_create(st, TD)
    key_mode = stat.S_IMODE(os.stat(tmp_path / "ca" / "ca.key").st_mode)
    assert key_mode == 0o600
    again = load_or_create(st, TD)
    assert again.cert == m.cert
    # The loaded key signs certificates that verify under the stored root.
    chain = CertificateAuthority(again, TD).sign_csr(make_csr(), ID)
    assert TrustBundle.from_pems([m.cert.public_bytes(PEM)]).verify_pems(chain).uri == ID


def test_storage_with_only_one_file_is_an_error(tmp_path) -> None:
    st = DirectoryStorage(tmp_path)
    st.save(generate_root(TD))
    (tmp_path / "ca.key").unlink()
    with pytest.raises(CAConfigError, match="ca.key is missing"):
        st.load()


def _intermediate_under(root: CAMaterial, name: str = "ambit intermediate") -> CAMaterial:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.cert.public_key()), critical=False
        )
        .sign(root.key, hashes.SHA256())
    )
    return CAMaterial(cert=cert, key=key, chain=[root.cert])


def test_user_provided_intermediate_signs_leaves_that_chain_to_the_org_root(tmp_path) -> None:
    org_root = generate_root("org", path_length=1)
    inter = _intermediate_under(org_root)
    key_pem = inter.key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    m = load_user_provided(inter.cert.public_bytes(PEM), key_pem, org_root.cert.public_bytes(PEM))
    assert m.root == org_root.cert
    ca = CertificateAuthority(m, TD)
    chain = ca.sign_csr(make_csr(), ID)
    assert [c.subject for c in load_chain(chain)][1:] == [inter.cert.subject]  # leaf + intermediate, no root
    assert ca.trust_bundle().pems() == [org_root.cert.public_bytes(PEM).decode()]
    assert ca.trust_bundle().verify_pems(chain).uri == ID
    # And it survives persistence, chain included.
    DirectoryStorage(tmp_path).save(m)
    loaded = DirectoryStorage(tmp_path).load()
    assert loaded is not None and loaded.chain == [org_root.cert]


def test_user_provided_material_is_validated() -> None:
    root = generate_root(TD)
    other = generate_root(TD)
    key_pem = other.key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(CAConfigError, match="does not match"):
        load_user_provided(root.cert.public_bytes(PEM), key_pem)
    inter = _intermediate_under(root)
    ikey = inter.key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(CAConfigError, match="needs its chain"):
        load_user_provided(inter.cert.public_bytes(PEM), ikey)
    with pytest.raises(CAConfigError, match=r"chain\[0\]: did not issue"):
        load_user_provided(inter.cert.public_bytes(PEM), ikey, other.cert.public_bytes(PEM))
    with pytest.raises(CAConfigError, match="not a PEM certificate"):
        load_user_provided(b"garbage", ikey)
    # A workload leaf (with its own key) is not a CA.
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_pem = CertificateAuthority(root, TD).sign_csr(make_csr(key=leaf_key), ID)[0].encode()
    with pytest.raises(CAConfigError, match="CA certificate: basicConstraints says CA:false"):
        load_user_provided(leaf_pem, leaf_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))


# --- signing ----------------------------------------------------------------------------------------

def test_workload_certificate_profile(ca: CertificateAuthority) -> None:
    before = dt.datetime.now(dt.UTC)
    chain = ca.sign_csr(make_csr([x509.UniformResourceIdentifier(ID)]), ID)
    assert len(chain) == 1  # root-signed: the root travels only in the trust bundle
    leaf = load_chain(chain)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(ID)]
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.material.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key()).digest
    assert leaf.not_valid_before_utc < before  # backdated for clock skew
    life = leaf.not_valid_after_utc - before
    assert dt.timedelta(hours=23, minutes=59) < life <= dt.timedelta(hours=24, seconds=5)


def test_requested_ttl_is_honoured_and_capped(ca: CertificateAuthority) -> None:
    leaf = load_chain(ca.sign_csr(make_csr(), ID, dt.timedelta(hours=1)))[0]
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(hours=1, seconds=5)
    with pytest.raises(CSRRejected, match="exceeds the maximum"):
        ca.sign_csr(make_csr(), ID, dt.timedelta(days=30))


@pytest.mark.parametrize(
    ("csr", "requested", "reason"),
    [
        (lambda: make_csr([x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/prod/sa/db")]), ID,
         "names other than the requested identity: UniformResourceIdentifier:spiffe://cluster.local/ns/prod/sa/db"),
        (lambda: make_csr([x509.UniformResourceIdentifier(ID), x509.DNSName("evil.example")]), ID,
         "DNSName:evil.example"),
        (lambda: make_csr(key=rsa.generate_private_key(65537, 2048)), ID, "key must be ECDSA P-256, got RSA 2048"),
        (lambda: make_csr(key=ec.generate_private_key(ec.SECP384R1())), ID, "got ECDSA secp384r1"),
        (lambda: make_csr(), "spiffe://other.domain/ns/demo/sa/client", "trust domain 'other.domain'"),
        (lambda: make_csr(), "spiffe://cluster.local/ns/demo", "path must be"),
        (lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", ID,
         "malformed CSR"),
    ],
)
def test_bad_csrs_are_refused_with_the_reason(ca, csr, requested, reason) -> None:
    with pytest.raises(CSRRejected) as ei:
        ca.sign_csr(csr(), requested)
    assert reason in ei.value.reason
    assert ei.value.identity == requested


def test_csr_with_broken_signature_is_refused(ca: CertificateAuthority) -> None:
    der = bytearray(x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the ECDSA signature's last integer
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(PEM)
    with pytest.raises(CSRRejected, match="signature does not verify"):
        ca.sign_csr(pem, ID)


def test_serving_certificate_for_the_controller(ca: CertificateAuthority) -> None:
    chain, key_pem = ca.issue_serving_certificate(["127.0.0.1", "ambit-controller.ambit-system.svc"])
    leaf = load_chain(chain)[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["ambit-controller.ambit-system.svc"]
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert "PRIVATE KEY" in key_pem


# --- node authorization and credentials ---------------------------------------------------------

def test_node_may_only_get_identities_of_its_own_pods() -> None:
    pods = [("demo", "client"), ("demo", "server")]
    assert authorize("node-1", ID, pods, trust_domain=TD).allowed
    d = authorize("node-1", f"spiffe://{TD}/ns/prod/sa/client", pods, trust_domain=TD)
    assert not d.allowed and "node 'node-1'" in d.reason and "prod/client" in d.reason
    assert not authorize("node-1", ID, [], trust_domain=TD).allowed
    d = authorize("node-1", "spiffe://evil/ns/demo/sa/client", pods, trust_domain=TD)
    assert not d.allowed and "trust domain" in d.reason
    assert not authorize("node-1", "not-an-id", pods, trust_domain=TD).allowed
    assert not authorize("", ID, pods, trust_domain=TD).allowed
    # Same service-account name in another namespace is a different identity.
    assert not authorize("node-1", ID, [("other", "client")], trust_domain=TD).allowed


def test_bootstrap_tokens_are_per_node_hashed_and_persisted(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    toks = BootstrapTokens(path)
    t1, t2 = toks.issue("node-1"), toks.issue("node-2")
    assert toks.check(t1, "node-1") == "node-1"
    with pytest.raises(Unauthenticated, match="node-2"):
        toks.check(t1, "node-2")  # a node's token does not work for another node
    with pytest.raises(Unauthenticated):
        toks.check(t1 + "x", "node-1")
    with pytest.raises(Unauthenticated):
        toks.check(t1, "node-9")
    stored = path.read_text()
    assert t1 not in stored and t2 not in stored
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    reloaded = BootstrapTokens(path)
    assert reloaded.check(t2, "node-2") == "node-2"
    reloaded.revoke("node-2")
    with pytest.raises(Unauthenticated):
        BootstrapTokens(path).check(t2, "node-2")


# --- trust bundle / root rotation -------------------------------------------------------------------

def test_root_rotation_keeps_old_leaves_valid_until_the_old_root_is_dropped(tmp_path) -> None:
    old = CertificateAuthority(generate_root(TD), TD)
    old_leaf = old.sign_csr(make_csr(), ID)
    # Rotation step 1: the new root is published next to the old one.
    new_material = generate_root(TD)
    new_material.extra_roots = [old.material.cert]
    new = CertificateAuthority(new_material, TD)
    bundle = new.trust_bundle()
    assert len(bundle.roots) == 2
    DirectoryStorage(tmp_path).save(new_material)          # the rotation state survives a restart
    reloaded = DirectoryStorage(tmp_path).load()
    assert reloaded is not None and reloaded.trust_bundle().fingerprint() == bundle.fingerprint()
    new_leaf = new.sign_csr(make_csr(), ID)
    assert bundle.verify_pems(old_leaf).uri == ID
    assert bundle.verify_pems(new_leaf).uri == ID
    # Step 2: the old root is removed; its leaves no longer verify, new ones still do.
    final = bundle.without_root(Certificate.load_pems(old.material.cert.public_bytes(PEM))[0])
    assert final.verify_pems(new_leaf).uri == ID
    with pytest.raises(UntrustedCertificate, match="does not chain"):
        final.verify_pems(old_leaf)
    # Round trip through PEMs, as the bundle travels over gRPC.
    assert TrustBundle.from_pems(bundle.pems()).fingerprint() == bundle.fingerprint()


def test_bundle_rejects_expired_and_foreign_leaves(ca: CertificateAuthority) -> None:
    leaf = ca.sign_csr(make_csr(), ID, dt.timedelta(hours=1))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    with pytest.raises(UntrustedCertificate):
        ca.trust_bundle().verify_pems(leaf, now=later)
    stranger = CertificateAuthority(generate_root(TD), TD).sign_csr(make_csr(), ID)
    with pytest.raises(UntrustedCertificate):
        ca.trust_bundle().verify_pems(stranger)


# --- gRPC service -------------------------------------------------------------------------------------

class _Harness:
    """A real grpc.aio server on 127.0.0.1 (TLS with a CA-issued serving cert) and a client channel."""

    def __init__(self, ca: CertificateAuthority, pods: dict[str, list[tuple[str, str]]], rate=None) -> None:
        self.ca = ca
        self.rate = rate        # the CA's per-credential bound (controller/fairness.py); None: the defaults
        self.tokens = BootstrapTokens()
        self.token = {n: self.tokens.issue(n) for n in pods}
        self.pods = pods

    async def __aenter__(self) -> _Harness:
        self.server = grpc.aio.server()
        self.servicer = CertificateServicer(self.ca, self.tokens, lambda n: self.pods.get(n, []), self.rate)
        add_to_server(self.server, self.servicer)
        chain, key = self.ca.issue_serving_certificate(["127.0.0.1"])
        creds = grpc.ssl_server_credentials([(key.encode(), "".join(chain).encode())])
        port = self.server.add_secure_port("127.0.0.1:0", creds)
        await self.server.start()
        ch_creds = grpc.ssl_channel_credentials(root_certificates=self.ca.trust_bundle().pem_bundle().encode())
        self.channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", ch_creds)
        self.stub = ca_pb2_grpc.CertificateServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop(None)

    async def call(self, node: str, token: str | None, identity: str, csr: bytes | None = None, ttl: int = 3600):
        md = [("x-ambit-node", node)]
        if token is not None:
            md.append(("authorization", f"Bearer {token}"))
        req = ca_pb2.CSRRequest(csr_pem=(csr or make_csr()).decode(), identity=identity, ttl_seconds=ttl)
        return await self.stub.CreateCertificate(req, metadata=md)


def test_grpc_issues_for_pods_on_the_node_and_refuses_the_rest(ca, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ambit.ca")
    pods = {"node-1": [("demo", "client")], "node-2": [("prod", "db")]}

    async def run() -> None:
        async with _Harness(ca, pods) as h:
            resp = await h.call("node-1", h.token["node-1"], ID)
            assert TrustBundle.from_pems(resp.trust_bundle).verify_pems(list(resp.cert_chain)).uri == ID

            async def code_of(coro) -> tuple[grpc.StatusCode, str]:
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await coro
                return ei.value.code(), ei.value.details()

            code, details = await code_of(h.call("node-1", h.token["node-1"], f"spiffe://{TD}/ns/prod/sa/db"))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "prod/db" in details
            code, _ = await code_of(h.call("node-2", h.token["node-1"], f"spiffe://{TD}/ns/prod/sa/db"))
            assert code == grpc.StatusCode.UNAUTHENTICATED  # node-1's token claiming to be node-2
            code, _ = await code_of(h.call("node-1", None, ID))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            bad = make_csr([x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/prod/sa/db")])
            code, details = await code_of(h.call("node-1", h.token["node-1"], ID, bad))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "other than the requested identity" in details
            # what ambit_ca_certificates_issued_total / ambit_ca_requests_refused_total{code} read
            assert h.servicer.issued == 1
            assert h.servicer.refused == {"PERMISSION_DENIED": 1, "UNAUTHENTICATED": 2, "INVALID_ARGUMENT": 1}

    asyncio.run(run())
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("node=node-1" in m and "identity=spiffe://cluster.local/ns/prod/sa/db" in m
               and "PERMISSION_DENIED" in m for m in refusals)
    assert any("node=node-2" in m and "UNAUTHENTICATED" in m for m in refusals)


# --- requested TTLs ------------------------------------------------------------------------------------

WEEK = 7 * 24 * 3600


@pytest.mark.parametrize(("seconds", "want"), [(0, None), (1, dt.timedelta(seconds=1)),
                                               (3600, dt.timedelta(hours=1)), (WEEK, dt.timedelta(days=7))])
def test_requested_ttl_accepts_zero_as_default_and_anything_up_to_the_maximum(seconds, want) -> None:
    assert requested_ttl(seconds, dt.timedelta(days=7)) == want


@pytest.mark.parametrize(("seconds", "message"), [
    (-1, "ttl_seconds: -1 is negative; use 1..604800 seconds, or 0 for the CA's default"),
    (-(2**63), "is negative"),
    (WEEK + 1, f"ttl_seconds: {WEEK + 1} exceeds the maximum of 604800 seconds (7 days, 0:00:00)"),
    (2**62, "exceeds the maximum of 604800 seconds"),
    (2**63 - 1, "exceeds the maximum of 604800 seconds"),   # the largest int64 a client can send
])
def test_requested_ttl_refuses_negative_and_huge_values_naming_field_and_bound(seconds, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        requested_ttl(seconds, dt.timedelta(days=7))


def test_grpc_refuses_silly_ttls_with_invalid_argument_and_still_serves(ca, caplog) -> None:
    """The 2^62-second request once raised an unhandled OverflowError (an UNKNOWN to the client)."""
    caplog.set_level(logging.INFO, logger="ambit.ca")

    async def run() -> None:
        async with _Harness(ca, {"node-1": [("demo", "client")]}) as h:
            for ttl in (2**62, 2**63 - 1, -5, WEEK + 1):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await h.call("node-1", h.token["node-1"], ID, ttl=ttl)
                assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (ttl, ei.value.details())
                assert f"ttl_seconds: {ttl}" in ei.value.details()
            # An unauthenticated caller with a silly TTL learns about its credential, not the TTL.
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await h.call("node-1", "wrong", ID, ttl=2**62)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Positive control: the same server, a sane TTL, a certificate of that lifetime.
            resp = await h.call("node-1", h.token["node-1"], ID, ttl=WEEK)
            leaf = load_chain(list(resp.cert_chain))[0]
            life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
            assert dt.timedelta(days=7) <= life <= dt.timedelta(days=7, minutes=10)

    asyncio.run(run())
    assert any("ttl_seconds: 4611686018427387904 exceeds" in r.getMessage() for r in caplog.records)


def test_a_refused_identity_cannot_forge_a_line_in_the_ca_log(ca, caplog) -> None:
    """The identity comes from a caller not yet authenticated, and was logged as it came: a newline
    in it wrote a fake "issued certificate" line, in the log operators read to spot stolen credentials."""
    caplog.set_level(logging.INFO, logger="ambit.ca")
    forged = f"x\nINFO ambit.ca issued certificate: node=node-1 identity=spiffe://{TD}/ns/prod/sa/db"

    async def run() -> None:
        async with _Harness(ca, {"node-1": [("demo", "client")]}) as h:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await h.call("node-1", None, forged)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(run())
    (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "\n" not in line and "identity=x\\nINFO ambit.ca issued certificate" in line


def test_a_csr_with_thousands_of_names_is_refused_with_a_reason_the_client_receives(ca) -> None:
    """The refusal quoted every unwanted name: 2,000 of them made a 60 kB status message, past the
    client's metadata limit, so the caller saw RESOURCE_EXHAUSTED about metadata, not why."""
    names = [x509.DNSName(f"host{i}.example.com") for i in range(2000)]

    async def run() -> None:
        async with _Harness(ca, {"node-1": [("demo", "client")]}) as h:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await h.call("node-1", h.token["node-1"], ID, make_csr(names))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
            assert ei.value.details() == ("CSR asks for names other than the requested identity: "
                                          "DNSName:host0.example.com, DNSName:host1.example.com, "
                                          "DNSName:host2.example.com, DNSName:host3.example.com, "
                                          "DNSName:host4.example.com (and 1995 more)")
            assert (await h.call("node-1", h.token["node-1"], ID)).cert_chain   # and it still serves

    asyncio.run(run())


# --- CSRs that cryptography parses only in part (found by tests/unit/controller/test_ca_fuzz.py) ------

def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    size = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + size + value


def _resigned_csr(*, extensions: tuple[bytes, ...] | list[bytes] = (), spki: bytes | None = None, version: int = 0) -> bytes:
    """A CSR assembled from DER parts and correctly signed, so only the part under test is wrong."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = spki or key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    ext_req = _tlv(0x06, bytes.fromhex("2a864886f70d01090e")) + _tlv(0x31, _tlv(0x30, b"".join(extensions)))
    attrs = _tlv(0xA0, _tlv(0x30, ext_req) if extensions else b"")
    tbs = _tlv(0x30, _tlv(0x02, bytes([version])) + _tlv(0x30, b"") + spki + attrs)
    alg = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d040302")))
    der = _tlv(0x30, tbs + alg + _tlv(0x03, b"\x00" + key.sign(tbs, ec.ECDSA(hashes.SHA256()))))
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE REQUEST-----\n"


def _ext(oid_hex: str, value: bytes) -> bytes:
    return _tlv(0x30, _tlv(0x06, bytes.fromhex(oid_hex)) + _tlv(0x04, value))


_SAN_OK = _ext("551d11", _tlv(0x30, _tlv(0x86, ID.encode())))
_POINT = _tlv(0x03, b"\x00\x04" + b"\x01" * 64)


@pytest.mark.parametrize(("csr", "reason"), [
    # cryptography raised DuplicateExtension, ValueError, UnsupportedGeneralNameType, UnsupportedAlgorithm
    # and InvalidVersion out of sign_csr: the servicer answered each as an internal error (UNKNOWN)
    (lambda: _resigned_csr(extensions=[_SAN_OK, _SAN_OK]), "malformed CSR extensions (Duplicate 2.5.29.17"),
    (lambda: _resigned_csr(extensions=[_ext("551d11", _tlv(0x30, _tlv(0x86, b"spiffe://\xff")))]),
     "malformed CSR extensions (error parsing asn1 value"),
    (lambda: _resigned_csr(extensions=[_ext("551d11", _tlv(0x30, _tlv(0xA3, b"")))]),
     "malformed CSR extensions (x400Address/EDIPartyName are not supported"),
    (lambda: _resigned_csr(extensions=[_ext("551d11", b"\x30\x05\x01")]), "malformed CSR extensions"),
    (lambda: _resigned_csr(extensions=[_SAN_OK, _ext("551d13", b"\x01\x02")]), "malformed CSR extensions"),
    (lambda: _resigned_csr(spki=_tlv(0x30, _tlv(0x30, _tlv(0x06, b"\x2a\x03\x04")) + _POINT)),
     "key must be ECDSA P-256, got an unsupported key (Unknown key type: 1.2.3.4)"),
    (lambda: _resigned_csr(spki=_tlv(0x30, _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d0201"))
                                               + _tlv(0x06, bytes.fromhex("2a8648ce3d030107"))) + _POINT)),
     "malformed CSR public key"),
    (lambda: _resigned_csr(version=1), "malformed CSR (1 is not a valid CSR version)"),
    (lambda: "-----BEGIN CERTIFICATE REQUEST-----\n\udcff", "malformed CSR"),
])
def test_a_csr_that_parses_only_in_part_is_refused_with_the_reason(ca, csr, reason) -> None:
    with pytest.raises(CSRRejected) as ei:
        ca.sign_csr(csr(), ID)
    assert reason in ei.value.reason, ei.value.reason


def test_a_csr_with_a_duplicated_extension_is_invalid_argument_not_an_internal_error(ca) -> None:
    async def run() -> None:
        async with _Harness(ca, {"node-1": [("demo", "client")]}) as h:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await h.call("node-1", h.token["node-1"], ID, _resigned_csr(extensions=[_SAN_OK, _SAN_OK]))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
            assert "Duplicate 2.5.29.17 extension" in ei.value.details()
            assert h.servicer.refused == {"INVALID_ARGUMENT": 1}

    asyncio.run(run())
