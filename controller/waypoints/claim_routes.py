"""VirtualService matches on JWT claims (`@request.auth.claims...`) where no token is verified.

A claim match reads the token a RequestAuthentication verified at the waypoint. Where no
RequestAuthentication applies, no request carries claims: a `headers` claim match never holds and
a `withoutHeaders` one always does. Istio behaves the same and says nothing; Ambit says so, naming
the match and the waypoint, since a route that silently never matches is rarely what was meant.

Binding is the waypoint's (waypoint/binding.py, which the controller may not import): a
RequestAuthentication applies to a Service's requests when its targetRefs name that Service (in its
namespace), the Service's waypoint Gateway, or a waypoint GatewayClass from the root namespace.
"""

from __future__ import annotations

from typing import Any

from ambit.jwtclaims import routing_claim
from ambit.model import RequestAuthn
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
