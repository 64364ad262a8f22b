"""Fuzzing the CA's CSR handling (hypothesis): `CertificateAuthority.sign_csr` and the gRPC
servicer's CreateCertificate in front of it, driven without a socket.

What must hold for any request from a node or a waypoint: it is refused with a reason
(`CSRRejected`; an aborted call with INVALID_ARGUMENT, PERMISSION_DENIED or UNAUTHENTICATED), or it
is signed for exactly the requested identity, in the CA's trust domain, for the CSR's own P-256
key, as a leaf that chains to the CA, and (through the servicer) only for an identity a pod on the
caller's node runs as. Never another exception (the servicer would answer it as an internal error).

The CSRs are built from their DER parts and signed again after every change (a mutated CSR with a
broken signature tests only the signature check): subjects, keys of every kind, extension requests
with SANs naming other identities and trust domains, non-ASCII names, unknown name types,
duplicated extensions and bytes that are no DER; then random bit flips, truncations and splices of
the to-be-signed part, and PEM framings with junk around. Three budgets:
- the unit suite: a couple of hundred examples each (a few seconds);
- `-m fuzz`: `AMBIT_FUZZ_EXAMPLES` examples each (default 1,000);
- a long local run: `python -m tests.unit.controller.test_ca_fuzz --cases 100000`.
"""

from __future__ import annotations

import asyncio
import base64
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from ambit.api import ca_pb2
from controller.ca import (
    BootstrapTokens,
    CertificateAuthority,
    CertificateServicer,
    CSRRejected,
    generate_root,
)
from tests.support import fuzzing

UNIT_EXAMPLES = 200
LONG_EXAMPLES = fuzzing.fuzz_examples(1000)   # (bounded: the unit suite runs it)
TD = "cluster.local"
ID = f"spiffe://{TD}/ns/demo/sa/client"
OTHER = f"spiffe://{TD}/ns/prod/sa/db"
FOREIGN = "spiffe://evil.example/ns/demo/sa/client"
DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo

CA = CertificateAuthority(generate_root(TD), TD)
BUNDLE = CA.trust_bundle()

# Keys the CSRs carry (and are signed with): the one the CA takes, and ones it must refuse.
KEYS = {
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p256b": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa1024": rsa.generate_private_key(65537, 1024),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}


# --- a little DER ------------------------------------------------------------------------------------

def der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + der_len(len(value)) + value


def oid(hexbytes: str) -> bytes:
    return tlv(0x06, bytes.fromhex(hexbytes))


EXTENSION_REQUEST = oid("2a864886f70d01090e")
SAN, BASIC_CONSTRAINTS, KEY_USAGE, UNKNOWN_EXT = oid("551d11"), oid("551d13"), oid("551d0f"), oid("2a0304")
SIG_ALGS = {"ecdsa-sha256": oid("2a8648ce3d040302"), "ecdsa-sha384": oid("2a8648ce3d040303"),
            "rsa-sha256": oid("2a864886f70d01010b") + b"\x05\x00", "ed25519": oid("2b6570"),
            "unknown": oid("2a030405")}


def extension(ext_oid: bytes, value: bytes, critical: bool) -> bytes:
    return tlv(0x30, ext_oid + (tlv(0x01, b"\xff") if critical else b"") + tlv(0x04, value))


def attributes(requests: list[list[bytes]]) -> bytes:
    """[0] attributes: one extensionRequest per list of encoded extensions."""
    return tlv(0xA0, b"".join(tlv(0x30, EXTENSION_REQUEST + tlv(0x31, tlv(0x30, b"".join(exts))))
                             for exts in requests))


def tbs(subject: bytes, spki: bytes, attrs: bytes, version: int = 0) -> bytes:
    return tlv(0x30, tlv(0x02, bytes([version])) + subject + spki + attrs)


