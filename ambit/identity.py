"""SPIFFE identities of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

One parser for the whole project, because identities cross trust boundaries (CSRs, peer
certificates, authorization policies): every place that reads one must reject the same malformed
inputs, or an attacker picks the most lenient reader. Formatting reuses `ambit.model.spiffe_id`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ambit.model import spiffe_id

SCHEME = "spiffe://"

# Trust domains are DNS-like labels (lowercase letters, digits, '.', '-', '_' per the SPIFFE spec).
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
# Kubernetes namespace names are DNS labels; service-account names are DNS subdomains.
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SERVICE_ACCOUNT = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class InvalidSpiffeId(ValueError):
    """A string that is not a mesh workload SPIFFE id; the message says which part is wrong."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"invalid SPIFFE id {value!r}: {reason}")
        self.value = value
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed workload identity. `str()` gives the canonical URI."""

    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return spiffe_id(self.trust_domain, self.namespace, self.service_account)

    @property
    def uri(self) -> str:
        return str(self)

    @property
    def principal(self) -> str:
        """The form Istio's AuthorizationPolicy uses: the URI without the `spiffe://` scheme."""
        return str(self)[len(SCHEME):]


def parse(value: str, *, allow_schemeless: bool = False) -> SpiffeId:
    """Parse a workload SPIFFE id, raising `InvalidSpiffeId` with the reason.

    `allow_schemeless` accepts Istio's principal form (`cluster.local/ns/x/sa/y`) too; certificate
    SANs and CSR requests must always carry the scheme.
    """
    if not isinstance(value, str):
        raise InvalidSpiffeId(repr(value), "not a string")
    rest: str
    if value.startswith(SCHEME):
        rest = value[len(SCHEME):]
    elif allow_schemeless and "://" not in value:
        rest = value
    else:
        raise InvalidSpiffeId(value, "must start with 'spiffe://'")
    parts = rest.split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        raise InvalidSpiffeId(value, "path must be /ns/<namespace>/sa/<service-account>")
    td, _, ns, _, sa = parts
    if not td or not _TRUST_DOMAIN.fullmatch(td):
        raise InvalidSpiffeId(value, f"bad trust domain {td!r}")
    if len(ns) > 63 or not _NAMESPACE.fullmatch(ns):
        raise InvalidSpiffeId(value, f"bad namespace {ns!r}")
    if len(sa) > 253 or not _SERVICE_ACCOUNT.fullmatch(sa):
        raise InvalidSpiffeId(value, f"bad service account {sa!r}")
    return SpiffeId(td, ns, sa)


def to_principal(value: str) -> str:
    """Normalise a principal (with or without scheme) to Istio's schemeless form, without validating."""
    return value[len(SCHEME):] if value.startswith(SCHEME) else value


def trust_domain_of(value: str) -> str:
    """The trust domain of a SPIFFE id or principal (with or without scheme), without validating:
    what comes before the first "/" (`spiffe://td/ns/a/sa/b` and `td/ns/a/sa/b` give `td`)."""
    return to_principal(value).split("/", 1)[0]


def peercert_uris(cert: dict | None) -> list[str]:
    """The URI subjectAltNames of a certificate as `ssl`'s `getpeercert()` decodes it (empty when
    there is no certificate or no URI SAN): where the data plane and the config client read a
    verified peer's SPIFFE id from, without parsing the certificate again."""
    return [value for kind, value in (cert or {}).get("subjectAltName", ()) if kind == "URI"]
