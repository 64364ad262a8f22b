"""Pods in ingress mode, and the policies that do not cover their plaintext inbound (pure).

A pod enrolled in the mesh with `ambient.istio.io/bypass-inbound-capture: "true"` (Istio's
"ingress mode", read by `ambit.podannotations`) has its plaintext inbound delivered to the app
without ztunnel: the node agent does not capture it. ztunnel is what enforces a STRICT
PeerAuthentication and every AuthorizationPolicy bound by selector or namespace, so for that
traffic they do nothing; they still apply to the pod's HBONE inbound from mesh clients. Istio
documents the same trade. Ambit says it: `ingress_mode_notes(objects)` names each such policy, the
pods it no longer fully covers and why, and each such pod with the policies; `ambit apply` prints
them as warnings and `ambit analyze` reports them (controller.waypoints.advisories).

Which pods a policy selects is decided by the rules ztunnel enforces with (ambit.policyselect,
shared with ztunnel/authz.py): a PeerAuthentication with a selector selects pods of its own
namespace, one without a selector its namespace (every namespace in the root namespace); an
AuthorizationPolicy without targetRefs selects by its selector in its namespace, or in every
namespace from the root namespace. Policies bound with targetRefs are
enforced by waypoints, which a mesh client's HBONE reaches whatever the pod's capture: unaffected.
"""

from __future__ import annotations

from typing import Any

from ambit.enrolment import is_enrolled
from ambit.podannotations import ANN_BYPASS_INBOUND, inbound_bypass
from ambit.policyselect import authz_selects, peer_authn_selects
from controller.translate.index import labels_of, name_of, ns_of
from controller.validation import object_ref

Obj = dict[str, Any]

INBOUND_BYPASSED = "InboundBypassed"      # the advisories' cause
_ENDED = ("Succeeded", "Failed")
_SHOWN = 3                                # pods named in one message; the rest are counted


def ingress_mode_pods(objects: list[Obj]) -> list[Obj]:
    """The enrolled pods whose plaintext inbound bypasses ztunnel."""
    ns_labels = {name_of(o): labels_of(o) for o in objects if o.get("kind") == "Namespace"}
    out = []
    for p in objects:
        if p.get("kind") != "Pod" or ((p.get("status") or {}).get("phase") in _ENDED):
            continue
        if not inbound_bypass((p.get("metadata") or {}).get("annotations")).enabled:
            continue
        if is_enrolled(labels_of(p), ns_labels.get(ns_of(p), {}), bool((p.get("spec") or {}).get("hostNetwork"))):
            out.append(p)
    return out


def _selects(policy: Obj, pod: Obj, root_namespace: str) -> bool:
    """ztunnel's own scoping rules (ambit.policyselect), on the objects."""
    spec = policy.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    ns = ns_of(policy)
    if policy.get("kind") == "PeerAuthentication":
        return peer_authn_selects(ns, selector, root_namespace, ns_of(pod), labels_of(pod))
    return authz_selects(ns, selector, ns == root_namespace, ns_of(pod), labels_of(pod))


def _strict_path(policy: Obj) -> str:
    """Where a PeerAuthentication says STRICT ("" when it does not)."""
    spec = policy.get("spec") or {}
    if (spec.get("mtls") or {}).get("mode") == "STRICT":
        return "spec.mtls.mode"
    for port, entry in sorted((spec.get("portLevelMtls") or {}).items(), key=lambda kv: str(kv[0])):
        if (entry or {}).get("mode") == "STRICT":
            return f"spec.portLevelMtls[{port}].mode"
    return ""


def _enforced_by_ztunnel(policy: Obj) -> bool:
    spec = policy.get("spec") or {}
    return policy.get("kind") == "AuthorizationPolicy" and not spec.get("targetRef") and not spec.get("targetRefs")


def _named(refs: list[str]) -> str:
    shown = ", ".join(refs[:_SHOWN])
    return shown + (f" and {len(refs) - _SHOWN} more" if len(refs) > _SHOWN else "")


def ingress_mode_notes(objects: list[Obj], root_namespace: str = "ambit-system") -> list[tuple[str, str, str]]:
    """(object ref, field, reason) for every STRICT PeerAuthentication and ztunnel-enforced
    AuthorizationPolicy that selects a pod in ingress mode, and for every such pod."""
    pods = ingress_mode_pods(objects)
    if not pods:
        return []
    out = []
    by_pod: dict[str, list[str]] = {}
    for o in objects:
        if o.get("kind") == "PeerAuthentication":
            path, what = _strict_path(o), "STRICT mTLS"
        elif _enforced_by_ztunnel(o):
            path, what = ("spec.selector" if (o.get("spec") or {}).get("selector") else "spec"), "this policy"
        else:
            continue
        if not path:
            continue
        hit = [f"{ns_of(p)}/{name_of(p)}" for p in pods if _selects(o, p, root_namespace)]
        if not hit:
            continue
        for key in hit:
            by_pod.setdefault(key, []).append(object_ref(o))
        out.append((object_ref(o), path, (
            f"does not apply to the plaintext inbound of {_named(hit)}: {ANN_BYPASS_INBOUND}=true (ingress mode) "
            f"sends it to the app without ztunnel, which enforces {what}; only their HBONE inbound from mesh "
            "clients is covered (as in Istio). Remove the annotation, or protect that port otherwise "
            "(a NetworkPolicy, the app's own TLS)")))
    for p in pods:
        policies = by_pod.get(f"{ns_of(p)}/{name_of(p)}")
        if policies:
            out.append((object_ref(p), f"metadata.annotations[{ANN_BYPASS_INBOUND}]", (
                f"ingress mode: its plaintext inbound bypasses ztunnel, so {_named(policies)} "
                "do not apply to it; only its HBONE inbound from mesh clients is covered")))
    return out
