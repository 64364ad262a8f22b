"""The waypoint binary's settings: built once from the command line and the environment
(AMBIT_WAYPOINT_*), then passed down. `python -m waypoint --help` lists every one.

The HTTP engine's bounds nest as `--http-*` (waypoint/http/settings.py) and the tunnel timeouts
shared with ztunnel as `--tunnel-*` (ambit/dataplane/settings.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ambit import clusterdomain, settings
from ambit.configclient.tls import ControllerTLSSettings, tls_field
from ambit.dataplane.cpus import MAX_AUTO_WORKERS, resolve_count
from ambit.dataplane.hbone.limits import MAX_PENDING_HANDSHAKES, MAX_PENDING_HANDSHAKES_PER_SOURCE
from ambit.dataplane.ports import PORT_ADMIN, PORT_HBONE
from ambit.dataplane.settings import (
    TunnelSettings,
    gc_freeze_option,
    gc_threshold_option,
    memory_trim_interval_option,
    metrics_expiry_option,
    watchdog_kill_after_option,
)
from ambit.gatewayclasses import INGRESS_CLASSES, WAYPOINT_CLASSES
from ambit.settings import non_negative, option, positive
from waypoint.http.settings import HttpSettings


def _address(v: str) -> str | None:
    if not v:
        return None
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT (or '' to disable)"
    return None


def _ns_name(v: str) -> str | None:
    ns, _, name = (v or "").partition("/")
    return None if ns and name and "/" not in name else "must be NAMESPACE/NAME of the waypoint Gateway"


def _percent(v: float) -> str | None:
    return None if 0 <= v <= 100 else "must be a percentage within 0..100"


def _gateway_class(v: str) -> str | None:
    classes = WAYPOINT_CLASSES + INGRESS_CLASSES
    return None if v in classes else f"must be one of {', '.join(classes)}"


@dataclass(frozen=True)
class WaypointSettings:
    waypoint: str = option(help="NAMESPACE/NAME of the waypoint Gateway this process serves", required=True,
                           check=_ns_name)
    pod_name: str = option(help="this waypoint pod's name (the config stream subscriber name)", required=True)
    node: str = option(help="the node this pod runs on: whose credential it presents (lab)", required=True)
    controller: str | None = option(help="config stream target: host:port or unix:PATH")
    config_cache: Path | None = option(
        help="file keeping the last good config, so a restarted waypoint serves before the controller answers")
    cert_cache: Path | None = option(
        help="directory keeping the waypoint's current certificate (0600), so a restart serves during a CA outage")
    ca: str | None = option(help="CA target (default: the --controller target)")
    node_token_file: Path | None = option(help="the node credential for the CA and the config stream")
    controller_tls: ControllerTLSSettings = tls_field()
    service_account: str = option("", "the pod's service account (default: the Gateway's name, as Istio names it)")
    gateway_class: str = option("ambit-waypoint", "the Gateway's gatewayClassName (GatewayClass-bound policies); "
                                "ambit or istio: run as that ingress Gateway", check=_gateway_class)
    ingress_address: str = option("0.0.0.0", "the address an ingress gateway's listeners bind")
    listen: str = option(f"0.0.0.0:{PORT_HBONE}", "HBONE listener HOST:PORT", check=_address)
    max_connections: int = option(8192, "HBONE connections (an ingress gateway: connections on all its ports) each "
                                  "process (each worker) serves at once; more are "
                                  "reset, counted (/stats overloaded) and logged. ~65 KiB each when idle: the "
                                  "default keeps a 1 GiB pod clear of its OOM kill (Envoy: "
                                  "global_downstream_max_connections)", check=positive)
    max_connections_per_source: int = option(
        4096, "an ingress gateway: connections one client source (an IPv4 address, an IPv6 /64) may hold open at "
        "once, each process (each worker); more are reset and counted, so one client cannot take every "
        "--max-connections slot and lock the others out. Half of --max-connections by default: clients behind "
        "one NAT, or a load balancer that SNATs (externalTrafficPolicy: Cluster), share a source (0: unlimited)",
        check=non_negative)
    max_connections_per_identity: int = option(
        1024, "HBONE connections one source identity (SPIFFE ID) may hold at once, each process (each worker); "
        "more are reset after the handshake and counted, so one workload cannot take every "
        "--max-connections slot (ztunnel's --max-hbone-conns-per-identity; 0: unlimited)", check=non_negative)
    max_pending_handshakes: int = option(
        MAX_PENDING_HANDSHAKES, "TLS handshakes under way (HBONE; an ingress gateway: its HTTPS ports) each process "
        "(each worker) holds; past it the oldest is aborted for the new one, counted "
        "(ambit_connections_refused_total{limit=\"pending_handshakes\"}). ~50-70 KiB each, and they need no "
        "certificate (0: unlimited)", check=non_negative)
    max_pending_handshakes_per_source: int = option(
        MAX_PENDING_HANDSHAKES_PER_SOURCE, "TLS handshakes under way from one source (an IPv4 address, an IPv6 "
        "/64); past it a new connection is reset (0: unlimited)", check=non_negative)
    root_namespace: str = option("ambit-system", "the mesh root namespace")
    trust_domain: str = option("cluster.local", "the mesh trust domain")
    cluster_domain: str = option(clusterdomain.DEFAULT, "the cluster DNS domain (route host names, metrics' "
                                 "Service names); as the controller's --cluster-domain, which renders it",
                                 check=clusterdomain.problem)
    admin_address: str = option(f"127.0.0.1:{PORT_ADMIN}", "admin endpoint HOST:PORT in the pod's netns ('' to "
                                "disable)", check=_address)
    admin_socket: Path | None = option(help="admin endpoint on a unix socket as well (the lab's host-side view)")
    status_address: str = option(
        "", "HOST:PORT serving the admin endpoint's /healthz/ready and nothing else: Istio's status port (15021), "
            "for the kubelet's probe on the pod IP while the admin endpoint (config dump, certificates, taps) "
            "stays on loopback ('' : off)", check=_address)
    report_interval: float = option(10.0, "seconds between status reports to the controller's debug API",
                                    check=positive)
    metrics_address: str = option("", "Prometheus metrics HOST:PORT ('' to disable)", check=_address)
    metrics_socket: Path | None = option(help="metrics on a unix socket as well")
    metrics_expiry: float = metrics_expiry_option()
    cert_ttl: float = option(24 * 3600.0, "lifetime (seconds) requested for the waypoint's certificate",
                             check=positive)
    log_level: str = option("INFO", "logging level")
    tracing_otlp: str = option("", "export spans over OTLP gRPC to HOST:PORT ('' : not)", check=_address)
    tracing_otlp_http: str = option("", "export spans over OTLP HTTP to http://HOST:PORT[/v1/traces]")
    tracing_zipkin: str = option("", "export spans to Zipkin's API at http://HOST:PORT[/api/v2/spans]")
    tracing_sampling: float = option(1.0, "percentage of requests traced (Istio's default: 1)", check=_percent)
    tracing_sampling_file: Path | None = option(help="a file holding the sampling percentage, re-read when it "
                                                "changes (a runtime switch)")
    tracing_tag: tuple[str, ...] = option((), "a custom span tag NAME=literal:VALUE|environment:VAR|header:NAME "
                                          "(repeatable)")
    tracing_disable_span_reporting: bool = option(False, "propagate trace headers but report no spans")
    # memory and the collector, as ztunnel's (docs/performance.md, round 6: the waypoint's memory)
    memory_trim_interval: float = memory_trim_interval_option()
    malloc_arena_max: int = option(2, "cap on glibc's malloc arenas (mallopt M_ARENA_MAX, set at start); 0 keeps "
                                   "glibc's default of 8 per core", check=non_negative)
    gc_freeze: bool = gc_freeze_option()
    gc_threshold: str = gc_threshold_option()
    watchdog_kill_after: float = watchdog_kill_after_option()
    workers: int = option(1, "worker processes, each a whole waypoint with its own event loop, pools and config "
                          "stream; the supervisor accepts HBONE connections and deals them out in turn (an "
                          "ingress gateway's workers share its listeners through SO_REUSEPORT); 0: one per CPU "
                          f"this process may use (affinity, capped by its cgroup's CPU quota), at most "
                          f"{MAX_AUTO_WORKERS}; 1: a single process, no supervisor", check=non_negative)
    worker_index: int = option(-1, "set by the supervisor on each worker it starts (-1: not a worker)")
    run_dir: Path = option(Path("/run"), "where a supervisor makes its workers' socket directory (writable: an "
                           "emptyDir in a cluster) when it has no --admin-socket to put it beside")
    handoff_socket: Path | None = option(help="set by the supervisor on each worker: the unix socket its HBONE "
                                         "connections are handed over on (instead of listening itself)")
    http: HttpSettings = field(default_factory=HttpSettings)
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)

    @property
    def ingress(self) -> bool:
        """An ingress gateway: listeners from its Gateway, clients from outside the mesh."""
        return self.gateway_class in INGRESS_CLASSES

    @property
    def worker_count(self) -> int:
        """How many workers `--workers` asks for (0: one per CPU this process may use)."""
        return resolve_count(self.workers)

    @property
    def ca_target(self) -> str | None:
        return self.ca or self.controller

    @property
    def namespace(self) -> str:
        return self.waypoint.partition("/")[0]

    @property
    def name(self) -> str:
        return self.waypoint.partition("/")[2]

    @property
    def identity(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account or self.name}"


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> WaypointSettings:
    return settings.load(WaypointSettings, argv, environ, prog="waypoint", env_prefix="AMBIT_WAYPOINT")
