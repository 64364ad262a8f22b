"""Route parents in the mesh: which Services an HTTPRoute or GRPCRoute applies to through each of its
`parentRefs`, Gateway API's verdict on each, and the references that name nothing.

Pure: objects in, targets, status and notices out. The rules are Gateway API's (`ParentReference`,
`Listener.allowedRoutes`, `HTTPBackendRef`), applied to mesh parents as to ingress ones (with the
same helpers, controller.translate.ingress):

- a **Service** parent (GAMMA) applies to that Service; `port` narrows it to that port of the
  Service and `sectionName` to the port of that name (both given: they must name the same port).
  A port the Service does not have is `Accepted=False NoMatchingParent`: the route applies nowhere
  through that parent (not to every port);
- a **waypoint Gateway** parent (class ambit-waypoint/istio-waypoint) applies to the route's
  `hostnames`, or to every Service that uses the waypoint, once a listener admits it: `sectionName`
  names the listener, `port` the listener's port (15008), and the listener's `allowedRoutes` must
  allow the route's namespace (`from: Same` by default) and kind (`NotAllowedByListeners`,
  `NoMatchingParent` otherwise). A waypoint whose `waypoint-for` label is invalid is no waypoint
  (controller.translate.waypoints) and takes no routes;
- a Gateway parent that is an ingress Gateway is controller.translate.ingress's; one of another
  class belongs to another controller and is left alone;
- a **cross-namespace backendRef** needs a ReferenceGrant in the backend's namespace, except a
  route's own Service parent (GAMMA consumer routes send to it: conformance mesh-consumer-route);
  without one it is `ResolvedRefs=False RefNotPermitted` and, as Gateway API requires of an
  invalid backend, its share of requests is answered 500.

What a user would otherwise not notice becomes a `Notice` (`ambit apply` prints it as a warning,
`ambit analyze` reports it): a route not accepted by its parent, a backend not permitted, a route
parented to a waypoint no Service uses, and a reference to a Gateway that does not exist (a route's
`parentRefs`, whatever its kind, and a VirtualService's `gateways`: Istio's analyzer reports the
latter as ReferencedResourceNotFound).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ambit.model import HttpRoute
from controller.translate.index import Index, name_of, ns_of
from controller.translate.ingress import (
    GATEWAY_GROUP,
    L4_ROUTE_KINDS,
    ROUTE_KINDS,
    BackendVerdict,
    ParentStatus,
    attach,
    backend_verdicts,
    ingress_names,
    resolved_refs,
    unresolved,
)
from controller.translate.istio_gateway import bound_gateways, is_istio_gateway
from controller.translate.routes import Hosts
from controller.translate.waypoints import SERVES_SERVICES, WAYPOINT_CLASSES, waypoint_gateways
from controller.validation import object_ref

Obj = dict[str, Any]
RouteKey = tuple[str, str, str]         # (kind, namespace, name)
Built = list[tuple[tuple[Any, ...], HttpRoute]]
Verdict = tuple[bool, str, str]                         # Gateway API condition: (status, reason, message)
Found = tuple[Verdict, list[tuple[str, int, bool]]]     # a parent's Accepted, and its (host, port, consumer)
ACCEPTED: Verdict = (True, "Accepted", "")
PARENT_NOT_FOUND = "ParentNotFound"     # a Notice's cause: the Gateway a reference names does not exist
NO_WAYPOINT = "NoWaypoint"              # ... the waypoint parent serves no Service


@dataclass(frozen=True)
class Target:
    """One host a route applies to through one parent: its port (0: every port), whether it is a
    consumer route (GAMMA: in another namespace than its Service parent), and the backends
    ("name.ns") that may not be used there."""

    hostname: str
    port: int
    consumer: bool
    denied: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Notice:
    """Something valid that does not do what it says: `ambit apply` warns, `ambit analyze` reports."""

    ref: str            # Kind/namespace/name
    path: str
    reason: str
    cause: str          # NotAllowedByListeners | NoMatchingParent | RefNotPermitted | InvalidKind | ParentNotFound | NoWaypoint


@dataclass
class Parents:
    targets: dict[RouteKey, list[Target]] = field(default_factory=dict)
    status: dict[RouteKey, list[ParentStatus]] = field(default_factory=dict)   # mesh parents only
    notices: list[Notice] = field(default_factory=list)

    def attached(self, obj: Obj, build: Callable[..., Built]) -> Iterator[tuple[str, Built]]:
        """(host, routes) for each target of route `obj`: `build(port=, consumer=)` makes the routes,
        whose backends that may not be used there lose their Service (so they answer 500)."""
        for t in self.targets.get(_key(obj), []):
            built = build(port=t.port, consumer=t.consumer)
            for _, r in built:
                unresolved(r.destinations, set(t.denied))
            yield t.hostname, built

    def merge_status(self, routes: dict[RouteKey, list[ParentStatus]]) -> None:
        """Add the mesh parents' verdicts to the ingress ones (`IngressResult.routes`): the route
        status writers (controller.waypoints.ingress_status) write one `parents[]` entry for each."""
        for key, found in self.status.items():
            routes.setdefault(key, []).extend(found)


def _key(obj: Obj) -> RouteKey:
    return (obj.get("kind", ""), ns_of(obj), name_of(obj))


def is_service_parent(p: Obj) -> bool:
    return p.get("kind", "Gateway") == "Service" and p.get("group", "") in ("", "core")


def is_gateway_parent(p: Obj) -> bool:
    return p.get("kind", "Gateway") == "Gateway" and p.get("group", GATEWAY_GROUP) == GATEWAY_GROUP


class _Resolver:
    """What resolving one snapshot's parents needs, looked up once."""

    def __init__(self, idx: Index, hosts: Hosts):
        self.idx, self.hosts = idx, hosts
        self.gateways = {f"{ns_of(g)}/{name_of(g)}": g for g in idx.kind("Gateway") if not is_istio_gateway(g)}
        self.waypoints = waypoint_gateways(idx)
        self.ingress = ingress_names(idx)
        self.services = {f"{ns_of(s)}/{name_of(s)}" for s in idx.kind("Service")}
        self.grants = idx.kind("ReferenceGrant")
        self.out = Parents()

    def route(self, obj: Obj) -> None:
        """The targets and status of each mesh parent of an HTTPRoute/GRPCRoute, and the notices."""
        spec, rns = obj.get("spec") or {}, ns_of(obj)
        statuses: list[ParentStatus] = []
        refused: dict[str, BackendVerdict] = {}     # backendRef path -> not permitted (under some parent)
        for i, p in enumerate(spec.get("parentRefs") or []):
            pns = p.get("namespace") or rns
            gkey = f"{pns}/{p['name']}"
            exempt: frozenset[str] = frozenset()
            if is_service_parent(p):
                exempt = frozenset({gkey})
                found = self._service_parent(obj, i, p, pns)
            elif is_gateway_parent(p) and gkey in self.ingress:
                found = None        # controller.translate.ingress attaches it and writes its status
            elif is_gateway_parent(p):
                found = self._waypoint_parent(obj, i, p, gkey)
                if found is None:
                    continue
            else:
                continue
            bad = backend_verdicts(obj, self.services, self.grants, exempt)
            if found is None or found[0][0]:
                refused.update((v.path, v) for v in bad if v.resolved[1] in ("RefNotPermitted", "InvalidKind"))
            if found is None:
                continue
            accepted, targets = found
            statuses.append(ParentStatus(p, accepted, resolved_refs(bad)))
            denied = frozenset(v.host for v in bad)
            self.out.targets.setdefault(_key(obj), []).extend(
                Target(h, port, consumer, denied) for h, port, consumer in targets)
        if statuses:
            self.out.status[_key(obj)] = statuses
        for v in refused.values():
            fix = (f"add a ReferenceGrant in namespace {v.host.split('.', 1)[1]}" if v.resolved[1] == "RefNotPermitted"
                   else "use a Service")
            self.out.notices.append(Notice(object_ref(obj), v.path, (
                f"{v.resolved[2]} ({obj.get('kind')}s from namespace {rns}): requests routed to it are answered "
                f"500, as Gateway API requires; {fix}"), v.resolved[1]))

    def _not_accepted(self, obj: Obj, i: int, reason: str, message: str, hint: str = "") -> Found:
        self.out.notices.append(Notice(object_ref(obj), f"spec.parentRefs[{i}]", f"{message}: the route does not apply "
                                       f"through this parent (Gateway API: Accepted=False {reason}){hint}", reason))
        return (False, reason, message), []

    def _service_parent(self, obj: Obj, i: int, p: Obj, pns: str) -> Found:
        fq = f"{p['name']}.{pns}.svc.{self.hosts.cd}"
        consumer = pns != ns_of(obj)
        svc = self.hosts.by_host.get(fq)
        if svc is None or svc.kind != "Service":
            # the route is kept for the host (it is inert until the Service exists; the advisories
            # say "no Service named ..."), and the status says what is missing
            return (False, "NoMatchingParent", f"Service {pns}/{p['name']} does not exist"), [
                (fq, int(p.get("port") or 0), consumer)]
        ports = [sp for sp in svc.ports if (not p.get("sectionName") or sp.name == p["sectionName"])
                 and (not p.get("port") or sp.port == p["port"])]
        if (p.get("sectionName") or p.get("port")) and not ports:
            wanted = " and ".join(([f"named {p['sectionName']!r}"] if p.get("sectionName") else [])
                                  + ([f"number {p['port']}"] if p.get("port") else []))
            have = ", ".join(f"{sp.name or '(unnamed)'} {sp.port}" for sp in svc.ports) or "none"
            return self._not_accepted(obj, i, "NoMatchingParent",
                                      f"Service {pns}/{p['name']} has no port {wanted} (its ports: {have})")
        port = ports[0].port if p.get("sectionName") or p.get("port") else 0
        return ACCEPTED, [(fq, port, consumer)]

    def _waypoint_parent(self, obj: Obj, i: int, p: Obj, gkey: str) -> Found | None:
        gw = self.gateways.get(gkey)
        if gw is None:
            self.out.notices.append(_missing(obj, f"spec.parentRefs[{i}]", gkey))
            return None
        if (gw.get("spec") or {}).get("gatewayClassName") not in WAYPOINT_CLASSES or gkey not in self.waypoints:
            return None         # another controller's Gateway, or not a waypoint (an invalid waypoint-for)
        found, reason, message = attach(p, obj, gw, self.idx.ns_labels(ns_of(obj)))
        if not found:
            hint = ("; to admit it, set the listener's allowedRoutes.namespaces (from: All, or a Selector) or move the "
                    "route" if reason == "NotAllowedByListeners" else "")
            return self._not_accepted(obj, i, reason, f"waypoint {gkey}: {message}", hint)
        spec, ns = obj.get("spec") or {}, ns_of(obj)
        if spec.get("hostnames"):
            return ACCEPTED, [(fq, 0, False) for h in spec["hostnames"] for fq in self.hosts.expand(h, ns)]
        targets = [(s.hostname, 0, False) for s in self.hosts.by_host.values() if s.waypoint == gkey]
        if not targets:
            serves = self.waypoints[gkey]
            why = (f"waypoint {gkey} serves {serves} traffic, not Service traffic (label it ambit.io/waypoint-for="
                   "service or all)" if serves not in SERVES_SERVICES else
                   f"no Service uses waypoint {gkey} (label a Service or its namespace "
                   f"ambit.io/use-waypoint={gkey.split('/', 1)[1]})")
            self.out.notices.append(Notice(object_ref(obj), f"spec.parentRefs[{i}]",
                                           f"{why}: the route applies to nothing through this parent", NO_WAYPOINT))
        return ACCEPTED, targets

    def dangling(self) -> None:
        """Gateway parents of TLSRoutes and TCPRoutes, and VirtualService `gateways`, that name nothing."""
        for kind in L4_ROUTE_KINDS:      # (HTTPRoute/GRPCRoute: `route` says it)
            for obj in self.idx.kind(kind):
                for i, p in enumerate((obj.get("spec") or {}).get("parentRefs") or []):
                    gkey = f"{p.get('namespace') or ns_of(obj)}/{p['name']}"
                    if is_gateway_parent(p) and gkey not in self.gateways:
                        self.out.notices.append(_missing(obj, f"spec.parentRefs[{i}]", gkey))
        istio = {f"{ns_of(g)}/{name_of(g)}" for g in self.idx.kind("Gateway") if is_istio_gateway(g)}
        for vs in self.idx.kind("VirtualService"):
            for path, names in _vs_gateway_lists(vs):
                for k, g in enumerate(names or []):
                    gkey = next(iter(bound_gateways([g], ns_of(vs))))
                    if gkey != "mesh" and gkey not in istio:
                        self.out.notices.append(Notice(object_ref(vs), f"{path}[{k}]", (
                            f'no Istio Gateway (networking.istio.io) "{gkey}" exists: the VirtualService is bound to '
                            'nothing through it (check the name and namespace; "mesh" binds it to the mesh)'),
                            PARENT_NOT_FOUND))


def _missing(obj: Obj, path: str, gkey: str) -> Notice:
    return Notice(object_ref(obj), path, f'no Gateway "{gkey}" exists: this parentRef attaches the route to nothing '
                  "(check the name and namespace)", PARENT_NOT_FOUND)


def _vs_gateway_lists(vs: Obj) -> Iterator[tuple[str, list[str] | None]]:
    spec = vs.get("spec") or {}
    yield "spec.gateways", spec.get("gateways")
    for section in ("http", "tls", "tcp"):
        for i, r in enumerate(spec.get(section) or []):
            for j, m in enumerate(r.get("match") or []):
                yield f"spec.{section}[{i}].match[{j}].gateways", m.get("gateways")


def resolve_parents(idx: Index, hosts: Hosts) -> Parents:
    """Targets, mesh-parent status and notices for every route of a snapshot."""
    r = _Resolver(idx, hosts)
    for kind in ROUTE_KINDS:
        for obj in idx.kind(kind):
            r.route(obj)
    r.dangling()
    return r.out