def signed(tbs_der: bytes, key_name: str, alg: str | None = None) -> bytes:
    """The CSR (DER) of `tbs_der`, signed with `KEYS[key_name]` as it would sign it."""
    key = KEYS[key_name]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        h = hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
        sig, default = key.sign(tbs_der, ec.ECDSA(h)), ("ecdsa-sha384" if key.curve.key_size > 256 else "ecdsa-sha256")
    elif isinstance(key, rsa.RSAPrivateKey):
        sig, default = key.sign(tbs_der, padding.PKCS1v15(), hashes.SHA256()), "rsa-sha256"
    else:
        sig, default = key.sign(tbs_der), "ed25519"
    return tlv(0x30, tbs_der + tlv(0x30, SIG_ALGS[alg or default]) + tlv(0x03, b"\x00" + sig))


def pem(der: bytes, before: bytes = b"", after: bytes = b"") -> bytes:
    return (before + b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(der)
            + b"-----END CERTIFICATE REQUEST-----\n" + after)


def spki_of(key_name: str) -> bytes:
    return KEYS[key_name].public_key().public_bytes(DER, SPKI)


# --- strategies ---------------------------------------------------------------------------------------

identities = st.sampled_from([ID, OTHER, FOREIGN, f"spiffe://{TD}/ns/demo/sa/client/", "SPIFFE://cluster.local/ns/demo/sa/client",
                              f"spiffe://{TD}/ns/demo/sa/client\x00", "spiffe://cluster.local/ns/Demo/sa/client"])
uri_values = st.one_of(identities.map(str.encode), st.binary(max_size=40),
                       st.sampled_from([b"spiffe://\xff\xfe", b"", ID.encode() + b"\n", ID.encode().upper()]))
general_names = st.one_of(
    uri_values.map(lambda v: tlv(0x86, v)),                               # uniformResourceIdentifier
    st.sampled_from([b"evil.example", b"*.cluster.local", b"\xc3\xa4"]).map(lambda v: tlv(0x82, v)),  # dNSName
    st.sampled_from([b"\x0a\x00\x00\x01", b"\x01\x02\x03", bytes(16)]).map(lambda v: tlv(0x87, v)),  # iPAddress
    st.just(tlv(0x81, b"a@b.example")),                                   # rfc822Name
    st.just(tlv(0xA0, oid("2b0601") + tlv(0xA0, tlv(0x0C, ID.encode())))),  # otherName
    st.just(tlv(0xA3, b"")), st.just(tlv(0xA5, tlv(0xA1, tlv(0x0C, b"x")))),  # x400Address, ediPartyName
    st.just(tlv(0x88, bytes.fromhex("2a0304"))),                          # registeredID
    st.tuples(st.integers(0, 255), st.binary(max_size=12)).map(lambda t: tlv(t[0], t[1])),  # any tag
)
san_values = st.one_of(st.lists(general_names, max_size=4).map(lambda ns: tlv(0x30, b"".join(ns))),
                       st.binary(max_size=24))
extensions = st.one_of(
    st.builds(extension, st.just(SAN), san_values, st.booleans()),
    st.builds(extension, st.sampled_from([BASIC_CONSTRAINTS, KEY_USAGE, UNKNOWN_EXT]),
              st.sampled_from([tlv(0x30, tlv(0x01, b"\xff")), b"\x03\x02\x05\xa0", b"\x05\x00", b"", b"\x01\x02"]),
              st.booleans()),
    st.binary(max_size=16),
)
subjects = st.one_of(
    st.just(tlv(0x30, b"")),
    st.binary(max_size=24).map(lambda v: tlv(0x30, tlv(0x31, tlv(0x30, oid("550403") + tlv(0x0C, v))))),
    st.binary(max_size=12),
)
key_names = st.sampled_from(list(KEYS))
spkis = st.one_of(
    key_names.map(spki_of),
    st.just(tlv(0x30, tlv(0x30, oid("2a8648ce3d0201") + oid("2a8648ce3d030107")) + tlv(0x03, b"\x00\x04" + b"\x01" * 64))),
    st.just(tlv(0x30, tlv(0x30, oid("2a030405")) + tlv(0x03, b"\x00\x04" + b"\x01" * 64))),
    st.binary(max_size=32),
)


