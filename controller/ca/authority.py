"""The mesh certificate authority: a signing key plus the rules for what it will sign.

The CA is either a self-signed ECDSA P-256 root made here, or a root/intermediate the user brings
(so mesh certificates chain to the organisation's PKI). It signs short-lived workload certificates
whose only name is one SPIFFE URI; who may ask for which identity is decided before we get here
(see `node_auth`), but the CSR itself is still checked so a compromised node cannot smuggle extra
names or weak keys into a certificate the whole mesh trusts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ambit import identity as ident
from ambit.dataplane.trust import TrustBundle

DEFAULT_TTL = dt.timedelta(hours=24)
DEFAULT_MAX_TTL = dt.timedelta(days=7)
ROOT_LIFETIME = dt.timedelta(days=3650)
# Clock-skew allowance: peers whose clocks lag a little must still accept a fresh certificate.
MAX_BACKDATE = dt.timedelta(minutes=5)
SHOWN_NAMES = 5     # unwanted CSR names quoted in a refusal

CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CSRRejected(ValueError):
    """The CA refused a signing request; `reason` is safe to return to the caller."""

    def __init__(self, identity: str, reason: str) -> None:
        super().__init__(f"CSR for {identity!r} rejected: {reason}")
        self.identity = identity
        self.reason = reason


class CAExpired(RuntimeError):
    """The CA's own certificate has expired: nothing it signs would verify (the service answers
    FAILED_PRECONDITION with the message; proxies keep their certificates and retry)."""


class CAConfigError(ValueError):
    """User-provided CA material is unusable; the message names the file/field and why."""


@dataclass
class CAMaterial:
    """What a CA needs: its certificate and key, the chain above it, and extra trusted roots.

    `chain` holds the certificates above `cert`, ending at the self-signed root (empty when `cert`
    is the root). `extra_roots` are older roots still trusted during a root rotation.
    """

    cert: x509.Certificate
    key: CAKey
    chain: list[x509.Certificate] = field(default_factory=list)
    extra_roots: list[x509.Certificate] = field(default_factory=list)

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.cert

    @property
    def expires(self) -> dt.datetime:
        """When the signing chain stops working: the earliest expiry of the CA and the chain above it."""
        return min(c.not_valid_after_utc for c in [self.cert, *self.chain])

    @property
    def intermediates(self) -> list[x509.Certificate]:
        """Certificates to send after a leaf: the CA itself and parents, never the root."""
        ordered = [self.cert, *self.chain]
        return [c for c in ordered if not _self_signed(c)]

    def trust_bundle(self) -> TrustBundle:
        return TrustBundle.from_pems(c.public_bytes(serialization.Encoding.PEM) for c in [self.root, *self.extra_roots])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _hash_for(key: CAKey) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def generate_root(
    trust_domain: str,
    *,
    lifetime: dt.timedelta = ROOT_LIFETIME,
    path_length: int = 0,
    now: dt.datetime | None = None,
) -> CAMaterial:
    """A fresh self-signed ECDSA P-256 root for `trust_domain`.

    pathlen 0 by default: this root signs workloads directly, and the constraint stops a leaked
    workload key from ever acting as a CA even if some verifier ignored CA:false.
    """
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Ambit root CA {now:%Y-%m-%d}"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CAMaterial(cert=cert, key=key)


def load_user_provided(cert_pem: bytes, key_pem: bytes, chain_pem: bytes = b"") -> CAMaterial:
    """Validate a user-provided CA (root or intermediate) and its chain up to a self-signed root."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise CAConfigError(f"CA certificate: not a PEM certificate ({e})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CAConfigError(f"CA key: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CAConfigError(f"CA key: unsupported key type {type(key).__name__} (need EC or RSA)")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise CAConfigError(f"CA key: RSA key of {key.key_size} bits is too small (need >= 2048)")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, pub) != cert.public_key().public_bytes(der, pub):
        raise CAConfigError("CA key: does not match the CA certificate's public key")
    _require_ca(cert, "CA certificate")
    chain = x509.load_pem_x509_certificates(chain_pem) if chain_pem.strip() else []
    if _self_signed(cert):
        chain = []  # a root needs no chain; tolerate a chain file that repeats it
    else:
        if not chain:
            raise CAConfigError("CA chain: an intermediate CA needs its chain up to the root")
        child = cert
        for i, parent in enumerate(chain):
            _require_ca(parent, f"CA chain[{i}]")
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                raise CAConfigError(f"CA chain[{i}]: did not issue the certificate below it") from None
            child = parent
        if not _self_signed(chain[-1]):
            raise CAConfigError("CA chain: must end with a self-signed root certificate")
        _check_path_lengths(chain)
    material = CAMaterial(cert=cert, key=key, chain=chain)
    _probe(material)
    return material


PROBE_IDENTITY = "spiffe://probe.invalid/ns/probe/sa/probe"


def _probe(material: CAMaterial) -> None:
    """Sign a throwaway workload certificate and verify it against the material's own root with the
    data plane's verifier (OpenSSL, strict, as the handshakes run it), at a moment inside every
    validity window of the chain (expiry is judged apart: controller/ca/reload.py). Rules we do not
    spell out here (a CA with a path length but no keyCertSign, odd extensions) then fail at load,
    naming OpenSSL's reason, not in every handshake of the mesh."""
    certs = [material.cert, *material.chain]
    start = max(c.not_valid_before_utc for c in certs)
    end = min(c.not_valid_after_utc for c in certs)
    if end <= start:
        raise CAConfigError("CA chain: the validity periods of its certificates do not overlap")
    at = start + min(dt.timedelta(minutes=10), (end - start) / 2)
    ttl = min(dt.timedelta(hours=1), end - at)
    key = ec.generate_private_key(ec.SECP256R1())
    probe = CertificateAuthority(material, "probe.invalid")
    chain = probe._issue_leaf(key.public_key(), ident.parse(PROBE_IDENTITY), ttl, at)
    try:
        material.trust_bundle().verify_pems(chain, now=at + min(dt.timedelta(seconds=1), ttl / 2))
    except ValueError as e:
        raise CAConfigError(f"CA: a certificate it signs does not verify against its own root ({e}); "
                            "every handshake in the mesh would fail the same way") from None


def _check_path_lengths(chain: list[x509.Certificate]) -> None:
    """Every CA above the signing certificate allows as many CAs below it as the chain puts there
    (RFC 5280 pathLenConstraint, not counting the leaf): an intermediate under a `pathlen:0` root
    (such as the root this controller generates) signs certificates every verifier refuses with
    "path length constraint exceeded"."""
    for i, parent in enumerate(chain):
        limit = parent.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        below = i + 1       # the signing certificate and chain[0..i-1]
        if limit is not None and below > limit:
            raise CAConfigError(
                f"CA chain[{i}] ({parent.subject.rfc4514_string()}): its pathLenConstraint {limit} allows "
                f"{limit} CA certificate(s) below it, the chain puts {below} there; every certificate signed "
                f"would fail verification (path length constraint exceeded)")


def _require_ca(cert: x509.Certificate, what: str) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CAConfigError(f"{what}: has no basicConstraints extension") from None
    if not bc.ca:
        raise CAConfigError(f"{what}: basicConstraints says CA:false")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise CAConfigError(f"{what}: keyUsage lacks keyCertSign")
    except x509.ExtensionNotFound:
        pass


@dataclass
class CertificateAuthority:
    """Signs workload certificates for one trust domain."""

    material: CAMaterial
    trust_domain: str
    default_ttl: dt.timedelta = DEFAULT_TTL
    max_ttl: dt.timedelta = DEFAULT_MAX_TTL

    def trust_bundle(self) -> TrustBundle:
        return self.material.trust_bundle()

    def sign_csr(
        self,
        csr_pem: bytes | str,
        requested_identity: str,
        ttl: dt.timedelta | None = None,
        *,
        now: dt.datetime | None = None,
    ) -> list[str]:
        """Check a CSR and sign it for `requested_identity`; returns PEMs, leaf first.

        Raises `CSRRejected` naming the reason: malformed CSR, bad signature, key other than
        ECDSA P-256, SANs other than exactly the requested identity, foreign trust domain, or a TTL
        above the maximum.
        """
        try:
            spiffe = ident.parse(requested_identity)
        except ident.InvalidSpiffeId as e:
            raise CSRRejected(requested_identity, e.reason) from None
        if spiffe.trust_domain != self.trust_domain:
            raise CSRRejected(
                requested_identity,
                f"trust domain {spiffe.trust_domain!r} is not this CA's {self.trust_domain!r}",
            )
        ttl = self.default_ttl if ttl is None or ttl <= dt.timedelta(0) else ttl
        if ttl > self.max_ttl:
            raise CSRRejected(requested_identity, f"requested TTL {ttl} exceeds the maximum {self.max_ttl}")
        csr, pub = _load_csr(csr_pem, requested_identity)
        self._check_csr_names(csr, requested_identity)
        return self._issue_leaf(pub, spiffe, ttl, now or _now())

    @staticmethod
    def _check_csr_names(csr: x509.CertificateSigningRequest, requested: str) -> None:
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return  # the identity comes from the (authorized) request, not the CSR
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
            # parsed lazily, here: a SAN that is no DER (or a URI that is not IA5), an extension
            # twice, an x400Address name, an attribute with two values
            raise CSRRejected(requested, f"malformed CSR extensions ({e})") from None
        names = list(san)
        others = [n for n in names if not (isinstance(n, x509.UniformResourceIdentifier) and n.value == requested)]
        if others:
            # A few of them: the reason goes back in the gRPC status, and a CSR of 100,000 names
            # made a 3 MB one that the client's metadata limit turned into RESOURCE_EXHAUSTED.
            shown = ", ".join(f"{type(n).__name__}:{n.value}" for n in others[:SHOWN_NAMES])
            more = f" (and {len(others) - SHOWN_NAMES} more)" if len(others) > SHOWN_NAMES else ""
            raise CSRRejected(requested, f"CSR asks for names other than the requested identity: {shown}{more}")

    def _issue_leaf(
        self, pub: ec.EllipticCurvePublicKey, spiffe: ident.SpiffeId, ttl: dt.timedelta, now: dt.datetime
    ) -> list[str]:
        m = self._signing(now)
        backdate = min(MAX_BACKDATE, ttl / 10)
        not_after = min(now + ttl, m.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            # Empty subject: the SPIFFE URI is the identity, so the SAN must be critical (RFC 5280).
            .subject_name(x509.Name([]))
            .issuer_name(m.cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=True,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe))]), critical=True)
        )
        return self._finish(m, builder, pub)

    def _signing(self, now: dt.datetime) -> CAMaterial:
        """The material to sign with, read once per certificate (a reload swaps `material` whole:
        controller/ca/reload.py), or `CAExpired` when its certificate cannot issue anything valid."""
        m = self.material
        if m.cert.not_valid_after_utc <= now:
            raise CAExpired(f"the CA certificate ({m.cert.subject.rfc4514_string()}) expired at "
                            f"{m.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: renew it where the CA is kept "
                            f"(it is read again within the reload interval)")
        return m

    def _finish(self, m: CAMaterial, builder: x509.CertificateBuilder, pub: ec.EllipticCurvePublicKey) -> list[str]:
        ca_ski = _ski_of(m.cert)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        cert = builder.sign(m.key, _hash_for(m.key))
        pem = serialization.Encoding.PEM
        return [cert.public_bytes(pem).decode()] + [c.public_bytes(pem).decode() for c in m.intermediates]

    def issue_serving_certificate(
        self, hosts: list[str], ttl: dt.timedelta = dt.timedelta(days=365), identity: str = ""
    ) -> tuple[list[str], str]:
        """A server certificate (DNS/IP SANs, and `identity` as a URI SAN) for the controller's
        own gRPC endpoints.

        Data-plane clients already trust this CA's roots, so this lets the CA/config server speak
        TLS without a second PKI. Only this path puts DNS names in a certificate (`sign_csr` allows
        exactly one URI), so a workload key can never pass for the controller's host name.
        Returns (chain PEMs leaf first, private key PEM).
        """
        if not hosts:
            raise ValueError("issue_serving_certificate: hosts must not be empty")
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        if identity:
            sans.append(x509.UniformResourceIdentifier(str(ident.parse(identity))))
        now = _now()
        m = self._signing(now)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(m.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - MAX_BACKDATE)
            .not_valid_after(min(now + ttl, m.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=True,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        )
        chain = self._finish(m, builder, key.public_key())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return chain, key_pem


def _load_csr(csr_pem: bytes | str, requested: str) -> tuple[x509.CertificateSigningRequest, ec.EllipticCurvePublicKey]:
    """The CSR and its P-256 key, or `CSRRejected`. cryptography parses a CSR's parts lazily and
    raises more than ValueError on bad ones (InvalidVersion, UnsupportedAlgorithm for a key type it
    does not know); each becomes a refusal naming the part, never an exception the gRPC service
    answers as an internal error. The key's type is checked before the signature, so no signature
    of an algorithm the CA would refuse anyway is ever verified."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
    except (ValueError, x509.InvalidVersion) as e:     # UnicodeEncodeError (a lone surrogate) too
        raise CSRRejected(requested, f"malformed CSR ({e})") from None
    try:
        pub = csr.public_key()
    except UnsupportedAlgorithm as e:
        raise CSRRejected(requested, f"key must be ECDSA P-256, got an unsupported key ({e})") from None
    except ValueError as e:
        raise CSRRejected(requested, f"malformed CSR public key ({e})") from None
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
        raise CSRRejected(requested, f"key must be ECDSA P-256, got {_describe_key(pub)}")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise CSRRejected(requested, "CSR signature does not verify")
    return csr, pub


def _ski_of(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())  # type: ignore[arg-type]


def _describe_key(pub: object) -> str:
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return f"ECDSA {pub.curve.name}"
    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA {pub.key_size}"
    return type(pub).__name__


__all__ = [
    "CAConfigError",
    "CAExpired",
    "CAMaterial",
    "CSRRejected",
    "CertificateAuthority",
    "DEFAULT_TTL",
    "generate_root",
    "load_user_provided",
]
