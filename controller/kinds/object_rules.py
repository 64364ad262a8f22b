"""istiod webhook rules that read an object's metadata as well as its spec: `exportTo` against
the object's own namespace. (The `istio.io/dry-run` annotation is checked, and honoured, in
controller.kinds.security.)

A spec's checks see the spec alone (controller.kinds.schema), so these run on the whole object
once its fields are valid (controller.validation).
"""

from __future__ import annotations

from typing import Any

from controller.kinds.schema import Errors


def _namespace(obj: dict[str, Any]) -> str:
    md = obj.get("metadata") or {}
    return md.get("namespace") or "default"


def check_export_to_namespace(obj: dict[str, Any], errs: Errors) -> None:
    """istiod's validateExportTo: "." is the object's own namespace, so "." beside that
    namespace's name is a duplicate; and a DestinationRule with a workloadSelector applies to
    workloads of its own namespace only, so it is exported there alone."""
    spec = obj.get("spec") or {}
    export = spec.get("exportTo")
    if not isinstance(export, list) or not export:
        return
    ns = _namespace(obj)
    if "." in export and ns in export:
        errs.append(("spec.exportTo", f'duplicate entries in exportTo: . and current namespace {ns} (Istio refuses '
                                      "this too)"))
    if obj.get("kind") == "DestinationRule" and spec.get("workloadSelector") is not None:
        if any(e not in (".", ns) for e in export):
            errs.append(("spec.exportTo", "destination rule with workload selector cannot have exportTo beyond current "
                                          "namespace (Istio refuses this too): it applies to the selected workloads "
                                          "of its own namespace only"))
        elif len(export) > 1:
            errs.append(("spec.exportTo", "destination rule with workload selector cannot have multiple entries in "
                                          "exportTo (Istio refuses this too)"))
