"""Trust domains and aliases for principal matching, with Istio's semantics. Pure.

The waypoint's own copy: at the time of writing no pure helper for this existed under `ambit/`.
It mirrors the one being added there (`ambit.trustdomain.TrustDomains`: same names, same
behaviour), so the lead can pass that object instead and delete this module; `authorize` only
needs `admits()` and `expand_principal()` (the `TrustDomainsLike` protocol).

- A policy principal is expanded over the mesh's trust domain and its aliases before it is
  compared (Istio `ReplaceTrustDomainAliases`); `cluster.local` in a policy means "this mesh".
- A principal with a wildcard trust domain, or that is not a five-part SPIFFE path, is kept as
  written; one naming a foreign trust domain is kept too (and can match nothing, see `admits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

DEFAULT = "cluster.local"


class TrustDomainsLike(Protocol):
    def admits(self, trust_domain: str) -> bool: ...

    def expand_principal(self, principal: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class TrustDomains:
    primary: str = DEFAULT
    aliases: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return (self.primary, *self.aliases)

    def admits(self, trust_domain: str) -> bool:
        return trust_domain in self.all

    def expand_principal(self, principal: str) -> list[str]:
        parts = principal.split("/")
        if len(parts) != 5 or "*" in parts[0]:
            return [principal]
        td = parts[0]
        if td != DEFAULT and not self.admits(td):
            return [principal]
        rest = "/".join(parts[1:])
        out = [f"{d}/{rest}" for d in self.all]
        return out if principal in out else [principal, *out]
