"""The waypoint process: HBONE in, the sans-IO cores in the middle, HBONE out.

    source ztunnel --HBONE(:authority VIP:port, client cert = source)--> waypoint :15008
    waypoint: Downstream from the tunnel, Engine (HTTP/1.1, h2, or opaque), decide = authz, routing
    waypoint --HBONE(:authority pod:targetPort, Forwarded: for=source, cert = waypoint)--> pod's ztunnel

Per tunnel, the `Downstream` is built from what the waypoint itself verified: the source's SPIFFE
id from its certificate, the source address from the TLS peer (a source ztunnel dials from inside
the source pod's netns, so that is the pod's address), the destination from the CONNECT
`:authority`, and the Service when that address is one of a Service's VIP:port. A CONNECT to an
address the waypoint does not front (not a Service whose waypoint this is, nor a workload using it)
is refused with 403, so the waypoint is no open relay.

Non-HTTP tunnels (the engine's detector says opaque) get L4 forwarding to the original
destination's endpoint after external authorization (a CUSTOM policy's L4 view with a gRPC
provider: the tunnel held for the check, waypoint/authz/extauthz_tcp.py) and L4 policy: the
waypoint's AuthorizationPolicies in their L4 view
(waypoint/authz/l4.py: an ALLOW match naming an HTTP attribute never matches, a DENY drops its HTTP
attributes and applies the rest, as Istio does for TCP) evaluated on a request head with an empty
method and path, so only connection attributes (source identity, namespace, address, destination
port) decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import ssl
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from ambit import identity as spiffe
from ambit import telemetry as telemetry_api
from ambit.dataplane import tls
from ambit.dataplane.handoff import Receiver
from ambit.dataplane.hbone import HBONEClientPool, HBONEServer, HBONEStream
from ambit.dataplane.hbone.limits import ConnLimiter, PendingHandshakes
from ambit.dataplane.identity import IdentityManager
from ambit.dataplane.identity.wait import IdentityGate
from ambit.dataplane.keepalive import describe as describe_keepalive
from ambit.dataplane.keepalive import effective as effective_keepalive
from ambit.dataplane.listen import tcp_listener
from ambit.dataplane.tap import TapHub
from ambit.dataplane.telemetry.metrics import Metrics
from ambit.dataplane.telemetry.otlp_logs import OtlpLogCollector, OtlpLogs
from ambit.model import IngressGateway, RouteDestination, Service, TcpKeepalive, Workload
from ambit.telemetryconfig import TracingConfig
from ambit.waypointpods import bound_waypoints, ready_waypoint_pods, waypoint_pods
from waypoint import endpoints
from waypoint.authz import Verdict, authorize, extauthz_tcp
from waypoint.authz.custom import DENY as CUSTOM_DENY
from waypoint.authz.custom import Custom
from waypoint.authz.evaluate import DENIED_BODY, RBAC_FLAG, denied_detail
from waypoint.authz.extauthz import ERROR as EXT_AUTHZ_ERROR
from waypoint.authz.hold import hold as ext_authz_hold
from waypoint.config import View, WaypointConfig
from waypoint.http import Engine, HBONETransport, RequestRecord, UpstreamTarget, authzcall
from waypoint.http.attempt import CONNECT_FAILURE, Outcome
from waypoint.http.injection import MENDED
from waypoint.http.opaque import OpaqueRelay, Refused, hold_for
from waypoint.http.plug import Attachable, connect_tcp
from waypoint.ingress_listen import IngressListeners
from waypoint.localreply import GRPC_PERMISSION_DENIED, local_reply
from waypoint.origination import ORIGINATING, Origination, check_peer, origination
from waypoint.request import Decision, Downstream, EndUser, Forward, Hold, LocalReply, RequestHead, SubReply
from waypoint.routing import route
from waypoint.routing.route import NO_ROUTE
from waypoint.routing.tcp import choose_backend, tcp_route, tls_route
from waypoint.settings import WaypointSettings
from waypoint.tap import request_event
from waypoint.telemetry.accesslog import RequestLog
from waypoint.telemetry.clusters import ClusterCollector
from waypoint.telemetry.extauthz import CheckCollector, CheckCounts
from waypoint.telemetry.hook import Telemetry
from waypoint.telemetry.loglines import LogLines
from waypoint.telemetry.mended import MendedCollector
from waypoint.telemetry.metrics import GATEWAY_REPORTER, HttpMetrics
from waypoint.telemetry.mirrors import MirrorCollector
from waypoint.telemetry.tracing_settings import settings_tracing, tracing_identity
from waypoint.traffic import session
from waypoint.traffic.cluster import Cluster, Clusters
from waypoint.traffic.hashkey import HashKey
from waypoint.traffic.locality import HOSTNAME_LABEL, Place, Places

if TYPE_CHECKING:
    from waypoint.telemetry.tracing_sdk import TracingFor

log = logging.getLogger("ambit.waypoint")
access = logging.getLogger("ambit.waypoint.access")
_TARGETS_CACHED = 4096      # upstream targets cached per config View (endpoints x sources)


def _place_of(wl: Workload | None) -> Place:
    """Where a workload runs, for locality balancing: its locality, and its labels with its node
    as `kubernetes.io/hostname` (Istio adds it to every proxy's and endpoint's labels: the
    failoverPriority of trafficDistribution PreferSameNode compares it); "" and no labels for no
    workload."""
    if wl is None:
        return ("", {})
    return (wl.locality, {**wl.labels, HOSTNAME_LABEL: wl.node} if wl.node else wl.labels)


def _place(v: View, pick: endpoints.Pick) -> Place:
    """Where an endpoint runs (`_place_of` its Workload; "" and none for an endpoint that is no
    pod, e.g. a ServiceEntry address), with a ServiceEntry endpoint's own `locality` first."""
    place = _place_of(v.by_ip.get(pick.ip) if pick.workload else None)
    return (pick.locality, place[1]) if pick.locality else place


# A tunnel this proxy sends through another waypoint carries how many waypoints the request has
# come through (this one included); a waypoint sends no request through yet another once MAX_HOPS
# have (503 UH): two waypoints whose routes send to each other's Services would loop forever.
HOPS_HEADER = "ambit-waypoint-hops"
MAX_HOPS = 3


def _own(v: View) -> str:
    return f"{v.waypoint.namespace}/{v.waypoint.name}"


