"""Istio's standard HTTP metrics as the waypoint reports them (`reporter="waypoint"`).

- `istio_requests_total` (counter): one per request.
- `istio_request_duration_milliseconds` (histogram): the request's duration.
- `istio_request_bytes` / `istio_response_bytes` (histograms): body sizes, request and response.
- `istio_request_messages_total` / `istio_response_messages_total` (counters, gRPC requests only):
  the length-prefixed gRPC messages each way (waypoint/http/grpcframes.py), as Envoy's grpc_stats.

Buckets are Envoy's defaults, which Istio's histograms use unless a pod overrides them
(`sidecar.istio.io/statsHistogramBuckets`): 0.5 ... 3600000, for durations and sizes alike, so
existing dashboards' `histogram_quantile` queries read the same `le` values.

Labels are Istio's 25 (HTTP_LABELS). Their values:
- request_protocol: `grpc` for gRPC requests, `http` for HTTP/1.x and HTTP/2 (Istio's values);
- response_code: the HTTP status sent downstream, `0` when none was (a reset before headers);
- grpc_response_status: the gRPC status code from the trailers (or a trailers-only head), normalised
  as Envoy does (`grpc_status_label`), "" for non-gRPC requests;
- response_flags: Envoy's flags (UH, NR, UF, ...), `-` for none;
- destination_service: the FQDN of the Service the request was routed to (or whose address the
  tunnel named); when there is none (a tunnel addressed to a pod), the destination workload's
  canonical service, else "unknown", as Istio's waypoint (host-header fallback off) reports it.
  Never the request's Host: that would let any client create series without bound;
- connection_security_policy: `mutual_tls` when the downstream presented a SPIFFE identity (HBONE),
  `none` otherwise;
- an ingress gateway (GATEWAY_REPORTER) reports as Istio's gateways: `reporter="source"`, its own
  workload as the source, `connection_security_policy="unknown"`;
- source_cluster / destination_cluster: the cluster id (Istio's default `Kubernetes`).

The Telemetry API's `metrics` overrides for the request's Service (`config_for`, the waypoint's
View) apply per family: a disabled metric is not counted, `tagOverrides` rewrite its labels
(ambit.telemetrymetrics, served through ambit.dataplane.telemetry.overrides.Pruned).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from ambit.dataplane.idcache import IdCache
from ambit.dataplane.telemetry.children import CHILD_CACHE_SIZE, ChildCache
from ambit.dataplane.telemetry.families import Family
from ambit.dataplane.telemetry.overrides import EXTRA, Pruned
from ambit.dataplane.telemetry.peers import PeerLabels, peer_labels
from ambit.model import Workload
from ambit.telemetrymetrics import DEFAULT, MetricsConfig, relabel
from waypoint.http.headers import grpc_status_for
from waypoint.http.record import RequestRecord
from waypoint.telemetry.peers import UNKNOWN

HTTP_LABELS = (
    "reporter",
    "source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_canonical_service", "source_canonical_revision", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision", "destination_cluster",
    "request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
)
# Envoy's default histogram buckets (source/common/stats/histogram_impl.cc), which Istio keeps.
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
                    600000, 1800000, 3600000)
SIZE_BUCKETS = DURATION_BUCKETS
REPORTER = "waypoint"
# An ingress gateway reports as Istio's gateways do: as the client side of the request (their stats
# filter runs outbound), with the gateway's own workload as the source, and a security policy the
# client side cannot know. Kiali draws the ingress node, and Istio's dashboards select its traffic,
# by `reporter="source"` and the gateway's `source_workload`.
GATEWAY_REPORTER = "source"
LATEST = "latest"       # Istio's canonical revision of a source it knows nothing about
DEFAULT_CLUSTER = "Kubernetes"

_NO_PEER: PeerLabels = ("", "", "", "", "", "")    # a side whose workload is not known
_EVERY_REQUEST = ("REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE")
COUNTERS = ("REQUEST_COUNT", "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES")
ConfigFor = Callable[[str], MetricsConfig]      # "ns/name" of the request's Service -> its config
# Label value tuples kept (per peers, downstream, service, status, flags). A Downstream is made per
# tunnel: a closed tunnel's entries go with it (IdCache), and the bound (insertions between clears)
# caps what many open ones hold (~0.7 KB each).
LABEL_CACHE_SIZE = 1024


# Envoy's highest well-known gRPC status (UNAUTHENTICATED) and the code it reports for anything else
# (envoy source/common/grpc/common.cc `getGrpcStatus`: WellKnownGrpcStatus::MaximumKnown, InvalidCode).
_GRPC_MAX_KNOWN, _GRPC_INVALID = 16, "-1"


# The methods an HTTP/1 client can send through the waypoint (llhttp's, as Envoy's HTTP/1 codec
# knows them; any other token is refused with 400 there). HTTP/2 carries any token in `:method`.
KNOWN_METHODS = frozenset((
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    "ACL", "BIND", "CHECKOUT", "COPY", "LINK", "LOCK", "M-SEARCH", "MERGE", "MKACTIVITY", "MKCALENDAR",
    "MKCOL", "MOVE", "NOTIFY", "PROPFIND", "PROPPATCH", "PURGE", "REBIND", "REPORT", "SEARCH", "SOURCE",
    "SUBSCRIBE", "UNBIND", "UNLINK", "UNLOCK", "UNSUBSCRIBE", "QUERY"))


def method_label(method: str) -> str:
    """`request.method` as a metrics override reads it: a known method as is, any other "unknown".
    An HTTP/2 client chooses `:method` freely, so a label upserted from the raw method would let
    it add a series per request."""
    return method if method in KNOWN_METHODS else UNKNOWN


def grpc_status_label(rec: RequestRecord) -> str:
    """`grpc_response_status` as Istio's stats filter reports it (Envoy's `Common::getGrpcStatus`
    with trailers, headers and the stream info): "" for a non-gRPC request; the `grpc-status` the
    response carried when it is a well-known code (0..16, any other value, digits or not, is
    "-1"), so an upstream that sends arbitrary strings cannot grow the label's values without
    bound; with no `grpc-status` at all, the HTTP status mapped as Envoy maps it (503 -> 14,
    200 -> 2 UNKNOWN), and "" when no response status was sent either."""
    if not rec.grpc:
        return ""
    raw = rec.grpc_status
    if raw:
        return str(int(raw)) if raw.isascii() and raw.isdigit() and int(raw) <= _GRPC_MAX_KNOWN else _GRPC_INVALID
    return str(grpc_status_for(rec.status)) if rec.status else ""


class HttpMetrics:
    """The four HTTP families on `registry` (give ztunnel's TCP `Metrics` the same registry to serve
    both from one endpoint); label children cached in a bounded LRU (ChildCache). `config_for`:
    the Telemetry API's metrics config for a request's Service (the default: every metric, Istio's
    labels)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, cluster: str = DEFAULT_CLUSTER,
                 cluster_domain: str = "cluster.local", cache_size: int = CHILD_CACHE_SIZE,
                 config_for: ConfigFor | None = None, expiry: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, reporter: str = REPORTER) -> None:
        self.registry = registry or CollectorRegistry()
        self.reporter = reporter    # REPORTER, or GATEWAY_REPORTER for an ingress gateway
        self.cluster = cluster or UNKNOWN
        self.cluster_domain = cluster_domain
        self.config_for: ConfigFor = config_for or (lambda service: DEFAULT)
        names = (*HTTP_LABELS, EXTRA)
        # Plain-Python families (ambit/dataplane/telemetry/families.py): no lock per update. Served by
        # `Pruned`. A series idle for `expiry` seconds is dropped (0: never), see Family.
        self.requests = Family("istio_requests", "Requests handled by the waypoint", "counter", names,
                               expiry=expiry, clock=clock)
        self.duration = Family("istio_request_duration_milliseconds", "Request duration (ms)", "histogram", names,
                               DURATION_BUCKETS, expiry=expiry, clock=clock)
        self.request_bytes = Family("istio_request_bytes", "Request body size (bytes)", "histogram", names,
                                    SIZE_BUCKETS, expiry=expiry, clock=clock)
        self.response_bytes = Family("istio_response_bytes", "Response body size (bytes)", "histogram", names,
                                     SIZE_BUCKETS, expiry=expiry, clock=clock)
        self.request_messages = Family("istio_request_messages", "gRPC messages from the client", "counter", names,
                                       expiry=expiry, clock=clock)
        self.response_messages = Family("istio_response_messages", "gRPC messages to the client", "counter", names,
                                        expiry=expiry, clock=clock)
        self.families: tuple[tuple[str, Any], ...] = (
            ("REQUEST_COUNT", self.requests), ("REQUEST_DURATION", self.duration),
            ("REQUEST_SIZE", self.request_bytes), ("RESPONSE_SIZE", self.response_bytes),
            ("GRPC_REQUEST_MESSAGES", self.request_messages), ("GRPC_RESPONSE_MESSAGES", self.response_messages))
        self.registry.register(Pruned(f for _, f in self.families))
        by_metric = dict(self.families)
        self._children: ChildCache[tuple[str, tuple[str, ...]], Any] = ChildCache(
            lambda key: by_metric[key[0]].labels(*key[1]), cache_size)
        # Without Telemetry overrides: the four children every request touches, per label set.
        self._plain: ChildCache[tuple[str, ...], tuple[Any, Any, Any, Any]] = ChildCache(
            lambda values: tuple(self._children.get((m, (*values, ""))) for m in _EVERY_REQUEST), cache_size)
        # A dropped series' child must not stay cached: its counts would go to a child no scrape sees.
        for _, fam in self.families:
            fam.on_evict.append(self._forget_children)
        # label values by what they are made of (see label_values); never keeps those objects alive
        self._values: IdCache[tuple[str, ...]] = IdCache(LABEL_CACHE_SIZE)

    def _forget_children(self) -> None:
        self._children.clear()
        self._plain.clear()

    def label_values(self, rec: RequestRecord, src: Workload | None, dst: Workload | None) -> tuple[str, ...]:
        """The 25 label values in HTTP_LABELS order, cached: a waypoint's requests share a few
        (peers, route, status, flags) combinations, and building the tuple was ~160 bytecodes per
        request. The key holds everything `compute_label_values` reads: the Workload and
        Downstream objects by identity (the config stream replaces them, never mutates them), and
        the record's fields by value (never the authority: no label reads it). The cache holds no
        reference to those objects (IdCache): an entry is dropped when one of them is freed, so
        churned pods' Workloads and closed tunnels' Downstreams are not kept, and a freed object's
        id reused by a new one never finds its entry. Cleared every LABEL_CACHE_SIZE insertions."""
        d = rec.downstream
        key = (id(src), id(dst), id(d), rec.service, rec.hostname, rec.grpc, rec.status, rec.grpc_status,
               rec.response_flags)
        hit = self._values.get(key)
        if hit is not None:
            return hit
        values = self.compute_label_values(rec, src, dst)
        self._values.put(key, values, src, dst, d)
        return values

    def compute_label_values(self, rec: RequestRecord, src: Workload | None, dst: Workload | None) -> tuple[str, ...]:
        """The 25 label values in HTTP_LABELS order, built anew (`label_values` caches them)."""
        d = rec.downstream
        u = UNKNOWN
        # (workload, namespace, app, version, canonical service, revision), cached per Workload object
        s = peer_labels(src) if src is not None else _NO_PEER
        t = peer_labels(dst) if dst is not None else _NO_PEER
        gateway = self.reporter == GATEWAY_REPORTER
        # (a gateway's source is itself: a client certificate's SAN names the client, not the source)
        s_principal = (src.identity if src is not None else "") if gateway else \
            d.source_identity or (src.identity if src is not None else "")
        t_principal = dst.identity if dst is not None else ""
        service = rec.service or d.service
        if service:
            ns, _, name = service.partition("/")
            # The routed Service's own host (its FQDN with the waypoint's cluster domain, or a
            # ServiceEntry's host, as Istio names that cluster), else the tunnel's; a name made up
            # here would be "<host>.<ns>.svc.cluster.local" for a ServiceEntry host.
            if rec.service and rec.hostname:
                fqdn = rec.hostname
            elif d.hostname and service == d.service:
                fqdn = d.hostname
            else:
                fqdn = f"{name}.{ns}.svc.{self.cluster_domain}"
        else:
            # No Service (a tunnel addressed to a pod, with no route to one): Istio's waypoint
            # stats filter runs with `disable_host_header_fallback` and reports the endpoint's
            # canonical service, else "unknown". Never the request's Host: any client could mint
            # a new series per request by sending random Host headers.
            ns, name, fqdn = t[1], t[4], t[4]
        dst_cluster = self.cluster if dst is not None else u
        src_cluster = self.cluster if src is not None else u
        return (
            self.reporter,
            # An unknown source still has the namespace of the SPIFFE id it presented, and its
            # revision defaults to "latest", as Istio's stats filter reports a server-side peer.
            s[0] or u, s[1] or (u if gateway else d.source_namespace or u), s_principal or u, s[2] or u, s[3] or u, s[4] or u,
            s[5] or LATEST, src_cluster,
            t[0] or u, t[1] or u, t_principal or u, t[2] or u, t[3] or u,
            fqdn or u, name or u, ns or u, t[4] or u, t[5] or u, dst_cluster,
            "grpc" if rec.grpc else "http", str(rec.status), grpc_status_label(rec),
            rec.response_flags or "-",
            u if gateway else "mutual_tls" if d.source_identity else "none",
        )

    def observe(self, rec: RequestRecord, src: Workload | None, dst: Workload | None,
                cfg: MetricsConfig | None = None) -> None:
        """Count one finished request. `src`: the workload behind the downstream (by its IP or
        identity); `dst`: the endpoint's workload it was forwarded to (None: a local reply).
        `cfg`: the request's metrics config when the caller resolved it (else `config_for`)."""
        if cfg is None:
            cfg = self.config_for(rec.service or rec.downstream.service)
        values = self.label_values(rec, src, dst)
        if not cfg.tags and not cfg.disabled:     # Istio's labels on every family: one cache lookup
            req, dur, size_in, size_out = self._plain.get(values)
            req.inc()
            dur.observe(rec.duration_ms)
            size_in.observe(rec.bytes_received)
            size_out.observe(rec.bytes_sent)
            if rec.grpc:
                self._children.get(("GRPC_REQUEST_MESSAGES", (*values, ""))).inc(rec.request_messages)
                self._children.get(("GRPC_RESPONSE_MESSAGES", (*values, ""))).inc(rec.response_messages)
            return
        attrs = {"response.code": rec.status, "request.method": method_label(rec.method), "request.path": rec.path,
                 "connection.mtls": bool(rec.downstream.source_identity)}
        amounts: tuple[tuple[str, float], ...] = (
            ("REQUEST_COUNT", 1.0), ("REQUEST_DURATION", rec.duration_ms), ("REQUEST_SIZE", rec.bytes_received),
            ("RESPONSE_SIZE", rec.bytes_sent))
        if rec.grpc:
            amounts += (("GRPC_REQUEST_MESSAGES", rec.request_messages),
                        ("GRPC_RESPONSE_MESSAGES", rec.response_messages))
        for metric, amount in amounts:
            if not cfg.enabled(metric):
                continue
            vals, extra = relabel(HTTP_LABELS, values, cfg.tags_for(metric), attrs)
            child = self._children.get((metric, (*vals, extra)))
            if metric in COUNTERS:
                child.inc(amount)
            else:
                child.observe(amount)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
