"""The trust bundle: the set of root certificates a workload accepts peers from.

It is a list, not a single root, so roots can be rotated without a flag day: publish the new root
next to the old one, re-issue workload certificates from the new root, and drop the old root once
no certificate chaining to it is still in use. Verification accepts a chain that leads to any root.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ambit import identity as ident

_SHA256 = hashes.SHA256()


class UntrustedCertificate(ValueError):
    """A peer certificate that does not chain to the bundle or carries no valid SPIFFE id."""


class TrustBundle:
    """An ordered, de-duplicated set of root certificates."""

    def __init__(self, roots: Iterable[x509.Certificate]) -> None:
        seen: set[bytes] = set()
        self._roots: list[x509.Certificate] = []
        for r in roots:
            fp = r.fingerprint(_SHA256)
            if fp not in seen:
                seen.add(fp)
                self._roots.append(r)
        if not self._roots:
            raise ValueError("trust bundle: needs at least one root certificate")
        self._fingerprint: str | None = None

    @classmethod
    def from_pems(cls, pems: Iterable[str | bytes]) -> TrustBundle:
        certs: list[x509.Certificate] = []
        for i, p in enumerate(pems):
            data = p.encode() if isinstance(p, str) else p
            try:
                certs.extend(x509.load_pem_x509_certificates(data))
            except ValueError as e:
                raise ValueError(f"trust bundle: entry {i} is not PEM certificates ({e})") from None
        return cls(certs)

    @property
    def roots(self) -> list[x509.Certificate]:
        return list(self._roots)

    def pems(self) -> list[str]:
        return [r.public_bytes(serialization.Encoding.PEM).decode() for r in self._roots]

    def pem_bundle(self) -> str:
        """All roots concatenated, as `ssl.SSLContext.load_verify_locations(cadata=...)` wants."""
        return "".join(self.pems())

    def fingerprint(self) -> str:
        """Stable digest of the bundle contents; TLS context caches key on it (per connection)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for r in sorted(x.fingerprint(_SHA256) for x in self._roots):
                h.update(r)
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def with_root(self, root: x509.Certificate) -> TrustBundle:
        return TrustBundle([*self._roots, root])

    def without_root(self, root: x509.Certificate) -> TrustBundle:
        fp = root.fingerprint(_SHA256)
        return TrustBundle(r for r in self._roots if r.fingerprint(_SHA256) != fp)

    def verify(self, chain: Sequence[x509.Certificate], *, now: dt.datetime | None = None) -> ident.SpiffeId:
        """Verify a leaf-first chain against the roots and return the leaf's SPIFFE id.

        Uses cryptography's RFC 5280 path builder (client-auth profile), so expiry, CA flags, path
        length and signatures are checked by a maintained implementation, not by us.
        """
        if not chain:
            raise UntrustedCertificate("empty certificate chain")
        builder = PolicyBuilder().store(Store(self._roots))
        if now is not None:
            builder = builder.time(now)
        try:
            builder.build_client_verifier().verify(chain[0], list(chain[1:]))
        except VerificationError as e:
            raise UntrustedCertificate(f"certificate does not chain to the trust bundle: {e}") from None
        return spiffe_id_of(chain[0])

    def verify_pems(self, chain_pems: Sequence[str], *, now: dt.datetime | None = None) -> ident.SpiffeId:
        certs = [c for p in chain_pems for c in x509.load_pem_x509_certificates(p.encode())]
        return self.verify(certs, now=now)


def spiffe_id_of(cert: x509.Certificate) -> ident.SpiffeId:
    """The single SPIFFE URI SAN of a workload certificate, or `UntrustedCertificate`."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise UntrustedCertificate("certificate has no subjectAltName") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise UntrustedCertificate(f"certificate must have exactly one URI SAN, has {len(uris)}")
    try:
        return ident.parse(uris[0])
    except ident.InvalidSpiffeId as e:
        raise UntrustedCertificate(str(e)) from None

