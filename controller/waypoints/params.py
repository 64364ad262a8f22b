"""A Gateway's `spec.infrastructure.parametersRef` and its class's defaults: overlays of its rendered objects, sans-IO.

As Istio's gateway deployment controller (pilot/pkg/config/kube/gatewaycommon/deploymentcontroller.go)
reads it: the reference names a ConfigMap (group "", kind ConfigMap) in the Gateway's namespace,
whose keys hold YAML overlays, merged into the rendered objects with Kubernetes' strategic merge
(controller/waypoints/smp.py):

| key | overlays |
|---|---|
| `deployment` | the Deployment (resources, nodeSelector, tolerations, affinity, priorityClassName, replicas ...) |
| `service` | the Service (annotations of a cloud load balancer, its type ...) |
| `serviceAccount` | the ServiceAccount (annotations of a cloud workload identity ...) |
| `horizontalPodAutoscaler` | an autoscaling/v2 HorizontalPodAutoscaler of the Deployment, rendered only with this key |
| `podDisruptionBudget` | a policy/v1 PodDisruptionBudget of the pods, rendered only with this key |

A Gateway class may have defaults too: a ConfigMap of the same keys in the root namespace,
labelled `gateway.istio.io/defaults-for-class: <class>` (controller/waypoints/class_defaults.py).
As Istio, its overlays merge first and the Gateway's own second, so the Gateway's win
(`Parameters.layers`, in that order); a Gateway with no parametersRef gets the defaults alone.

What the mesh relies on stays Ambit's (controller/waypoints/owned.py). An overlay that changes
it, a key that is not one of the five, a key that does not parse, a reference to another kind or a
ConfigMap that does not exist makes the whole parameter set invalid (`Parameters.errors`), be it
in the class defaults or the Gateway's own: nothing of either is applied (Istio renders nothing
then either), the objects stay as last rendered, and the Gateway says why, naming the ConfigMap
(Accepted=False, InvalidParameters), as Gateway API asks.

The controller keeps at most `MAX_OVERLAY_BYTES` of each overlay key (controller/sources/kube.py): it
watches every ConfigMap of the cluster, and keys named `service` or `deployment` are common in
applications' own ConfigMaps, so their values cost the controller memory whoever wrote them. A
larger value is dropped as it arrives and its size kept, so the Gateway reports it instead of
rendering without it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ambit.kube.resource import OMITTED
from controller.waypoints import class_defaults
from controller.waypoints.owned import owned_changes
from controller.waypoints.render import (
    OVERLAY_FIELDS_ANNOTATION,
    WaypointDeploySettings,
    optional_objects,
    render,
)
from controller.waypoints.smp import MergeError, strategic_merge

Obj = dict[str, Any]

OVERLAY_KEYS = ("deployment", "service", "serviceAccount", "horizontalPodAutoscaler", "podDisruptionBudget")
KIND_OF_KEY = {"deployment": "Deployment", "service": "Service", "serviceAccount": "ServiceAccount",
               "horizontalPodAutoscaler": "HorizontalPodAutoscaler", "podDisruptionBudget": "PodDisruptionBudget"}
KEY_OF_KIND = {v: k for k, v in KIND_OF_KEY.items()}
# Rendered only when their key is present (Istio's `requiredOverlays`).
OPTIONAL_KINDS = ("HorizontalPodAutoscaler", "PodDisruptionBudget")
# Per key: a full pod-spec overlay (affinity, tolerations, topology spread, resources of every
# container) is a few KiB; 16 KiB leaves room and bounds five keys of any ConfigMap to 80 KiB.
MAX_OVERLAY_BYTES = 16 * 1024
MISSING = "the ConfigMap does not exist"      # the one error a partial set of files cannot judge
DEFAULT_ROOT_NAMESPACE = WaypointDeploySettings.root_namespace


@dataclass
class Layer:
    """One ConfigMap's overlays: the class defaults or the Gateway's own parametersRef."""

    what: str                                       # "parametersRef", "class defaults (label ...)"
    ref: str = ""                                   # "ConfigMap ns/name", for messages
    overlays: dict[str, Obj] = field(default_factory=dict)      # key -> parsed overlay
    errors: list[str] = field(default_factory=list)


@dataclass
class Parameters:
    """The overlays a Gateway's objects are rendered with, in the order they apply (its class's
    defaults, then its own parametersRef, which wins), or why they are not."""

    layers: list[Layer] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [e for layer in self.layers for e in layer.errors]

    @property
    def overlays(self) -> dict[str, Obj]:
        """Every key some layer overlays (the optional objects rendered), -> the last layer's."""
        return {k: v for layer in self.layers for k, v in layer.overlays.items()}

    @property
    def digest(self) -> str:
        """Changes whenever what the overlays say does: the reconciler re-renders on it."""
        body = json.dumps([[la.what, la.ref, la.overlays, la.errors] for la in self.layers], sort_keys=True,
                          default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def message(self) -> str:
        return "; ".join(f"{la.what} {la.ref}: " + "; ".join(la.errors) for la in self.layers if la.errors) + \
            " (nothing of the gateway's parameters is applied: its objects stay as last rendered)"


def _too_large(key: str, size: int) -> str:
    return (f"key {key}: {size} bytes, over the {MAX_OVERLAY_BYTES} bytes the controller keeps of an overlay "
            "(an overlay says only what differs from the rendered object)")


def parameters_ref(gw: Obj) -> Obj | None:
    return ((gw.get("spec") or {}).get("infrastructure") or {}).get("parametersRef")


def class_defaults_layer(cls: str, configmaps: Mapping[tuple[str, str], Obj],
                         root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> Layer | None:
    """The class's defaults (class_defaults.py: the oldest labelled ConfigMap of the root namespace)."""
    found = class_defaults.claims(configmaps.values(), root_namespace, cls)
    if not found:
        return None
    layer = Layer(what=f"class defaults ({class_defaults.DEFAULTS_FOR_CLASS_LABEL}: {cls})",
                  ref=class_defaults.ref(found[0]))
    _read_overlays(found[0], layer)
    return layer


def resolve(gw: Obj, configmaps: Mapping[tuple[str, str], Obj],
            root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> Parameters | None:
    """The Gateway's parameters from the (projected) ConfigMaps by (namespace, name): its class's
    defaults and its own parametersRef; None: neither."""
    p = Parameters()
    defaults = class_defaults_layer(str((gw.get("spec") or {}).get("gatewayClassName") or ""), configmaps,
                                    root_namespace)
    if defaults is not None:
        p.layers.append(defaults)
    ref = parameters_ref(gw)
    if ref is not None:
        p.layers.append(_own_layer(gw, ref, configmaps))
    return p if p.layers else None


def _own_layer(gw: Obj, ref: Obj, configmaps: Mapping[tuple[str, str], Obj]) -> Layer:
    ns = (gw.get("metadata") or {}).get("namespace") or "default"
    group, kind, name = ref.get("group", ""), ref.get("kind", ""), ref.get("name", "")
    layer = Layer(what="parametersRef", ref=f"ConfigMap {ns}/{name}")
    if group not in ("", "core") or kind != "ConfigMap":
        layer.ref = f"{group or 'core'}/{kind} {name}"
        layer.errors.append('Ambit reads gateway parameters from a ConfigMap (group "", kind ConfigMap) in the '
                            "Gateway's namespace only")
        return layer
    cm = configmaps.get((ns, name))
    if cm is None:
        layer.errors.append(MISSING)
        return layer
    _read_overlays(cm, layer)
    return layer


def _read_overlays(cm: Obj, p: Layer) -> None:
    """Parse the ConfigMap's overlay keys into `p`, or say why each cannot be."""
    omitted = cm.get(OMITTED) or {}
    for k, size in sorted((omitted.get("oversize") or {}).items()):
        p.errors.append(_too_large(k, size))
    others = sorted(set(omitted.get("others") or []) | (set(cm.get("data") or {}) - set(OVERLAY_KEYS)))
    if others:
        more = omitted.get("othersTotal", len(others)) - len(others)
        p.errors.append(f"key{'s' if len(others) > 1 else ''} {', '.join(others)}{f' (and {more} more)' if more > 0 else ''}"
                        f": not an overlay (the keys are {', '.join(OVERLAY_KEYS)})")
    for k, text in sorted((cm.get("data") or {}).items()):
        if k not in OVERLAY_KEYS:
            continue
        if len(str(text).encode()) > MAX_OVERLAY_BYTES:      # read whole (the lab store): the same bound
            p.errors.append(_too_large(k, len(str(text).encode())))
            continue
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            p.errors.append(f"key {k}: not YAML: {str(e).splitlines()[0]}")
            continue
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            p.errors.append(f"key {k}: a YAML {type(doc).__name__}, not a map (a partial {KIND_OF_KEY[k]})")
            continue
        p.overlays[k] = doc


# What `check` renders with when the caller deploys nothing (status only, `ambit apply`): the
# checks compare fields that do not depend on the settings.
_CHECK_SETTINGS = WaypointDeploySettings(image="", controller_address="")


def check(gw: Obj, configmaps: Mapping[tuple[str, str], Obj], settings: WaypointDeploySettings | None = None,
          ports: Iterable[int] = (), root_namespace: str | None = None) -> Parameters | None:
    """`resolve`, with the errors of merging the overlays into the objects rendered for `gw` too
    (each on the layer that caused it): everything that makes them invalid, so that the Gateway's
    status says so whether or not this controller deploys. The root namespace is the settings'
    unless given."""
    s = settings or _CHECK_SETTINGS
    params = resolve(gw, configmaps, root_namespace or s.root_namespace)
    if params is not None and not params.errors:
        _, errors = _merge(render(gw, s, ports), optional_objects(gw), params)
        for i, e in errors:
            params.layers[i].errors.append(e)
    return params


def apply(objs: Iterable[Obj], optional: Iterable[Obj], params: Parameters | None) -> tuple[list[Obj], list[str]]:
    """The objects to deploy: `objs` (always rendered) and those of `optional` whose key some layer
    of the parameters has, each with the layers' overlays merged in, in order; and the errors (then
    nothing is to deploy)."""
    objs, optional = list(objs), list(optional)
    if params is None:
        return objs, []
    if params.errors:
        return [], list(params.errors)
    out, errors = _merge(objs, optional, params)
    return ([], [e for _, e in errors]) if errors else (out, [])


def _merge(objs: list[Obj], optional: list[Obj], params: Parameters) -> tuple[list[Obj], list[tuple[int, str]]]:
    """Each object with every layer's overlay of its key merged in turn; errors as (layer, message).
    What Ambit owns is checked after each layer against the rendered object, so a change is blamed
    on the layer that made it."""
    out, errors = [], []
    keys = params.overlays
    for base in objs + [o for o in optional if KEY_OF_KIND[o["kind"]] in keys]:
        key = KEY_OF_KIND[base["kind"]]
        cur, bad = base, set()
        for i, layer in enumerate(params.layers):
            overlay = layer.overlays.get(key)
            if overlay is None:
                continue
            try:
                merged = strategic_merge(base["kind"], cur, overlay)
            except MergeError as e:
                errors.append((i, f"key {key}: {e}"))
                continue
            now = owned_changes(base, merged)
            errors += [(i, f"key {key}: {b}") for b in now if b not in bad]
            bad |= set(now)
            cur = merged
        out.append(cur)
    errors += _replicas_conflict(params)
    for o in out:       # on every object, empty too: it marks objects rendered with parameters
        o.setdefault("metadata", {}).setdefault("annotations", {})[OVERLAY_FIELDS_ANNOTATION] = \
            json.dumps(added_fields(_base_of(o, objs, optional), o), separators=(",", ":"))
    return out, errors


def _replicas_conflict(params: Parameters) -> list[tuple[int, str]]:
    """An HPA (of any layer) owns the replica count: a Deployment overlay's `spec.replicas` that is
    still set after every layer (a later one may null it) would fight it."""
    if not any("horizontalPodAutoscaler" in la.overlays for la in params.layers):
        return []
    setter = None
    for i, layer in enumerate(params.layers):
        spec = (layer.overlays.get("deployment") or {}).get("spec")
        if isinstance(spec, dict) and "replicas" in spec:
            setter = i if spec["replicas"] is not None else None
    if setter is None:
        return []
    hint = "" if setter == len(params.layers) - 1 else \
        " (or null it in the Gateway's parametersRef: deployment: {spec: {replicas: null}})"
    return [(setter, "key deployment: spec.replicas: the horizontalPodAutoscaler owns the replica count; set "
                     f"minReplicas there instead{hint}")]


def _base_of(o: Obj, objs: list[Obj], optional: list[Obj]) -> Obj:
    return next(b for b in objs + optional if b["kind"] == o["kind"])


# Maps others write to as well (a Deployment's revision annotation, kubectl rollout restart's): what
# an overlay added to them is recorded key by key, never as the whole map.
_SHARED_MAPS = {("metadata", "labels"), ("metadata", "annotations"),
                ("spec", "template", "metadata", "labels"), ("spec", "template", "metadata", "annotations")}


def added_fields(base: Any, merged: Any, path: tuple[str, ...] = ()) -> list[list[str]]:
    """The map keys `merged` has and `base` has not, as paths; lists are not entered (an update
    replaces them whole), and the maps others share are entered even when the base has none."""
    if not (isinstance(base, dict) and isinstance(merged, dict)):
        return []
    out: list[list[str]] = []
    for k, v in merged.items():
        here = (*path, k)
        if k in base:
            out += added_fields(base[k], v, here)
        elif isinstance(v, dict) and any(m[:len(here)] == here for m in _SHARED_MAPS):
            out += added_fields({}, v, here)
        else:
            out.append(list(here))
    return out
