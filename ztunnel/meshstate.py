"""ztunnel's mesh state: the config from the controller, validated, indexed, and swapped whole on every update.

The config stream delivers one type per response. Each response is validated and indexed into a
new immutable `ConfigView`, which replaces the previous one in a single assignment: a connection
handler that took `config.view` never sees half of an update. An update the data plane cannot use
raises `ConfigRejected`; the ConfigClient NACKs it with that message (naming the resources and the
reason), the controller shows it in `ambit status`, and the previous view stays in force.

What is refused is what would make a routing or identity decision ambiguous or impossible, never a
matter of taste: addresses that do not parse, two Services claiming one VIP (which Service is
10.96.0.10:80?), two mesh workloads claiming one pod IP (whose certificate answers for it?), and
policy values ztunnel does not know how to enforce.

Sans-IO: `MeshState.apply(update)` is the ConfigClient callback and does no I/O; `config_client`
builds the client that feeds it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from ambit import identity as ident
from ambit import telemetry, trustdomain
from ambit.configclient import ConfigClient, ConfigUpdate, NodeInfo
from ambit.configclient.credential import node_metadata
from ambit.configclient.tls import ControllerTrust
from ambit.model import (
    Authorization,
    Endpoint,
    MeshSettings,
    PeerAuthn,
    Service,
    ServicePort,
    TelemetryPolicy,
    Workload,
    target_port,
)
from ambit.telemetryconfig import AccessLogConfig, TelemetryConfig
from ambit.telemetrymetrics import MetricsConfig
from ambit.trustdomain import TrustDomains
from ztunnel import authz, distribution

# The order the server pushes them in (mesh settings, then policy before the pods it protects);
# WaypointRoutes are the waypoint's business, not ztunnel's; Telemetry decides its access logs.
TYPES = (MeshSettings.TYPE, PeerAuthn.TYPE, Authorization.TYPE, Workload.TYPE, Service.TYPE, TelemetryPolicy.TYPE)
# What must have arrived before ztunnel counts as synced: Telemetry only shapes access logs (the
# default log applies until it arrives), so it does not hold readiness back.
REQUIRED = TYPES[:-1]
ACTIONS = {authz.ALLOW, authz.DENY, authz.AUDIT}
MODES = {authz.STRICT, authz.PERMISSIVE, authz.DISABLE, authz.UNSET}
OUTBOUND_MODES = ("ALLOW_ANY", "REGISTRY_ONLY")     # MeshSettings.outbound_traffic_policy

_EMPTY: Mapping[Any, Any] = MappingProxyType({})


class ConfigRejected(ValueError):
    """An update the data plane must not use; the message names the resources and the reason."""


@dataclass(frozen=True)
class ConfigView:
    """One consistent, immutable state of everything ztunnel routes and enforces by."""

    workloads: Mapping[str, Workload] = field(default_factory=lambda: _EMPTY)              # uid ->
    workloads_by_ip: Mapping[str, Workload] = field(default_factory=lambda: _EMPTY)        # pod IP ->
    workload_ips: Mapping[str, tuple[tuple[str, Workload], ...]] = field(default_factory=lambda: _EMPTY)  # IP -> claims
    services: Mapping[str, Service] = field(default_factory=lambda: _EMPTY)                # "ns/name" ->
    services_by_vip: Mapping[str, Service] = field(default_factory=lambda: _EMPTY)         # VIP ->
    service_ports: Mapping[tuple[str, int], tuple[Service, ServicePort]] = field(default_factory=lambda: _EMPTY)  # (VIP, port) ->
    # ServiceEntries reached without a VIP: (endpoint IP, port) of NONE/STATIC entries, and their
    # CIDR addresses (most specific first).
    entry_endpoints: Mapping[tuple[str, int], tuple[Service, ServicePort]] = field(default_factory=lambda: _EMPTY)
    entry_subnets: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Service], ...] = ()
    authorizations: tuple[Authorization, ...] = ()
    peer_authns: tuple[PeerAuthn, ...] = ()
    trust_domains: TrustDomains | None = None      # from MeshSettings; None until the controller sends it
    versions: Mapping[str, str] = field(default_factory=lambda: _EMPTY)                    # type URL -> controller system version
    telemetry: tuple[TelemetryPolicy, ...] = ()
    mesh: MeshSettings | None = None               # extension/default providers the Telemetries name


@dataclass(frozen=True)
class Policies:
    """What applies to one destination workload: its authorization policies and the peer
    authentication policies that can set its mTLS mode (evaluate with `ztunnel.authz`)."""

    authorizations: tuple[Authorization, ...]
    peer_authns: tuple[PeerAuthn, ...]


@dataclass
class Rejection:
    type_url: str
    version: str
    message: str
    time: float


# --- validation and indexing (pure) -------------------------------------------------------------

def _ip(value: Any, where: str, problems: list[str]) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except (ValueError, TypeError):
        problems.append(f"{where}: {value!r} is not an IP address")
        return None


def _fail(type_url: str, problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ConfigRejected(f"{type_url}: {shown}")


def _workload_problems(name: str, w: Workload, problems: list[str]) -> list[str]:
    """Check one workload (appending to `problems`); returns its IPs, normalized."""
    where = f"Workload {w.namespace}/{w.name} (uid {name})"
    if not w.ips:
        problems.append(f"{where}: ips: empty")
    ips = []
    for i, raw in enumerate(w.ips):
        ip = _ip(raw, f"{where}: ips[{i}]", problems)
        if ip is not None:
            ips.append(ip)
    if w.protocol == "HBONE":
        try:
            ident.parse(w.identity)
        except ident.InvalidSpiffeId as e:
            problems.append(f"{where}: identity: {e}")
    elif w.protocol != "TCP":
        problems.append(f"{where}: protocol: {w.protocol!r} is not HBONE or TCP")
    return ips


def _choose(ip: str, claims: tuple[tuple[str, Workload], ...], problems: list[str]) -> Workload:
    """The workload an IP means. Several plain-TCP workloads may share an IP (host-network pods
    share their node's); two HBONE workloads may not: inbound traffic to that IP would have two
    identities."""
    ws = [w for _, w in claims]
    mesh = [w for w in ws if w.protocol == "HBONE"]
    if len(mesh) > 1:
        who = ", ".join(f"{w.namespace}/{w.name}" for w in mesh)
        problems.append(f"IP {ip} is claimed by more than one mesh workload ({who}); "
                        "its identity would be ambiguous")
    return mesh[0] if mesh else min(ws, key=lambda w: (w.namespace, w.name, w.uid))


Indexed = tuple[dict[str, Workload], dict[str, Workload], dict[str, tuple[tuple[str, Workload], ...]]]


def index_workloads(state: Mapping[str, Workload]) -> Indexed:
    """(by uid, by IP, every IP's claims). Raises ConfigRejected naming every problem."""
    problems: list[str] = []
    by_ip: dict[str, list[tuple[str, Workload]]] = {}
    for name, w in sorted(state.items()):
        for ip in _workload_problems(name, w, problems):
            by_ip.setdefault(ip, []).append((name, w))
    claims = {ip: tuple(c) for ip, c in by_ip.items()}
    chosen = {ip: _choose(ip, claims[ip], problems) for ip in sorted(claims)}
    _fail(Workload.TYPE, problems)
    return dict(state), chosen, claims


def index_workload_delta(view: ConfigView, update: ConfigUpdate) -> Indexed | None:
    """`index_workloads(update.state)`, from `view`'s indexes and the delta alone: a pod's churn
    re-checks and re-chooses what it touches, not 10,000 workloads (250 ms per update at that
    size, on the event loop). The same result and the same rejection, since the view's
    workloads all passed the checks together; None when the delta is not over `view` (or is
    most of the state), and the caller rebuilds."""
    prev, state = view.workloads, update.state
    touched = set(update.changed) | set(update.removed)
    if len(touched) * 4 > len(state):
        return None
    kept = 0
    for name, w in prev.items():
        if name not in touched:
            if state.get(name) is not w:
                return None         # the view is not what this delta was computed against
            kept += 1
    if kept != len(state) - sum(1 for n in touched if n in state):
        return None
    problems: list[str] = []
    claims = dict(view.workload_ips)
    affected: set[str] = set()
    for name in touched:
        old = prev.get(name)
        if old is not None:
            for ip in _workload_problems(name, old, []):
                rest = tuple(c for c in claims.get(ip, ()) if c[0] != name)
                if rest:
                    claims[ip] = rest
                else:
                    claims.pop(ip, None)
                affected.add(ip)
    for name in sorted(n for n in touched if n in state):
        w = cast(Workload, state[name])
        for ip in _workload_problems(name, w, problems):
            claims[ip] = tuple(sorted((*claims.get(ip, ()), (name, w)), key=lambda c: c[0]))
            affected.add(ip)
    chosen = dict(view.workloads_by_ip)
    for ip in sorted(affected):
        if ip in claims:
            chosen[ip] = _choose(ip, claims[ip], problems)
        else:
            chosen.pop(ip, None)
    _fail(Workload.TYPE, problems)
    return dict(state), chosen, claims


@dataclass(frozen=True)
class ServiceIndex:
    by_name: dict[str, Service]
    by_vip: dict[str, Service]
    ports: dict[tuple[str, int], tuple[Service, ServicePort]]
    entry_endpoints: dict[tuple[str, int], tuple[Service, ServicePort]]
    entry_subnets: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Service], ...]


