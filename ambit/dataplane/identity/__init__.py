"""Workload identities for the proxies: one certificate per SPIFFE id served on the node.

The parts, one concept each:
- `certificate`: WorkloadCertificate (key, chain, bundle, refresh time);
- `keys`: ECDSA P-256 key and CSR generation;
- `store`: the on-disk cache that lets a restarted proxy serve during a CA outage;
- `fetcher`: how a certificate is obtained (the protocol and its gRPC client for the CA);
- `manager`: IdentityManager, which schedules fetches and rotation with an injected clock.
"""

from ambit.dataplane.identity.certificate import WorkloadCertificate
from ambit.dataplane.identity.fetcher import (
    CertificateFetcher,
    CertificateFetchError,
    FetchResult,
    GrpcCertificateFetcher,
)
from ambit.dataplane.identity.manager import (
    DEFAULT_TTL,
    CertificateUnavailable,
    IdentityManager,
    State,
    next_delay,
)
from ambit.dataplane.identity.store import CertStore
from ambit.dataplane.libcrypto.csr import make_key_and_csr

__all__ = [
    "DEFAULT_TTL", "CertStore", "CertificateFetchError", "CertificateFetcher", "CertificateUnavailable",
    "FetchResult", "GrpcCertificateFetcher", "IdentityManager", "State", "WorkloadCertificate",
    "make_key_and_csr", "next_delay",
]
