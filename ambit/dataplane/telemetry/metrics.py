"""ztunnel's Prometheus metrics, with Istio's names and labels so existing dashboards work.

One series per (reporter, source, destination, security policy, flags):
- `istio_tcp_connections_opened_total` / `istio_tcp_connections_closed_total`
- `istio_tcp_received_bytes_total`: bytes of the *request* direction (client -> server)
- `istio_tcp_sent_bytes_total`: bytes of the *response* direction (server -> client)

Istio's meaning is kept for both reporters: a source ztunnel and a destination ztunnel report the
same directions, so the two sides of one connection can be compared. Bytes are added when the
connection closes (one lock-free update per connection instead of one per read).

Served over HTTP on `0.0.0.0:15020` in the node netns (Prometheus scrapes it there) and, in the
lab, on a unix socket so that tests and the CLI in the host netns can read it without entering
netns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ambit.dataplane.endpoint import LocalEndpoint, Response, fetch
from ambit.dataplane.telemetry.children import CHILD_CACHE_SIZE, ChildCache

log = logging.getLogger("ambit.dataplane.metrics")

LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_principal",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_service", "connection_security_policy", "request_protocol", "response_flags",
)
UNKNOWN = "unknown"
MUTUAL_TLS, NONE = "mutual_tls", "none"
NO_FLAGS, FLAG_DENY, FLAG_CONNECT = "-", "DENY", "CONNECT"   # denied by policy; upstream connect failed


@dataclass
class ConnLabels:
    """Who talked to whom; empty strings are reported as "unknown", as Istio does."""

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

    def values(self) -> dict[str, str]:
        d = {k: (getattr(self, k) or UNKNOWN) for k in LABELS if k != "request_protocol"}
        d["request_protocol"] = "tcp"
        return d

    def key(self) -> tuple[str, ...]:
        """The label values in `LABELS` order: a hashable cache key and `labels(*key)` arguments."""
        u = UNKNOWN
        return (self.reporter or u, self.source_workload or u, self.source_workload_namespace or u,
                self.source_principal or u, self.destination_workload or u,
                self.destination_workload_namespace or u, self.destination_principal or u,
                self.destination_service or u, self.connection_security_policy or u, "tcp",
                self.response_flags or u)


class Metrics:
    """The four Istio TCP counters.

    `labels(**values)` takes a lock and hashes eleven strings per call; a connection needs four
    lookups per side. The children are looked up once per label set and kept in a bounded LRU.
    """

    def __init__(self, registry: CollectorRegistry | None = None, cache_size: int = CHILD_CACHE_SIZE) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # prometheus_client appends `_total` to counter names itself.
        self.opened = Counter("istio_tcp_connections_opened", "TCP connections opened", LABELS, registry=r)
        self.closed = Counter("istio_tcp_connections_closed", "TCP connections closed", LABELS, registry=r)
        self.received = Counter("istio_tcp_received_bytes", "Bytes received (client to server)", LABELS,
                                registry=r)
        self.sent = Counter("istio_tcp_sent_bytes", "Bytes sent (server to client)", LABELS, registry=r)
        self.cache_size = cache_size
        self._children: ChildCache[tuple[str, ...], tuple[Counter, Counter, Counter, Counter]] = ChildCache(
            lambda key: (self.opened.labels(*key), self.closed.labels(*key), self.received.labels(*key),
                         self.sent.labels(*key)), cache_size)

    def _for(self, labels: ConnLabels) -> tuple[Counter, Counter, Counter, Counter]:
        """(opened, closed, received, sent) children for this label set, cached (LRU)."""
        return self._children.get(labels.key())

    def conn_opened(self, labels: ConnLabels) -> None:
        self._for(labels)[0].inc()

    def conn_closed(self, labels: ConnLabels, request_bytes: int, response_bytes: int) -> None:
        _, closed, received, sent = self._for(labels)
        closed.inc()
        if request_bytes:
            received.inc(request_bytes)
        if response_bytes:
            sent.inc(response_bytes)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer(LocalEndpoint):
    """GET (any path) answers the Prometheus text exposition; TCP and/or a unix socket."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def handle(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return Response(405, b"metrics are read-only: use GET\n", "text/plain")
        return Response(200, self.metrics.exposition(), CONTENT_TYPE_LATEST)


def scrape(unix_path: str | Path, timeout: float = 3.0) -> str:
    """Read the exposition from a proxy's metrics unix socket (tests and the CLI)."""
    status, body = fetch(unix_path, "/stats/prometheus", timeout)
    if status != 200:
        raise OSError(f"metrics endpoint {unix_path} answered {status}")
    return body.decode()
