"""istiod webhook rules that read an object's metadata as well as its spec: `exportTo` against
the object's own namespace, and the `istio.io/dry-run` annotation.

A spec's checks see the spec alone (controller.kinds.schema), so these run on the whole object
once its fields are valid (controller.validation).
"""

from __future__ import annotations

from typing import Any

from controller.kinds.schema import Errors

DRY_RUN = "istio.io/dry-run"
_BOOLS = {"1", "t", "T", "TRUE", "true", "True"}, {"0", "f", "F", "FALSE", "false", "False"}  # Go's ParseBool


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


def check_dry_run(obj: dict[str, Any], errs: Errors) -> None:
    """istiod's checkDryRunAnnotation. Istio evaluates an AuthorizationPolicy annotated
    `istio.io/dry-run: "true"` without enforcing it (it only logs what it would have done).
    Ambit's proxies have no such mode: the policy would be enforced for real, a dry-run DENY
    denying, so it is refused rather than applied. "false" means enforced, as without it.
    Istio refuses the annotation on every other kind, and on other actions than ALLOW and DENY."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if DRY_RUN not in annotations:
        return
    where = f"metadata.annotations[{DRY_RUN}]"
    value = annotations[DRY_RUN]
    if obj.get("kind") != "AuthorizationPolicy":
        errs.append((where, f"unsupported annotation {DRY_RUN}, please remove the annotation (Istio refuses it too: "
                            "it is for AuthorizationPolicies only)"))
        return
    action = (obj.get("spec") or {}).get("action") or "ALLOW"
    if action not in ("ALLOW", "DENY"):
        errs.append((where, f"the annotation {DRY_RUN} currently only supports action ALLOW/DENY, found action {action} "
                            "(Istio refuses it too)"))
    elif value in _BOOLS[0]:
        errs.append((where, f"{DRY_RUN}: \"{value}\" is not supported by Ambit: its proxies have no dry-run mode, so "
                            "the policy would be enforced, not only logged; remove the policy, or the annotation to "
                            "enforce it"))
    elif value not in _BOOLS[1]:
        errs.append((where, f"annotation {DRY_RUN} with invalid value ({value}): must be true or false (Istio refuses "
                            "it too)"))