def index_services(state: Mapping[str, Service]) -> ServiceIndex:
    """Index by "ns/name", by VIP, by (VIP, port), and the ServiceEntries' endpoint addresses and
    subnets. A VIP belongs to one Service: two Services on one VIP would make every connection to
    it a guess."""
    problems: list[str] = []
    by_vip: dict[str, list[Service]] = {}
    ports: dict[tuple[str, int], tuple[Service, ServicePort]] = {}
    entry_eps: dict[tuple[str, int], tuple[Service, ServicePort]] = {}
    subnets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Service]] = []
    for name, s in sorted(state.items()):
        where = f"Service {name}"
        seen_ports: set[int] = set()
        for i, p in enumerate(s.ports):
            if not 0 < p.port < 65536:
                problems.append(f"{where}: ports[{i}].port: {p.port} is not a TCP port")
            if p.target_port and not 0 < p.target_port < 65536:
                problems.append(f"{where}: ports[{i}].target_port: {p.target_port} is not a TCP port")
            if p.port in seen_ports:
                problems.append(f"{where}: ports[{i}].port: {p.port} appears twice")
            seen_ports.add(p.port)
        for i, ep in enumerate(s.endpoints):
            if ep.hostname and not ep.ip:
                continue        # a DNS endpoint: resolved when dialled
            ip = _ip(ep.ip, f"{where}: endpoints[{i}].ip", problems)
            if ip is not None and s.kind == "ServiceEntry" and s.resolution == "STATIC":
                for p in s.ports:
                    entry_eps.setdefault((ip, target_port(p, ep)), (s, p))
        for i, raw in enumerate(s.subnets):
            try:
                subnets.append((ipaddress.ip_network(raw, strict=False), s))
            except ValueError:
                problems.append(f"{where}: subnets[{i}]: {raw!r} is not a CIDR")
        for i, raw in enumerate(s.vips):
            vip = _ip(raw, f"{where}: vips[{i}]", problems)
            if vip is None:
                continue
            by_vip.setdefault(vip, []).append(s)
            for p in s.ports:
                ports[(vip, p.port)] = (s, p)
    for vip, svcs in sorted(by_vip.items()):
        if len(svcs) > 1:
            problems.append(f"VIP {vip} is claimed by more than one Service "
                            f"({', '.join(s.resource_name for s in svcs)})")
    _fail(Service.TYPE, problems)
    subnets.sort(key=lambda ns: -ns[0].prefixlen)
    return ServiceIndex(dict(state), {vip: svcs[0] for vip, svcs in by_vip.items()}, ports, entry_eps,
                        tuple(subnets))


