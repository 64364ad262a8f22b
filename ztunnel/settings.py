"""ztunnel's settings: built once from the command line and the environment (AMBIT_ZTUNNEL_*),
then passed down. `python -m ztunnel --help` lists every one with its environment variable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ambit import clusterdomain, settings
from ambit.configclient.tls import ControllerTLSSettings, tls_field
from ambit.dataplane.cpus import MAX_AUTO_WORKERS, resolve_count
from ambit.dataplane.ports import PORT_ADMIN, PORT_METRICS
from ambit.dataplane.settings import (
    TunnelSettings,
    gc_freeze_option,
    gc_threshold_option,
    memory_trim_interval_option,
    metrics_expiry_option,
    watchdog_kill_after_option,
)
from ambit.dataplane.telemetry.merge import source_problem
from ambit.model import TcpKeepalive
from ambit.settings import non_negative, option, positive
from ztunnel.dns.settings import DnsSettings
from ztunnel.limits import ProxyLimits


def _address(v: str) -> str | None:
    if not v:
        return None
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT (or '' to disable)"
    return None


@dataclass(frozen=True)
class ZtunnelSettings:
    node: str = option(help="the node this ztunnel serves", required=True)
    zds_socket: Path = option(help="unix socket the agent connects to", required=True)
    controller: str | None = option(help="config stream target: host:port or unix:PATH (none: no mesh config)")
    config_cache: Path | None = option(
        help="file keeping the last good config, so a restarted ztunnel serves before the controller answers")
    root_namespace: str = option("ambit-system", "the mesh root namespace (mesh-wide policy)")
    trust_domain: str = option("cluster.local", "the mesh trust domain")
    cluster_domain: str = option(clusterdomain.DEFAULT, "the cluster's DNS domain (Services are "
                                 "<name>.<ns>.svc.<domain>; the DNS proxy's search domains); as the controller's "
                                 "--cluster-domain", check=clusterdomain.problem)
    admin_address: str = option(f"127.0.0.1:{PORT_ADMIN}", "admin endpoint HOST:PORT in ztunnel's netns ('' to disable)",
                                check=_address)
    admin_socket: Path | None = option(help="admin endpoint on a unix socket as well")
    report_interval: float = option(10.0, "seconds between status reports to the controller's debug API",
                                    check=positive)
    metrics_address: str = option(f"0.0.0.0:{PORT_METRICS}",
                                  "Prometheus metrics HOST:PORT in ztunnel's netns ('' to disable)", check=_address)
    metrics_socket: Path | None = option(help="metrics on a unix socket as well (the lab's host-side scrape)")
    metrics_expiry: float = metrics_expiry_option()
    merge_metrics_from: str = option(
        "", "append another local process's Prometheus metrics to every scrape of this one's (the node agent's, "
            "http://127.0.0.1:15014/metrics, so a pod scraped by annotation gets both): http://<loopback>:PORT/PATH "
            "or unix:/PATH only; on failure ztunnel's own are served and ambit_metrics_merge_failures_total "
            "counts it ('': off)", check=source_problem)
    log_level: str = option("INFO", "logging level")
    # mTLS identities (without a node token: no certificates, no HBONE; plaintext passthrough only)
    ca: str | None = option(help="CA target: host:port or unix:PATH (default: the --controller target)")
    controller_tls: ControllerTLSSettings = tls_field()
    node_token_file: Path | None = option(
        help="this node's credential for the CA and the config stream (lab: <labdir>/<node>/bootstrap-token)")
    cert_ttl: float = option(24 * 3600.0, "lifetime (seconds) requested for workload certificates; rotated at half-life",
                             check=positive)
    cert_cache: Path | None = option(
        help="directory keeping current certificates (0600), so a restart serves during a CA outage")
    memory_trim_interval: float = memory_trim_interval_option()
    gc_freeze: bool = gc_freeze_option()
    gc_threshold: str = gc_threshold_option()
    watchdog_kill_after: float = watchdog_kill_after_option()
    termination_drain: float = option(
        20.0, "on SIGTERM: close every pod listener at once (new connections go to the other ztunnel of a surge "
              "roll), then give open connections this many seconds before cutting them; keep it below the pod's "
              "terminationGracePeriodSeconds", check=non_negative)
    # TCP keepalive on the sockets that leave the node (HBONE both ways, plaintext upstreams), as
    # istio/ztunnel's SocketConfig: a client's own keepalives reach only its local ztunnel, so
    # without these an idle connection through the mesh is cut by the first NAT or load balancer
    # that times idle flows out (10 minutes is common); they also find a dead peer node.
    keepalive: bool = option(True, "TCP keepalive on HBONE connections and plaintext upstreams (istio/ztunnel's "
                             "KEEPALIVE_ENABLED)")
    keepalive_time: int = option(180, "seconds idle before the first keepalive probe (TCP_KEEPIDLE; ztunnel's "
                                 "KEEPALIVE_TIME)", check=positive)
    keepalive_interval: int = option(180, "seconds between keepalive probes (TCP_KEEPINTVL; KEEPALIVE_INTERVAL)",
                                     check=positive)
    keepalive_retries: int = option(9, "unanswered probes before the connection is dead (TCP_KEEPCNT; "
                                    "KEEPALIVE_RETRIES)", check=positive)
    workers: int = option(0, "worker processes sharing the node's listeners (SO_REUSEPORT), each with its own event "
                          "loop and HBONE pool; 0: one per CPU this process may use (affinity, capped by its cgroup's CPU quota), at most "
                          f"{MAX_AUTO_WORKERS}; 1: a single process, no supervisor (docs/performance.md)",
                          check=non_negative)
    worker_index: int = option(-1, "set by the supervisor on each worker it starts (-1: not a worker)")
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    # The DNS proxy in every pod's netns (ztunnel/dns): `--dns-upstream`, ...
    dns: DnsSettings = field(default_factory=DnsSettings)
    # Limits against hostile or noisy peers (docs/operations.md): flags without a group prefix.
    limits: ProxyLimits = field(default_factory=ProxyLimits, metadata={"prefix": ""})

    @property
    def socket_keepalive(self) -> TcpKeepalive | None:
        """The keepalive of every socket ztunnel opens or accepts across nodes; None when off."""
        if not self.keepalive:
            return None
        return TcpKeepalive(self.keepalive_time, self.keepalive_interval, self.keepalive_retries)

    @property
    def worker_count(self) -> int:
        """How many workers `--workers` asks for (0: one per CPU this process may use, its cgroup's quota included)."""
        return resolve_count(self.workers)

    @property
    def ca_target(self) -> str | None:
        return self.ca or self.controller

    @property
    def nofile_needed(self) -> tuple[int, str]:
        """Descriptors one pod at its connection bound takes in one process (ambit/dataplane/process.py
        warns at start when the hard limit is below them plus a spare): one per captured or
        delivered connection (the HBONE connections carrying them, 1 per 100 tunnels, and the process's
        own files are the spare). Each process counts alone, so workers do not add up."""
        lim = self.limits
        per_pod = max(lim.max_outbound_per_pod, lim.max_inbound_per_pod)
        return per_pod, "one pod at --max-outbound-per-pod/--max-inbound-per-pod"


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ZtunnelSettings:
    return settings.load(ZtunnelSettings, argv, environ, prog="ztunnel", env_prefix="AMBIT_ZTUNNEL")
