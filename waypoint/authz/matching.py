"""How one AuthorizationPolicy attribute matches one request, with Istio's semantics
(istio pilot/pkg/security/authz/model: permission.go, principal.go, matcher/*.go).

- Strings (principals, namespaces, methods): exact, `prefix*`, `*suffix`, or `*` (any non-empty
  value). A `*` inside a namespace (`team-*-prod`) is a wildcard too, as in Istio's Envoy matcher.
- Header values (`request.headers[name]`): Envoy matches the header's values joined with ","
  and Istio compiles each value into a regex that matches the joined string or any one of its
  comma-separated elements (`^v$|^v,.*|.*,v,.*|.*,v$`), and `*` into `present_match` (an empty
  value is present). So `admin` matches `x-user: guest` + `x-user: admin` (`guest,admin`); else
  a DENY on `admin` would be dodged by sending the header twice. `any_header` reads a header in
  one of three ways: ISTIO (the above); WIDE, which also matches an element without the spaces
  around it (`guest, admin` has the element `admin`), used where a match can only deny more (a
  DENY's `values`, an ALLOW's `notValues`); and WHOLE (the whole value, `*` non-empty), used for a
  DENY's `notValues`, so that only a value that is entirely allowed excuses a request (see
  `evaluate.match_matches`).
- Paths: the same, plus templates: `{*}` is one path segment and `{**}` any rest of the path
  (compiled to RE2). Paths are compared without the query string: `/api/*` is the prefix `/api/`
  and does not match `/api`.
- Hosts: case-insensitive against the whole `:authority`, port included, as Istio's
  `HostMatcher` (exact/prefix/suffix with `ignore_case`, `*` = present): `example.com` does not
  match `example.com:8080` (Istio's advice: list `example.com:*` too). `any_host` with
  `port_tolerant=True` also lets a host without a port match the authority with one; it is used
  only where that makes a DENY wider or an ALLOW narrower (see `evaluate.match_matches`).
- Principals: the source's SPIFFE id without `spiffe://`, after expanding the policy's trust
  domain over the mesh's aliases (see `ambit.trustdomain`).
- Trust domains (`trustDomains`, `source.trustDomain`): the trust domain of the source's SPIFFE
  id, after expanding a value that names the mesh's trust domain or an alias over all of them
  (`ambit.policymatch.any_trust_domain`, shared with ztunnel).
- End-user attributes (`request.auth.principal`, `.audiences`, `.presenter`, `.claims[a][b]`):
  string matching against the verified JWT; a list claim (e.g. `groups`) matches when one of its
  string elements does, as Istio's list matcher does. No JWT: nothing matches. Request principals
  (`requestPrincipals`, `request.auth.principal`) match the token's issuer and subject apart, as
  Istio splits the pattern at its last "/" (`request_principal_match`).
- IP blocks: CIDRs or single addresses; `remoteIpBlocks` is the same peer address here (a
  waypoint does not trust X-Forwarded-For: Istio's default of zero trusted hops).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ambit.jwtclaims import claim_values
from ambit.policymatch import string_match
from ambit.regex import compile_re2, full_match
from waypoint.request import EndUser


@functools.lru_cache(maxsize=1024)
def _namespace_glob(pattern: str) -> Any:
    return compile_re2(".*".join(re.escape(part) for part in pattern.split("*")))


def any_namespace(patterns: list[str], namespace: str | None) -> bool:
    """`namespaces` as Istio's Envoy matcher reads them (model/generator.go `srcNamespaceGenerator`:
    every `*` becomes `.*` in `.*/ns/<value>/.*`), so `team-*-prod` matches `team-a-prod`; a `*`
    only at an end is the usual prefix/suffix/presence match."""
    if namespace is None:
        return False
    return any(full_match(_namespace_glob(p), namespace) if "*" in p[1:-1] else string_match(p, namespace)
               for p in patterns)


@functools.lru_cache(maxsize=4096)
def _template(pattern: str) -> Any:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("{**}", i):
            out.append(".*")
            i += 4
        elif pattern.startswith("{*}", i):
            out.append("[^/]+")
            i += 3
        else:
            j = i
            while j < len(pattern) and pattern[j] != "{":
                j += 1
            j = max(j, i + 1)
            out.append("".join("\\" + c if not c.isalnum() else c for c in pattern[i:j]))
            i = j
    return compile_re2("".join(out))


def path_match(pattern: str, path: str) -> bool:
    if "{*}" in pattern or "{**}" in pattern:
        return full_match(_template(pattern), path)
    return string_match(pattern, path)


def any_path(patterns: list[str], path: str) -> bool:
    return any(path_match(p, path) for p in patterns)


ISTIO, WIDE, WHOLE = "istio", "wide", "whole"      # how `any_header` reads a header (module docstring)


def any_header(patterns: list[str], value: str | None, how: str = ISTIO) -> bool:
    """A header match on the joined `value` (None: absent); see the module docstring."""
    if value is None:
        return False
    if how == WHOLE:
        return any(string_match(p, value) for p in patterns)
    elements = value.split(",") if "," in value else []
    if how == WIDE and elements:
        elements += [e.strip(" \t") for e in elements]
    return any(p == "*" or string_match(p, value) or any(string_match(p, e) for e in elements) for p in patterns)


def any_host(patterns: list[str], authority: str, *, port_tolerant: bool = False) -> bool:
    a = authority.lower()
    bare = a.rsplit(":", 1)[0] if port_tolerant and a.count(":") == 1 else a
    return any(string_match(p.lower(), a) or (bare is not a and string_match(p.lower(), bare)) for p in patterns)


def any_method(patterns: list[str], method: str) -> bool:
    return any(string_match(p, method) for p in patterns)




@functools.lru_cache(maxsize=1024)
def claim_path(key: str) -> tuple[str, ...]:
    """`request.auth.claims[a][b]` -> ("a", "b")."""
    return tuple(key[len("request.auth.claims["):-1].split("]["))


def auth_values(key: str, user: EndUser) -> list[str]:
    """The string values an end-user condition key has for this user."""
    if key == "request.auth.principal":
        return [user.principal]
    if key == "request.auth.audiences":
        return user.audiences
    if key == "request.auth.presenter":
        return [user.presenter] if user.presenter is not None else []
    return claim_values(user.claims, claim_path(key))


def _claim(user: EndUser, name: str) -> str:
    v = user.claims.get(name)
    return v if isinstance(v, str) else ""


def request_principal_match(pattern: str, user: EndUser) -> bool:
    """Istio's request principal match (model/generator.go `requestPrincipalGenerator`): the
    pattern is split at its last "/" into an issuer and a subject matched against the token's
    `iss` and `sub` separately, so a wildcard never reaches across the boundary: `https://idp/*` is
    issuer `https://idp` exactly (not `https://idp/other`), `*/alice` is subject `alice` exactly
    (not `mallory/alice`); `*` is any issuer and any subject, both non-empty."""
    iss, sub = _claim(user, "iss"), _claim(user, "sub")
    idx = pattern.rfind("/")
    p_iss, p_sub = (pattern[:idx], pattern[idx + 1:]) if idx >= 0 else (pattern, "")
    if pattern == "*":
        return bool(iss) and bool(sub)
    if pattern.startswith("*"):
        if idx < 0:
            return bool(iss) and sub.endswith(pattern[1:])
        return (bool(iss) if p_iss == "*" else iss.endswith(p_iss[1:])) and sub == p_sub
    if pattern.endswith("*"):
        if idx < 0:
            return iss.startswith(pattern[:-1]) and bool(sub)
        return iss == p_iss and (bool(sub) if p_sub == "*" else sub.startswith(p_sub[:-1]))
    return iss == p_iss and sub == p_sub


def any_request_principal(patterns: list[str], user: EndUser | None, *, wide: bool) -> bool:
    """`requestPrincipals` (and `request.auth.principal`). `wide`: also match the joined
    "<iss>/<sub>" as one string, as Ambit did before; used only where a match can only deny more
    (a DENY's positive field, an ALLOW's negative one)."""
    if user is None:
        return False
    return any(request_principal_match(p, user) or (wide and string_match(p, user.principal)) for p in patterns)


def any_auth(key: str, patterns: list[str], user: EndUser | None, *, wide: bool = False) -> bool:
    if key == "request.auth.principal":
        return any_request_principal(patterns, user, wide=wide)
    return user is not None and any(string_match(p, v) for v in auth_values(key, user) for p in patterns)
