"""VirtualService `http`, `tcp` and `tls` rules and matches that nothing can reach, as Istio's
validation warns of them (istio pkg/config/validation `analyzeUnreachableHTTPRules`, `...TCPRules`,
`...TLSRules`: the warnings VirtualServiceUnreachableRule and VirtualServiceIneffectiveMatch).

Rules are tried in order and the first that matches wins, so:
- a rule after one without `match` (which matches every request) is never reached: a
  `directResponse: {status: 403}` for `/admin` placed after a catch-all route blocks nothing;
- a match equal to one of an earlier rule never decides, and a rule all of whose matches are
  such is never reached;
- a match by a `uri` prefix is never reached when an earlier one has a shorter prefix of it and
  the same other conditions (istiod's check, where it is certain: `_prefix_shadow`).
"""

from __future__ import annotations

import json
from typing import Any

from controller.translate.routes import VS_REDIRECT_CODES
from controller.validation import object_ref

Obj = dict[str, Any]
UNREACHABLE = "UnreachableRule"      # the advisory's cause (`ambit analyze` AMB0134)


def _name(h: Obj, i: int) -> str:
    return f'"{h["name"]}"' if isinstance(h.get("name"), str) and h["name"] else str(i)


def unreachable_rules(good: list[Obj]) -> list[tuple[str, str, str]]:
    """(object ref, field path, why) for each unreachable rule and ineffective match of the valid
    VirtualServices: their `http`, `tcp` and `tls` rules (istiod's analyzeUnreachableTCPRules and
    analyzeUnreachableTLSRules are the HTTP one's; the waypoint tries `tcp` and `tls` rules in order
    too, waypoint/routing/tcp.py)."""
    out = []
    for o in good:
        if o.get("kind") != "VirtualService":
            continue
        for section, what in (("http", "request"), ("tcp", "connection"), ("tls", "connection")):
            out += [(object_ref(o), path, why) for path, why in
                    _section((o.get("spec") or {}).get(section) or [], section, what)]
    return out


# What a match may hold for istiod's prefix-shadow check to be a certainty here: istiod compares only
# these (ignoring scheme, sourceLabels, ignoreUriCase, ... which can make the later match wider).
_PREFIX_CHECKED = {"uri", "port", "method", "authority", "headers", "queryParams", "withoutHeaders", "name"}


def _prefix_shadow(m: Obj) -> tuple[str, str] | None:
    """(uri prefix, the other conditions) of a match by a non-empty uri prefix and the fields
    istiod compares, else None. An earlier match with a shorter prefix of this one and the same
    other conditions takes every request this one would (istiod's genMatchHTTPRoutes and
    coveredValidation, kept to where they are right: its loose comparison of methods and header
    values also warns of matches that do decide)."""
    uri = m.get("uri") or {}
    if set(m) - _PREFIX_CHECKED or set(uri) != {"prefix"} or not uri["prefix"]:
        return None
    return uri["prefix"], json.dumps({k: v for k, v in m.items() if k not in ("uri", "name")}, sort_keys=True)


def _section(rules: list[Obj], section: str, what: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    prefixes: list[tuple[str, str, str]] = []     # (uri prefix, the other conditions, the rule's name)
    catch_all = -1
    for i, h in enumerate(rules):
        matches = h.get("match") or []
        code = (h.get("redirect") or {}).get("redirectCode")
        if code is not None and code not in VS_REDIRECT_CODES:
            continue            # the translation drops this rule (warned): it takes nothing
        if catch_all >= 0:
            out.append((f"spec.{section}[{i}]", (
                f"rule {_name(h, i)} is never used: rule {catch_all} before it has no match, so it takes "
                f"every {what} (only the last rule may have no match)")))
            continue
        if not matches:
            catch_all = i
            continue
        dups = 0
        for j, m in enumerate(matches):
            key = json.dumps({k: v for k, v in m.items() if k != "name"}, sort_keys=True)
            if key in seen:
                dups += 1
                out.append((f"spec.{section}[{i}].match[{j}]", (
                    f"match {j} of rule {_name(h, i)} is never used: rule {seen[key]} before it has the same "
                    "match, and the first rule that matches wins")))
                continue
            seen[key] = i
            shadow = _prefix_shadow(m) if section == "http" else None
            earlier = next((p for p in prefixes if shadow and shadow[0] != p[0] and shadow[0].startswith(p[0])
                            and shadow[1] == p[1]), None)
            if shadow and earlier:
                dups += 1
                out.append((f"spec.http[{i}].match[{j}]", (
                    f'match {j} of rule {_name(h, i)} is never used: its uri prefix "{shadow[0]}" is within the '
                    f'prefix "{earlier[0]}" of an earlier match (rule {earlier[2]}), with the same other conditions, and '
                    "the first match that matches wins (istiod warns too)")))
            elif shadow:
                prefixes.append((*shadow, _name(h, i)))
        if dups and dups == len(matches):
            out.append((f"spec.{section}[{i}]", f"rule {_name(h, i)} is never used: all its matches are "
                        "used by rules before it"))
    return out