@dataclass(frozen=True)
class Csr:
    pem: bytes | str
    key: str            # the key it is signed with (the P-256 one the CA must bind, when it signs)
    names: str          # for the report


@st.composite
def csrs(draw: st.DrawFn) -> Csr:
    key = draw(key_names)
    spki = draw(st.one_of(st.just(spki_of(key)), spkis))
    reqs = draw(st.lists(st.lists(extensions, max_size=4), max_size=2))
    body = tbs(draw(subjects), spki, attributes(reqs) if reqs or draw(st.booleans()) else b"",
               draw(st.sampled_from([0, 0, 0, 1, 2])))
    for _ in range(draw(st.integers(0, 3))):         # mutations of what is signed
        op, pos = draw(st.integers(0, 3)), draw(st.integers(0, max(len(body) - 1, 0)))
        if not body:
            break
        if op == 0:
            body = body[:pos] + bytes([body[pos] ^ (1 << draw(st.integers(0, 7)))]) + body[pos + 1:]
        elif op == 1:
            body = body[:pos]
        elif op == 2:
            body = body[:pos] + draw(st.binary(min_size=1, max_size=8)) + body[pos:]
        else:
            body = body[:pos] + body[pos + draw(st.integers(1, 16)):]
    der = signed(body, key, draw(st.one_of(st.none(), st.sampled_from(list(SIG_ALGS)))))
    framing = draw(st.integers(0, 5))
    if framing == 0:
        out: bytes | str = pem(der)
    elif framing == 1:
        out = pem(der, b"junk\xff\n", b"trailing\x00junk")
    elif framing == 2:
        # (ECDSA signatures vary in length: draw the cut before knowing it, so a replay draws the same)
        out = pem(der[:draw(st.integers(0, 10_000)) % (len(der) + 1)])
    elif framing == 3:
        out = der                                   # DER where PEM is expected
    elif framing == 4:
        out = pem(der).decode()
    else:
        out = pem(der) + pem(signed(tbs(tlv(0x30, b""), spki_of("p256b"), b""), "p256b"))
    return Csr(out, key, repr(reqs)[:200])


# --- the properties -------------------------------------------------------------------------------

