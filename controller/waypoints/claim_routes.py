"""Matches on the verified JWT (`@request.auth.claims...` in a VirtualService; `requestPrincipals`
and `request.auth.*` conditions in an AuthorizationPolicy a waypoint enforces) where no token is
verified.

They read the token a RequestAuthentication verified at the waypoint. Where no
RequestAuthentication applies, no request carries one: a `headers` claim match never holds and a
`withoutHeaders` one always does; a policy's `requestPrincipals` or `request.auth.claims[...]`
never matches, so an ALLOW rule with it admits nothing and a DENY rule denies nothing. Istio
behaves the same and says nothing; Ambit says so, naming the field and the waypoint, since a rule
that silently never matches is rarely what was meant.

Binding is the waypoint's (waypoint/binding.py, which the controller may not import): a
RequestAuthentication applies to a Service's requests when its targetRefs name that Service (in its
namespace), the Service's waypoint Gateway, or a waypoint GatewayClass from the root namespace.
"""

from __future__ import annotations

from typing import Any

from ambit.jwtclaims import routing_claim
from ambit.model import RequestAuthn
from controller.translate.policy import target_refs
from controller.validation import object_ref
from controller.waypoints.gateways import WAYPOINT_CLASSES

Obj = dict[str, Any]
CLAIMS_NOT_VERIFIED = "ClaimsNotVerified"      # the advisory's cause (`ambit analyze` AMB0132)


def _binds(ra: RequestAuthn, service: str, waypoint: str, root_namespace: str) -> bool:
    if ra.scope != "waypoint":
        return False
    svc_ns, _, svc_name = service.partition("/")
    wp_ns, _, wp_name = waypoint.partition("/")
    for t in ra.target_refs:
        kind, name, tns = t.get("kind", ""), t.get("name", ""), t.get("namespace") or ra.namespace
        if kind == "Service" and (tns, name) == (svc_ns, svc_name) and ra.namespace == svc_ns:
            return True
        if kind == "Gateway" and (tns, name) == (wp_ns, wp_name):
            return True
        if kind == "GatewayClass" and name in WAYPOINT_CLASSES and ra.namespace == root_namespace:
            return True
    return False


def unverified_claim_matches(good: list[Obj], tr: Any, root_namespace: str) -> list[tuple[str, str, str]]:
    """(object ref, field path, why) for each claim match of a VirtualService that a waypoint
    applies to a host no RequestAuthentication covers there."""
    unverified: dict[str, list[str]] = {}      # VirtualService ref -> "<host> at waypoint <wp>"
    for wr in tr.waypoint_routes:
        if not wr.waypoint or not wr.service:
            continue
        if any(_binds(ra, wr.service, wr.waypoint, root_namespace) for ra in tr.request_authns):
            continue
        for src in wr.sources:
            unverified.setdefault(src, []).append(f"{wr.hostname} at waypoint {wr.waypoint}")
    out = []
    for o in good:
        if o.get("kind") != "VirtualService" or object_ref(o) not in unverified:
            continue
        where = ", ".join(sorted(unverified[object_ref(o)]))
        for i, h in enumerate((o.get("spec") or {}).get("http") or []):
            for j, m in enumerate(h.get("match") or []):
                for field, never in (("headers", "never holds"), ("withoutHeaders", "always holds")):
                    for name in m.get(field) or {}:
                        if routing_claim(name):
                            out.append((object_ref(o), f"spec.http[{i}].match[{j}].{field}[{name}]", (
                                f"matches a JWT claim, but no RequestAuthentication applies to {where}: no request "
                                f"there carries verified claims, so this condition {never}; bind a "
                                "RequestAuthentication to the Service or the waypoint with targetRefs")))
    return out


def _policy_waypoints(o: Obj, tr: Any, root_namespace: str) -> list[tuple[str, bool]]:
    """(waypoint, verified) for each waypoint a targetRefs policy is enforced by: whether some
    RequestAuthentication applies there to the requests the policy sees."""
    spec, ns = o.get("spec") or {}, (o.get("metadata") or {}).get("namespace", "default")
    targets = [t for _, t in target_refs(spec)]
    services = {(sv.namespace, sv.name): sv for sv in tr.services}
    out = []
    for t in targets:
        kind, name = t.get("kind", ""), t.get("name", "")
        tns = t.get("namespace") or ns
        if kind == "Service" and (tns, name) in services and services[(tns, name)].waypoint:
            wp = services[(tns, name)].waypoint
            out.append((wp, any(_binds(ra, f"{tns}/{name}", wp, root_namespace) for ra in tr.request_authns)))
        elif kind == "Gateway":
            wp = f"{tns}/{name}"
            users = [f"{sv.namespace}/{sv.name}" for sv in tr.services if sv.waypoint == wp]
            if users:
                out.append((wp, any(_binds(ra, u, wp, root_namespace) for ra in tr.request_authns for u in users)))
    return out


def _token_fields(spec: Obj) -> list[tuple[str, str]]:
    """(field path, what it reads) of each positive end-user attribute of a policy's rules."""
    out = []
    for i, rule in enumerate(spec.get("rules") or []):
        for j, f in enumerate(rule.get("from") or []):
            if (f.get("source") or {}).get("requestPrincipals"):
                out.append((f"spec.rules[{i}].from[{j}].source.requestPrincipals", "requestPrincipals"))
        for j, w in enumerate(rule.get("when") or []):
            key = w.get("key", "")
            if key.startswith("request.auth.") and w.get("values"):
                out.append((f"spec.rules[{i}].when[{j}].values", key))
    return out


def unverified_policies(good: list[Obj], tr: Any, root_namespace: str) -> list[tuple[str, str, str]]:
    """(object ref, field path, why) for each `requestPrincipals` or `request.auth.*` value of a
    policy enforced by a waypoint where no RequestAuthentication applies."""
    out = []
    for o in good:
        if o.get("kind") != "AuthorizationPolicy":
            continue
        spec = o.get("spec") or {}
        fields = _token_fields(spec)
        if not fields:
            continue
        bare = sorted({wp for wp, verified in _policy_waypoints(o, tr, root_namespace) if not verified})
        if not bare:
            continue
        action = spec.get("action", "ALLOW")
        effect = {"ALLOW": "an ALLOW rule with it admits nothing", "DENY": "a DENY rule with it denies nothing"}.get(
            action, f"a {action} rule with it never matches")
        for path, what in fields:
            out.append((object_ref(o), path, (
                f"{what} reads the JWT a RequestAuthentication verified, but none applies at waypoint "
                f"{', '.join(bare)} to the requests this policy sees: no request there carries a verified token, so "
                f"it never matches and {effect}; bind a RequestAuthentication to the Service or the waypoint with "
                "targetRefs")))
    return out
