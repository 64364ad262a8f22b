"""Which ConfigMap holds a Gateway class's defaults, sans-IO.

As Istio's gateway deployment controller (pilot/pkg/config/kube/gatewaycommon/deploymentcontroller.go,
`render`) finds them: a ConfigMap in the control plane's own namespace (Istio's istio-system,
Ambit's root namespace, `--root-namespace`) labelled `gateway.istio.io/defaults-for-class: <class>`
holds overlays for every Gateway of that class, with the keys and merge of a Gateway's own
`infrastructure.parametersRef` (controller/waypoints/params.py), applied before it: the Gateway's
own overlay wins. Istio's Helm chart writes one per entry of its `gatewayClasses` value
(manifests/charts/istio-control/istio-discovery/templates/gateway-class-configmap.yaml).

Several ConfigMaps may carry the label for one class: as Istio (`controllers.OldestObject`), the
oldest one (creationTimestamp, then name) is applied and the others are not; `claims` lists them
in that order, so a caller can say which ones are ignored. The label anywhere but the root
namespace, or naming a class Ambit does not deploy, selects nothing (`misplaced` says so).

GatewayClass `spec.parametersRef` is not read, as in Istio (which never reads it either): the
classes are built in, and their GatewayClass objects exist for the tools that read them
(controller/waypoints/gatewayclasses.py; an advisory names the field).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ambit.gatewayclasses import INGRESS_CLASSES, WAYPOINT_CLASSES

Obj = dict[str, Any]

DEFAULTS_FOR_CLASS_LABEL = "gateway.istio.io/defaults-for-class"


def _md(o: Obj) -> Obj:
    return o.get("metadata") or {}


def class_of(cm: Obj) -> str | None:
    """The class a ConfigMap holds defaults for (its label's value), or None."""
    return (_md(cm).get("labels") or {}).get(DEFAULTS_FOR_CLASS_LABEL)


def _age(cm: Obj) -> tuple[str, str]:
    # RFC 3339 in UTC ("...Z", seconds) sorts as text; a ConfigMap without one (a file) sorts first
    return (str(_md(cm).get("creationTimestamp") or ""), str(_md(cm).get("name") or ""))


def claims(configmaps: Iterable[Obj], root_namespace: str, cls: str) -> list[Obj]:
    """The root namespace's ConfigMaps labelled with defaults for `cls`, oldest first: the first is
    applied, any other is ignored."""
    return sorted((cm for cm in configmaps if class_of(cm) == cls
                   and (_md(cm).get("namespace") or "default") == root_namespace), key=_age)


def ref(cm: Obj) -> str:
    return f"ConfigMap {_md(cm).get('namespace') or 'default'}/{_md(cm).get('name', '')}"


def duplicates(configmaps: Mapping[tuple[str, str], Obj] | Iterable[Obj], root_namespace: str) -> dict[str, list[Obj]]:
    """class -> its defaults ConfigMaps, oldest (applied) first, for the classes with more than one."""
    cms = list(configmaps.values()) if isinstance(configmaps, Mapping) else list(configmaps)
    out = {}
    for cls in sorted({c for cm in cms if (c := class_of(cm)) is not None}):
        found = claims(cms, root_namespace, cls)
        if len(found) > 1:
            out[cls] = found
    return out


def duplicate_message(cls: str, found: list[Obj]) -> str:
    return (f"{len(found)} ConfigMaps in the root namespace are labelled {DEFAULTS_FOR_CLASS_LABEL}: {cls}; "
            f"the oldest, {ref(found[0])}, is applied to the class's Gateways, and "
            f"{', '.join(ref(c) for c in found[1:])} not (as Istio: keep one per class)")


def misplaced(cm: Obj, root_namespace: str) -> str | None:
    """Why a ConfigMap's defaults-for-class label selects nothing, or None (it does, or has none)."""
    cls = class_of(cm)
    if cls is None:
        return None
    if (_md(cm).get("namespace") or "default") != root_namespace:
        return (f"the label {DEFAULTS_FOR_CLASS_LABEL} is read in the root namespace ({root_namespace}) only: "
                "these defaults apply to no Gateway")
    if cls not in WAYPOINT_CLASSES + INGRESS_CLASSES:
        return (f'{DEFAULTS_FOR_CLASS_LABEL}: "{cls}" is not a class Ambit deploys (it deploys '
                f"{', '.join(WAYPOINT_CLASSES + INGRESS_CLASSES)}): these defaults apply to no Gateway")
    return None
