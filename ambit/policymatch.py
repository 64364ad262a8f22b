"""The value matching AuthorizationPolicy uses, shared by ztunnel (L4) and the waypoint (L7) so
that one policy means the same thing wherever it is enforced.

- `string_match`: Istio's StringMatch for principals, namespaces, methods, paths and hosts:
  exact, `prefix*`, `*suffix`, or `*` (any non-empty value).
- `any_trust_domain`: `trustDomains` / `notTrustDomains` / the `source.trustDomain` condition
  against the trust domain of the peer's SPIFFE id, the same string match (a trust domain has no
  "/", so a wildcard never crosses one, as in Istio's `spiffe://<prefix>[^/]*<suffix>/.*`), each
  value first expanded over the mesh's trust domain and aliases (`TrustDomains.expand_trust_domain`).
- `in_blocks`: is an address inside one of the CIDR blocks (`ipBlocks`, `remoteIpBlocks`,
  `destination.ip`)? A block that does not parse never matches (the controller validates them).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from ambit.trustdomain import TrustDomains


def string_match(pattern: str, value: str) -> bool:
    if pattern == "*":
        return bool(value)
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def any_trust_domain(patterns: Iterable[str], trust_domain: str | None, tds: TrustDomains | None) -> bool:
    """Does one of `patterns` match `trust_domain` (None: a peer without identity, which no pattern
    matches)? Without `tds`, the patterns are compared as written."""
    if not trust_domain:
        return False
    return any(string_match(q, trust_domain) for p in patterns
               for q in (tds.expand_trust_domain(p) if tds is not None else (p,)))


@functools.lru_cache(maxsize=4096)
def network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        return None


def in_blocks(ip: str, blocks: Iterable[str]) -> bool:
    """Whether `ip` is inside one of `blocks`. An IPv4-mapped IPv6 address (`::ffff:10.0.0.5`, as a
    dual-stack socket reports an IPv4 peer) is its IPv4 address, as Envoy and ztunnel canonicalise
    it: else a DENY on `10.0.0.0/8` would not match such a peer (fail open), nor an ALLOW."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for b in blocks:
        net = network(b)
        if net is not None and addr.version == net.version and addr in net:
            return True
    return False
