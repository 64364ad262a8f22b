"""Kubernetes strategic merge patch, for the few kinds a Gateway's parameters overlay, sans-IO.

A Gateway's `infrastructure.parametersRef` ConfigMap holds YAML overlays of the objects the
controller renders for it (controller/waypoints/params.py), merged as `kubectl patch` (and Istio's
gateway deployment controller, `strategicpatch.StrategicMergeMapPatch`) merges them:
- maps merge key by key, recursively; a key set to `null` is removed;
- a list merges by its merge key where Kubernetes' types give it one (`MERGE_KEYS`, the
  `patchMergeKey` tags of k8s.io/api): an element of the patch with the key of an existing element
  is merged into it, others are appended in order; an element `{<key>: x, "$patch": "delete"}`
  removes the one with that key;
- every other list (tolerations, args, command, HPA metrics ...) is replaced whole, as in Kubernetes.
A map with `"$patch": "replace"` replaces the original map instead of merging. Other `$`
directives (`$retainKeys`, `$setElementOrder`, `$deleteFromPrimitiveList`) are refused, by path: a
strategic merge patch written for a type Kubernetes knows better than this table is not silently
half-applied.
"""

from __future__ import annotations

import copy
from typing import Any

Obj = dict[str, Any]

# Where a list sits, as the field names from the object's root (list elements add no step), ->
# the field that identifies its elements. From k8s.io/api's `patchMergeKey` tags; only the types
# a Gateway's objects have: apps/v1 Deployment, v1 Service and ServiceAccount, autoscaling/v2
# HorizontalPodAutoscaler (its lists have no merge key), policy/v1 PodDisruptionBudget.
_POD = ("spec", "template", "spec")
_CONTAINER_KEYS = {"env": "name", "ports": "containerPort", "volumeMounts": "mountPath",
                   "volumeDevices": "devicePath", "resizePolicy": "resourceName"}
_POD_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name", "volumes": "name",
             "imagePullSecrets": "name", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
             "schedulingGates": "name", "resourceClaims": "name"}
_META = {("metadata", "ownerReferences"): "uid"}
MERGE_KEYS: dict[str, dict[tuple[str, ...], str]] = {
    "Deployment": {**_META, **{(*_POD, f): k for f, k in _POD_KEYS.items()},
                   **{(*_POD, c, f): k for c in ("containers", "initContainers", "ephemeralContainers")
                      for f, k in _CONTAINER_KEYS.items()}},
    "Service": {**_META, ("spec", "ports"): "port"},
    "ServiceAccount": {**_META, ("secrets",): "name"},
    "HorizontalPodAutoscaler": dict(_META),
    "PodDisruptionBudget": dict(_META),
}


class MergeError(ValueError):
    """The patch cannot be merged: a wrong type, an unknown directive (the message names the path)."""


def strategic_merge(kind: str, original: Obj, patch: Obj) -> Obj:
    """`original` with `patch` merged in (neither is modified). `kind` picks the merge keys."""
    if kind not in MERGE_KEYS:
        raise MergeError(f"no merge keys for kind {kind}")
    if not isinstance(patch, dict):
        raise MergeError(f"the overlay is a {type(patch).__name__}, not a map")
    return _merge_map(copy.deepcopy(original), patch, (), MERGE_KEYS[kind])


def _show(path: tuple[str, ...]) -> str:
    return ".".join(path) or "(root)"


def _merge_map(orig: Obj, patch: Obj, path: tuple[str, ...], keys: dict[tuple[str, ...], str]) -> Obj:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive is not None:
        raise MergeError(f"{_show(path)}: $patch: {directive!r} is not supported here (only replace, on a map; "
                         "delete, in a list merged by key)")
    for k, v in patch.items():
        if k == "$patch":
            continue
        if k.startswith("$"):
            raise MergeError(f"{_show((*path, k))}: the directive {k} is not supported")
        here = (*path, k)
        if v is None:
            orig.pop(k, None)
        elif isinstance(v, dict):
            have = orig.get(k)
            orig[k] = _merge_map(have if isinstance(have, dict) else {}, v, here, keys)
        elif isinstance(v, list) and here in keys:
            have = orig.get(k)
            orig[k] = _merge_list(have if isinstance(have, list) else [], v, here, keys)
        else:
            orig[k] = copy.deepcopy(v)
    return orig


def _merge_list(orig: list[Any], patch: list[Any], path: tuple[str, ...],
                keys: dict[tuple[str, ...], str]) -> list[Any]:
    key = keys[path]
    out = list(orig)
    for i, item in enumerate(patch):
        if not isinstance(item, dict) or key not in item:
            raise MergeError(f"{_show(path)}[{i}]: must be a map with its merge key {key!r} "
                             f"(Kubernetes merges {_show(path)} by {key})")
        at = next((j for j, o in enumerate(out) if isinstance(o, dict) and o.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if at is not None:
                del out[at]
            continue
        if at is None:
            out.append(_merge_map({}, item, path, keys))
        else:
            out[at] = _merge_map(out[at], item, path, keys)
    return out
