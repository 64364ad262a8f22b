"""ztunnel's Prometheus metrics, with Istio's names and labels so existing dashboards work.

One series per Istio label set (`LABELS`: reporter, source and destination workload, namespace,
principal, app, version, canonical service and revision, cluster, destination service, protocol,
flags, security policy):
- `istio_tcp_connections_opened_total` / `istio_tcp_connections_closed_total`
- `istio_tcp_received_bytes_total`: bytes of the *request* direction (client -> server)
- `istio_tcp_sent_bytes_total`: bytes of the *response* direction (server -> client)

Istio's meaning is kept for both reporters: a source ztunnel and a destination ztunnel report the
same directions, so the two sides of one connection can be compared. Bytes are not counted per
read: a connection's are added when it closes, and an open connection's so far at each scrape
(`live`: what the relay counted since the last scrape), as Istio's ztunnel reports them while the
connection lasts. Without that a connection open for hours showed no bytes at all until it closed,
then all of them in one scrape interval.

The Telemetry API's `metrics` overrides (a `MetricsConfig`, resolved for the reporting side's
workload: the source's as CLIENT, the destination's as SERVER) apply per family: a disabled one is
not counted, `tagOverrides` rewrite its labels (served through overrides.Pruned).

Served over HTTP on `0.0.0.0:15020` in the node netns (Prometheus scrapes it there) and, in the
lab, on a unix socket so that tests and the CLI in the host netns can read it without entering
netns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ambit.dataplane.endpoint import LocalEndpoint, Response, fetch
from ambit.dataplane.telemetry.families import Family
from ambit.dataplane.telemetry.merge import MetricsMerger
from ambit.dataplane.telemetry.overrides import EXTRA, Pruned
from ambit.dataplane.telemetry.peers import DEFAULT_CLUSTER, peer_labels
from ambit.model import Service, Workload
from ambit.telemetrymetrics import DEFAULT, MetricsConfig, relabel

log = logging.getLogger("ambit.dataplane.metrics")

# Istio's standard label set for TCP metrics: every label of its "Istio Standard Metrics" reference
# except the two it defines for HTTP only (response_code, grpc_response_status). The order is the
# order of `ConnLabels.key()`.
LABELS = (
    "reporter",
    "source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_canonical_service", "source_canonical_revision", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision", "destination_cluster",
    "request_protocol", "response_flags", "connection_security_policy",
)
UNKNOWN = "unknown"
MUTUAL_TLS, NONE = "mutual_tls", "none"
NO_FLAGS, FLAG_DENY, FLAG_CONNECT = "-", "DENY", "CONNECT"   # denied by policy; upstream connect failed


@dataclass(slots=True)
class ConnLabels:
    """Who talked to whom; empty strings are reported as "unknown", as Istio does.

    The handler fills in what it knows as it learns it: names as strings, or whole workloads and the
    service with `source_from` / `destination_from` / `service_from`, which derive the app, version,
    canonical service and revision the way the waypoint does (ambit/dataplane/telemetry/peers.py).
    """

    reporter: str                       # source | destination
    source_workload: str = ""
    source_workload_namespace: str = ""
    source_principal: str = ""
    destination_workload: str = ""
    destination_workload_namespace: str = ""
    destination_principal: str = ""
    destination_service: str = ""
    connection_security_policy: str = NONE
    response_flags: str = NO_FLAGS
    source_app: str = ""
    source_version: str = ""
    source_canonical_service: str = ""
    source_canonical_revision: str = ""
    source_cluster: str = ""
    destination_app: str = ""
    destination_version: str = ""
    destination_service_name: str = ""
    destination_service_namespace: str = ""
    destination_canonical_service: str = ""
    destination_canonical_revision: str = ""
    destination_cluster: str = ""

    def source_from(self, w: Workload | None, principal: str = "", cluster: str = DEFAULT_CLUSTER) -> ConnLabels:
        """The source side from its workload. `principal` (the identity seen on the wire) is set only
        when given: a plaintext source has none, whatever its workload's identity."""
        if principal:
            self.source_principal = principal
        if w is not None:
            (self.source_workload, self.source_workload_namespace, self.source_app, self.source_version,
             self.source_canonical_service, self.source_canonical_revision) = peer_labels(w)
            self.source_cluster = cluster
        return self

    def destination_from(self, w: Workload | None, principal: str = "",
                         cluster: str = DEFAULT_CLUSTER) -> ConnLabels:
        """The destination side from its workload; `principal` as for the source."""
        if principal:
            self.destination_principal = principal
        if w is not None:
            (self.destination_workload, self.destination_workload_namespace, self.destination_app,
             self.destination_version, self.destination_canonical_service,
             self.destination_canonical_revision) = peer_labels(w)
            self.destination_cluster = cluster
        return self

    def service_from(self, svc: Service | None) -> ConnLabels:
        if svc is not None:
            self.destination_service = svc.hostname
            self.destination_service_name, self.destination_service_namespace = svc.name, svc.namespace
        return self

    def values(self) -> dict[str, str]:
        return dict(zip(LABELS, self.key(), strict=True))

    def key(self) -> tuple[str, ...]:
        """The label values in `LABELS` order: a hashable cache key and `labels(*key)` arguments."""
        u = UNKNOWN
        return (self.reporter or u,
                self.source_workload or u, self.source_workload_namespace or u, self.source_principal or u,
                self.source_app or u, self.source_version or u, self.source_canonical_service or u,
                self.source_canonical_revision or u, self.source_cluster or u,
                self.destination_workload or u, self.destination_workload_namespace or u,
                self.destination_principal or u, self.destination_app or u, self.destination_version or u,
                self.destination_service or u, self.destination_service_name or u,
                self.destination_service_namespace or u, self.destination_canonical_service or u,
                self.destination_canonical_revision or u, self.destination_cluster or u,
                "tcp", self.response_flags or u, self.connection_security_policy or u)