def check_issued(chain: list[str], requested: str, csr: Csr) -> None:
    """A certificate was issued: it must be exactly what the CA may issue."""
    assert requested.startswith(f"spiffe://{TD}/"), f"signed for {requested!r}, outside the trust domain"
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(requested)], list(san.value)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.subject == x509.Name([])
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, ec.SECP256R1)
    assert pub.public_bytes(DER, SPKI) == spki_of(csr.key), "the certificate binds a key the caller did not prove"
    assert BUNDLE.verify_pems(chain).uri == requested
    # and the CSR itself asked for no other name (it parses, now that it was accepted)
    raw = csr.pem.encode() if isinstance(csr.pem, str) else csr.pem
    parsed = x509.load_pem_x509_csr(raw)
    try:
        names = list(parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = []
    assert all(n == x509.UniformResourceIdentifier(requested) for n in names), names


def check_sign(csr: Csr, requested: str) -> None:
    t0 = time.process_time()
    try:
        chain = CA.sign_csr(csr.pem, requested)
    except CSRRejected as e:
        assert e.reason and e.identity == requested
    else:
        check_issued(chain, requested, csr)
    assert time.process_time() - t0 < 2.0, "sign_csr took over 2 s of CPU"


@given(csrs(), identities)
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_sign_csr_refuses_with_a_reason_or_signs_exactly_the_identity(csr: Csr, requested: str) -> None:
    check_sign(csr, requested)


@given(st.binary(max_size=300), st.booleans(), identities)
@fuzzing.unit_budget(UNIT_EXAMPLES, too_slow_ok=False)
def test_sign_csr_survives_random_bytes(data: bytes, armoured: bool, requested: str) -> None:
    try:
        CA.sign_csr(pem(data) if armoured else data, requested)
    except CSRRejected as e:
        assert e.reason
    else:
        raise AssertionError(f"signed random bytes {data!r}")


# --- through the gRPC servicer, without a socket ----------------------------------------------------

class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code, self.details = code, details


class FakeContext:
    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


TOKENS = BootstrapTokens()
TOKEN = {n: TOKENS.issue(n) for n in ("node-1", "node-2")}
PODS = {"node-1": [("demo", "client")], "node-2": [("prod", "db")]}
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


def check_servicer(csr: Csr, requested: str, node: str, token_of: str, ttl: int) -> None:
    servicer = CertificateServicer(CA, TOKENS, lambda n: PODS.get(n, []))
    md = [("x-ambit-node", node), ("authorization", f"Bearer {TOKEN.get(token_of, 'nope')}")]
    req = ca_pb2.CSRRequest(csr_pem=csr.pem if isinstance(csr.pem, str) else csr.pem.decode("latin-1"),
                            identity=requested, ttl_seconds=ttl)
    try:
        resp = asyncio.run(servicer.CreateCertificate(req, FakeContext(md)))
    except Aborted as e:
        assert e.code in REFUSALS and e.details, (e.code, e.details)
        return
    assert node == token_of, "issued to a caller whose credential is another node's"
    allowed = {f"spiffe://{TD}/ns/{ns}/sa/{sa}" for ns, sa in PODS[node]}
    assert requested in allowed, f"issued {requested!r} to {node}, which runs no such pod"
    check_issued(list(resp.cert_chain), requested, Csr(req.csr_pem, csr.key, csr.names))


@given(csrs(), identities, st.sampled_from(["node-1", "node-2", "node-3"]),
       st.sampled_from(["node-1", "node-2", "node-3"]), st.sampled_from([0, 1, 3600, -1, 2**62, 2**63 - 1]))
@fuzzing.unit_budget(UNIT_EXAMPLES // 2)
def test_create_certificate_refuses_or_issues_only_what_the_node_may_have(csr: Csr, requested: str, node: str,
                                                                          token_of: str, ttl: int) -> None:
    check_servicer(csr, requested, node, token_of, ttl)


@pytest.mark.fuzz
@given(csrs(), identities)
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_sign_csr_long(csr: Csr, requested: str) -> None:
    check_sign(csr, requested)


@pytest.mark.fuzz
@given(csrs(), identities, st.sampled_from(["node-1", "node-2"]), st.sampled_from(["node-1", "node-2"]))
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_create_certificate_long(csr: Csr, requested: str, node: str, token_of: str) -> None:
    check_servicer(csr, requested, node, token_of, 3600)


# --- the long local run: random mutation of valid CSRs, re-signed ----------------------------------

def _seed_tbs() -> list[bytes]:
    san_ok = extension(SAN, tlv(0x30, tlv(0x86, ID.encode())), False)
    return [tbs(tlv(0x30, b""), spki_of("p256"), b""),
            tbs(tlv(0x30, b""), spki_of("p256"), attributes([[san_ok]])),
            tbs(tlv(0x30, tlv(0x31, tlv(0x30, oid("550403") + tlv(0x0C, b"client")))), spki_of("p256"),
                attributes([[san_ok, extension(BASIC_CONSTRAINTS, tlv(0x30, b""), True)]]))]


def _long_cases(rng: random.Random) -> Iterator[bytes]:
    """The to-be-signed parts of valid CSRs, mutated (signed in the check)."""
    seeds = _seed_tbs()
    while True:
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(b))
            op = rng.randrange(4)
            if op == 0:
                b[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                b[pos] = rng.randrange(256)
            elif op == 2:
                b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                del b[pos:pos + rng.randint(1, 8)]
        yield bytes(b)


def _check_tbs(tbs_der: bytes) -> None:
    check_sign(Csr(pem(signed(tbs_der, "p256")), "p256", ""), ID)


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, _check_tbs, describe=bytes.hex)


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=100_000))
