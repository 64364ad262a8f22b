"""The status the controller writes on ingress Gateways and the HTTPRoutes attached to them
(Gateway API's conditions and reasons; the verdicts come from controller.translate.ingress).

Gateway: `Accepted` (class ambit/istio and valid), `Programmed` when its Service has a load
balancer address (`status.loadBalancer.ingress`: in a cluster the cloud's, in the lab the pod's),
else `AddressNotAssigned`; `addresses` lists it. Each listener: `Accepted`, `Conflicted` (ProtocolConflict,
HostnameConflict: not served), `Programmed` (false when it is not served: conflicted, or its
references do not resolve: an HTTPS listener without a usable certificate serves nothing),
`ResolvedRefs` (InvalidCertificateRef, RefNotPermitted, InvalidRouteKinds), `attachedRoutes` and
`supportedKinds` (by protocol: HTTPRoute and GRPCRoute on HTTP/HTTPS, TLSRoute on TLS, TCPRoute on
TCP; narrowed by `allowedRoutes.kinds`).

HTTPRoute, GRPCRoute, TLSRoute and TCPRoute: one `parents[]` entry per parentRef naming an ingress Gateway,
and (HTTPRoute, GRPCRoute) per mesh parent: a Service or a waypoint Gateway (controller.translate.parents),
with `controllerName`, `Accepted` (NotAllowedByListeners, NoMatchingListenerHostname, NoMatchingParent)
and `ResolvedRefs` (BackendNotFound, RefNotPermitted). Entries other controllers wrote are kept.

A route whose newest version validation refused never reaches the translation (its last valid
version stays in force), so its status comes from `refused_route_status` instead: `Accepted=False
UnsupportedValue` on each of its parents that is ours, at the refused generation, naming the fields
and what stays in force. The kube source writes it (controller.sources.kube); the reconciler leaves
such a route alone until a valid version replaces it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from controller.translate.ingress import (
    ALL_ROUTE_KINDS,
    CONTROLLER_NAME,
    IngressResult,
    ListenerStatus,
    ParentStatus,
)
from controller.translate.parents import RouteKey
from controller.validation import FieldError, reasons
from controller.waypoints.gateways import _cond, merge_conditions

Obj = dict[str, Any]


def lb_addresses(service: Obj | None) -> list[Obj]:
    out = []
    for i in (((service or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        if i.get("ip"):
            out.append({"type": "IPAddress", "value": i["ip"]})
        elif i.get("hostname"):
            out.append({"type": "Hostname", "value": i["hostname"]})
    return out


def gateway_status(gw: Obj, service: Obj | None, listeners: list[ListenerStatus]) -> Obj:
    gen = int((gw.get("metadata") or {}).get("generation") or 0)
    addrs = lb_addresses(service)
    conds = [_cond("Accepted", True, "Accepted", "accepted by ambit as an ingress gateway", gen)]
    if addrs:
        conds.append(_cond("Programmed", True, "Programmed",
                           f"serving on {', '.join(a['value'] for a in addrs)}", gen))
    else:
        conds.append(_cond("Programmed", False, "AddressNotAssigned",
                           "waiting for the gateway's Service to get a load balancer address", gen))
    out = []
    for ls in listeners:
        ok, reason, msg = ls.resolved
        served = ok and not ls.conflicted
        why = msg or (f"{ls.conflicted}: another listener on the port takes it" if ls.conflicted else "")
        out.append({"name": ls.name, "attachedRoutes": ls.attached,
                    "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": k} for k in ls.kinds],
                    "conditions": [_cond("Accepted", True, "Accepted", "", gen),
                                   _cond("Conflicted", bool(ls.conflicted), ls.conflicted or "NoConflicts",
                                         why if ls.conflicted else "", gen),
                                   _cond("Programmed", served and bool(addrs),
                                         "Programmed" if served and addrs else ("Invalid" if not served else "Pending"),
                                         why, gen),
                                   _cond("ResolvedRefs", ok, reason, msg, gen)]})
    return {"conditions": conds, "listeners": out, "addresses": addrs}


def _same_ref(a: Obj, b: Obj) -> bool:
    keys = ("group", "kind", "namespace", "name", "sectionName", "port")
    return all(a.get(k) == b.get(k) for k in keys)


def route_status(route: Obj, parents: list[ParentStatus], now: float | None = None) -> Obj:
    """The route's whole new status: our parents' entries (times kept where unchanged), others' kept."""
    gen = int((route.get("metadata") or {}).get("generation") or 0)
    old = list(((route.get("status") or {}).get("parents")) or [])
    mine = []
    for ps in parents:
        conds = [_cond("Accepted", ps.accepted[0], ps.accepted[1], ps.accepted[2], gen),
                 _cond("ResolvedRefs", ps.resolved[0], ps.resolved[1], ps.resolved[2], gen)]
        prev = next((o for o in old if o.get("controllerName") == CONTROLLER_NAME
                     and _same_ref(o.get("parentRef") or {}, ps.ref)), None)
        mine.append({"parentRef": dict(ps.ref), "controllerName": CONTROLLER_NAME,
                     "conditions": merge_conditions((prev or {}).get("conditions"), conds, now)})
    others = [o for o in old if o.get("controllerName") != CONTROLLER_NAME]
    return {**(route.get("status") or {}), "parents": mine + others}


