"""The one object the waypoint hands its HTTP engine: `Engine(..., access_log=t.access_log,
stats=t.stats)`.

A finished `RequestRecord` names the downstream's address and identity and the upstream's address;
`lookup(ip)` (the waypoint's view of the config stream: pod IP → Workload) turns those into the
source and destination workloads that the metrics' and the log's labels are made of. Both callbacks
run once per request on the event loop, so they stay cheap: two dict lookups and a cached child.
"""

from __future__ import annotations

from collections.abc import Callable

from ambit import clusterdomain
from ambit.dataplane.telemetry.metrics import MUTUAL_TLS, NONE, UNKNOWN, ConnLabels, Metrics
from ambit.model import Workload
from ambit.telemetryconfig import TelemetryConfig
from ambit.telemetrymetrics import DEFAULT, MetricsConfig
from waypoint.http.record import RequestRecord
from waypoint.telemetry.accesslog import RequestLog
from waypoint.telemetry.metrics import HttpMetrics

Lookup = Callable[[str], "Workload | None"]
Own = Callable[[], "Workload | None"]


def address_ip(address: str) -> str:
    """The IP of "ip:port", "[v6]:port" or a bare IP ("" stays "")."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


class Telemetry:
    """`tcp`: Istio's TCP families for opaque tunnels (reporter="waypoint"), with `metrics_for`,
    the Telemetry API's metrics config for a Service ("ns/name").

    `telemetry_for` (the waypoint's View.telemetry_for_waypoint): when given, a request's Telemetry
    config is resolved once here and handed to both the access log and the metrics (each would
    otherwise resolve it through its own `config_for`), and `metrics_for` defaults to its metrics.

    `own` (an ingress gateway: its own pod's Workload): the metrics report the gateway as the
    source, as Istio's gateways report the requests they send on (`reporter="source"`, the
    gateway's workload, principal and labels, whatever client outside the mesh sent them); the
    access log keeps naming the client that connected.

    `cluster_domain` (the waypoint's --cluster-domain): a tunnel's Service without a hostname of its
    own is named `<name>.<ns>.svc.<domain>`, as the controller names it."""

    def __init__(self, metrics: HttpMetrics | None, log: RequestLog | None, lookup: Lookup,
                 tcp: Metrics | None = None, metrics_for: Callable[[str], MetricsConfig] | None = None,
                 telemetry_for: Callable[[str], TelemetryConfig] | None = None, own: Own | None = None,
                 cluster_domain: str = clusterdomain.DEFAULT) -> None:
        self.metrics = metrics
        self.cluster_domain = cluster_domain
        self.own = own
        self.log = log
        self.lookup = lookup
        self.tcp_metrics = tcp
        self.telemetry_for = telemetry_for
        if metrics_for is None and telemetry_for is not None:
            metrics_for = lambda service: telemetry_for(service).metrics    # noqa: E731
        self.metrics_for = metrics_for or (lambda service: DEFAULT)
        # the last record's Telemetry config (with telemetry_for): the log and the metrics share it
        self._cfg_memo: tuple[RequestRecord, str, TelemetryConfig] | None = None
        # the last record's peers: a request's end asks for them up to three times (access log,
        # metrics, tap), so each record's workloads are looked up once
        self._memo: tuple[RequestRecord, str, str, tuple[Workload | None, Workload | None]] | None = None

    def peers(self, rec: RequestRecord) -> tuple[Workload | None, Workload | None]:
        src_ip, upstream = rec.downstream.source_ip, rec.upstream
        m = self._memo
        if m is not None and m[0] is rec and m[1] == src_ip and m[2] == upstream:
            return m[3]
        dst_ip = address_ip(upstream)
        found = (self.lookup(src_ip) if src_ip else None), (self.lookup(dst_ip) if dst_ip else None)
        self._memo = (rec, src_ip, upstream, found)
        return found

    def config(self, rec: RequestRecord) -> TelemetryConfig | None:
        """The Telemetry config of the record's Service (None without `telemetry_for`), resolved
        once per record: the config View may change between the log and the metrics of one record
        only if an update lands between two callbacks of one loop iteration, and then the record
        keeps the one it was logged with."""
        if self.telemetry_for is None:
            return None
        service = rec.service or rec.downstream.service
        m = self._cfg_memo
        if m is not None and m[0] is rec and m[1] == service:
            return m[2]
        cfg = self.telemetry_for(service)
        self._cfg_memo = (rec, service, cfg)
        return cfg

    def stats(self, rec: RequestRecord) -> None:
        if self.metrics is not None:
            cfg = self.config(rec)
            src, dst = self.peers(rec)
            if self.own is not None:
                src = self.own()
            self.metrics.observe(rec, src, dst, cfg.metrics if cfg is not None else None)

    def tcp_labels(self, rec: RequestRecord) -> ConnLabels:
        """Istio's TCP labels for an opaque tunnel, as the waypoint reports them."""
        src, dst = self.peers(rec)
        d = rec.downstream
        if self.own is not None:        # an ingress gateway: the client side, as Istio's gateways
            own = self.own()
            labels = ConnLabels("source", connection_security_policy=UNKNOWN, response_flags=rec.response_flags or "-") \
                .source_from(own, own.identity if own is not None else "")
        else:
            labels = ConnLabels("waypoint", connection_security_policy=MUTUAL_TLS if d.source_identity else NONE,
                                response_flags=rec.response_flags or "-").source_from(src, d.source_identity)
        labels.destination_from(dst, dst.identity if dst is not None else "")
        service, hostname = (rec.service, rec.hostname) if rec.service else (d.service, d.hostname)
        if service:     # a tcp route's backend when one chose it (Istio: the cluster's Service), else the dialled one
            ns, _, name = service.partition("/")
            labels.destination_service_namespace, labels.destination_service_name = ns, name
            labels.destination_service = hostname or f"{name}.{ns}.svc.{self.cluster_domain}"
        return labels

    def tcp(self, rec: RequestRecord, event: str) -> None:
        """An opaque tunnel opened ("open") or ended ("close"): Istio's istio_tcp_* metrics."""
        if self.tcp_metrics is None:
            return
        m = self.tcp_metrics
        cfg = self.metrics_for(rec.downstream.service)
        if event == "open":
            labels = self.tcp_labels(rec)
            m.conn_opened(labels, cfg)
            m.live[id(rec)] = _OpenTunnel(m, rec, labels, cfg)     # its bytes so far at each scrape
        else:
            live = m.live.pop(id(rec), None)
            done_in, done_out = live.counted if live is not None else (0, 0)
            m.conn_closed(self.tcp_labels(rec), rec.bytes_received - done_in, rec.bytes_sent - done_out, cfg)

    def access_log(self, rec: RequestRecord) -> None:
        if self.log is not None:
            cfg = self.config(rec)
            if cfg is None:
                self.log.emit(rec, *self.peers(rec))
            else:
                self.log.emit(rec, *self.peers(rec), cfg.access_log)


class _OpenTunnel:
    """An opaque tunnel while it is open, in Metrics.live: each scrape adds the bytes its record
    counted since the last one (the relay keeps `bytes_received`/`bytes_sent` current), as
    ztunnel's connections do; the close adds the rest."""

    __slots__ = ("metrics", "rec", "labels", "cfg", "counted")

    def __init__(self, metrics: Metrics, rec: RequestRecord, labels: ConnLabels, cfg: MetricsConfig) -> None:
        self.metrics, self.rec, self.labels, self.cfg = metrics, rec, labels, cfg
        self.counted = (0, 0)

    def flush(self) -> None:
        rec, (done_in, done_out) = self.rec, self.counted
        if rec.bytes_received != done_in or rec.bytes_sent != done_out:
            self.metrics.conn_bytes(self.labels, rec.bytes_received - done_in, rec.bytes_sent - done_out, self.cfg)
            self.counted = (rec.bytes_received, rec.bytes_sent)
