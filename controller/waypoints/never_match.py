"""Request matches of Istio kinds that no real request can satisfy as written.

HTTP methods are case-sensitive and a request path always starts with "/" (RFC 9110 §9.1,
§4.2.3), and Envoy compares both as written. So `methods: ["delete"]` or `paths: ["admin/*"]`
matches nothing: an ALLOW rule with it admits nothing, a DENY denies nothing, a VirtualService
match never routes. Istio accepts them (a lowercase method is a legal, if unusual, token) and says
nothing; Ambit accepts them too and warns, naming the field and what was probably meant, since
the mistake is easy to make and, in a DENY, silently opens what was meant to be closed.

Gateway API's CRDs already refuse both (its `method` enum, its path pattern).
"""

from __future__ import annotations

from typing import Any

from ambit.policymatch import string_match
from controller.validation import object_ref

Obj = dict[str, Any]
NEVER_MATCHES = "NeverMatches"       # the advisory's cause (`ambit analyze` AMB0133)

# RFC 9110 §9 and RFC 5789 (PATCH): the methods a client sends in upper case
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def method_problem(value: str) -> tuple[str, str] | None:
    """(why, the value meant) when a method value (exact, `prefix*`, `*suffix`) matches no request a
    client sends: it is not in upper case, and in upper case it would match a method clients send."""
    up = value.upper()
    if value == up or not any(string_match(up, m) for m in KNOWN_METHODS):
        return None
    return f'methods are case-sensitive, so "{value}" matches no request a client sends', up


def path_problem(value: str) -> tuple[str, str] | None:
    """(why, the value meant) when a path value (exact, `prefix*`, `*suffix`, `*`, or a `{*}`
    template) matches no request."""
    if not value or value.startswith(("/", "*")):
        return None
    return f'a request path starts with "/", so "{value}" matches none', f"/{value}"


def rule_effect(action: str, negative: bool) -> str:
    """What a policy value that never matches does to its rule (`negative`: a not* value)."""
    if negative:
        return f"it excludes nothing from this {action} rule"
    return {"DENY": "this DENY rule denies nothing on it", "ALLOW": "this ALLOW rule admits nothing on it"}.get(
        action, f"this {action} rule never matches on it")


def _policy(o: Obj) -> list[tuple[str, str, str]]:
    spec = o.get("spec") or {}
    action = spec.get("action", "ALLOW")
    out = []
    for i, rule in enumerate(spec.get("rules") or []):
        for j, to in enumerate(rule.get("to") or []):
            op = to.get("operation") or {}
            for field, check in (("methods", method_problem), ("notMethods", method_problem),
                                 ("paths", path_problem), ("notPaths", path_problem)):
                for k, v in enumerate(op.get(field) or []):
                    problem = check(v) if isinstance(v, str) else None
                    if problem:
                        why, meant = problem
                        out.append((object_ref(o), f"spec.rules[{i}].to[{j}].operation.{field}[{k}]",
                                    f'{why}: {rule_effect(action, field.startswith("not"))}; write "{meant}"'))
    return out


def _virtual_service(o: Obj) -> list[tuple[str, str, str]]:
    out = []
    for i, h in enumerate((o.get("spec") or {}).get("http") or []):
        for j, m in enumerate(h.get("match") or []):
            base = f"spec.http[{i}].match[{j}]"
            method, uri = m.get("method") or {}, m.get("uri") or {}
            found = [("method.exact", method_problem(method["exact"]) if isinstance(method.get("exact"), str) else None)]
            found += [(f"uri.{kind}", path_problem(uri[kind]) if isinstance(uri.get(kind), str) else None)
                      for kind in ("exact", "prefix")]
            for field, problem in found:
                if problem:
                    why, meant = problem
                    out.append((object_ref(o), f"{base}.{field}", f'{why}: this match never routes; write "{meant}"'))
    return out


def never_matching(good: list[Obj]) -> list[tuple[str, str, str]]:
    """(object ref, field path, why) for each request match value of the valid objects that no
    request a client sends can satisfy."""
    out = []
    for o in good:
        kind = o.get("kind")
        if kind == "AuthorizationPolicy":
            out += _policy(o)
        elif kind == "VirtualService":
            out += _virtual_service(o)
    return out