class _FlushLive(Collector):
    """Registered before the families: every collection (a scrape) first adds the open
    connections' bytes so far (`flush()` of each `live` entry, e.g. ztunnel's ConnBook). It yields
    no metric of its own."""

    def __init__(self, live: dict[int, Any]) -> None:
        self.live = live

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for conn in list(self.live.values()):
            conn.flush()
        return iter(())


class Metrics:
    """The four Istio TCP counters, as plain families (ambit/dataplane/telemetry/families.py).

    A family's child is found by its label values in one dict lookup and counted with one
    addition: no lock and no observability check per update, as prometheus_client's `Counter` has
    (about 100 bytecodes more per update, with its children cached; docs/performance.md §68). A scrape
    reads what prometheus_client would serve for the same updates. A series not updated for
    `expiry` seconds is dropped (0: kept for the process's life; Family explains why and how).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, expiry: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry or CollectorRegistry()
        names = (*LABELS, EXTRA)
        # Served by `Pruned`, which applies the Telemetry API's label overrides.
        self.opened = Family("istio_tcp_connections_opened", "TCP connections opened", "counter", names,
                             expiry=expiry, clock=clock)
        self.closed = Family("istio_tcp_connections_closed", "TCP connections closed", "counter", names,
                             expiry=expiry, clock=clock)
        self.received = Family("istio_tcp_received_bytes", "Bytes received (client to server)", "counter", names,
                               expiry=expiry, clock=clock)
        self.sent = Family("istio_tcp_sent_bytes", "Bytes sent (server to client)", "counter", names,
                           expiry=expiry, clock=clock)
        self.families = {"TCP_OPENED_CONNECTIONS": self.opened, "TCP_CLOSED_CONNECTIONS": self.closed,
                         "TCP_RECEIVED_BYTES": self.received, "TCP_SENT_BYTES": self.sent}
        # id -> open connection whose bytes each scrape adds so far (its `flush()`); first, so the
        # families read after it include them
        self.live: dict[int, Any] = {}
        self.registry.register(_FlushLive(self.live))
        self.registry.register(Pruned(self.families.values()))

    def _configured(self, metric: str, labels: ConnLabels, key: tuple[str, ...], cfg: MetricsConfig,
                    amount: float) -> None:
        """One update under a Telemetry `metrics` override: a disabled family is not counted;
        `tagOverrides` rewrite the labels (the added ones travel in EXTRA)."""
        if metric in cfg.disabled:
            return
        tags = cfg.tags_for(metric) if cfg.tags else ()
        if tags:
            vals, extra = relabel(LABELS, key, tags,
                                  {"connection.mtls": labels.connection_security_policy == MUTUAL_TLS})
            self.families[metric].labels(*vals, extra).inc(amount)
        else:       # what `relabel` returns without overrides
            self.families[metric].labels(*key, "").inc(amount)

    def conn_opened(self, labels: ConnLabels, cfg: MetricsConfig = DEFAULT) -> None:
        if cfg.tags or cfg.disabled:
            self._configured("TCP_OPENED_CONNECTIONS", labels, labels.key(), cfg, 1.0)
        else:
            self.opened.labels(*labels.key(), "").inc()

    def conn_closed(self, labels: ConnLabels, request_bytes: int, response_bytes: int,
                    cfg: MetricsConfig = DEFAULT) -> None:
        key = labels.key()
        if cfg.tags or cfg.disabled:
            self._configured("TCP_CLOSED_CONNECTIONS", labels, key, cfg, 1.0)
        else:
            self.closed.labels(*key, "").inc()
        self._bytes(labels, key, request_bytes, response_bytes, cfg)

    def conn_bytes(self, labels: ConnLabels, request_bytes: int, response_bytes: int,
                   cfg: MetricsConfig = DEFAULT) -> None:
        """Bytes of a connection still open (those since its last count)."""
        self._bytes(labels, labels.key(), request_bytes, response_bytes, cfg)

    def _bytes(self, labels: ConnLabels, key: tuple[str, ...], request_bytes: int, response_bytes: int,
               cfg: MetricsConfig) -> None:
        if cfg.tags or cfg.disabled:
            if request_bytes:
                self._configured("TCP_RECEIVED_BYTES", labels, key, cfg, request_bytes)
            if response_bytes:
                self._configured("TCP_SENT_BYTES", labels, key, cfg, response_bytes)
            return
        if request_bytes:       # a series appears with its first byte, as it did with prometheus_client
            self.received.labels(*key, "").inc(request_bytes)
        if response_bytes:
            self.sent.labels(*key, "").inc(response_bytes)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer(LocalEndpoint):
    """GET (any path) answers the Prometheus text exposition; TCP and/or a unix socket. With a
    `merger` (`--merge-metrics-from`), another local process's exposition is appended at scrape
    time (ambit/dataplane/telemetry/merge.py), fetched without blocking the loop."""

    def __init__(self, metrics: Metrics, merger: MetricsMerger | None = None) -> None:
        super().__init__()
        self.metrics = metrics
        self.merger = merger
        if merger is not None:
            metrics.registry.register(merger.failures)

    def handle(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return Response(405, b"metrics are read-only: use GET\n", "text/plain")
        return Response(200, self.metrics.exposition(), CONTENT_TYPE_LATEST)

    async def respond(self, method: str, path: str) -> Response:
        if self.merger is None or method not in ("GET", "HEAD"):
            return self.handle(method, path)
        text = await self.merger.merged(lambda: self.metrics.exposition().decode())
        return Response(200, text.encode(), CONTENT_TYPE_LATEST)


def scrape(unix_path: str | Path, timeout: float = 3.0) -> str:
    """Read the exposition from a proxy's metrics unix socket (tests and the CLI)."""
    status, body = fetch(unix_path, "/stats/prometheus", timeout)
    if status != 200:
        raise OSError(f"metrics endpoint {unix_path} answered {status}")
    return body.decode()
