"""Trust domains and their aliases, with Istio's semantics. Pure.

A mesh issues identities in one trust domain (`cluster.local` by default) and may accept others as
its own: Istio's MeshState `trustDomainAliases`, used while migrating from an old trust domain or
when two meshes share a root. Two rules follow, and both live here so the controller and ztunnel
apply the same ones:

* **Peers.** A certificate that chains to the mesh root is not enough: its SPIFFE id must be in the
  trust domain or one of the aliases (`TrustDomains.admits`). A root shared with another mesh, or a
  CA mistake, must not turn `spiffe://evil.local/ns/demo/sa/client` into `demo/client`.
* **Principals.** A policy principal is expanded over the trust domain and its aliases before it is
  compared (Istio's `ReplaceTrustDomainAliases`): `cluster.local/ns/demo/sa/client` also matches
  `old.td/ns/demo/sa/client` when `old.td` is an alias. As in Istio, `cluster.local` in a policy
  always means "the local trust domain" (so policies written for the default keep working after a
  rename); a principal whose trust domain is a wildcard (`*/ns/..`), or that is not a five-part
  SPIFFE path, is kept as written; one naming a foreign trust domain is kept as written too, and
  can never match, because foreign peers are refused first.
* **Trust-domain values** (`source.trustDomains`, `notTrustDomains`, the `source.trustDomain`
  condition): a value that is the trust domain or one of the aliases stands for all of them
  (Istio's `ExpandTrustDomainAliases`); any other value, a wildcard (`*`, `prefix*`, `*suffix`)
  included, is kept as written. Unlike a principal, `cluster.local` gets no special meaning here
  (as in Istio): it is expanded only when it is the trust domain or an alias.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT = "cluster.local"    # Istio's "this mesh" in policies, whatever the trust domain is called
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")


def validate(value: str, where: str) -> str:
    """Return `value` if it is a usable trust domain name; else raise ValueError naming `where`."""
    if not isinstance(value, str) or not _TRUST_DOMAIN.fullmatch(value) or len(value) > 255:
        raise ValueError(f"{where}: {value!r} is not a trust domain (lowercase letters, digits, '.', '-', '_')")
    return value


@dataclass(frozen=True, slots=True)
class TrustDomains:
    """The mesh's trust domain and the aliases accepted as equal to it."""

    primary: str
    aliases: tuple[str, ...] = ()

    @classmethod
    def of(cls, primary: str, aliases: Iterable[str] = ()) -> TrustDomains:
        """Validated, aliases deduplicated (and never repeating the primary), order kept."""
        validate(primary, "trust domain")
        seen: dict[str, None] = {}
        for i, a in enumerate(aliases):
            validate(a, f"trustDomainAliases[{i}]")
            if a != primary:
                seen.setdefault(a, None)
        return cls(primary, tuple(seen))

    @property
    def all(self) -> tuple[str, ...]:
        return (self.primary, *self.aliases)

    def admits(self, trust_domain: str) -> bool:
        return trust_domain in self.all

    def describe(self) -> str:
        """For refusals: `'cluster.local'` or `'cluster.local' (aliases 'old.td')`."""
        base = repr(self.primary)
        return f"{base} (aliases {', '.join(map(repr, self.aliases))})" if self.aliases else base

    def expand_principal(self, principal: str) -> list[str]:
        """The patterns a policy principal (schemeless) stands for; see the module docstring."""
        parts = principal.split("/")
        if len(parts) != 5 or "*" in parts[0]:
            return [principal]
        td = parts[0]
        if td != DEFAULT and not self.admits(td):
            return [principal]
        rest = "/".join(parts[1:])
        out = [f"{d}/{rest}" for d in self.all]
        return out if principal in out else [principal, *out]

    def expand_trust_domain(self, value: str) -> tuple[str, ...]:
        """The trust domains a policy's trust-domain value stands for; see the module docstring."""
        return self.all if self.admits(value) else (value,)
