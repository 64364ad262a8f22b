"""What is wrong with a set of Gateway class defaults ConfigMaps, as a whole, sans-IO.

The controller judges class defaults per Gateway (params.check: each Gateway of the class is
`Accepted=False`, `InvalidParameters`, naming the ConfigMap); `ambit analyze` and `ambit apply` say it
once, of the ConfigMap: `invalid` (the errors every Gateway of the class would be told) and `ignored`
(a labelled ConfigMap that applies to nothing: outside the root namespace, for a class Ambit does
not deploy, or younger than another one for the same class; class_defaults.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ambit.gatewayclasses import INGRESS_CLASSES, WAYPOINT_CLASSES
from controller.waypoints import class_defaults
from controller.waypoints.params import check

Obj = dict[str, Any]


@dataclass(frozen=True)
class ClassDefaultsProblem:
    configmap: Obj
    invalid: bool           # False: ignored (applies to nothing)
    message: str
    cls: str = ""


def _stand_in(cls: str, root_namespace: str) -> Obj:
    """A Gateway of the class to judge its defaults against when none is given."""
    listener = ({"name": "mesh", "port": 15008, "protocol": "HBONE"} if cls in WAYPOINT_CLASSES else
                {"name": "http", "port": 80, "protocol": "HTTP"})
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "class-defaults-check", "namespace": root_namespace},
            "spec": {"gatewayClassName": cls, "listeners": [listener]}}


def _without_own_ref(gw: Obj) -> Obj:
    spec = dict(gw.get("spec") or {})
    spec["infrastructure"] = {k: v for k, v in (spec.get("infrastructure") or {}).items() if k != "parametersRef"}
    return {**gw, "spec": spec}


def problems(configmaps: Mapping[tuple[str, str], Obj], gateways: Iterable[Obj],
             root_namespace: str) -> list[ClassDefaultsProblem]:
    """Each labelled ConfigMap that is invalid for its class's Gateways (judged against those given,
    without their own parametersRef, or a stand-in) or ignored."""
    out = []
    cms = list(configmaps.values())
    for cm in cms:
        why = class_defaults.misplaced(cm, root_namespace)
        if why is not None:
            out.append(ClassDefaultsProblem(cm, False, why, class_defaults.class_of(cm) or ""))
    for cls, found in class_defaults.duplicates(cms, root_namespace).items():
        if cls not in WAYPOINT_CLASSES + INGRESS_CLASSES:
            continue        # `misplaced` said it of each
        out += [ClassDefaultsProblem(cm, False, class_defaults.duplicate_message(cls, found), cls) for cm in found[1:]]
    gws = list(gateways)
    for cls in WAYPOINT_CLASSES + INGRESS_CLASSES:
        found = class_defaults.claims(cms, root_namespace, cls)
        if not found:
            continue
        mine = [g for g in gws if (g.get("spec") or {}).get("gatewayClassName") == cls] or \
            [_stand_in(cls, root_namespace)]
        errors: list[str] = []
        what = ""
        for gw in mine:
            p = check(_without_own_ref(gw), configmaps, root_namespace=root_namespace)
            if p is None:
                continue
            what = f"{p.layers[0].what} {p.layers[0].ref}"
            errors += [e for e in p.layers[0].errors if e not in errors]
        if errors:
            out.append(ClassDefaultsProblem(found[0], True, f"{what}: {'; '.join(errors)} (every Gateway of class "
                                            f"{cls} is Accepted=False, InvalidParameters, and none of its parameters, "
                                            "the class's nor its own, is applied)", cls))
    return out
