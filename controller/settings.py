"""The controller's settings: built once from the command line and the environment
(AMBIT_CONTROLLER_*), then passed down. `python -m controller --help` lists them all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ambit import clusterdomain, settings
from ambit.settings import non_negative, option, parsed_by
from controller.acceptgate import MAX_CONNECTIONS_PER_PEER
from controller.admission import parse_listen
from controller.admission.patcher import CONFIG_NAME
from controller.ca.reload import DEFAULT_INTERVAL as CA_RELOAD_INTERVAL
from controller.ca.service import CA_REQUEST_BURST, CA_REQUEST_RATE
from controller.configserver.server import MAX_CONNECTIONS, MAX_STREAMS_PER_CLIENT
from controller.debug.service import REPORT_BURST, REPORT_RATE
from controller.gcpolicy import FULL_INTERVAL, THRESHOLD, check_full_interval, check_threshold
from controller.memguard import MEMORY_GUARD_FRACTION
from controller.translate.autoalloc import DEFAULT_PREFIX, parse_prefix


@dataclass(frozen=True)
class ControllerSettings:
    lab_store: Path | None = option(help="lab mode: the lab store file (store.json)")
    kube: bool = option(False, "watch the Kubernetes API (in-cluster or kubeconfig)")
    kubeconfig: str | None = option(help="kubeconfig file (with --kube, outside a cluster)")
    kube_host: str | None = option(help="API server URL without auth, e.g. from `kubectl proxy` (with --kube)")
    status: bool = option(True, "with --kube: do not write status conditions nor create the built-in GatewayClasses")
    listen: str = option("0.0.0.0:15010",
                         "gRPC address: HOST:PORT or unix:PATH (the lab uses unix:<labdir>/controller.sock)")
    trust_domain: str = option("cluster.local", "the mesh trust domain")
    trust_domain_alias: tuple[str, ...] = option(
        (), "accept identities of this trust domain as the mesh's own (Istio's trustDomainAliases)")
    mesh_config: Path | None = option(
        help="mesh config file (YAML, the Istio MeshConfig fields Ambit honours: trustDomainAliases, "
             "extensionProviders, defaultProviders, outboundTrafficPolicy, localityLbSetting, tcpKeepalive); "
             "watched, may be absent")
    root_namespace: str = option("ambit-system", "the mesh root namespace")
    ip_autoallocate: bool = option(
        True, "do not allocate addresses to ServiceEntries without spec.addresses (Istio's "
              "PILOT_ENABLE_IP_AUTOALLOCATE=false); addresses already in their status.addresses are then cleared")
    ip_autoallocate_ipv4_prefix: str = option(
        DEFAULT_PREFIX, "the prefix ServiceEntry addresses are auto-allocated from, one per host, kept in "
                        "status.addresses (Istio's PILOT_IP_AUTOALLOCATE_IPV4_PREFIX; set it to istiod's when "
                        "migrating, so the addresses it wrote are kept)", check=parsed_by(parse_prefix))
    cluster_domain: str = option(
        clusterdomain.DEFAULT, "the cluster's DNS domain (the kubelet's --cluster-domain): Services are "
        "<name>.<ns>.svc.<domain>; passed on to the waypoint and ingress Deployments it renders",
        check=clusterdomain.problem)
    ca_dir: Path | None = option(help="serve the CA, keeping its key material here (created on first start)")
    ca_secret: str = option(
        "", "with --kube: keep the CA in this Secret of the root namespace (created on first start, read by every "
            "replica and restart; or a user-provided CA: ca.crt/ca.key, or cert-manager's tls.crt/tls.key/ca.crt)")
    ca_reload_interval: float = option(
        CA_RELOAD_INTERVAL, "with --ca-dir or --ca-secret: seconds between reads of the stored CA; a renewed intermediate (e.g. "
              "by cert-manager) or a rotation step is taken up without a restart, one that would break the proxies' "
              "trust is refused and logged (docs/operations.md 'Rotating the root'; 0: read only at start)",
        check=lambda v: None if v == 0 or 1 <= v <= 3600 else "must be 0 (off) or 1..3600")
    root_cert_file: Path | None = option(
        help="with --ca-dir: write the CA's roots here whenever a reload changes them (the lab's pinned bundle; a "
             "cluster's is the ambit-root-cert ConfigMap)")
    leader_elect: bool = option(
        True, "with --kube: elect a leader over the Lease <root-namespace>/ambit-controller; only the leader writes "
              "status, waypoint Deployments and the ambit-root-cert ConfigMap (every replica serves and signs)")
    pod_name: str = option("", "this replica's name in the Lease (default: $POD_NAME, else the host name)")
    leader_lease_duration: int = option(
        15, "with leader election: seconds a follower waits, after it last saw the Lease change, before it takes "
            "it over (client-go's LeaseDuration); bounds failover after a leader crash",
        check=lambda v: None if v >= 1 else "must be >= 1")
    leader_renew_deadline: float = option(
        10.0, "with leader election: seconds after its last successful renewal a leader stops writing; shorter "
              "than --leader-lease-duration, so it stops before anyone may take over",
        check=lambda v: None if v > 0 else "must be > 0")
    leader_retry_period: float = option(
        2.0, "with leader election: seconds between Lease reads and renewals",
        check=lambda v: None if v > 0 else "must be > 0")
    controller_service_account: str = option(
        "ambit-controller", "with --ca-dir: the controller's service account; it serves TLS as "
        "spiffe://<trust-domain>/ns/<root-namespace>/sa/<this>, DNS name <this>.<root-namespace>.svc")
    serving_host: tuple[str, ...] = option(
        (), "with --ca-dir: another DNS name or IP for the controller's serving certificate (repeatable)")
    node_token_dir: Path | None = option(
        help="lab mode with --ca-dir: write each node's bootstrap token to DIR/<node>/bootstrap-token")
    ztunnel_service_account: str = option(
        "", "with --kube and --ca-dir: the ztunnel SA allowed to get certificates "
            "(default system:serviceaccount:<root-namespace>:ztunnel)")
    insecure_config_stream: bool = option(
        False, "serve the config stream without node credentials (only with no --ca-dir: without the CA there are "
               "none); anyone who reaches --listen then reads every workload and policy")
    waypoint_image: str = option(
        "", "with --kube: render and own a Deployment, Service and ServiceAccount per waypoint Gateway, running "
            "this image (empty: only write waypoint Gateway status; something else deploys the waypoints)")
    waypoint_pull_policy: str = option("IfNotPresent", "imagePullPolicy of the waypoint Deployments")
    waypoint_workers: int = option(1, "--workers of the waypoint Deployments (0: one per CPU the pod may use)",
                                   check=non_negative)
    waypoint_controller: str = option(
        "", "the config stream / CA address the waypoint pods dial (default ambit-controller.<root-namespace>.svc:15012)")
    debug_token_file: Path | None = option(
        help="debug API readers present this token (created 0600 if absent; the lab's admin token); without it, "
             "with --kube, readers are checked by TokenReview and --debug-readers")
    debug_readers: tuple[str, ...] = option(
        ("group:system:masters",), "with --kube: who may read the debug API (user:NAME or group:NAME)")
    metrics_port: int = option(0, "prometheus metrics port (0: off)", check=non_negative)
    metrics_address: str = option("0.0.0.0", "prometheus metrics address")
    metrics_socket: Path | None = option(help="prometheus metrics on a unix socket as well (the lab's host-side scrape)")
    dashboard_address: str = option(
        "127.0.0.1:15015", "the topology view (read-only web page, `ambit dashboard`): HOST:PORT; empty: off")
    prometheus_url: str = option("", "the topology view reads rates from this Prometheus (empty: scrapes the proxies)")
    dashboard_ztunnel_metrics: str = option(
        "", "without --prometheus-url: each node's ztunnel metrics, a template with {node} (unix:PATH or http URL)")
    dashboard_waypoint_metrics: str = option(
        "", "without --prometheus-url: each waypoint's metrics, a template with {namespace} {name} {pod} {ip}")
    tracing_url: str = option(
        "", "the topology view lists a node's traces from this tracing backend's query API: http://HOST:PORT "
            "(Zipkin :9411, Jaeger query :16686) or unix:PATH (empty: the panel says there is none)")
    tracing_api: str = option("zipkin", "the --tracing-url backend's query API: zipkin (Zipkin v2 /api/v2/traces) "
                                        "or jaeger (/api/traces)",
                              check=lambda v: None if v in ("zipkin", "jaeger") else "must be zipkin or jaeger")
    dashboard_access_logs: Path | None = option(
        help="the topology view reads access logs from the proxies' log files here (ztunnel-NODE.log, waypoint-NS-NAME.log)")
    dashboard_refresh: float = option(3.0, "seconds between the topology view's refreshes (and direct scrapes)",
                                      check=lambda v: None if v > 0 else "must be > 0")
    jwks_refresh: float = option(
        1200.0, "seconds between re-fetches of RequestAuthentication jwksUri key sets, so key rotations reach the "
                "waypoints (Istio's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL, 20m)",
        check=lambda v: None if v > 0 else "must be > 0")
    max_connections: int = option(
        MAX_CONNECTIONS, "connections the gRPC port (config stream and CA) holds at once; a connection beyond is closed at "
                "accept (0: no bound). About 50 KB each; every ztunnel worker, agent and waypoint holds one",
        check=non_negative)
    max_connections_per_peer: int = option(
        MAX_CONNECTIONS_PER_PEER, "connections one peer address (an IPv6 /64) holds to the gRPC port at once; a "
        "connection beyond is reset at accept, before any TLS work (0: no bound; a unix --listen has none). Nodes "
        "behind one NAT share an address: raise it to their number times a node's connections", check=non_negative)
    max_config_streams_per_client: int = option(
        MAX_STREAMS_PER_CLIENT, "config streams one credential (a node's, or a waypoint's own token) holds open at "
        "once, and debug feeds likewise (counted apart); past it a new one is refused RESOURCE_EXHAUSTED (0: no bound). "
        "A node holds one per ztunnel worker, one for its agent and one per waypoint pod using its credential", check=non_negative)
    memory_guard_fraction: float = option(
        MEMORY_GUARD_FRACTION, "once the process's resident memory reaches this fraction of its cgroup's memory limit "
        "(memory.max, read at start), a new config stream is refused RESOURCE_EXHAUSTED (counted as "
        "ambit_controller_limited_total{limit=\"memory\"}) and the streams already served go on, so a mesh larger "
        "than the limit was sized for is refused at its edge instead of OOM-killed (0: no guard; no limit: none)",
        check=lambda v: None if 0 <= v < 1 else "must be >= 0 and < 1")
    ca_request_burst: int = option(
        CA_REQUEST_BURST, "certificate requests one credential may make at once (a node's start-up or a root "
        "rotation: one per identity on the node per ztunnel process); then --ca-request-rate",
        check=lambda v: None if v >= 1 else "must be >= 1")
    ca_request_rate: float = option(
        CA_REQUEST_RATE, "certificate requests per second one credential may make after its burst; past it a "
        "request is refused RESOURCE_EXHAUSTED naming when to retry (0: no bound)", check=non_negative)
    status_report_burst: int = option(
        REPORT_BURST, "proxy status reports one credential may send at once (every proxy process of a node reports "
        "when it starts); then --status-report-rate", check=lambda v: None if v >= 1 else "must be >= 1")
    status_report_rate: float = option(
        REPORT_RATE, "proxy status reports per second one credential may send after its burst (each process reports "
        "every 10 s); past it a report is refused RESOURCE_EXHAUSTED naming when to retry (0: no bound)",
        check=non_negative)
    webhook_listen: str = option(
        "", "with a CA: serve the validating admission webhook (POST /validate, HTTPS with the controller's "
            "serving certificate) on HOST:PORT, so the API server refuses invalid Istio and Ambit objects at "
            "`kubectl apply` (`ambit install`: 0.0.0.0:15017; '': off)",
        check=lambda v: parsed_by(parse_listen)(v) if v else None)
    webhook_config: str = option(
        CONFIG_NAME, "with --kube and --webhook-listen: the ValidatingWebhookConfiguration whose caBundle the leader "
        "keeps on the mesh roots, switching its failurePolicy to Fail once a dry run proves the API server calls "
        "the webhook ('': leave it alone)")
    debounce: float = option(0.03, "seconds a burst of changes is coalesced", check=non_negative)
    gc_freeze: bool = option(
        True, "after each applied snapshot, move every object to the collector's permanent generation (gc.freeze), "
              "so collections do not walk the source cache and the translation, which reference counting frees "
              "when they are replaced; every --gc-full-interval seconds everything is collected in full once")
    gc_full_interval: float = option(
        FULL_INTERVAL, "with the freeze: seconds after which the next snapshot unfreezes everything and collects it "
        "in full (what became cyclic garbage while frozen is freed then; a full collection pauses the process "
        "about 250 ms at 10,000 pods)",
        check=check_full_interval)
    gc_threshold: str = option(
        THRESHOLD, "the collector's thresholds 'gen0[,gen1[,gen2]]' (Python's are 700,10,10; a generation-0 "
        "threshold of 0, the collector off, is refused)", check=check_threshold)
    log_level: str = option("INFO", "logging level")

    def check(self) -> str | None:
        if (self.lab_store is not None) == self.kube:
            return "exactly one source is needed: --lab-store PATH or --kube"
        if self.ca_secret and not self.kube:
            return "--ca-secret needs --kube (the lab keeps its CA in --ca-dir)"
        if self.ca_secret and self.ca_dir:
            return "--ca-secret and --ca-dir both name where the CA lives: pass one"
        if not self.with_ca and self.ca_reload_interval != CA_RELOAD_INTERVAL:
            return "--ca-reload-interval is read only with a CA (--ca-dir or --ca-secret)"
        if self.webhook_listen and not self.with_ca:
            return "--webhook-listen needs a CA (--ca-dir or --ca-secret): it serves TLS the API server verifies"
        if self.root_cert_file is not None and self.ca_dir is None:
            return ("--root-cert-file needs --ca-dir (with --ca-secret the roots are published to the "
                    "ambit-root-cert ConfigMap)")
        if not self.leader_renew_deadline < self.leader_lease_duration:
            return (f"--leader-renew-deadline {self.leader_renew_deadline} must be shorter than "
                    f"--leader-lease-duration {self.leader_lease_duration}, or two replicas could lead at once")
        if not self.leader_retry_period < self.leader_renew_deadline:
            return (f"--leader-retry-period {self.leader_retry_period} must be shorter than "
                    f"--leader-renew-deadline {self.leader_renew_deadline}, or a leader steps down between renewals")
        return None

    @property
    def with_ca(self) -> bool:
        return self.ca_dir is not None or bool(self.ca_secret)

    @property
    def identity(self) -> str:
        """The SPIFFE id the controller proves on its TLS port (ambit.configclient.tls)."""
        from ambit.configclient.tls import controller_identity
        return controller_identity(self.trust_domain, self.root_namespace, self.controller_service_account)

    @property
    def no_status(self) -> bool:
        return not self.status


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ControllerSettings:
    return settings.load(ControllerSettings, argv, environ, prog="controller", env_prefix="AMBIT_CONTROLLER")
