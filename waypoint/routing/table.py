"""The route table: the controller's `WaypointRoutes`, compiled once into an immutable lookup.

Built when the config stream delivers a new set of `WaypointRoutes` and then shared, read-only, by
every request: regexes are compiled here (RE2, `ambit.regex`), never per request. A route whose
regex RE2 refuses cannot come from Ambit's controller (it validates with the same compiler); if one
arrives anyway it is left out and named in `RouteTable.errors`, and the rest of the table works.

Host lookup (`RouteTable.host_for`):
- The tunnel's destination decides when it is known (`Downstream.hostname`, else
  `Downstream.service`): an Istio waypoint builds one route configuration per destination Service
  and ignores the Host header for choosing it (istio pilot/pkg/networking/core/listener_waypoint.go).
- A destination that is a workload address, not a Service, selects no routes (Istio applies no
  Service routes to pod-addressed traffic; conformance mesh-frontend).
- With no destination at all, the request authority selects: as written, without its port, and short names
  completed the way the client's DNS search path would (`name` → `name.<client ns>.svc.<domain>`,
  `name.ns` → `name.ns.svc.<domain>`, `name.ns.svc` → `name.ns.svc.<domain>`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ambit.model import HttpRoute, RouteDestination, WaypointRoutes
from ambit.regex import RegexError, compile_re2
from waypoint.request import Downstream, HeaderOps, RequestHead
from waypoint.resilience.policy import RoutePolicy, compile_policy
from waypoint.routing.cors import compile_cors
from waypoint.routing.headers import authority_override, compose, request_ops, response_ops
from waypoint.routing.matchers import RequestMatcher
from waypoint.traffic.session import SessionPolicy

GATEWAY_API_KINDS = ("HTTPRoute/", "GRPCRoute/")


@dataclass(frozen=True, slots=True)
class CompiledDestination:
    dest: RouteDestination
    request_headers: HeaderOps         # this destination's operations composed with its route's
    response_headers: HeaderOps        # (see `headers.compose`), once, at build time
    authority: str | None              # from a `host`/`:authority` header set at this level
    # Forwards that depend on nothing but the port (no path rewrite), built once per port: the
    # decision objects are immutable, so every request to that port shares one.
    forwards: dict[int, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    route: HttpRoute                   # the model route (timeouts, retries, ... for later layers)
    name: str                          # "Kind/ns/name#rule" for logs and metrics
    matchers: tuple[RequestMatcher, ...]    # empty: matches every request
    destinations: tuple[CompiledDestination, ...]
    weights: tuple[int, ...]
    request_headers: HeaderOps
    response_headers: HeaderOps
    authority: str | None
    rewrite_regex: Any = None
    gateway_api: bool = False          # from HTTPRoute/GRPCRoute: Gateway API's error codes apply
    ports: frozenset[int] = frozenset()     # the ports this route is for; empty: every port
    consumer_namespace: str = ""       # a GAMMA consumer route: only for requests from this namespace
    policy: RoutePolicy | None = None  # timeouts, retries, fault, mirrors, compiled once
    session: SessionPolicy | None = None    # sessionPersistence (policy.session): the sticky backend

    def applies_to(self, port: int, source_namespace: str) -> bool:
        return (not self.ports or port in self.ports) and (
            not self.consumer_namespace or self.consumer_namespace == source_namespace)


@dataclass(frozen=True, slots=True)
class HostRoutes:
    hostname: str
    service: str                       # "ns/name", "" when the host is not a known Service
    namespace: str
    routes: tuple[CompiledRoute, ...]
    subsets: dict[str, dict[str, str]] = field(default_factory=dict)   # name -> labels
    config: WaypointRoutes | None = None
    restricted: bool = False           # some route is for certain ports or source namespaces only

    def routes_for(self, port: int, source_namespace: str) -> tuple[CompiledRoute, ...]:
        """The routes that apply to a request on `port` from `source_namespace`: a route's own
        ports (Gateway API parentRef port, VirtualService match port), and GAMMA consumer routes
        only for their namespace (GEP-1426). None left: the Service's default route applies."""
        if not self.restricted:
            return self.routes
        return tuple(r for r in self.routes if r.applies_to(port, source_namespace))