def check_authorizations(state: Mapping[str, Authorization]) -> tuple[Authorization, ...]:
    problems: list[str] = []
    for name, a in sorted(state.items()):
        where = f"Authorization {name}"
        if a.action not in ACTIONS:
            problems.append(f"{where}: action: {a.action!r} is not one of {', '.join(sorted(ACTIONS))}")
        for r, rule in enumerate(a.rules):
            for c, clause in enumerate(rule.clauses):
                for m, match in enumerate(clause):
                    for fname in ("ip_blocks", "not_ip_blocks", "destination_ips", "not_destination_ips"):
                        for v in getattr(match, fname):
                            try:
                                ipaddress.ip_network(v, strict=False)
                            except ValueError:
                                problems.append(f"{where}: rules[{r}].clauses[{c}][{m}].{fname}: "
                                                f"{v!r} is not an address or CIDR")
    _fail(Authorization.TYPE, problems)
    return tuple(a for _, a in sorted(state.items()))


def check_peer_authns(state: Mapping[str, PeerAuthn]) -> tuple[PeerAuthn, ...]:
    problems: list[str] = []
    for name, p in sorted(state.items()):
        where = f"PeerAuthn {name}"
        if p.mode not in MODES:
            problems.append(f"{where}: mode: {p.mode!r} is not one of {', '.join(sorted(MODES))}")
        for port, mode in p.port_modes.items():
            if mode not in MODES:
                problems.append(f"{where}: port_modes[{port}]: {mode!r} is not one of {', '.join(sorted(MODES))}")
    _fail(PeerAuthn.TYPE, problems)
    return tuple(p for _, p in sorted(state.items()))


