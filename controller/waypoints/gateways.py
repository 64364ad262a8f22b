"""Which Gateways are waypoints, and the status the controller writes on them.

Gateway API (gateway.networking.k8s.io_gateways.yaml, `GatewayConditionType`): a controller that
claims a Gateway sets `Accepted` (the configuration is valid and its class is ours) and
`Programmed` (it is serving: here, its Service has a VIP, which is what ztunnels dial and what
`status.addresses` reports). A Gateway whose address is not assigned yet is `Programmed=False`
with reason `AddressNotAssigned`, as the spec prescribes. Each listener gets `Accepted`,
`Programmed` and `ResolvedRefs`. Gateways of any other class belong to another controller; their
status is never touched.

Conditions keep their `lastTransitionTime` while their status does not change (`merge_conditions`),
so rewriting the same status is a no-op and the lab store's revision does not churn.
"""

from __future__ import annotations

import time
from typing import Any

from ambit.gatewayclasses import WAYPOINT_CLASSES
from controller.translate.ingress import kind_allowed, route_kinds_resolved, supported_kinds
from controller.translate.waypoints import NOT_A_WAYPOINT

Obj = dict[str, Any]

WAYPOINT_FOR_LABELS = ("ambit.io/waypoint-for", "istio.io/waypoint-for")
WAYPOINT_FOR_VALUES = ("service", "workload", "all", "none")
HBONE_PORT = 15008
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
CONTROLLER_NAME = "ambit.io/waypoint-controller"
# API groups whose kinds' status is free-form conditions the controller may write (Istio's, Ambit's).
STATUS_GROUP_SUFFIXES = (".istio.io", ".ambit.io")


def _md(o: Obj) -> Obj:
    return o.get("metadata") or {}


def is_waypoint(gw: Obj) -> bool:
    return gw.get("kind") == "Gateway" and (gw.get("spec") or {}).get("gatewayClassName") in WAYPOINT_CLASSES


def waypoint_for(gw: Obj) -> str:
    """What traffic the waypoint serves: the label's value, Istio's default `service`."""
    labels = _md(gw).get("labels") or {}
    for k in WAYPOINT_FOR_LABELS:
        if k in labels:
            return labels[k]
    return "service"


def valid_waypoint_for(gw: Obj) -> bool:
    """Whether the waypoint-for label is one of the four values: a Gateway whose label is not is
    not a waypoint (controller.translate.waypoints), is not deployed, and its status says why."""
    return waypoint_for(gw) in WAYPOINT_FOR_VALUES


def gateway_ref(gw: Obj) -> str:
    md = _md(gw)
    return f"{md.get('namespace') or 'default'}/{md.get('name', '')}"


def find_service(gw: Obj, objects: list[Obj]) -> Obj | None:
    """The waypoint's Service: named after the Gateway, in its namespace."""
    md = _md(gw)
    ns, name = md.get("namespace") or "default", md.get("name")
    for o in objects:
        if o.get("kind") == "Service" and _md(o).get("name") == name and (_md(o).get("namespace") or "default") == ns:
            return o
    return None


