"""JWT claims as the mesh reads them, shared by the controller (validation, translation) and the
waypoint (routing, authorization), so that one spelling means the same claim everywhere.

- `routing_claim`: Istio's `@request.auth.claims` header names in a VirtualService match
  (istio pkg/jwt/routing.go `ToRoutingClaim`): `@request.auth.claims.group.id` or
  `@request.auth.claims[group][id]` name the nested claim `group` → `id`. The prefix is compared
  without case, the claim names with it. Any other name is a header.
- `space_delimited`: Envoy's `normalize_payload_in_metadata` (jwt_authn authenticator.cc
  `setPayloadMetadata`), which Istio configures for every JWT rule with `scope` and `permission`
  plus the rule's `spaceDelimitedClaims` (pilot/pkg/security/authn `buildSpaceDelimitedClaims`):
  a top-level claim of that name holding a string is read as the list of its space-separated
  words, so an OAuth `scope: "read write"` matches `request.auth.claims[scope]: ["write"]`.
- `claim_values`: the strings a claim path holds, as Envoy's metadata list matcher sees them: a
  string is one value, a list its string elements; anything else (a number, an object, missing)
  none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

CLAIM_HEADER_PREFIX = "@request.auth.claims"
DEFAULT_SPACE_DELIMITED = ("permission", "scope")


def routing_claim(name: str) -> tuple[str, ...] | None:
    """The claim path a VirtualService header name routes on, or None when it is a header."""
    if not name.lower().startswith(CLAIM_HEADER_PREFIX):
        return None
    rest = name[len(CLAIM_HEADER_PREFIX):]
    if rest.startswith(".") and len(rest) > 1:
        return tuple(rest[1:].split("."))
    if rest.startswith("[") and rest.endswith("]") and len(rest) > 2:
        return tuple(rest[1:-1].split("]["))
    return None


def space_delimited(claims: Mapping[str, Any], names: Iterable[str]) -> Mapping[str, Any]:
    """`claims` with each named top-level string claim split on spaces (empty words skipped). A
    claim that is not a string, or holds no word, is left as it is (Envoy's rule). The input is
    not changed; it is returned itself when nothing is split."""
    out: dict[str, Any] | None = None
    for name in names:
        v = claims.get(name)
        if isinstance(v, str):
            words = [w for w in v.split(" ") if w]
            if words:
                if out is None:
                    out = dict(claims)
                out[name] = words
    return claims if out is None else out


def claim_values(claims: Mapping[str, Any], path: Iterable[str]) -> list[str]:
    cur: Any = claims
    for part in path:
        if not isinstance(cur, Mapping) or part not in cur:
            return []
        cur = cur[part]
    if isinstance(cur, str):
        return [cur]
    return [v for v in cur if isinstance(v, str)] if isinstance(cur, list) else []
