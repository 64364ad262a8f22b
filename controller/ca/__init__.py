"""The mesh CA: root management, CSR signing, node authorization and the gRPC service.

Public API:
- `generate_root`, `load_user_provided`, `CertificateAuthority.sign_csr` (authority)
- `TrustBundle` (bundle), `DirectoryStorage`, `load_or_create` (storage)
- `authorize`, `Decision` (node_auth); `BootstrapTokens`, `TokenReviewVerifier` (credentials)
- `CertificateServicer`, `add_to_server` (service)
"""

from ambit.dataplane.trust import TrustBundle, UntrustedCertificate, spiffe_id_of
from controller.ca.authority import (
    CAConfigError,
    CAMaterial,
    CertificateAuthority,
    CSRRejected,
    generate_root,
    load_user_provided,
)
from controller.ca.credentials import (
    BootstrapTokens,
    NodeCredentialVerifier,
    TokenReviewVerifier,
    Unauthenticated,
)
from controller.ca.node_auth import Decision, authorize
from controller.ca.service import CertificateServicer, add_to_server
from controller.ca.storage import CAStorage, DirectoryStorage, load_or_create

__all__ = [
    "BootstrapTokens",
    "CAConfigError",
    "CAMaterial",
    "CAStorage",
    "CSRRejected",
    "CertificateAuthority",
    "CertificateServicer",
    "Decision",
    "DirectoryStorage",
    "NodeCredentialVerifier",
    "TokenReviewVerifier",
    "TrustBundle",
    "Unauthenticated",
    "UntrustedCertificate",
    "add_to_server",
    "authorize",
    "generate_root",
    "load_or_create",
    "load_user_provided",
    "spiffe_id_of",
]
