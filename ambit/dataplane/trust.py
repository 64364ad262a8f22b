"""The trust bundle: the set of root certificates a workload accepts peers from.

It is a list, not a single root, so roots can be rotated without a flag day: publish the new root
next to the old one, re-issue workload certificates from the new root, and drop the old root once
no certificate chaining to it is still in use. Verification accepts a chain that leads to any root.

Certificates here are libcrypto's (`ambit.dataplane.libcrypto.x509`), the OpenSSL that verifies
the TLS handshakes, not the `cryptography` package (docs/performance.md, round 13).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence

from ambit import identity as ident
from ambit.dataplane.libcrypto import OpenSSLError
from ambit.dataplane.libcrypto.x509 import Certificate, verify_chain


class UntrustedCertificate(ValueError):
    """A peer certificate that does not chain to the bundle or carries no valid SPIFFE id."""


class TrustBundle:
    """An ordered, de-duplicated set of root certificates."""

    def __init__(self, roots: Iterable[Certificate]) -> None:
        seen: set[bytes] = set()
        self._roots: list[Certificate] = []
        for r in roots:
            fp = r.fingerprint()
            if fp not in seen:
                seen.add(fp)
                self._roots.append(r)
        if not self._roots:
            raise ValueError("trust bundle: needs at least one root certificate")
        self._fingerprint: str | None = None

    @classmethod
    def from_pems(cls, pems: Iterable[str | bytes]) -> TrustBundle:
        certs: list[Certificate] = []
        for i, p in enumerate(pems):
            try:
                certs.extend(Certificate.load_pems(p))
            except ValueError as e:
                raise ValueError(f"trust bundle: entry {i} is not PEM certificates ({e})") from None
        return cls(certs)

    @property
    def roots(self) -> list[Certificate]:
        return list(self._roots)

    def pems(self) -> list[str]:
        return [r.pem() for r in self._roots]

    def pem_bundle(self) -> str:
        """All roots concatenated, as `ssl.SSLContext.load_verify_locations(cadata=...)` wants."""
        return "".join(self.pems())

    def fingerprint(self) -> str:
        """Stable digest of the bundle contents; TLS context caches key on it (per connection)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for r in sorted(x.fingerprint() for x in self._roots):
                h.update(r)
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def with_root(self, root: Certificate) -> TrustBundle:
        return TrustBundle([*self._roots, root])

    def without_root(self, root: Certificate) -> TrustBundle:
        fp = root.fingerprint()
        return TrustBundle(r for r in self._roots if r.fingerprint() != fp)

    def verify(self, chain: Sequence[Certificate], *, now: dt.datetime | None = None) -> ident.SpiffeId:
        """Verify a leaf-first chain against the roots and return the leaf's SPIFFE id.

        OpenSSL's RFC 5280 path builder (TLS-client purpose, strict mode) checks expiry, CA flags,
        path length and signatures: the same verifier as the handshakes, not code of ours.
        """
        try:
            verify_chain(self._roots, chain, at=None if now is None else now.timestamp())
        except OpenSSLError as e:
            raise UntrustedCertificate(f"certificate does not chain to the trust bundle: {e}") from None
        return spiffe_id_of(chain[0])

    def verify_pems(self, chain_pems: Sequence[str], *, now: dt.datetime | None = None) -> ident.SpiffeId:
        certs = [c for p in chain_pems for c in Certificate.load_pems(p)]
        return self.verify(certs, now=now)


def spiffe_id_of(cert: Certificate) -> ident.SpiffeId:
    """The single SPIFFE URI SAN of a workload certificate, or `UntrustedCertificate`."""
    try:
        uris = cert.uri_sans()
    except OpenSSLError as e:
        raise UntrustedCertificate(str(e)) from None
    if uris is None:
        raise UntrustedCertificate("certificate has no subjectAltName")
    return spiffe_id_from_uris(uris)


def spiffe_id_from_uris(uris: Sequence[str]) -> ident.SpiffeId:
    """The SPIFFE id of a certificate whose URI SANs are `uris`: exactly one, and valid."""
    if len(uris) != 1:
        raise UntrustedCertificate(f"certificate must have exactly one URI SAN, has {len(uris)}")
    try:
        return ident.parse(uris[0])
    except ident.InvalidSpiffeId as e:
        raise UntrustedCertificate(str(e)) from None
