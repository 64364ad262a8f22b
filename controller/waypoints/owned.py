"""What of a gateway's rendered objects stays Ambit's whatever its parameters overlay, sans-IO.

A Gateway's parametersRef overlays (controller/waypoints/params.py) may add to and change the
objects rendered for it, except what the mesh relies on: names, namespaces, owner references; the
labels the controller finds its objects by; the Deployment's selector and the pod labels the
Service, ztunnel's capture opt-out and policy select by; the pod's service account (the gateway's
SPIFFE identity); the gateway container, its command and arguments (the controller's flags) and
the token and root-certificate volumes and mounts it reads; the Service's selector and the ports it
serves; the HPA's target; the PDB's selector. `owned_changes` says, per object, which of them an
overlay changed.
"""

from __future__ import annotations

from typing import Any

from controller.waypoints.gateways import GATEWAY_NAME_LABEL
from controller.waypoints.render import CA_TOKEN_VOLUME, MANAGED_BY_LABEL, OWNED_POD_LABELS, ROOT_CERT_VOLUME

Obj = dict[str, Any]


def _get(o: Any, *path: str) -> Any:
    for p in path:
        o = o.get(p) if isinstance(o, dict) else None
    return o


def _by(items: Any, key: str) -> dict[Any, Obj]:
    return {i.get(key): i for i in items or [] if isinstance(i, dict)}


def owned_changes(base: Obj, merged: Obj) -> list[str]:
    """What an overlay changed of what Ambit owns, one reason each (empty: nothing)."""
    bad = []
    for k in ("apiVersion", "kind"):
        if merged.get(k) != base.get(k):
            bad.append(f"{k} is the rendered object's ({base.get(k)})")
    bmd, mmd = base.get("metadata") or {}, merged.get("metadata") or {}
    for k in sorted(set(bmd) | set(mmd)):
        if k not in ("labels", "annotations") and bmd.get(k) != mmd.get(k):
            bad.append(f"metadata.{k} is Ambit's to set (only labels and annotations may be added)")
    for k in (GATEWAY_NAME_LABEL, MANAGED_BY_LABEL):
        if (bmd.get("labels") or {}).get(k) != (mmd.get("labels") or {}).get(k):
            bad.append(f"metadata.labels.{k} is Ambit's: it finds the objects it rendered by it")
    kind = base.get("kind")
    if kind == "Deployment":
        pod_b, pod_m = _get(base, "spec", "template"), _get(merged, "spec", "template")
        if _get(base, "spec", "selector") != _get(merged, "spec", "selector"):
            bad.append("spec.selector is Ambit's: it selects the gateway's pods by their gateway-name label")
        for k in OWNED_POD_LABELS:
            want = _get(pod_b, "metadata", "labels", k)
            if want is not None and _get(pod_m, "metadata", "labels", k) != want:
                bad.append(f"spec.template.metadata.labels.{k} is Ambit's: the Service, ztunnel's capture and "
                           "policy select the gateway's pods by it")
        if _get(pod_b, "spec", "serviceAccountName") != _get(pod_m, "spec", "serviceAccountName"):
            bad.append("spec.template.spec.serviceAccountName is Ambit's: it is the gateway's SPIFFE identity, "
                       "which ztunnels and policy expect")
        [bc] = _get(pod_b, "spec", "containers")
        mc = _by(_get(pod_m, "spec", "containers"), "name").get(bc["name"])
        where = f"spec.template.spec.containers[{bc['name']}]"
        if mc is None:
            bad.append(f"{where} is Ambit's: the gateway runs in it")
        else:
            for k in ("command", "args"):
                if mc.get(k) != bc.get(k):
                    bad.append(f"{where}.{k} is Ambit's: rendered from the controller's --waypoint-* flags")
            have = _by(mc.get("volumeMounts"), "mountPath")
            for vm in bc.get("volumeMounts") or []:
                if (have.get(vm["mountPath"]) or {}).get("name") != vm["name"]:
                    bad.append(f"{where}.volumeMounts[{vm['mountPath']}] is Ambit's: the gateway reads it")
        vols_b, vols_m = _by(_get(pod_b, "spec", "volumes"), "name"), _by(_get(pod_m, "spec", "volumes"), "name")
        for v in (CA_TOKEN_VOLUME, ROOT_CERT_VOLUME):
            if vols_b.get(v) != vols_m.get(v):
                bad.append(f"spec.template.spec.volumes[{v}] is Ambit's: the gateway's CA token and the mesh "
                           "root it trusts")
    elif kind == "Service":
        if _get(base, "spec", "selector") != _get(merged, "spec", "selector"):
            bad.append("spec.selector is Ambit's: it selects the gateway's pods by their gateway-name label")
        have = _by(_get(merged, "spec", "ports"), "port")
        for p in _get(base, "spec", "ports") or []:
            m = have.get(p["port"]) or {}
            if (m.get("targetPort"), m.get("protocol", "TCP")) != (p["targetPort"], p["protocol"]):
                bad.append(f"spec.ports[{p['port']}] is Ambit's: the gateway serves on it (more ports may be added)")
    elif kind == "HorizontalPodAutoscaler":
        if _get(base, "spec", "scaleTargetRef") != _get(merged, "spec", "scaleTargetRef"):
            bad.append("spec.scaleTargetRef is Ambit's: the autoscaler scales the gateway's Deployment")
    elif kind == "PodDisruptionBudget":
        if _get(base, "spec", "selector") != _get(merged, "spec", "selector"):
            bad.append("spec.selector is Ambit's: the budget covers the gateway's pods")
    return bad