def service_vips(svc: Obj | None) -> list[str]:
    if svc is None:
        return []
    spec = svc.get("spec") or {}
    return [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None"]


def _cond(type_: str, status: bool, reason: str, message: str, generation: int) -> Obj:
    return {"type": type_, "status": "True" if status else "False", "reason": reason, "message": message,
            "observedGeneration": generation}


def desired_status(gw: Obj, service: Obj | None, errors: list[str] | None = None) -> Obj:
    """The status a waypoint Gateway should carry (without transition times; see `merge_conditions`).

    `errors`: validation problems of the Gateway (then it is not Accepted, and not Programmed)."""
    gen = int(_md(gw).get("generation") or 0)
    spec = gw.get("spec") or {}
    wf = waypoint_for(gw)
    vips = service_vips(service)
    conds: list[Obj] = []
    if errors:
        conds.append(_cond("Accepted", False, "Invalid", "; ".join(errors), gen))
        conds.append(_cond("Programmed", False, "Invalid", "the Gateway is not accepted", gen))
    elif not valid_waypoint_for(gw):
        msg = f'label waypoint-for "{wf}" is not one of {", ".join(WAYPOINT_FOR_VALUES)}: {NOT_A_WAYPOINT}'
        conds.append(_cond("Accepted", False, "Invalid", msg, gen))
        conds.append(_cond("Programmed", False, "Invalid", "the Gateway is not accepted", gen))
    else:
        conds.append(_cond("Accepted", True, "Accepted", f"accepted by ambit as a waypoint for {wf} traffic", gen))
        if vips:
            conds.append(_cond("Programmed", True, "Programmed",
                               f"serving on Service {_md(service).get('name')} ({', '.join(vips)}) port {HBONE_PORT}",
                               gen))
        else:
            conds.append(_cond("Programmed", False, "AddressNotAssigned",
                               f"waiting for Service {_md(gw).get('name')} to get a cluster IP", gen))
    accepted = conds[0]["status"] == "True"
    listeners = []
    for lst in spec.get("listeners") or []:
        resolved = route_kinds_resolved(lst)
        listeners.append({
            "name": lst.get("name", ""),
            # what its protocol carries, narrowed by allowedRoutes.kinds (controller.translate.parents honours it)
            "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": k} for k in supported_kinds(lst)
                               if kind_allowed(lst, k)],
            "attachedRoutes": 0,
            "conditions": [
                _cond("Accepted", accepted, "Accepted" if accepted else "Invalid", "", gen),
                _cond("Programmed", accepted and bool(vips),
                      "Programmed" if accepted and vips else ("Invalid" if not accepted else "Pending"), "", gen),
                _cond("ResolvedRefs", *resolved, gen),
            ],
        })
    status: Obj = {"conditions": conds, "listeners": listeners}
    status["addresses"] = [{"type": "IPAddress", "value": ip} for ip in vips]
    return status


def invalid_parameters(status: Obj, gw: Obj, message: str) -> Obj:
    """`status` with `Accepted=False`, reason `InvalidParameters` (Gateway API's reason for a
    parametersRef that is missing, of an unsupported kind or malformed), as Istio writes it: the
    other conditions stay what they are, since the gateway keeps serving with its objects as last
    rendered."""
    gen = int(_md(gw).get("generation") or 0)
    accepted = _cond("Accepted", False, "InvalidParameters", message[:32768], gen)     # the API's bound
    return {**status, "conditions": [accepted if c["type"] == "Accepted" else c for c in status["conditions"]]}


def merge_conditions(old: list[Obj] | None, new: list[Obj], now: float | None = None) -> list[Obj]:
    """`new` with `lastTransitionTime` kept from `old` where the status did not change, now elsewhere;
    conditions of other types in `old` (written by someone else) are kept."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    by_type = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        prev = by_type.get(c["type"])
        keep = prev is not None and prev.get("status") == c["status"] and prev.get("lastTransitionTime")
        out.append({**c, "lastTransitionTime": prev["lastTransitionTime"] if keep else stamp})
    mine = {c["type"] for c in new}
    return out + [c for c in old or [] if c.get("type") not in mine]


def with_times(old_status: Obj | None, want: Obj, now: float | None = None) -> Obj:
    """`want` (from `desired_status`) with transition times carried over from `old_status`."""
    old_status = old_status or {}
    out = dict(old_status)
    out.update(want)
    out["conditions"] = merge_conditions(old_status.get("conditions"), want["conditions"], now)
    old_listeners = {lst.get("name"): lst for lst in old_status.get("listeners") or []}
    out["listeners"] = [{**lst, "conditions": merge_conditions(
        (old_listeners.get(lst["name"]) or {}).get("conditions"), lst["conditions"], now)}
        for lst in want.get("listeners") or []]
    return out


def status_differs(old_status: Obj | None, want: Obj) -> bool:
    """Whether writing `want` would change anything a reader cares about (times aside)."""
    def strip(s: Obj | None) -> Obj:
        s = dict(s or {})
        s["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                           for c in s.get("conditions") or []]
        s["listeners"] = [{**lst, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                                 for c in lst.get("conditions") or []]}
                          for lst in s.get("listeners") or []]
        return s
    merged = with_times(old_status, want, 0)
    return strip(old_status) != strip(merged)
