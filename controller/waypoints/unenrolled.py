"""Policies ztunnel enforces whose pods are all outside the mesh.

ztunnel enforces a PeerAuthentication, and an AuthorizationPolicy bound by selector or namespace,
on the traffic of the pods it captures: enrolled pods (their namespace, or themselves, labelled
`ambit.io/dataplane-mode=ambient`). A STRICT PeerAuthentication or a DENY in a namespace nobody
enrolled selects pods whose traffic never reaches ztunnel, so it is enforced nowhere and the pods
take plaintext from anyone. Istio's analyzer reports the namespace (IST0102 NamespaceNotInjected);
Ambit names the policy, since that is what the user believes is in force.

Said only when the policy selects pods and none of them is enrolled: a policy that selects no pod
at all is AMB0104's, and a mesh-wide one (root namespace, no selector) is in force for the
enrolled pods of other namespaces. A PeerAuthentication only when it asks for STRICT somewhere
(PERMISSIVE and DISABLE are what such pods get anyway), and only where the policy's Namespace is
known (its label decides enrolment).
"""

from __future__ import annotations

from typing import Any

from ambit.policyselect import authz_selects, peer_authn_selects
from controller.translate.index import ns_of
from controller.validation import object_ref

Obj = dict[str, Any]
NOT_ENROLLED = "PodsNotInMesh"       # the advisory's cause (`ambit analyze` AMB0137)


def _selector(o: Obj) -> dict[str, str]:
    return dict(((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})


def _strict(spec: Obj) -> bool:
    return (spec.get("mtls") or {}).get("mode") == "STRICT" or any(
        (m or {}).get("mode") == "STRICT" for m in (spec.get("portLevelMtls") or {}).values())


def unenrolled_policies(good: list[Obj], tr: Any, root_namespace: str) -> list[tuple[str, str, str]]:
    """(object ref, field path, why) for each ztunnel-enforced policy all of whose pods are outside
    the mesh."""
    out = []
    # enrolment is known only where the Namespace is (its label): `ambit analyze` of files may lack it
    namespaces = {(n.get("metadata") or {}).get("name") for n in good if n.get("kind") == "Namespace"}
    for o in good:
        kind, spec = o.get("kind"), o.get("spec") or {}
        if kind not in ("PeerAuthentication", "AuthorizationPolicy"):
            continue
        if kind == "AuthorizationPolicy" and (spec.get("targetRef") or spec.get("targetRefs")):
            continue            # a waypoint's to enforce
        if kind == "PeerAuthentication" and not _strict(spec):
            continue            # PERMISSIVE or DISABLE over plaintext pods: what they get anyway
        ns, sel = ns_of(o), _selector(o)
        if (ns == root_namespace and not sel) or ns not in namespaces:
            continue            # mesh-wide; or enrolment not known
        if kind == "PeerAuthentication":
            picked = [w for w in tr.workloads
                      if peer_authn_selects(ns, sel, root_namespace, w.namespace, w.labels) and w.namespace == ns]
        else:
            picked = [w for w in tr.workloads
                      if authz_selects(ns, sel, ns == root_namespace, w.namespace, w.labels)]
        if not picked or any(w.protocol == "HBONE" for w in picked):
            continue
        names = ", ".join(sorted(f"{w.namespace}/{w.name}" for w in picked)[:5]) + (", ..." if len(picked) > 5 else "")
        out.append((object_ref(o), "spec.selector" if sel else "metadata.namespace", (
            f"selects only pods that are not in the mesh ({names}): ztunnel never sees their traffic, so this "
            f"{kind} is enforced nowhere; enrol them with the label ambit.io/dataplane-mode=ambient on namespace "
            f"{ns} (or on the pods)")))
    return out