def has_entries(route: Obj) -> bool:
    """Whether the route's status has a `parents` entry of ours."""
    return any(isinstance(o, dict) and o.get("controllerName") == CONTROLLER_NAME
               for o in ((route.get("status") or {}).get("parents")) or [])


MAX_PARENTS = 32        # status.parents' maxItems in Gateway API's CRDs


def refused_route_status(route: Obj, errors: Sequence[FieldError], ours: Callable[[Obj, str], bool],
                         in_force: Obj | None, now: float | None = None) -> Obj | None:
    """The whole new status of a route whose newest version (`route`, as the API server holds it)
    validation refused; None when none of its parents is ours.

    Each parentRef that `ours(ref, route namespace)` claims gets `Accepted=False UnsupportedValue`
    (Gateway API's reason for a value an implementation does not support) at the refused
    generation. The message names each refused field and says what is in force instead: the last
    valid version (`in_force`, by its generation) or nothing. The parentRefs are the refused
    version's, or, when those are unusable (the refusal may be about them), the version in force's.
    Other conditions of ours (`ResolvedRefs` of the version in force) are kept with their own
    `observedGeneration`; other controllers' entries are kept."""
    md = route.get("metadata") or {}
    gen = int(md.get("generation") or 0)
    ns = md.get("namespace") or "default"

    def claimed(obj: Obj | None) -> list[Obj]:
        refs = ((obj or {}).get("spec") or {}).get("parentRefs")
        refs = refs if isinstance(refs, list) else []
        return [p for p in refs if isinstance(p, dict) and isinstance(p.get("name"), str) and ours(p, ns)]

    refs = (claimed(route) or claimed(in_force))[:MAX_PARENTS]
    if not refs:
        return None
    why = reasons(errors)
    kept = "nothing of it is applied" if in_force is None else \
        f"its last valid version (generation {int((in_force.get('metadata') or {}).get('generation') or 0)}) stays in force"
    message = f"refused by ambit: {why}; {kept}"[:32768]
    old = list(((route.get("status") or {}).get("parents")) or [])
    mine = []
    for p in refs:
        prev = next((o for o in old if isinstance(o, dict) and o.get("controllerName") == CONTROLLER_NAME
                     and _same_ref(o.get("parentRef") or {}, p)), None)
        mine.append({"parentRef": dict(p), "controllerName": CONTROLLER_NAME, "conditions": merge_conditions(
            (prev or {}).get("conditions"), [_cond("Accepted", False, "UnsupportedValue", message, gen)], now)})
    others = [o for o in old if isinstance(o, dict) and o.get("controllerName") != CONTROLLER_NAME]
    return {**(route.get("status") or {}), "parents": mine + others}


def untimed(status: Obj | None) -> Obj:
    """A status without transition times, to tell whether a write would change anything."""
    def strip(conds: list[Obj]) -> list[Obj]:
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conds or []]
    s = dict(status or {})
    if "conditions" in s:
        s["conditions"] = strip(s["conditions"])
    for key in ("listeners", "parents"):
        if key in s:
            s[key] = [{**x, "conditions": strip(x.get("conditions") or [])} for x in s[key]]
    return s


def desired(objects: list[Obj], result: IngressResult) -> dict[tuple[str, str, str], Obj]:
    """(kind, ns, name) -> new status, for ingress Gateways and routes whose status should change."""
    from controller.waypoints import gateways as gws
    out: dict[tuple[str, str, str], Obj] = {}
    by_key = {(o.get("kind"), (o.get("metadata") or {}).get("namespace") or "default",
               (o.get("metadata") or {}).get("name")): o for o in objects
              if (o.get("apiVersion") or "").startswith(("gateway.networking.k8s.io/", "v1"))}   # not Istio's Gateway
    for gkey, listeners in result.listeners.items():
        ns, name = gkey.split("/", 1)
        gw = by_key.get(("Gateway", ns, name))
        if gw is None:
            continue
        want = gateway_status(gw, gws.find_service(gw, objects), listeners)
        if gws.status_differs(gw.get("status"), want):
            out[("Gateway", ns, name)] = gws.with_times(gw.get("status"), want)
    out.update(route_updates(objects, result))
    return out


def route_updates(objects: list[Obj], result: IngressResult, refused: Collection[RouteKey] = ()
                  ) -> dict[RouteKey, Obj]:
    """(kind, ns, name) -> new status, for the routes whose status should change: those with
    verdicts, and those with entries of ours and no verdict now (say, valid again after a refusal:
    they lose them). `refused` routes are left alone (their status is `refused_route_status`)."""
    out: dict[RouteKey, Obj] = {}
    for route in objects:
        if route.get("kind") not in ALL_ROUTE_KINDS:
            continue
        md = route.get("metadata") or {}
        key = (route["kind"], md.get("namespace") or "default", md.get("name") or "")
        parents = result.routes.get(key)
        if key in refused or (parents is None and not has_entries(route)):
            continue
        want = route_status(route, parents or [])
        if untimed(want) != untimed(route.get("status")):
            out[key] = want
    return out