def _via_waypoint(v: View, svc: Service) -> str:
    """The waypoint ("ns/name") this proxy sends `svc`'s traffic through, "" for none: the one the
    Service is bound to, unless that is this proxy. The Service's pods accept tunnels only from
    their waypoint (ztunnel/admission.py `waypoint_check`), so an ingress gateway, or a waypoint
    whose routes send to another waypoint's Service, asks that waypoint for the Service (its VIP
    and port) as a client's ztunnel does. Istio's gateways do so for Services labelled
    `istio.io/ingress-use-waypoint`, and its waypoints go to the pods (ztunnel does not enforce
    there); here both go through it (docs/ingress.md, docs/waypoint.md)."""
    wp = svc.waypoint
    if not wp or not svc.vips or wp == _own(v):
        return ""
    return wp


def _ready(v: View, svc: Service, port: int, labels: Mapping[str, str] | None) -> list[endpoints.Pick]:
    """The upstreams of `svc` port `port` (in the subset `labels`): its ready endpoints, each
    reached as `_reachable` says, or the pods of the waypoint it is reached through
    (`_via_waypoint`), which choose the endpoint themselves (so a subset chosen here is not applied
    there; `ambit apply` warns)."""
    wp = _via_waypoint(v, svc)
    if wp:
        pods = waypoint_pods(v.workloads.values(), wp)
        return endpoints.through_waypoint(svc, port, ready_waypoint_pods(v.services, wp, pods))
    out = []
    for p in endpoints.candidates(svc, port, labels, v.workloads, v.by_ip):
        r = _reachable(v, p)
        if r is not None:
            out.append(r)
    return out


def _reachable(v: View, pick: endpoints.Pick) -> endpoints.Pick | None:
    """`pick` itself, or `pick` through a ready pod of a waypoint its pod is bound to for that port
    (its own `waypoint-for: workload` waypoint, or another Service's: ambit/waypointpods.py
    `bound_waypoints`) when this proxy is not one of them; None when that waypoint has no pod (the
    endpoint is left out, never reached around it)."""
    if not pick.mesh or pick.plain:
        return pick
    wl = v.by_ip.get(pick.ip)
    if wl is None:
        return pick
    bound = bound_waypoints(v.services, wl, pick.port)
    if not bound or _own(v) in bound:
        return pick
    wp = wl.waypoint if wl.waypoint in bound else sorted(bound)[0]
    pods = ready_waypoint_pods(v.services, wp, waypoint_pods(v.workloads.values(), wp))
    if not pods:
        return None
    return endpoints.around(pick, pods[zlib.crc32(pick.address.encode()) % len(pods)])


def _hops(value: str | None) -> int:
    """A CONNECT's HOPS_HEADER as a count (0 when absent; anything unreadable counts as the limit:
    a peer that garbles it sends nothing further through a waypoint)."""
    if not value:
        return 0
    return int(value) if value.isdigit() and len(value) < 3 else MAX_HOPS


def _places(v: View, svc: Service, port: int, labels: Mapping[str, str] | None,
            cands: Sequence[endpoints.Pick]) -> Places:
    """The places of `cands` (the ready endpoints of `svc` port `port`, in the subset `labels`) and,
    for a Service with trafficDistribution, the addresses and places of its endpoints that are not
    ready: Istio sends them to Envoy as unhealthy hosts, which count in their priority's total."""
    unready = ()
    if svc.traffic_distribution and not _via_waypoint(v, svc):
        unready = tuple((p.address, _place(v, p))
                        for p in endpoints.candidates(svc, port, labels, v.workloads, v.by_ip, ready=False))
    return Places((_place(v, p) for p in cands), unready, (p.weight or 1 for p in cands))


def _ka_key(ka: TcpKeepalive | None) -> str:
    """The part of an upstream pool key that keeps connections of different TCP keepalives apart."""
    return f" {describe_keepalive(ka)}" if ka is not None else ""


def _choose_among(v: View, svc: Service, port: int, labels: Mapping[str, str] | None,
                  cluster: Cluster) -> endpoints.Pick | None:
    """`WaypointProxy._choose` among the ready endpoints of `svc` port `port` (in the subset
    `labels`), not from the View's cache (opaque connections): their places are computed only for
    a cluster with locality balancing or a trafficDistribution."""
    cands = _ready(v, svc, port, labels)
    return WaypointProxy._choose(cands, cluster, addresses=[p.address for p in cands],
                            places=_places(v, svc, port, labels, cands)
                            if cluster.locality is not None or cluster.distribution else None)