def check_mesh_settings(state: Mapping[str, MeshSettings]) -> TrustDomains | None:
    """The trust domains the mesh settings name; ConfigRejected for more than one, a bad name or an
    outbound traffic policy mode ztunnel does not know."""
    if not state:
        return None
    if len(state) > 1:
        raise ConfigRejected(f"{MeshSettings.TYPE}: {len(state)} resources ({', '.join(sorted(state))}); "
                             "the mesh has exactly one")
    (m,) = state.values()
    if m.outbound_traffic_policy not in OUTBOUND_MODES:
        # Routing reads anything but REGISTRY_ONLY as ALLOW_ANY: a mode of a newer controller, taken
        # as it came, would open egress that it restricts. Refused; the last good settings stay.
        raise ConfigRejected(f"{MeshSettings.TYPE} {m.name}: outbound_traffic_policy: "
                             f"{m.outbound_traffic_policy!r} is not one of {', '.join(OUTBOUND_MODES)}")
    try:
        return TrustDomains.of(m.trust_domain, m.trust_domain_aliases)
    except ValueError as e:
        raise ConfigRejected(f"{MeshSettings.TYPE} {m.name}: {e}") from None


def next_view(view: ConfigView, update: ConfigUpdate) -> ConfigView:
    """The view after `update`; raises ConfigRejected (and changes nothing) if it is unusable."""
    t, state = update.type_url, update.state
    versions = MappingProxyType({**view.versions, t: update.system_version})
    if t == Workload.TYPE:
        by_uid, by_ip, claims = (index_workload_delta(view, update)
                                 or index_workloads(state))  # type: ignore[arg-type]
        return replace(view, workloads=MappingProxyType(by_uid), workloads_by_ip=MappingProxyType(by_ip),
                       workload_ips=MappingProxyType(claims), versions=versions)
    if t == Service.TYPE:
        ix = index_services(state)  # type: ignore[arg-type]
        return replace(view, services=MappingProxyType(ix.by_name), services_by_vip=MappingProxyType(ix.by_vip),
                       service_ports=MappingProxyType(ix.ports), entry_endpoints=MappingProxyType(ix.entry_endpoints),
                       entry_subnets=ix.entry_subnets, versions=versions)
    if t == Authorization.TYPE:
        return replace(view, authorizations=check_authorizations(state), versions=versions)  # type: ignore[arg-type]
    if t == PeerAuthn.TYPE:
        return replace(view, peer_authns=check_peer_authns(state), versions=versions)  # type: ignore[arg-type]
    if t == MeshSettings.TYPE:
        return replace(view, trust_domains=check_mesh_settings(state), versions=versions,  # type: ignore[arg-type]
                       mesh=cast(MeshSettings, next(iter(state.values()), None)))
    if t == TelemetryPolicy.TYPE:
        return replace(view, telemetry=tuple(sorted((cast(TelemetryPolicy, p) for p in state.values()),
                                                    key=lambda p: p.resource_name)), versions=versions)
    raise ConfigRejected(f"{t}: ztunnel does not subscribe to this type")


# --- the live config ---------------------------------------------------------------------------