@dataclass(frozen=True, slots=True)
class RouteTable:
    hosts: dict[str, HostRoutes]
    by_service: dict[str, HostRoutes]
    cluster_domain: str = "cluster.local"
    errors: tuple[str, ...] = ()

    def host_for(self, head: RequestHead, down: Downstream) -> HostRoutes | None:
        """The configuration for this request's host (see the module docstring), or None."""
        if down.hostname or down.service:
            return self.hosts.get(down.hostname) or self.by_service.get(down.service)
        if down.destination_ip:
            return None        # addressed to a workload, not a Service: no Service routes apply
        return self.by_authority(head.authority, down.source_namespace)

    def by_authority(self, authority: str, client_namespace: str = "") -> HostRoutes | None:
        a = authority.strip().lower().rstrip(".")
        found = self.hosts.get(a)
        if found is not None:
            return found
        host = a.rsplit(":", 1)[0] if a.count(":") == 1 else a
        host = host.rstrip(".")
        found = self.hosts.get(host)
        if found is not None:
            return found
        cd = self.cluster_domain
        dots = host.count(".")
        candidates = []
        if dots == 0 and client_namespace:
            candidates.append(f"{host}.{client_namespace}.svc.{cd}")
        elif dots == 1:
            candidates.append(f"{host}.svc.{cd}")
        elif host.endswith(".svc"):
            candidates.append(f"{host}.{cd}")
        for c in candidates:
            if c in self.hosts:
                return self.hosts[c]
        return None

    def subset_labels(self, hostname: str, subset: str) -> dict[str, str] | None:
        """The labels a subset selects (None: the host has no such subset)."""
        h = self.hosts.get(hostname)
        return None if h is None else h.subsets.get(subset)


def _compile_route(r: HttpRoute, index: int) -> CompiledRoute:
    route_req, route_resp = request_ops(r.headers), response_ops(r.headers)
    dests = tuple(CompiledDestination(d, compose(request_ops(d.headers), route_req),
                                      compose(response_ops(d.headers), route_resp),
                                      authority_override(d.headers)) for d in r.destinations)
    rx = None
    if r.rewrite is not None and r.rewrite.regex:
        rx = compile_re2(r.rewrite.regex)
    name = f"{r.source}#{r.name or index}"
    # A route is for the ports its matches name; one match without a port makes it for every port.
    ports = frozenset() if not r.matches or any(not m.port for m in r.matches) else frozenset(
        m.port for m in r.matches)
    gateway_api = r.source.startswith(GATEWAY_API_KINDS)
    # The controller marks a consumer route by giving each of its matches the route's namespace as
    # source namespace; for a VirtualService, sourceNamespace is an ordinary match condition.
    consumer = ""
    if gateway_api and r.matches and len({m.source_namespace for m in r.matches}) == 1:
        consumer = r.matches[0].source_namespace
    policy = compile_policy(r, compile_cors(r.cors))
    return CompiledRoute(route=r, name=name, matchers=tuple(RequestMatcher.compile(m) for m in r.matches),
                         destinations=dests, weights=tuple(max(0, d.weight) for d in r.destinations),
                         request_headers=route_req, response_headers=route_resp,
                         authority=authority_override(r.headers), rewrite_regex=rx,
                         gateway_api=gateway_api, ports=ports, consumer_namespace=consumer,
                         policy=policy, session=policy.session)


def build_table(configs: Iterable[WaypointRoutes], cluster_domain: str = "cluster.local") -> RouteTable:
    """Compile every host's routes. Pure; raises nothing for bad routes (see `errors`)."""
    hosts: dict[str, HostRoutes] = {}
    errors: list[str] = []
    for wr in configs:
        compiled = []
        for i, r in enumerate(wr.http):
            try:
                compiled.append(_compile_route(r, i))
            except (RegexError, ValueError) as e:
                errors.append(f"{wr.hostname}: route {r.source}#{r.name or i} left out: {e}")
        subsets = {s.name: dict(s.labels) for s in wr.subsets}
        hosts[wr.hostname] = HostRoutes(hostname=wr.hostname, service=wr.service, namespace=wr.namespace,
                                        routes=tuple(compiled), subsets=subsets, config=wr,
                                        restricted=any(r.ports or r.consumer_namespace for r in compiled))
    by_service = {h.service: h for h in hosts.values() if h.service}
    return RouteTable(hosts=hosts, by_service=by_service, cluster_domain=cluster_domain, errors=tuple(errors))
