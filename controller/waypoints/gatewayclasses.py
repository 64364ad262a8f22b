"""GatewayClass objects for Ambit's built-in Gateway classes, and each class's status, sans-IO.

As istiod does for `istio` and `istio-waypoint`, the controller (its leader, in a cluster with the
Gateway API CRDs) creates a GatewayClass for each built-in class name that has none
(`ambit.gatewayclasses`: ambit-waypoint, istio-waypoint, ambit, istio), with Ambit's controllerName
(`ambit.io/gateway-controller`, the one its route and policy status entries carry). It only
creates: a class that exists is left as it is, whoever made it, so a class of one of these names
that another controller owns (istiod's `istio`, created first) is never overwritten; the controller
says so once in its log. (istiod, for its part, skips Gateways of a class whose controllerName is
not its own, so the `istio` class Ambit created first keeps istiod off those Gateways. Ambit still
picks its Gateways by class name alone, whoever owns the class: two meshes serving one class name
is a conflict to resolve by removing one.) A deleted class is created again on the next pass,
once; istiod does the same.

Status, for every GatewayClass whose controllerName is Ambit's: `Accepted=True` (reason Accepted)
for a built-in class name; any other name `Accepted=False` (reason Unsupported): Ambit serves its
built-in class names only, so Gateways of that class are left alone (istiod would serve any class
name of its controllerName; Ambit's waypoint and ingress roles are chosen by the class name). A
class of another controllerName is not touched. `observedGeneration` is the class's generation.

`status.supportedFeatures` is not written: it is the list of Gateway API conformance features an
implementation passes, and Ambit has no run of the conformance suite that would make such a list
honest (istiod does not write it either). `spec.parametersRef` is not read, as in Istio; the
`Accepted` message says so (and `advisories` names the field), since a class's defaults are a
ConfigMap in the root namespace labelled gateway.istio.io/defaults-for-class.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ambit.gatewayclasses import INGRESS_CLASSES, WAYPOINT_CLASSES
from controller.translate.ingress import CONTROLLER_NAME
from controller.waypoints.gateways import merge_conditions

Obj = dict[str, Any]

GROUP = "gateway.networking.k8s.io"
BUILTIN = WAYPOINT_CLASSES + INGRESS_CLASSES
# spec.description is at most 64 characters (the CRD's maxLength)
DESCRIPTIONS = {**{c: "Ambit waypoint (docs/waypoint.md)" for c in WAYPOINT_CLASSES},
                **{c: "Ambit ingress gateway (docs/ingress.md)" for c in INGRESS_CLASSES}}
PARAMETERS_NOTE = ("spec.parametersRef is not read by Ambit, as in Istio: a class's defaults are a ConfigMap "
                   "in the root namespace labelled gateway.istio.io/defaults-for-class")


def is_class(obj: Obj) -> bool:
    return obj.get("kind") == "GatewayClass" and str(obj.get("apiVersion", "")).startswith(GROUP + "/")


def name_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def controller_of(obj: Obj) -> str:
    return str((obj.get("spec") or {}).get("controllerName") or "")


def wanted(name: str) -> Obj:
    """The GatewayClass to create for built-in class `name`."""
    return {"apiVersion": f"{GROUP}/v1", "kind": "GatewayClass",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "ambit"}},
            "spec": {"controllerName": CONTROLLER_NAME, "description": DESCRIPTIONS[name]}}


def missing(objects: Iterable[Obj], refused: Iterable[str] = ()) -> list[str]:
    """The built-in class names no GatewayClass of the snapshot has (to create). `refused`: names
    of classes that exist but whose validation failed (not in the snapshot, and not to create)."""
    have = {name_of(o) for o in objects if is_class(o)} | set(refused)
    return [c for c in BUILTIN if c not in have]


def foreign(objects: Iterable[Obj]) -> dict[str, str]:
    """Built-in class name -> the other controllerName its existing GatewayClass has."""
    return {name_of(o): controller_of(o) for o in objects
            if is_class(o) and name_of(o) in BUILTIN and controller_of(o) != CONTROLLER_NAME}


def foreign_message(name: str, controller: str) -> str:
    return (f"GatewayClass {name} exists with controllerName {controller!r}, not {CONTROLLER_NAME}: it is that "
            "controller's class and is left as it is (Ambit neither overwrites it nor writes its status)")


def accepted(obj: Obj) -> Obj | None:
    """The `Accepted` condition Ambit gives the class (no transition time), or None: not Ambit's."""
    if controller_of(obj) != CONTROLLER_NAME:
        return None
    gen = (obj.get("metadata") or {}).get("generation", 0)
    name = name_of(obj)
    if name in BUILTIN:
        role = "waypoint" if name in WAYPOINT_CLASSES else "ingress gateway"
        msg = f"handled by ambit: Gateways of this class are {'waypoints' if role == 'waypoint' else 'ingress gateways'}"
        if (obj.get("spec") or {}).get("parametersRef") is not None:
            msg += f"; {PARAMETERS_NOTE}"
        return {"type": "Accepted", "status": "True", "reason": "Accepted", "message": msg,
                "observedGeneration": gen}
    return {"type": "Accepted", "status": "False", "reason": "Unsupported", "observedGeneration": gen,
            "message": f"ambit serves only its built-in class names ({', '.join(BUILTIN)}); Gateways of class "
                       f"{name} are not served by it"}


def desired_status(obj: Obj, now: float | None = None) -> Obj | None:
    """The class's whole new `status` (others' conditions kept, transition time carried over while
    the verdict holds), or None when it is right already or not Ambit's to write."""
    cond = accepted(obj)
    if cond is None:
        return None
    old = (obj.get("status") or {}).get("conditions") or []
    merged = merge_conditions(old, [cond], now)
    if _untimed(merged) == _untimed(old):
        return None
    return {**(obj.get("status") or {}), "conditions": merged}


def _untimed(conds: list[Obj]) -> list[Obj]:
    return sorted(({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conds),
                  key=lambda c: str(c.get("type")))