@dataclass
class MeshState:
    """The config ztunnel routes and enforces by. `apply` is the ConfigClient callback.

    `synced` is True once every type has accepted a response from the controller (a state read
    from the file cache serves traffic but does not count: it may be stale). `populated` is True
    once every type holds a state, from the controller or the cache: before that an empty view
    would admit anything (no PeerAuthentication, no AuthorizationPolicy), so ztunnel takes no pod
    until then (ztunnel/serve.py).
    """

    root_namespace: str = "ambit-system"
    trust_domain: str = trustdomain.DEFAULT   # ztunnel's own (--trust-domain): used until MeshSettings arrive
    view: ConfigView = field(default_factory=ConfigView)
    version: str = ""                       # system version of the newest update applied
    updated_at: float = 0.0
    rejections: dict[str, Rejection] = field(default_factory=dict)   # type URL -> rejection in force
    _synced: set[str] = field(default_factory=set)
    _applied: set[str] = field(default_factory=set)     # from the controller or the cache
    _listeners: list[Callable[[ConfigView, ConfigUpdate], None]] = field(default_factory=list)
    _telemetry_cache: tuple[ConfigView | None, dict[tuple[str, str], TelemetryConfig]] = (None, {})
    _closest_cache: tuple[ConfigView | None, dict[tuple[str, str, str, int], tuple[Endpoint, ...]]] = (None, {})

    def apply(self, update: ConfigUpdate) -> None:
        try:
            view = next_view(self.view, update)
        except ConfigRejected as e:
            self.rejections[update.type_url] = Rejection(update.type_url, update.system_version, str(e), time.time())
            raise
        self.view = view
        self.version = update.system_version
        self.rejections.pop(update.type_url, None)   # a later good state supersedes the rejection
        self.updated_at = time.time()
        self._applied.add(update.type_url)
        if not update.from_cache:
            self._synced.add(update.type_url)
        for fn in list(self._listeners):
            fn(view, update)

    def on_change(self, fn: Callable[[ConfigView, ConfigUpdate], None]) -> None:
        """Call `fn(new_view, update)` after every accepted update (e.g. to prefetch certificates
        for new local pods). It runs inside the apply: raising would NACK the update."""
        self._listeners.append(fn)

    @property
    def synced(self) -> bool:
        return self._synced.issuperset(REQUIRED)

    @property
    def populated(self) -> bool:
        return self._applied.issuperset(REQUIRED)

    async def wait_populated(self) -> None:
        """Return once `populated` (see the class docstring)."""
        if self.populated:
            return
        done = asyncio.Event()
        self.on_change(lambda _view, _update: done.set() if self.populated else None)
        await done.wait()

    @property
    def versions(self) -> Mapping[str, str]:
        return self.view.versions

    # -- lookups (the data path's questions) -----------------------------------------------------
    def lookup_workload(self, ip: str) -> Workload | None:
        return self.view.workloads_by_ip.get(ip)

    def workload(self, uid: str) -> Workload | None:
        return self.view.workloads.get(uid)

    def lookup_service(self, vip: str, port: int) -> tuple[Service, ServicePort] | None:
        """The Service and the port of it that `vip:port` addresses; None if that is no Service port."""
        return self.view.service_ports.get((vip, port))

    def lookup_entry(self, ip: str, port: int) -> tuple[Service, ServicePort] | None:
        """The ServiceEntry (and its port) that `ip:port` reaches without a VIP: a STATIC entry's
        endpoint, or an address in an entry's CIDR `addresses` (most specific prefix wins)."""
        hit = self.view.entry_endpoints.get((ip, port))
        if hit is not None or not self.view.entry_subnets:
            return hit
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        for net, svc in self.view.entry_subnets:
            if addr.version == net.version and addr in net:
                sp = next((p for p in svc.ports if p.port == port), None)
                if sp is not None:
                    return svc, sp
        return None

    def service_by_vip(self, vip: str) -> Service | None:
        return self.view.services_by_vip.get(vip)

    def policies_for(self, workload: Workload) -> Policies:
        v = self.view
        auths = tuple(a for a in v.authorizations if authz.applies(a, workload, self.root_namespace))
        pas = tuple(p for p in v.peer_authns if _peer_authn_applies(p, workload, self.root_namespace))
        return Policies(auths, pas)

    def access_log_config(self, workload: Workload, side: str) -> AccessLogConfig:
        """The Telemetry API's access logging for `workload` on `side` (CLIENT: its outbound
        connections, SERVER: its inbound ones), cached until the next accepted update."""
        return self.telemetry_config(workload, side).access_log

    def metrics_config(self, workload: Workload, side: str) -> MetricsConfig:
        """The Telemetry API's metrics for `workload` on `side` (CLIENT: reporter="source",
        SERVER: reporter="destination")."""
        return self.telemetry_config(workload, side).metrics

    def closest_endpoints(self, service: Service, ready: list[Endpoint], src_uid: str, src_node: str) -> list[Endpoint]:
        """Of `ready` (`service`'s ready endpoints, in its order), those its traffic distribution
        lets the pod `src_uid` on node `src_node` reach (ztunnel/distribution.py); cached per
        Service, client place and endpoint count until the next update, since every connection
        of a client to the Service asks the same."""
        src = self.workload(src_uid)
        client = distribution.place(src.locality if src is not None else "", src_node)
        view, cache = self._closest_cache
        if view is not self.view:
            view, cache = self.view, {}
            self._closest_cache = (view, cache)
        key = (service.resource_name, service.kind, "/".join(client), len(ready))
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= 4096:      # client places x Services: bounded whatever the churn
                cache.clear()
            hit = cache[key] = tuple(distribution.closest(service.traffic_distribution, client, ready,
                                                          self.endpoint_place))
        return list(hit)

    def endpoint_place(self, ep: Endpoint) -> tuple[str, str, str, str]:
        """Where endpoint `ep` runs: its own locality (a ServiceEntry endpoint's), else its pod's,
        and its node ("" parts when unknown)."""
        wl = (self.workload(ep.workload_uid) if ep.workload_uid else None) or \
            (self.lookup_workload(ep.ip) if ep.ip else None)
        return distribution.place(ep.locality or (wl.locality if wl is not None else ""),
                                  ep.node or (wl.node if wl is not None else ""))

    def telemetry_config(self, workload: Workload, side: str) -> TelemetryConfig:
        """The Telemetry API's resolution for `workload` on `side`, cached until the next update."""
        view, cache = self._telemetry_cache
        if view is not self.view:
            view, cache = self.view, {}
            self._telemetry_cache = (view, cache)
        key = (workload.uid, side)
        cfg = cache.get(key)
        if cfg is None:
            cfg = cache[key] = telemetry.for_workload(view.telemetry, view.mesh, workload.namespace,
                                                      workload.labels, side)
        return cfg

    @property
    def trust_domains(self) -> TrustDomains:
        """The trust domains peers must be in: the controller's MeshSettings, or, before they
        arrive (or from a controller that sends none), ztunnel's own trust domain alone."""
        return self.view.trust_domains or TrustDomains(self.trust_domain)

    # -- admin ------------------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        v = self.view
        return {
            "version": self.version,
            "versions": dict(v.versions),
            "synced": self.synced,
            "updated_at": self.updated_at,
            "rejections": {t: {"version": r.version, "message": r.message, "time": r.time}
                           for t, r in sorted(self.rejections.items())},
            "workloads": [w.to_dict() for w in sorted(v.workloads.values(), key=lambda w: (w.namespace, w.name))],
            "services": [s.to_dict() for _, s in sorted(v.services.items())],
            "authorizations": [a.to_dict() for a in v.authorizations],
            "peer_authns": [p.to_dict() for p in v.peer_authns],
            "telemetry": [p.to_dict() for p in v.telemetry],
            "trust_domains": {"trust_domain": self.trust_domains.primary,
                              "aliases": list(self.trust_domains.aliases),
                              "from_controller": v.trust_domains is not None},
        }


def _peer_authn_applies(p: PeerAuthn, w: Workload, root_namespace: str) -> bool:
    """The same selection as `authz.peer_authn`: a selector selects in its own namespace only;
    without one, a root-namespace policy is mesh-wide and any other is namespace-wide."""
    if p.selector:
        return p.namespace == w.namespace and all(w.labels.get(k) == v for k, v in p.selector.items())
    return p.root or p.namespace in (root_namespace, w.namespace)


def config_client(config: MeshState, target: str, node: str, *, instance_id: str = "",
                  cache_path: str | Path | None = None, types: Iterable[str] = TYPES,
                  token_file: Path | None = None, trust: ControllerTrust | None = None) -> ConfigClient:
    """The ConfigClient that feeds `config` as ztunnel `node` (start it with `await client.start()`),
    presenting the node credential in `token_file` (the controller requires it when it runs a CA),
    over TLS to a controller that proves itself against `trust` (ambit.configclient.tls)."""
    return ConfigClient(target, NodeInfo("ztunnel", node, instance_id=instance_id), list(types), config.apply,
                        cache_path=cache_path, trust=trust,
                        metadata=node_metadata(token_file, node) if token_file is not None else None)