def parse_authority(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ValueError(f"{value!r} is not ip:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ip = str(ipaddress.ip_address(host))
    p = int(port)
    if not 0 < p < 65536:
        raise ValueError(f"{value!r}: port out of range")
    return ip, p


class WaypointProxy:
    """Everything per tunnel and per request; the process edges (config client, CA, listeners)
    are in __main__."""

    def __init__(self, settings: WaypointSettings, config: WaypointConfig, identities: IdentityManager | None,
                 rng: random.Random | None = None, http_metrics: HttpMetrics | None = None,
                 registry: CollectorRegistry | None = None, tracing_for: TracingFor | None = None,
                 tcp_metrics: Metrics | None = None) -> None:
        self.settings = settings
        # what tracing applies: the injected resolver (Telemetry API), else the --tracing-* flags
        flags = settings_tracing(settings)
        self.tracing_for = tracing_for or self._telemetry_tracing(flags)
        # the providers the flags name: their SDK and exporters are loaded at start (see `_tracing`)
        self._flag_providers = flags("").providers if flags is not None else ()
        self._traces = tracing_for is not None or bool(self._flag_providers)
        self.config = config
        self.identities = identities
        self.identity = settings.identity
        self.rng = rng or random.Random()
        self.wall_clock = time.time          # what JWT exp/nbf are checked against (Unix time)
        self.clusters = Clusters(time.monotonic, self.rng)
        self._clusters_view: Any = None       # the config View `clusters` was last updated from
        self.ext_authz = CheckCounts()      # external authorization checks by provider and result
        if registry is not None:
            registry.register(CheckCollector(self.ext_authz))
            registry.register(ClusterCollector(self.current_clusters))
            registry.register(MirrorCollector(lambda: self.engine))
            registry.register(MendedCollector(MENDED))
        self.contexts = tls.ContextCache()
        self.pool = HBONEClientPool(self._client_context, handshake_timeout=settings.tunnel.connect_timeout)
        self.engine: Engine | None = None
        self.server: HBONEServer | None = None
        self.stopping = False       # SIGTERM: draining; /healthz/ready says 503 from now on
        # One source identity may not take every `max_connections` slot (a noisy or hostile workload
        # starving the namespace's others); ztunnel has the same bound, node-wide.
        self.per_identity = ConnLimiter(settings.max_connections_per_identity, "HBONE connections per identity")
        self.handoff: Receiver | None = None            # a worker's link to its supervisor
        self.ingress: IngressListeners | None = None     # an ingress gateway's listeners (settings.ingress)
        self.tunnels = 0
        self.refused = 0
        self.requests = 0
        # Istio's HTTP metrics (reporter="waypoint") and one access-log line per request, both with
        # the source and destination workloads resolved from the config by address.
        # A request's Telemetry config (access logging, metrics overrides) is resolved once, by
        # `Telemetry`, for both; the View caches it per Service and is replaced on each update.
        self.otlp_logs = OtlpLogs()     # envoyOtelAls providers' records (a thread once first used)
        if registry is not None:
            registry.register(OtlpLogCollector(lambda: self.otlp_logs if self.otlp_logs.counts else None))
        self.telemetry = Telemetry(http_metrics, RequestLog(LogLines(access), otel=self.otlp_logs.submit),
                                   lambda ip: self.config.view.by_ip.get(ip), tcp=tcp_metrics,
                                   telemetry_for=lambda svc: self.config.view.telemetry_for_waypoint(svc),
                                   own=self._own_workload if settings.ingress else None,
                                   cluster_domain=settings.cluster_domain)
        if http_metrics is not None:    # a Service it names without a host of its own: <name>.<ns>.svc.<domain>
            http_metrics.cluster_domain = settings.cluster_domain
        if settings.ingress and http_metrics is not None:
            http_metrics.reporter = GATEWAY_REPORTER    # Istio's gateways report as the client side
        self._own: tuple[object, Workload | None] | None = None     # (the View it was found in, this pod's Workload)
        self.tap = TapHub(f"waypoint/{settings.waypoint}")      # `ambit tap` (admin GET /tap)
        self.gc_stats: Any = None       # ambit.dataplane.gctune.GCStats once __main__ has tuned the collector

    def _own_workload(self) -> Workload | None:
        """This pod's Workload in the config (an ingress gateway's metrics name it as the source),
        found once per config View: the gateway's namespace and `--pod-name`."""
        view = self.config.view
        memo = self._own
        if memo is not None and memo[0] is view:
            return memo[1]
        ns, name = self.settings.namespace, self.settings.pod_name
        found = next((w for w in view.workloads.values() if w.name == name and w.namespace == ns), None)
        self._own = (view, found)
        return found

    def _telemetry_tracing(self, flags: TracingFor | None) -> TracingFor:
        """What a request to a Service is traced with: the Telemetry API's resolution for this
        waypoint and that Service (mesh < namespace < targetRefs, ambit.telemetry) when it names a
        tracing provider, else the --tracing-* flags (or nothing). Cached per Service in the config
        View, so a request pays a dict lookup."""
        def tracing_for(service: str = "") -> TracingConfig:
            cfg = self.config.view.telemetry_for_waypoint(service).tracing
            if cfg.providers or flags is None:
                return cfg
            return flags(service)
        return tracing_for

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.engine = Engine(self.settings.http, self.decide, self.upstream, opaque=self.opaque,
                             access_log=self._access_log, stats=self._stats, rng=self.rng)
        self.engine.tcp_stats = self.telemetry.tcp  # type: ignore[attr-defined]   # opaque tunnels
        self._tracing(self._flag_providers)
        if self.settings.ingress:       # clients from outside the mesh, on the Gateway's listeners
            engine = self.engine
            self.ingress = IngressListeners(self.settings.ingress_address, engine.serve,
                                            lambda t, down, early: OpaqueRelay(engine, down, t, early, False),
                                            reuse_port=self.settings.worker_index >= 0,
                                            max_connections=self.settings.max_connections,
                                            pending=self._pending_handshakes(),
                                            max_per_source=self.settings.max_connections_per_source)
            await self.on_config()
            return
        if self.settings.handoff_socket is not None:     # a worker: the supervisor accepts (waypoint/workers.py)
            self.server = HBONEServer(None, self._server_context, self.on_connect,
                                      max_connections=self.settings.max_connections,
                                      pending=self._pending_handshakes(), per_identity=self.per_identity,
                                      certificate_gate=self._certificate_gate())
            await self.server.start()
            self.handoff = Receiver(self.settings.handoff_socket, self.settings.worker_index, self.server.adopt)
            await self.handoff.start()
            return
        self.server = HBONEServer(tcp_listener(self.settings.listen), self._server_context, self.on_connect,
                                  max_connections=self.settings.max_connections, pending=self._pending_handshakes(),
                                  per_identity=self.per_identity, certificate_gate=self._certificate_gate())
        await self.server.start()

    def _pending_handshakes(self) -> PendingHandshakes:
        return PendingHandshakes(self.settings.max_pending_handshakes, self.settings.max_pending_handshakes_per_source)

    def _tracing(self, providers: Sequence[Any]) -> None:
        """Give the engine its tracer once tracing is configured: the --tracing-* flags (at start) or
        a MeshConfig tracing provider a Telemetry may name (at each config update). Until then the
        OpenTelemetry SDK is not imported at all (~1 MB and 40 modules a waypoint without tracing
        never uses: docs/performance.md, round 6). The named providers' exporters are imported here,
        at config time, so a missing one fails now, naming the provider, not at the first request."""
        providers = [p for p in providers if p.kind in ("opentelemetry", "zipkin")]
        if self.engine is None or not (self._traces or providers):
            return
        from waypoint.telemetry import tracing_sdk
        self._traces = True
        for p in providers:
            tracing_sdk.exporter_class(p)
        if self.engine.tracing is None:
            self.engine.tracing = tracing_sdk.Tracing(self.tracing_for, tracing_identity(self.settings), self.rng)

    async def on_config(self) -> None:
        """After each config update: tracing providers the mesh now defines are loaded (above); an
        ingress gateway's listeners follow its Gateway."""
        try:
            self._tracing(list(telemetry_api.providers_of(self.config.view.mesh).values()))
        except ImportError as e:
            log.error("tracing provider's exporter cannot be loaded: %s; requests it traces will fail", e)
        if self.ingress is not None:
            await self.ingress.update(self.config.view.ingress)
            if IngressGateway.TYPE in self.config.synced_types:
                self.ingress.binds.settled = True   # its ports tried: the bind report means something now

    async def close(self) -> None:
        # Not ready from the first moment of the drain, before any listener closes, as Envoy's
        # /ready says DRAINING: whoever still reads readiness stops sending new work here.
        self.stopping = True
        # Every response from now on says `Connection: close`: gather() below starts the engine's
        # drain only at the next loop iteration, and uvloop reads the sockets in between, so a
        # request read there was answered keep-alive (seen under load: an idle client's next
        # request, sent once the drain had begun, kept its connection).
        if self.engine is not None:
            self.engine.draining = True
        if self.handoff is not None:
            self.handoff.close()
        if self.ingress is not None:
            await self.ingress.close()
        # The HBONE GOAWAY and the HTTP drain together, not one after the other: a tunnel carries a
        # client's keep-alive HTTP/1 or HTTP/2 connection, which ends only when the engine tells
        # it to (`Connection: close` on its next response, GOAWAY), so waiting for the tunnels
        # first held every such client until the deadline and then cut it, mid-request if one was
        # in flight. gather() starts them in this order: the HBONE server GOAWAYs its connections
        # (synchronously, before its first await) before the engine starts draining; it keeps
        # accepting for `drain_accept` s, and the engine serves what arrives as draining.
        draining = []
        if self.server is not None:
            draining.append(self.server.close(grace=self.settings.http.drain_timeout,
                                              accept_for=self.settings.http.drain_accept))
        if self.engine is not None:
            draining.append(self.engine.shutdown())
        await asyncio.gather(*draining)
        if self.engine is not None:
            if self.engine.tracing is not None:     # flush the spans still batched
                await asyncio.get_running_loop().run_in_executor(None, self.engine.tracing.shutdown)
        await asyncio.to_thread(self.otlp_logs.close)       # and the access-log records (bounded)
        await self.pool.close()

    # --- TLS ----------------------------------------------------------------------------------

    def _certificate_gate(self) -> IdentityGate | None:
        """A tunnel's handshake that arrives before the waypoint's certificate waits for it (within
        the handshake deadline) rather than being refused: ambit/dataplane/identity/wait.py."""
        return IdentityGate(self.identities, lambda: self.identity) if self.identities is not None else None

    def _server_context(self) -> ssl.SSLContext:
        cert = self.identities.current(self.identity) if self.identities is not None else None
        if cert is None:
            raise ssl.SSLError(f"no certificate for {self.identity} yet")
        return self.contexts.server(cert)

    async def _client_context(self, src_identity: str) -> ssl.SSLContext:
        if self.identities is None:
            raise ConnectionError("no identities: the waypoint has no CA configured")
        return self.contexts.client(await self.identities.get(src_identity, self.settings.tunnel.cert_wait))

    # --- downstream ---------------------------------------------------------------------------

    def downstream(self, peer_identity: str, peer_ip: str, authority: str,
                   hops: int = 0) -> tuple[Downstream | None, str]:
        """The Downstream for a tunnel, or (None, why it is refused). `hops`: the waypoints it came
        through before this one (the CONNECT's HOPS_HEADER)."""
        try:
            ip, port = parse_authority(authority)
        except ValueError as e:
            return None, f"bad :authority: {e}"
        v = self.config.view
        ns = ""
        with contextlib.suppress(ValueError):
            ns = spiffe.parse(peer_identity).namespace
        src = v.by_ip.get(peer_ip)
        labels = tuple(sorted(src.labels.items())) if src is not None and src.identity == peer_identity else ()
        svc = v.by_vip.get((ip, port)) or endpoints.entry_at(v.services.values(), ip, port, self.settings.waypoint)
        if svc is not None:
            if svc.waypoint != self.settings.waypoint:
                return None, f"{authority} is Service {svc.resource_name}, which does not use this waypoint"
            return Downstream(peer_identity, peer_ip, ns, labels, ip, port, svc.resource_name, svc.hostname,
                              hops=hops), ""
        wl = v.by_ip.get(ip)
        if wl is None or not self._fronts_workload(wl):
            return None, f"{authority} is no destination of waypoint {self.settings.waypoint}"
        return Downstream(peer_identity, peer_ip, ns, labels, ip, port, hops=hops), ""

    def _fronts_workload(self, wl: Any) -> bool:
        if wl.waypoint == self.settings.waypoint:
            return True
        v = self.config.view
        return any(s in v.services and v.services[s].waypoint == self.settings.waypoint for s in wl.services)

    def on_connect(self, stream: HBONEStream, peer_identity: str, authority: str,
                   headers: dict[str, str]) -> None:
        """HBONEServer's handler, a plain function: it answers at once and hands an admitted tunnel
        to the engine's protocol as a sink, so a tunnel costs no task and no suspended frames."""
        peer = stream.get_extra_info("peername") or ("", 0)
        down, why = self.downstream(peer_identity, peer[0], authority, _hops(headers.get(HOPS_HEADER)))
        if down is None:
            self.refused += 1
            log.info("tunnel from %s (%s) to %s refused: %s", peer[0], peer_identity, authority, why)
            stream.respond(403, why)
            return
        stream.respond(200)
        self.tunnels += 1
        assert self.engine is not None
        self.engine.serve(HBONETransport(stream), down)

    # --- decisions (the sans-IO cores) ----------------------------------------------------------

    def decide(self, head: RequestHead, down: Downstream) -> Decision | Hold:
        """RequestAuthentication (a 401, or the token/output header edits), then external
        authorization (CUSTOM policies: a `Hold` for the check, waypoint/authz/hold.py), then
        DENY/ALLOW authorization, then routing: Istio's filter order (jwt_authn, ext_authz, rbac,
        router). An ingress gateway routes on the routes attached to the listener port the request
        came in on, by its Host. The AUDIT policies the request matched ride on the decision to its
        access-log line (`audit`, as ztunnel's), whatever the decision."""
        v = self.config.view
        authn = v.authn.authenticate(head, down, self.wall_clock())
        if authn.reply is not None:
            return authn.reply
        if authn.headers is not None:
            head.headers = authn.headers
        if authn.path is not None:
            head.path = authn.path
        if authn.user is not None:      # routes may match its claims (`@request.auth.claims`)
            head.user = authn.user
        cs = v.custom       # (attributes, not `bool(cs)`: no Python call per request without CUSTOM policies)
        if cs.gateway or cs.by_service:
            custom = cs.for_request(head, down, v.trust_domains, authn.user)
            if custom is not None:
                return self._custom(v, head, down, authn.user, custom)
        # `_authorize_route` inlined: the path of every request without a check (two calls fewer)
        reply, verdict = authorize(v.policies, head, down, v.trust_domains, authn.user)
        if reply is not None:
            decision: Decision = reply
        elif self.ingress is not None:
            decision = self._route_ingress(head, down)
        else:
            decision = route(v.table, head, down, self.rng, self)
        if verdict.audit or verdict.dry_run:    # never decide; the access log names them
            decision = dataclasses.replace(decision, audit=verdict.audit, dry_run=verdict.dry_run)
        return decision

    def _custom(self, v: View, head: RequestHead, down: Downstream, user: EndUser | None,
                custom: Custom) -> Decision | Hold:
        """A request a CUSTOM policy's rule matched: the hold for its check (after the route is
        chosen, as Envoy's is), or at once its denial (a bad CUSTOM policy) or, without a route,
        the rest of `decide` unchecked."""
        if custom.action == CUSTOM_DENY:        # a bad CUSTOM policy's rules deny (waypoint/authz/custom.py)
            return local_reply(head, 403, DENIED_BODY, flags=RBAC_FLAG, grpc_status=GRPC_PERMISSION_DENIED,
                               reason=f"denied by {custom.policy}: {custom.reason}")
        routed = self._route(v, head, down)     # before the check, as Envoy's route is
        if isinstance(routed, LocalReply) and routed.flags == NO_ROUTE:
            # no route: Envoy's ext_authz does not check (getPerRouteFlags: skip_check without a route)
            return self._authorize_route(v, head, down, user, routed)

        def then() -> Decision:
            return self._authorize_route(v, head, down, user, routed)
        return ext_authz_hold(custom, head, down, self.identity, then, self.ext_authz.count,
                              self.settings.http.buffer_bytes)

    def _authorize_route(self, v: View, head: RequestHead, down: Downstream, user: EndUser | None,
                         routed: Decision) -> Decision:
        """DENY/ALLOW authorization, then the route chosen before the check (`decide` inlines
        the same for a request without one)."""
        reply, verdict = authorize(v.policies, head, down, v.trust_domains, user)
        decision = reply if reply is not None else routed
        if verdict.audit or verdict.dry_run:    # never decide; the access log names them
            decision = dataclasses.replace(decision, audit=verdict.audit, dry_run=verdict.dry_run)
        return decision

    def _route(self, v: View, head: RequestHead, down: Downstream) -> Decision:
        if self.ingress is not None:
            return self._route_ingress(head, down)
        return route(v.table, head, down, self.rng, self)

    def _route_ingress(self, head: RequestHead, down: Downstream) -> Decision:
        # X-Forwarded-For and the other edge headers were set before any decision (waypoint/http/edge.py)
        port = self.config.view.ingress.ports.get(down.destination_port)
        if port is not None and down.listener:      # HTTPS: the Host must be the SNI's listener's
            status = port.misdirected(down.listener, head.host)
            if status:
                return local_reply(head, status, flags="NR", reason=f"host {head.authority!r} is not served by "
                                   f"listener {down.listener}, which the TLS server name chose")
        host = port.virtual_host(head.host) if port is not None else None
        if port is None or host is None:
            return local_reply(head, 404, flags="NR", reason=f"no route for host {head.authority!r}")
        return route(port.table, head, dataclasses.replace(down, hostname=host), self.rng, self)

    def upstream(self, fwd: Forward, head: RequestHead, down: Downstream,
                 exclude: frozenset[str] = frozenset(), tried: Sequence[str] = ()) -> UpstreamTarget | None:
        """The endpoint for a try of `fwd` (None: 503 UH). `exclude`: addresses a retry should
        avoid (retryIgnorePreviousHosts); `tried`: the request's tries so far, only for a route
        with `retryRemoteLocalities` (`Cluster.choose`)."""
        if not fwd.service:     # addressed to a workload: on to it
            pick = endpoints.pick_workload(down.destination_ip, down.destination_port, self.config.view.by_ip)
            return self._target(pick, down.source_ip) if pick is not None else None
        cluster = self.cluster(fwd.service, fwd.port, fwd.subset, fwd.hostname)
        key = cluster.hash_key(head, down)
        renew: tuple[tuple[str, str], ...] = ()
        if fwd.policy is not None and fwd.policy.session is not None:  # the one check without a session
            pick, renew = self._session_pick(fwd, head, down, cluster, key, exclude, tried)
        else:
            pick = self._pick(fwd, cluster, exclude, key, down, tried)
        if pick is None:
            return None
        cookie = (("set-cookie", key.set_cookie),) if key is not None and key.set_cookie else ()
        if renew:
            cookie += renew
        name = ""
        if pick.plain and cluster.hostname.startswith("*."):
            name = self._wildcard_origin(cluster, head)
            if name is None:
                return None
        if (pick.authority or pick.via) and down.hops >= MAX_HOPS:
            log.warning("request to %s refused: it came through %d waypoints and would go through %s next "
                        "(routes of waypoints that send to each other's Services?)", fwd.service, down.hops,
                        pick.workload)
            return None
        return self._target(pick, down.source_ip, cluster, cookie, name, down.hops)

    def _session_pick(self, fwd: Forward, head: RequestHead, down: Downstream, cluster: Cluster,
                      key: HashKey | None, exclude: frozenset[str], tried: Sequence[str] = (),
                      ) -> tuple[endpoints.Pick | None, tuple[tuple[str, str], ...]]:
        """sessionPersistence (waypoint/traffic/session.py): the endpoint the request's session
        names while a session may still use it (a ready endpoint of the forward's cluster, not
        ejected, not already tried by this request); else the balancer's choice, with the header
        that pins the session to it (Envoy sets it only when the endpoint changed)."""
        sp = fwd.policy.session
        now = self.wall_clock()
        pinned = sp.pinned(head, now)
        if pinned is not None:
            v = self.config.view
            svc = v.services.get(fwd.service)
            cached = self._candidates(v, svc, fwd.port, fwd.hostname or svc.hostname, fwd.subset) if svc else None
            if cached is not None and session.keeps(pinned, cached[1], exclude, cluster.ejected):
                return cached[0][cached[1].index(pinned)], ()
        pick = self._pick(fwd, cluster, exclude, key, down, tried)
        if pick is None or pick.address == pinned:
            return pick, ()
        return pick, (sp.response_header(pick.address, now),)

    def session_addresses(self, dest: RouteDestination, port: int) -> Sequence[str]:
        """The ready endpoint addresses of a route destination (for `route`'s session persistence:
        which backend holds a session's endpoint)."""
        v = self.config.view
        svc = v.services.get(dest.service)
        cached = self._candidates(v, svc, port, dest.host or svc.hostname, dest.subset) if svc is not None else None
        return cached[1] if cached is not None else ()

    @staticmethod
    def _wildcard_origin(cluster: Cluster, head: RequestHead) -> str | None:
        """For TLS origination to a wildcard ServiceEntry host (`*.example.com`) without a
        DestinationRule `sni`: the request's host, which is the SNI sent and the name verified
        (Envoy's auto_sni and auto_san_validation, which Istio sets), when the wildcard covers it;
        None (refused: 503) when it does not. "" when nothing is originated or `sni` is set.
        Without this the SNI was the literal "*.example.com", which no server answers as meant."""
        policy = cluster.policy
        if policy is None or policy.tls_mode not in ORIGINATING or policy.sni:
            return ""
        name = head.host.lower().rstrip(".")
        if name.endswith(cluster.hostname[1:]) and len(name) > len(cluster.hostname) - 1:
            return name
        log.info("request for %r refused: TLS origination to %s verifies the request's host, which it does not cover",
                 head.authority, cluster.hostname)
        return None

    def current_clusters(self) -> Clusters:
        """The clusters, brought up to the current config first: a scrape or an admin dump after
        a Service is deleted must not show its cluster until the next request happens to come."""
        view = self.config.view
        if view is not self._clusters_view:
            self.clusters.update({s: hr.config for s, hr in view.table.by_service.items() if hr.config is not None},
                                 view.services, view.mesh.locality if view.mesh is not None else None)
            self._clusters_view = view
            own = _place_of(self._own_workload())     # where this waypoint runs: locality balancing's vantage point
            moved = own != self.clusters.own
            if moved:
                self.clusters.own = own
            for c in self.clusters:     # endpoints gone since the last request leave no state behind
                if moved:       # its locality plan is recomputed below, its ejections kept
                    c.own, c.basis = own, None
                if c.hosts or c.unready:
                    # a cluster's endpoints are a function of its Service's (the config stream
                    # replaces a changed Service, never mutates it) and, for a subset, workloads'
                    # labels (and, with locality balancing, their localities): under pod churn only
                    # the churned Services' clusters are recomputed
                    svc = view.services.get(c.key.service)
                    basis = (svc, view.workloads if c.key.subset or c.locality is not None else None)
                    if c.basis is not None and c.basis[0] is basis[0] and c.basis[1] is basis[1]:
                        continue
                    c.basis = basis
                    cached = self._candidates(view, svc, c.key.port, c.hostname, c.key.subset) if svc else None
                    c.set_hosts(*(cached[1:] if cached is not None else ((), None)))
        return self.clusters

    def cluster(self, service: str, port: int, subset: str = "", hostname: str = "") -> Cluster:
        """The cluster of (service, port, subset) under the current config (waypoint/traffic)."""
        if self.config.view is not self._clusters_view:
            self.current_clusters()
        if not hostname:
            svc = self.config.view.services.get(service)
            hostname = svc.hostname if svc is not None else ""
        return self.clusters.get(service, port, subset, hostname)

    def _pick(self, fwd: Forward, cluster: Cluster, exclude: frozenset[str] = frozenset(),
              key: HashKey | None = None, down: Downstream | None = None,
              tried: Sequence[str] = ()) -> endpoints.Pick | None:
        """The endpoint of the forward's Service port (and subset) the cluster chooses among the
        ready ones (waypoint/traffic/cluster.py `Cluster.choose`), or None (503 UH)."""
        v = self.config.view
        svc = v.services.get(fwd.service)
        if svc is None:
            return None
        if svc.kind == "ServiceEntry" and svc.resolution == "NONE":
            if fwd.subset and v.table.subset_labels(fwd.hostname or svc.hostname, fwd.subset) is None:
                return None
            return endpoints.original(down.destination_ip, down.destination_port, svc) if down else None
        cached = v.candidates_cache.get((fwd.service, fwd.port, fwd.hostname or svc.hostname, fwd.subset))
        if cached is None:
            cached = self._candidates(v, svc, fwd.port, fwd.hostname or svc.hostname, fwd.subset)
            if cached is None:
                return None
        return self._choose(cached[0], cluster, exclude, key, cached[1], cached[2], tried)

    @staticmethod
    def _candidates(v: View, svc: Service, port: int, hostname: str,
                    subset: str) -> tuple[tuple[endpoints.Pick, ...], tuple[str, ...], Places] | None:
        """The ready endpoints of a Service port (and subset), their addresses and their places
        (locality and labels, for locality balancing), cached for the View's life; None when the
        subset is not defined."""
        ck = (svc.resource_name, port, hostname, subset)
        cached = v.candidates_cache.get(ck)
        if cached is None:
            labels = v.table.subset_labels(hostname, subset) if subset else None
            if subset and labels is None:
                return None
            cands = tuple(_ready(v, svc, port, labels))
            cached = v.candidates_cache[ck] = (cands, tuple(p.address for p in cands), _places(v, svc, port, labels, cands))
        return cached

    @staticmethod
    def _choose(cands: Sequence[endpoints.Pick], cluster: Cluster, exclude: frozenset[str] = frozenset(),
                key: HashKey | None = None, addresses: Sequence[str] | None = None,
                places: Sequence[Place] | None = None, tried: Sequence[str] = ()) -> endpoints.Pick | None:
        hosts = addresses if addresses is not None else [p.address for p in cands]
        address = cluster.choose(hosts, exclude, key, places, tried)
        if address is None:
            return None
        try:
            return cands[hosts.index(address)]
        except ValueError:
            return None

    def _target(self, pick: endpoints.Pick, source_ip: str | None, cluster: Cluster | None = None,
                response_headers: tuple[tuple[str, str], ...] = (), name: str = "",
                hops: int = 0) -> UpstreamTarget | None:
        """The target for `pick`, from the View's cache unless it carries response headers (a hash
        cookie): the same endpoint, source, cluster (and originated TLS name) get the same target
        for the View's life (one per request cost a dataclass, a connector closure and an f-string key)."""
        if response_headers:
            return self._new_target(pick, source_ip, cluster, response_headers, name, hops)
        cache = self.config.view.targets_cache
        ck = (pick.address, pick.protocol, source_ip, id(cluster), name, hops)
        hit = cache.get(ck)
        if hit is not None and hit[0] is cluster and (hit[1] is pick or hit[1] == pick):
            return hit[2]
        target = self._new_target(pick, source_ip, cluster, (), name, hops)
        if target is not None:
            if len(cache) >= _TARGETS_CACHED:     # many sources: start over rather than grow
                cache.clear()
            cache[ck] = (cluster, pick, target)
        return target

    def _new_target(self, pick: endpoints.Pick, source_ip: str | None, cluster: Cluster | None,
                    response_headers: tuple[tuple[str, str], ...], name: str = "", hops: int = 0) -> UpstreamTarget | None:
        # pooled per TCP keepalive too: a connection's socket has the keepalive of the cluster that opened it
        ka = self._keepalive(cluster)
        if pick.plain:      # a ServiceEntry endpoint outside the mesh: the waypoint dials it itself
            policy, host = (cluster.policy, name or cluster.hostname) if cluster is not None else (None, "")
            cred = None
            if policy is not None and policy.credential_name:     # a Secret of this waypoint's own namespace
                view = self.config.view
                cred = view.credentials.get(f"{view.waypoint.namespace}/{policy.credential_name}")
            try:
                orig = origination(policy, host, cred)
                tls = f" tls {orig.settings!r}" if orig else ""
            except (OSError, ssl.SSLError) as e:
                # a file that does not read (or a caCrl holding no CRL): the connect fails with it
                # (503 UF, as a failed handshake), in a pool of its own, and reads the files again
                orig, tls = None, f" tls unusable {e}"
            # pooled per TLS settings too: a connection verified for one name (or with one CA, one client
            # certificate, verification off) never carries the requests of a cluster that asks otherwise
            key = f"{pick.address}/{pick.protocol}{tls}{_ka_key(ka)}"
            # the connector asks again per connection: the files' current contents (rotated CA or client cert)
            return UpstreamTarget(key, pick.address,
                                  self._plain_connector(pick, (lambda: origination(policy, host, cred)) if tls else None,
                                                        ka),
                                  pick.protocol, cluster, response_headers)
        if not pick.mesh:
            log.warning("endpoint %s (%s) is not in the mesh; the waypoint reaches endpoints over HBONE only",
                        pick.address, pick.workload)
            return None
        # Pooled per endpoint *and* source: the tunnel's Forwarded header names one source; per TCP
        # keepalive; and per :authority and hop count, so a waypoint pod's tunnel for one Service
        # never carries another's.
        key = f"{pick.address}/{pick.protocol} for {source_ip or '-'}{_ka_key(ka)}"
        if pick.authority or pick.via:
            key = f"{pick.authority or pick.address} via {pick.via or pick.address}/{pick.protocol} for " \
                  f"{source_ip or '-'} hop {hops + 1}{_ka_key(ka)}"
        return UpstreamTarget(key, pick.address, self._connector(pick, source_ip, hops, ka), pick.protocol, cluster,
                              response_headers)

    def _keepalive(self, cluster: Cluster | None) -> TcpKeepalive | None:
        """The TCP keepalive of a connection for `cluster`: the mesh's under its rule's, value by
        value (Istio's applyTCPKeepalive); without a cluster (a workload addressed directly), the
        mesh's. Read per target, which the View caches: a new MeshSettings is a new View."""
        mesh = self.config.view.mesh
        return effective_keepalive(mesh.tcp_keepalive if mesh is not None else None,
                                   cluster.policy.tcp_keepalive if cluster is not None else None)

    def _plain_connector(self, pick: endpoints.Pick, current: Callable[[], Origination | None] | None,
                         keepalive: TcpKeepalive | None = None):
        async def connect() -> Attachable:
            timeout = self.settings.tunnel.connect_timeout
            orig = current() if current is not None else None
            if orig is None:
                return await connect_tcp(pick.ip, pick.port, timeout, keepalive=keepalive)
            plug = await connect_tcp(pick.ip, pick.port, timeout, orig.context, orig.sni, keepalive=keepalive)
            assert plug.transport is not None
            why = check_peer(plug.transport.get_extra_info("peercert") or {}, orig.names)
            if why:
                plug.transport.abort()
                raise ssl.SSLCertVerificationError(f"{pick.address}: {why}")
            return plug
        return connect

    def _connector(self, pick: endpoints.Pick, source_ip: str | None, hops: int = 0,
                   keepalive: TcpKeepalive | None = None):
        # through another waypoint (`_via_waypoint`, `_reachable`): it asks for `authority`, and the
        # tunnel says how many waypoints the request has come through (HOPS_HEADER)
        chained = [(HOPS_HEADER, str(hops + 1))] if pick.authority or pick.via else None

        async def connect() -> Attachable:
            # the HBONE pool keys its connections on the keepalive too (ambit/dataplane/hbone/client.py)
            st = await self.pool.connect(self.identity, pick.identity, pick.via or pick.ip,
                                         pick.authority or pick.address, extra_headers=chained,
                                         forwarded_for=source_ip, keepalive=keepalive,
                                         timeout=self.settings.tunnel.connect_timeout + self.settings.tunnel.cert_wait)
            return HBONETransport(st)
        return connect

    @staticmethod
    def _l4_head(down: Downstream) -> RequestHead:
        """The head a non-HTTP tunnel is judged on: no method or path, so HTTP attributes are
        judged as waypoint/authz/l4.py says."""
        return RequestHead(method="", path="", authority=f"{down.destination_ip}:{down.destination_port}")

    def _l4_verdict(self, down: Downstream) -> Verdict:
        """The L4 view of the DENY/ALLOW/AUDIT policies' verdict on a non-HTTP tunnel."""
        v = self.config.view
        return authorize(v.l4_policies, self._l4_head(down), down, v.trust_domains)[1]

    async def opaque(self, down: Downstream) -> Attachable | Refused | None:
        """L4 forwarding for a non-HTTP tunnel, after its external authorization (the L4 view of a
        CUSTOM policy matched it: `_tunnel_check`) and then L4 policy (see the module docstring):
        Istio's TCP filter chain, network ext_authz before RBAC. The AUDIT policies an admitted
        tunnel matched ride on the connection (`audit`) to its access-log line, as `upstream` does
        to its metrics."""
        cs = self.config.view.l4_custom
        if cs.gateway or cs.by_service:
            custom = cs.for_request(self._l4_head(down), down, self.config.view.trust_domains)
            if custom is not None:
                refused = await self._tunnel_check(custom, down)
                if refused is not None:
                    return refused
        verdict = self._l4_verdict(down)
        if not verdict.allowed:
            log.info("opaque tunnel from %s (%s) to %s:%s denied: %s", down.source_ip, down.source_identity,
                     down.destination_ip, down.destination_port, verdict.reason)
            v = self.config.view
            return Refused(RBAC_FLAG, verdict.reason, denied_detail(v.l4_policies.for_request(down), verdict,
                                                                     self._l4_head(down), down, v.trust_domains))
        conn = await (self._ingress_opaque(down) if self.ingress is not None else self._mesh_opaque(down))
        if conn is not None and verdict.audit:
            conn.audit = verdict.audit  # type: ignore[attr-defined]   # for the tunnel's access-log line
        return conn

    async def _tunnel_check(self, custom: Custom, down: Downstream) -> Refused | None:
        """A tunnel's external authorization (waypoint/authz/extauthz_tcp.py): held, nothing read
        on (the relay paused it), while its CheckRequest goes to the provider's authorizer through
        the engine's upstream machinery, as an HTTP request's check does (waypoint/http/authzcall.py:
        the authorizer's Service port, HBONE, pools, balancing), within the provider's timeout.
        None: the tunnel goes on (to the DENY/ALLOW policies); else how it is refused."""
        step = extauthz_tcp.start(custom, down, self.identity)
        if isinstance(step, Hold):
            assert self.engine is not None and custom.provider is not None
            answer: asyncio.Future[tuple[SubReply | None, str]] = self.engine.loop.create_future()

            def done(reply: SubReply | None, why: str) -> None:
                if not answer.done():
                    answer.set_result((reply, why))
            hold_for(step.timeout)      # the relay's connect deadline starts after the check
            call = authzcall.start(self.engine, step, down, None, False, done)
            try:
                reply, why = await answer
            finally:
                if call is not None and not answer.done():     # the tunnel went away first
                    call.cancel()
            step = extauthz_tcp.after_check(custom.provider, custom.policy, extauthz_tcp.interpret(reply, why))
        if step.result:
            self.ext_authz.count(step.provider, step.result)
        where = f"opaque tunnel from {down.source_ip} ({down.source_identity or 'no identity'}) to " \
                f"{down.destination_ip}:{down.destination_port}"
        if step.allowed:
            if step.reason:     # failOpen let it through an error
                log.error("%s: %s", where, step.reason)
            return None
        (log.error if step.result == EXT_AUTHZ_ERROR else log.info)("%s refused: %s", where, step.reason)
        if step.flags != RBAC_FLAG:     # the check's refusal: Envoy's network ext_authz sets no termination details
            return Refused(step.flags, step.reason)
        v = self.config.view      # refused without a check (no gRPC provider, a bad one)
        p = next((p for p in v.l4_custom.group(down.service).policies if p.resource_name == custom.policy), None)
        return Refused(step.flags, step.reason,
                       extauthz_tcp.refused_detail(custom, p, self._l4_head(down), down, v.trust_domains))

    async def _mesh_opaque(self, down: Downstream) -> Attachable | None:
        """A mesh tunnel to a Service this waypoint fronts: to the backend of the Service's first
        VirtualService `tls` route (by the ClientHello's server name) or `tcp` route that matches
        (waypoint/routing/tcp.py), else to an endpoint by the Service port's cluster; or to one of
        its workloads addressed directly."""
        v = self.config.view
        cluster: Cluster | None = None
        hr = v.table.by_service.get(down.service) if down.service else None
        wr = hr.config if hr is not None else None
        route = None
        if wr is not None and (wr.tls or wr.tcp):
            route = (tls_route(wr.tls, down) if down.sni and wr.tls else None) or tcp_route(wr.tcp, down)
        if route is not None:
            dest = choose_backend(route, self.rng)
            if dest is None:
                log.info("opaque tunnel from %s to %s rejected: tcp route of %s has no backend with a weight",
                         down.source_ip, down.service, route.source)
                return None
            conn = await self._open_destination(dest, dest.port or down.destination_port, down, route.source)
            if conn is not None:    # the tunnel's record and metrics name the backend it went to
                conn.routed = (route.source, dest.service, dest.host)  # type: ignore[attr-defined]
            return conn
        if down.service:
            # the Service port's cluster balances opaque connections too (no hash key: a
            # consistent-hash cluster spreads them at random, as Envoy's tcp_proxy without a hash)
            svc = v.services.get(down.service)
            cluster = self.cluster(down.service, down.destination_port, "", down.hostname) if svc is not None else None
            if svc is not None and svc.kind == "ServiceEntry" and svc.resolution == "NONE":
                pick = endpoints.original(down.destination_ip, down.destination_port, svc)
            else:
                pick = _choose_among(v, svc, down.destination_port, None, cluster) \
                    if svc is not None and cluster is not None else None
        else:
            pick = endpoints.pick_workload(down.destination_ip, down.destination_port, v.by_ip)
        return await self._open_opaque(pick, cluster, down.source_ip, down.hops)

    async def _ingress_opaque(self, down: Downstream) -> Attachable | None:
        """An ingress gateway's TLS-passthrough or TCP connection: the TLSRoute/TCPRoute the listener
        chose (`down.hostname`: the SNI name it matched, "*" on TCP), a backend by weight, one of its
        endpoints by the Service port's cluster, reached over HBONE with the gateway's identity."""
        v = self.config.view
        port = v.ingress.ports.get(down.destination_port)
        route = port.l4.get(down.hostname) if port is not None else None
        dest = choose_backend(route, self.rng) if route is not None else None
        if dest is None:
            log.info("ingress connection from %s to port %d (%s) rejected: %s", down.source_ip,
                     down.destination_port, down.hostname, "no route" if route is None else "no backend with a weight")
            return None
        return await self._open_destination(dest, dest.port, down, route.source if route is not None else "")

    async def _open_destination(self, dest: RouteDestination, port: int, down: Downstream,
                                source: str) -> Attachable | None:
        """An endpoint of a TCP route's backend Service (`port`), by that Service port's cluster; a
        subset (an Istio VirtualService tcp/tls route) selects by the DestinationRule's labels."""
        v = self.config.view
        svc = v.services.get(dest.service) if dest.service else None
        labels = v.table.subset_labels(dest.host, dest.subset) if dest.subset else None
        if svc is None or (dest.subset and labels is None):
            log.info("connection from %s to %s:%d rejected: route %s: %s", down.source_ip, down.destination_ip,
                     down.destination_port, source, f"backend {dest.host} is not a resolved Service" if svc is None
                     else f"{dest.host} has no subset {dest.subset}")
            return None
        cluster = self.cluster(dest.service, port, dest.subset, dest.host)
        pick = _choose_among(v, svc, port, labels, cluster)
        return await self._open_opaque(pick, cluster, down.source_ip, down.hops)

    async def _open_opaque(self, pick: endpoints.Pick | None, cluster: Cluster | None,
                           source_ip: str, hops: int = 0) -> Attachable | None:
        if pick is None or not (pick.mesh or pick.plain):
            return None
        if (pick.authority or pick.via) and hops >= MAX_HOPS:
            log.warning("connection refused: it came through %d waypoints and would go through %s next", hops,
                        pick.workload)
            return None
        try:
            ka = self._keepalive(cluster)
            conn = await (self._plain_connector(pick, None, ka) if pick.plain
                          else self._connector(pick, source_ip, hops, ka))()
        except Exception:
            if cluster is not None:     # Envoy's tcp_proxy reports connect failures to outlier detection
                cluster.attempt_result(pick.address, Outcome(CONNECT_FAILURE))
            raise
        conn.upstream = pick.address  # type: ignore[attr-defined]   # for the TCP metrics' destination
        if cluster is not None:
            cluster.connected(pick.address)
            # the cluster's tcp.idleTimeout, for the relay (waypoint/http/opaque.py)
            conn.idle_timeout = cluster.policy.tcp_idle_timeout  # type: ignore[attr-defined]
        return conn

    # --- records ------------------------------------------------------------------------------

    def _access_log(self, rec: RequestRecord) -> None:
        self.telemetry.access_log(rec)
        if self.tap.subscribers:    # every request and opaque TCP stream ends here
            self.tap.publish(lambda: request_event(rec, *self.telemetry.peers(rec)))

    def _stats(self, rec: RequestRecord) -> None:
        self.requests += 1
        self.telemetry.stats(rec)
