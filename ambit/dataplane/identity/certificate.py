"""A workload certificate as the data plane holds it: key, chain, trust bundle and the times that
drive rotation (refresh at half of the actual validity)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ambit.dataplane.libcrypto.x509 import Certificate
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
        certs = [c for p in chain for c in Certificate.load_pems(p)]
        leaf = certs[0]
        got = spiffe_id_of(leaf).uri
        if got != identity:
            raise ValueError(f"certificate for {identity}: CA issued {got}")
        bundle.verify(certs)  # a CA bug or a MITM on the CA channel must not hand us a foreign chain
        if not leaf.matches_key(key_pem):
            raise ValueError(f"certificate for {identity}: leaf does not match our key")
        return cls(identity, key_pem, chain, bundle, leaf.serial, leaf.not_before, leaf.not_after)
