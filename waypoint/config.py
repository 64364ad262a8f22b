"""The waypoint's view of the mesh config: what the controller streams to it, compiled once per
update into the tables the sans-IO cores read (route table, policy set, address indexes).

Every update replaces the whole `View` (immutable between updates), so a request decided while
an update lands sees one consistent configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, cast

from ambit import telemetry
from ambit.configclient import ConfigUpdate
from ambit.model import (
    Authorization,
    ClientCredential,
    IngressGateway,
    MeshSettings,
    RequestAuthn,
    Resource,
    Service,
    TelemetryPolicy,
    WaypointRoutes,
    Workload,
)
from ambit.telemetry import CLIENT, SERVER
from ambit.telemetryconfig import AccessLogConfig, TelemetryConfig
from ambit.telemetryfilter import check_filter
from ambit.trustdomain import TrustDomains
from waypoint.authn import AuthnSet, authn_set
from waypoint.authz import PolicySet, Waypoint, policy_set
from waypoint.authz.custom import CustomSet, custom_set
from waypoint.authz.l4 import l4_custom_set, l4_policy_set
from waypoint.ingress import IngressView
from waypoint.ingress import build as build_ingress
from waypoint.routing import RouteTable, build_table

log = logging.getLogger("ambit.waypoint.config")

TYPES = (MeshSettings.TYPE, Authorization.TYPE, RequestAuthn.TYPE, Workload.TYPE, Service.TYPE, WaypointRoutes.TYPE,
         TelemetryPolicy.TYPE, IngressGateway.TYPE, ClientCredential.TYPE)

# Telemetry only shapes access logs and spans (defaults apply until it arrives): not needed to serve.
# RequestAuthn is: serving before it arrives would pass tokens unchecked. An ingress gateway opens
# no listener before its IngressGateway arrives, so that one needs no waiting for either. Until its
# ClientCredentials arrive (a controller older than them never answers the type), a connection that
# names a credentialName fails (503 UF), never originates without it.
REQUIRED = TYPES[:-3]


@dataclass(frozen=True)
class View:
    workloads: Mapping[str, Workload] = field(default_factory=dict)       # uid -> workload
    by_ip: Mapping[str, Workload] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)         # "ns/name" -> service
    by_vip: Mapping[tuple[str, int], Service] = field(default_factory=dict)
    table: RouteTable = field(default_factory=lambda: build_table([]))
    policies: PolicySet = field(default_factory=lambda: policy_set([], Waypoint("", "")))
    l4_policies: PolicySet = field(default_factory=lambda: policy_set([], Waypoint("", "")))  # opaque tunnels
    trust_domains: TrustDomains | None = None
    telemetry: tuple[TelemetryPolicy, ...] = ()
    mesh: MeshSettings | None = None
    waypoint: Waypoint = Waypoint("", "")
    authn: AuthnSet = field(default_factory=AuthnSet)      # RequestAuthentication (JWT), before authz
    ingress: IngressView = field(default_factory=IngressView)   # an ingress gateway's listeners and routes
    side: str = SERVER                  # the Telemetry API's side: CLIENT for an ingress gateway (as Istio's)
    custom: CustomSet = field(default_factory=CustomSet)   # CUSTOM policies (external authorization)
    l4_custom: CustomSet = field(default_factory=CustomSet)    # their L4 views, for opaque tunnels
    _telemetry_cache: dict[str, TelemetryConfig] = field(default_factory=dict, compare=False, repr=False)
    # (service, port, hostname, subset) -> its ready endpoints and their addresses (waypoint/app.py
    # `_pick`) and their places (locality, labels): a pure function of this View, so cached for its life
    candidates_cache: dict[tuple[str, int, str, str], tuple[tuple[Any, ...], tuple[str, ...], tuple[Any, ...]]] = field(
        default_factory=dict, compare=False, repr=False)
    # (address, protocol, source ip, cluster) -> the UpstreamTarget a request to that endpoint gets
    # (waypoint/app.py `_target`): built once per View, not per request (it holds a connector)
    targets_cache: dict[tuple[str, str, str | None, int], Any] = field(default_factory=dict, compare=False,
                                                                       repr=False)
    # "ns/name" -> the credentialName Secrets of this waypoint's namespace (TLS origination)
    credentials: Mapping[str, ClientCredential] = field(default_factory=dict)

    def telemetry_for_waypoint(self, service: str = "") -> TelemetryConfig:
        """The Telemetry API's tracing and access logging for this waypoint (ambit.telemetry's
        precedence), for requests to `service` ("ns/name"; "" when unknown: the Gateway-,
        namespace- and mesh-level Telemetries only). Cached per service for the View's life: the
        View is replaced on every config update, so the cache never outlives its inputs."""
        cfg = self._telemetry_cache.get(service)
        if cfg is None:
            cfg = telemetry.for_waypoint(self.telemetry, self.mesh, self.waypoint.namespace, self.waypoint.name,
                                         service, self.side)
            self._telemetry_cache[service] = cfg
        return cfg


T = TypeVar("T")


def _workloads(state: Mapping[str, Resource]) -> tuple[Mapping[str, Workload], dict[str, Workload]]:
    """By uid (the type's state itself: a Workload's name is its uid) and by IP."""
    workloads = cast(Mapping[str, Workload], state)
    return workloads, {ip: w for w in workloads.values() for ip in w.ips}


def _services(state: Mapping[str, Resource]) -> tuple[Mapping[str, Service], dict[tuple[str, int], Service]]:
    """By "ns/name" (the type's state itself: that is a Service's name) and by (VIP, port)."""
    services = cast(Mapping[str, Service], state)
    return services, {(vip, p.port): s for s in services.values() for vip in s.vips for p in s.ports}


def _authz(state: Mapping[str, Resource]) -> list[Authorization]:
    return [cast(Authorization, a) for a in state.values()]


def _telemetry(state: Mapping[str, Resource]) -> tuple[TelemetryPolicy, ...]:
    tel = tuple(sorted((cast(TelemetryPolicy, t) for t in state.values()), key=lambda t: t.resource_name))
    for t in tel:       # a filter the controller let through but this build cannot run: say so
        for a in t.access_logging:
            if a.filter and (why := check_filter(a.filter)):
                log.warning("Telemetry %s: accessLogging filter %r ignored: %s", t.resource_name, a.filter, why)
    return tel


def _authn(state: Mapping[str, Resource], waypoint: Waypoint) -> AuthnSet:
    authn = authn_set((cast(RequestAuthn, r) for r in state.values()), waypoint)
    for p in {id(p): p for ps in (authn.gateway, *authn.by_service.values()) for p in ps}.values():
        if p.error:         # a key set that cannot be used: that issuer's tokens get 401; say why
            log.warning("RequestAuthentication issuer %s: %s%s", p.rule.issuer, p.error,
                        f": {p.detail}" if p.detail else "")
    return authn


class WaypointConfig:
    """Holds the per-type state and rebuilds the `View` on every accepted update."""

    def __init__(self, waypoint: Waypoint, trust_domain: str, cluster_domain: str = "cluster.local") -> None:
        self.waypoint = waypoint
        self.trust_domain = trust_domain
        self.cluster_domain = cluster_domain
        self.state: dict[str, Mapping[str, Resource]] = {t: {} for t in TYPES}
        self.synced_types: set[str] = set()
        self.version = ""
        self.view = View(trust_domains=TrustDomains.of(trust_domain))
        self._memo: dict[str, tuple[tuple[Mapping[str, Resource], ...], Any]] = {}

    @property
    def synced(self) -> bool:
        return self.synced_types >= set(REQUIRED)

    def apply(self, update: ConfigUpdate) -> None:
        state = dict(self.state)
        # Held as it is when read-only (the config client hands each update a fresh one), else
        # copied: a caller's dict may change after. The View's by-uid and by-name maps are this
        # mapping too, so 10,000 workloads are not indexed by name three times over.
        state[update.type_url] = update.state if isinstance(update.state, MappingProxyType) else dict(update.state)
        view = self._build(state)      # raises on a bad update: the client NACKs and keeps the old
        self.state, self.view = state, view
        self.synced_types.add(update.type_url)
        self.version = update.system_version

    def _derived(self, name: str, inputs: tuple[Mapping[str, Resource], ...], make: Callable[[], T]) -> T:
        """`make()`, or what it made last from these very inputs (the per-type state mappings, by
        identity: `apply` replaces only the updated type's). A Workload delta at 10,000 pods then
        costs its own indexes, not the route table's and the policies' again (docs/performance.md,
        "The waypoint at 10,000 pods"), and a table's warnings are logged when it changes, not on
        every update. The memo holds its inputs, so an identity is never a freed object's."""
        hit = self._memo.get(name)
        if hit is not None and len(hit[0]) == len(inputs) and all(a is b for a, b in zip(hit[0], inputs, strict=True)):
            return cast(T, hit[1])
        value = make()
        self._memo[name] = (inputs, value)
        return value

    def _table(self, state: Mapping[str, Resource]) -> RouteTable:
        table = build_table([cast(WaypointRoutes, r) for r in state.values()], self.cluster_domain)
        for e in table.errors:
            log.warning("route table: %s", e)
        return table

    def _ingress(self, gw: Resource | None) -> IngressView:
        ingress = build_ingress(cast(IngressGateway, gw) if gw is not None else None, self.cluster_domain)
        for port in ingress.ports.values():
            for e in port.table.errors:
                log.warning("ingress port %d route table: %s", port.port, e)
        return ingress

    def _build(self, state: Mapping[str, Mapping[str, Resource]]) -> View:
        w_state, s_state = state[Workload.TYPE], state[Service.TYPE]
        workloads, by_ip = self._derived("workloads", (w_state,), lambda: _workloads(w_state))
        services, by_vip = self._derived("services", (s_state,), lambda: _services(s_state))
        r_state = state[WaypointRoutes.TYPE]
        table = self._derived("table", (r_state,), lambda: self._table(r_state))
        a_state, m_state = state[Authorization.TYPE], state[MeshSettings.TYPE]
        pset = self._derived("policies", (a_state,), lambda: policy_set(_authz(a_state), self.waypoint))
        mesh = next(iter(m_state.values()), None)
        custom = self._derived("custom", (a_state, m_state, s_state), lambda: custom_set(
            _authz(a_state), self.waypoint, cast(MeshSettings, mesh).ext_authz if mesh is not None else (),
            services))
        tds = TrustDomains.of(cast(MeshSettings, mesh).trust_domain, cast(MeshSettings, mesh).trust_domain_aliases) \
            if mesh is not None else TrustDomains.of(self.trust_domain)
        t_state = state[TelemetryPolicy.TYPE]
        tel = self._derived("telemetry", (t_state,), lambda: _telemetry(t_state))
        ra_state = state[RequestAuthn.TYPE]
        authn = self._derived("authn", (ra_state,), lambda: _authn(ra_state, self.waypoint))
        gw = state[IngressGateway.TYPE].get(f"{self.waypoint.namespace}/{self.waypoint.name}")
        ingress = self._derived("ingress", (state[IngressGateway.TYPE],), lambda: self._ingress(gw))
        l4 = self._derived("l4_policies", (a_state,), lambda: l4_policy_set(pset))
        l4_custom = self._derived("l4_custom", (a_state, m_state, s_state), lambda: l4_custom_set(custom))
        return View(workloads, by_ip, services, by_vip, table, pset, l4, tds, tel,
                    cast(MeshSettings, mesh) if mesh is not None else None, self.waypoint, authn, ingress,
                    # an IngressGateway for this Gateway: it is an ingress gateway, Istio's CLIENT side
                    CLIENT if gw is not None else SERVER, custom, l4_custom,
                    credentials=cast(Mapping[str, ClientCredential], state[ClientCredential.TYPE]))

    def dump(self) -> dict[str, Any]:
        v = self.view
        return {"version": self.version, "synced": self.synced,
                "services": sorted(v.services), "workloads": sorted(f"{w.namespace}/{w.name}" for w in
                                                                    v.workloads.values()),
                "routes": sorted(v.table.hosts), "route_errors": list(v.table.errors),
                "telemetry": [t.resource_name for t in v.telemetry],
                "access_log": _access_log_dump(v.telemetry_for_waypoint().access_log),
                "request_authentications": list(v.authn.names),
                # credentialName Secrets by name, and what is wrong with each (never their contents)
                "credentials": {k: c.error or "usable" for k, c in sorted(v.credentials.items())},
                "ingress": {str(p.port): {"protocol": p.protocol, "listeners": [ln.name for ln in p.listeners],
                                          "hosts": sorted(p.table.hosts)} for p in v.ingress.ports.values()},
                "policies": {"gateway": [p.resource_name for p in v.policies.gateway],
                             "by_service": {k: [p.resource_name for p in ps]
                                            for k, ps in v.policies.by_service.items()}},
                "custom_policies": {"gateway": [f"{p.resource_name} ({p.provider})" for p in v.custom.gateway],
                                    "by_service": {k: [f"{p.resource_name} ({p.provider})" for p in ps]
                                                   for k, ps in v.custom.by_service.items()},
                                    "providers": sorted(v.custom.providers)}}


def _access_log_dump(cfg: AccessLogConfig) -> dict[str, Any]:
    """The waypoint-level access logging (Gateway-, namespace- and mesh-level Telemetries)."""
    return {"disabled": cfg.disabled, "mode": cfg.mode, "filter": cfg.filter,
            "providers": [f"{p.name} ({p.kind} {p.path} {p.log_format})" for p in cfg.providers]}
