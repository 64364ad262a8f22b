"""Translation: a snapshot of Kubernetes-shaped objects in, the typed mesh model out.

Pure functions, no I/O: both sources (the Kubernetes API and the lab store) feed the same snapshot
shape here, and tests call it directly. Each object is validated first; an invalid object is
skipped and reported in `Translation.errors`, and everything else still translates. Keeping the
last good version of an object that later turned bad is the source's job (see controller.sources).
Objects of kinds Ambit does not know are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ambit.model import (
    RESOURCE_TYPES,
    Authorization,
    MeshSettings,
    PeerAuthn,
    RequestAuthn,
    Service,
    TelemetryPolicy,
    WaypointRoutes,
    Workload,
)
from controller.kinds import known_kind
from controller.translate.autoalloc import AutoAllocate, allocate
from controller.translate.backendtls import BackendTLS, apply_backend_tls
from controller.translate.blame import TranslationBug, blame
from controller.translate.credentials import Credentials, translate_credentials
from controller.translate.index import Index, age_key
from controller.translate.ingress import IngressResult, translate_ingress
from controller.translate.istio_gateway import add_istio_gateways
from controller.translate.memo import TranslationMemo
from controller.translate.parents import Notice, Parents, resolve_parents
from controller.translate.policy import (
    jwks_fetches,
    translate_authorization,
    translate_peer_authn,
    translate_request_authn,
    translate_telemetry,
)
from controller.translate.routes import Hosts, translate_routes
from controller.translate.serviceentries import expand_entry_targets, selecting, translate_service_entries
from controller.translate.waypoints import apply_waypoints, waypoint_admits, waypoint_gateways
from controller.translate.workloads import translate_services, translate_workloads
from controller.validation import FieldError, Validated, split_valid

__all__ = ["Translation", "TranslationBug", "TranslationMemo", "translate"]

T = TypeVar("T")


def _each(objs: Iterable[dict[str, Any]], fn: Callable[[dict[str, Any]], T]) -> list[T]:
    """`[fn(o) for o in objs]`, naming the object a translator raised on."""
    out: list[T] = []
    for o in objs:
        with blame(o):
            out.append(fn(o))
    return out


@dataclass
class Translation:
    workloads: list[Workload] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    authorizations: list[Authorization] = field(default_factory=list)
    peer_authns: list[PeerAuthn] = field(default_factory=list)
    waypoint_routes: list[WaypointRoutes] = field(default_factory=list)
    telemetry: list[TelemetryPolicy] = field(default_factory=list)
    mesh_settings: list[MeshSettings] = field(default_factory=list)
    request_authns: list[RequestAuthn] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    jwks_fetches: dict[str, float] = field(default_factory=dict)   # key sets to fetch: source -> timeout
    ingress: IngressResult = field(default_factory=IngressResult)   # ingress Gateways, their routes' status
    parents: Parents = field(default_factory=Parents)   # routes' mesh parents: targets, notices (warnings)
    backend_tls: BackendTLS = field(default_factory=BackendTLS)     # BackendTLSPolicies' verdicts (status.ancestors)
    credentials: Credentials = field(default_factory=Credentials)   # credentialName Secrets, per gateway namespace
    # (namespace, name) -> the status.addresses a ServiceEntry should have ([]: clear them); an entry
    # absent here has none and needs none (controller.translate.autoalloc)
    entry_addresses: dict[tuple[str, str], list[dict[str, str]]] = field(default_factory=dict)
    # (namespace, name) of the ServiceEntries applied; a valid one absent here was left out (a host
    # or address another Service holds): policies that target it bind nothing
    entries_applied: set[tuple[str, str]] = field(default_factory=set)
    # ServiceEntry address auto-allocation on (the controller's --ip-autoallocate): istiod's
    # warning on TCP ports without addresses depends on it (controller.waypoints.istio_entry_warnings)
    ip_autoallocate: bool = True

    def resources(self) -> list[Any]:
        """Every model resource, in one list."""
        return [*self.workloads, *self.services, *self.authorizations, *self.peer_authns,
                *self.waypoint_routes, *self.telemetry, *self.mesh_settings, *self.request_authns,
                *self.ingress.gateways, *self.credentials.credentials]

    def by_type(self) -> dict[str, list[Any]]:
        """Resources keyed by type URL: what `ConfigServer.update(resources_by_type, version)` takes.
        Every known type is present (possibly empty), so removals propagate."""
        out: dict[str, list[Any]] = {t: [] for t in RESOURCE_TYPES}
        for r in self.resources():
            out[r.TYPE].append(r)
        return out


def translate(objects: list[dict[str, Any]], trust_domain: str = "cluster.local",
              root_namespace: str = "ambit-system", cluster_domain: str = "cluster.local",
              trust_domain_aliases: tuple[str, ...] = (),
              jwks: Mapping[str, tuple[str, str]] | None = None, memo: TranslationMemo | None = None,
              autoallocate: AutoAllocate | None = None) -> Translation:
    """`jwks`: the key sets the controller fetched for RequestAuthentication `jwksUri`s (source ->
    (JSON, error)); what is still to fetch is in `Translation.jwks_fetches`. `memo`: the Workloads
    of the last translation, reused for pods whose inputs did not change (controller.translate.memo;
    only when `objects` is a `Validated` snapshot, whose objects are never edited in place).
    `autoallocate`: ServiceEntry address auto-allocation (None: on, from 240.240.0.0/16, as Istio)."""
    out = Translation(mesh_settings=[MeshSettings(trust_domain, list(trust_domain_aliases))])
    good, out.errors = split_valid(objects if isinstance(objects, Validated) else    # every kind is known
                                   (o for o in objects if known_kind(o)))
    given = memo
    if given is not None:   # a plain list: nothing reused, nothing kept (its objects may be edited)
        given.begin()
        memo = given if isinstance(objects, Validated) else None
    idx = Index.build(good, memo.age_key if memo is not None else age_key)
    out.services = translate_services(idx, cluster_domain)
    gateway_errors: list[FieldError] = []
    gateways = waypoint_gateways(idx, gateway_errors)
    refused: dict[tuple[str, str], list[str]] = {}
    allocation = allocate(idx.kind("ServiceEntry"), autoallocate or AutoAllocate(),
                          reserved=[v for s in out.services for v in s.vips])
    out.entry_addresses = allocation.status
    out.ip_autoallocate = (autoallocate or AutoAllocate()).enabled
    out.errors.extend(allocation.errors)
    entries = translate_service_entries(idx, out.services, out.errors, allocation, out.entries_applied)
    # A pod backs the entries that select it (workloadSelector), not one whose endpoints merely list
    # its address: those are addresses, not the pod (ztunnel/routing.py).
    out.workloads = translate_workloads(idx, [*out.services, *selecting(entries)], trust_domain, gateways,
                                        lambda wp, ns: waypoint_admits(idx, wp, ns), refused,
                                        memo, out.errors)
    out.services.extend(entries)
    out.errors.extend(gateway_errors)
    unbound = apply_waypoints(gateways, out.services, lambda wp, ns: waypoint_admits(idx, wp, ns), refused)
    out.authorizations = _each(idx.kind("AuthorizationPolicy"),
                               lambda o: translate_authorization(o, trust_domain, root_namespace))
    out.peer_authns = _each(idx.kind("PeerAuthentication"), lambda o: translate_peer_authn(o, root_namespace))
    out.request_authns = _each(idx.kind("RequestAuthentication"),
                               lambda o: translate_request_authn(o, root_namespace, jwks or {}))
    for fetches in _each(idx.kind("RequestAuthentication"), jwks_fetches):
        for src, timeout in fetches.items():
            out.jwks_fetches[src] = max(out.jwks_fetches.get(src, 0.0), timeout)
    out.telemetry = _each(idx.kind("Telemetry"), lambda o: translate_telemetry(o, root_namespace))
    expand_entry_targets([*out.authorizations, *out.request_authns, *out.telemetry], idx, out.entries_applied)
    hosts = Hosts(out.services, cluster_domain)
    out.parents = resolve_parents(idx, hosts)
    out.parents.notices.extend(Notice(ref, "metadata.labels", why, "WaypointNotAllowed") for ref, why in unbound)
    out.waypoint_routes = translate_routes(idx, out.services, cluster_domain, out.parents)
    out.waypoint_routes, out.backend_tls = apply_backend_tls(idx, hosts, out.waypoint_routes, out.parents.notices,
                                                                out.entries_applied)
    out.credentials = translate_credentials(idx, out.services)
    out.ingress = translate_ingress(idx, hosts)
    out.parents.merge_status(out.ingress.routes)
    add_istio_gateways(idx, hosts, out.ingress)
    for lst in (out.services, out.authorizations, out.peer_authns, out.telemetry, out.request_authns):
        lst.sort(key=lambda r: r.resource_name)
    out.workloads.sort(key=lambda w: (w.namespace, w.name))
    if given is not None:
        given.commit()
    return out
