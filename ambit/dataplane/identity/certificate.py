"""A workload certificate as the data plane holds it: key, chain, trust bundle and the times that
drive rotation (refresh at half of the actual validity)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ambit.dataplane.trust import TrustBundle, spiffe_id_of


@dataclass(frozen=True)
class WorkloadCertificate:
    """A private key with its chain (leaf first) and the trust bundle it came with."""

    identity: str
    key_pem: bytes = field(repr=False)
    chain_pem: tuple[str, ...]
    bundle: TrustBundle
    serial: int
    not_before: float   # epoch seconds
    not_after: float

    @property
    def refresh_at(self) -> float:
        """Half-life of the actual validity window (notBefore..notAfter)."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after

    @classmethod
    def from_pems(cls, identity: str, key_pem: bytes, chain_pem: Iterable[str], bundle_pems: Iterable[str]
                  ) -> WorkloadCertificate:
        """Build from a CA response, checking the chain really certifies `identity` under the bundle."""
        chain = tuple(chain_pem)
        if not chain:
            raise ValueError(f"certificate for {identity}: CA returned an empty chain")
        bundle = TrustBundle.from_pems(bundle_pems)
        certs = [c for p in chain for c in x509.load_pem_x509_certificates(p.encode())]
        leaf = certs[0]
        got = spiffe_id_of(leaf).uri
        if got != identity:
            raise ValueError(f"certificate for {identity}: CA issued {got}")
        bundle.verify(certs)  # a CA bug or a MITM on the CA channel must not hand us a foreign chain
        key = serialization.load_pem_private_key(key_pem, None)
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, pub) != leaf.public_key().public_bytes(der, pub):
            raise ValueError(f"certificate for {identity}: leaf does not match our key")
        return cls(identity, key_pem, chain, bundle, leaf.serial_number,
                   leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp())
