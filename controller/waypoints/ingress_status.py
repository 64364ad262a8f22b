"""The status the controller writes on ingress Gateways and the HTTPRoutes attached to them
(Gateway API's conditions and reasons; the verdicts come from controller.translate.ingress).

Gateway: `Accepted` (class ambit/istio and valid; reason `ListenersNotValid` when some listener is
not accepted, False when none is), `Programmed` when its Service has a load
balancer address (`status.loadBalancer.ingress`: in a cluster the cloud's, in the lab the pod's),
else `AddressNotAssigned`; `addresses` lists it. Each listener: `Accepted`, `Conflicted` (ProtocolConflict,
HostnameConflict: not served), `Programmed` (false when it is not served: conflicted, or its
references do not resolve: an HTTPS listener without a usable certificate serves nothing),
`ResolvedRefs` (InvalidCertificateRef, RefNotPermitted, InvalidRouteKinds; InvalidCACertificateRef,
InvalidCACertificateKind for client certificate validation's CA references: a listener with some usable
ones is served, verifying against those; with none, `Accepted=False NoValidCACertificate`, not served),
`attachedRoutes` and
`supportedKinds` (by protocol: HTTPRoute and GRPCRoute on HTTP/HTTPS, TLSRoute on TLS, TCPRoute on
TCP; narrowed by `allowedRoutes.kinds`).

A listener whose port the ingress pods cannot bind (in use, privileged without the capability, an
address not on the node) serves nothing, whatever its configuration says: the pods report each
port's bind outcome with their status reports (waypoint/ingress_binds.py), `bind_failures` turns
the reports of a Gateway's pods into one message per listener, and the listener gets
`Accepted=False PortUnavailable` (Gateway API's reason for "the port is already in use") and
`Programmed=False PortUnavailable`, the Gateway `Programmed=False Pending`, each naming the port,
the pods and the OS error. The pods retry the bind; their next report after a success clears it.

HTTPRoute, GRPCRoute, TLSRoute and TCPRoute: one `parents[]` entry per parentRef naming an ingress Gateway,
and (HTTPRoute, GRPCRoute) per mesh parent: a Service or a waypoint Gateway (controller.translate.parents),
with `controllerName`, `Accepted` (NotAllowedByListeners, NoMatchingListenerHostname, NoMatchingParent)
and `ResolvedRefs` (BackendNotFound, RefNotPermitted, InvalidKind). Entries other controllers wrote are kept.

A route whose newest version validation refused never reaches the translation (its last valid
version stays in force), so its status comes from `refused_route_status` instead: `Accepted=False
UnsupportedValue` on each of its parents that is ours, at the refused generation, naming the fields
and what stays in force. The kube source writes it (controller.sources.kube); the reconciler leaves
such a route alone until a valid version replaces it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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


MAX_PODS_NAMED = 3          # pods a bind failure message names; the rest are counted
MAX_ERROR = 256             # characters of one pod's reported error kept


def bind_failures(reports: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, dict[int, str]]:
    """listener name -> port -> why it is not served there, from the status reports (pod name,
    state) of one ingress Gateway's pods: the ports a pod reported `bound: false`
    (state["ingress"], from waypoint.ingress_binds.BindState.report). A listener fails when any
    pod fails to bind its port: the Service sends that pod its share of the port's connections,
    which are refused. Malformed entries (the report is the proxy's JSON) are skipped."""
    failing: dict[str, dict[int, list[str]]] = {}
    pods = 0
    for pod, state in reports:
        entries = state.get("ingress") if isinstance(state, Mapping) else None
        if not isinstance(entries, list):
            continue
        pods += 1
        for e in entries:
            if not isinstance(e, dict) or e.get("bound") is not False or not isinstance(e.get("port"), int):
                continue
            why = f"pod {pod}: {str(e.get('error') or 'not bound')[:MAX_ERROR]}"
            listeners = e.get("listeners")
            for n in listeners if isinstance(listeners, list) else ():
                if isinstance(n, str):
                    failing.setdefault(n, {}).setdefault(e["port"], []).append(why)
    out: dict[str, dict[int, str]] = {}
    for name, by_port in failing.items():
        for port, whys in by_port.items():
            more = f"; and {len(whys) - MAX_PODS_NAMED} more" if len(whys) > MAX_PODS_NAMED else ""
            out.setdefault(name, {})[port] = (
                f"port {port} cannot be bound on {len(whys)} of {pods} ingress pod(s) "
                f"({'; '.join(sorted(whys)[:MAX_PODS_NAMED])}{more}); the pods retry the bind")
    return out


def _spec_ports(gw: Obj) -> dict[str, Any]:
    return {ln.get("name"): ln.get("port") for ln in ((gw.get("spec") or {}).get("listeners") or [])
            if isinstance(ln, dict)}


def gateway_status(gw: Obj, service: Obj | None, listeners: list[ListenerStatus],
                   binds: Mapping[str, Mapping[int, str]] | None = None) -> Obj:
    """The Gateway's whole status; `binds` (`bind_failures`) names the listeners whose port the
    pods could not bind (only at the port the Gateway gives the listener now: a report from
    before a port change says nothing of the new port)."""
    gen = int((gw.get("metadata") or {}).get("generation") or 0)
    ports = _spec_ports(gw)
    unbound = {ls.name: (binds or {})[ls.name][ports[ls.name]] for ls in listeners
               if ports.get(ls.name) in (binds or {}).get(ls.name, {})}
    addrs = lb_addresses(service)
    invalid = [ls.name for ls in listeners if not ls.accepted[0]]
    if invalid:     # Gateway API: ListenersNotValid, True while some listener is valid
        conds = [_cond("Accepted", len(invalid) < len(listeners), "ListenersNotValid",
                       f"listener(s) {', '.join(invalid)} not valid (their Accepted condition says why)", gen)]
    else:
        conds = [_cond("Accepted", True, "Accepted", "accepted by ambit as an ingress gateway", gen)]
    if len(invalid) == len(listeners) and listeners:
        conds.append(_cond("Programmed", False, "Invalid", "no listener of the Gateway is valid", gen))
    elif addrs and unbound:
        conds.append(_cond("Programmed", False, "Pending", "listener(s) not served: " + "; ".join(
            f"{n}: {m}" for n, m in sorted(unbound.items())), gen))
    elif addrs:
        conds.append(_cond("Programmed", True, "Programmed",
                           f"serving on {', '.join(a['value'] for a in addrs)}", gen))
    else:
        conds.append(_cond("Programmed", False, "AddressNotAssigned",
                           "waiting for the gateway's Service to get a load balancer address", gen))
    out = []
    for ls in listeners:
        ok, reason, msg = ls.resolved
        served = (ok and not ls.conflicted) if ls.served is None else ls.served
        why = msg or (f"{ls.conflicted}: another listener on the port takes it" if ls.conflicted else "")
        programmed = _cond("Programmed", served and bool(addrs),
                           "Programmed" if served and addrs else ("Invalid" if not served else "Pending"), why, gen)
        accepted = _cond("Accepted", *ls.accepted, gen)
        if ls.name in unbound:
            accepted = _cond("Accepted", False, "PortUnavailable", unbound[ls.name], gen)
            programmed = _cond("Programmed", False, "PortUnavailable", unbound[ls.name], gen)
        out.append({"name": ls.name, "attachedRoutes": ls.attached,
                    "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": k} for k in ls.kinds],
                    "conditions": [accepted,
                                   _cond("Conflicted", bool(ls.conflicted), ls.conflicted or "NoConflicts",
                                         why if ls.conflicted else "", gen),
                                   programmed,
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


def desired(objects: list[Obj], result: IngressResult,
            unbound: Callable[[str], Mapping[str, Mapping[int, str]]] = lambda _ref: {},
            invalid: Mapping[str, str] | None = None) -> dict[tuple[str, str, str], Obj]:
    """(kind, ns, name) -> new status, for ingress Gateways and routes whose status should change;
    `unbound(gateway ref)` is `bind_failures` of that Gateway's pods; `invalid` (gateway ref ->
    why): Gateways whose parameters are invalid (Accepted=False, InvalidParameters)."""
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
        want = gateway_status(gw, gws.find_service(gw, objects), listeners, unbound(gkey))
        if (invalid or {}).get(gkey):
            want = gws.invalid_parameters(want, gw, (invalid or {})[gkey])
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
