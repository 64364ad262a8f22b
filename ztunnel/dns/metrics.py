"""The DNS proxy's Prometheus families, with Istio ztunnel's names and labels (src/dns/metrics.rs):

- `istio_dns_requests_total`: every query a pod sent (answered here or forwarded);
- `istio_dns_upstream_requests_total`: the queries forwarded upstream;
- `istio_dns_upstream_failures_total`: forwarded queries no upstream answered (SERVFAIL to the pod);
- `istio_dns_upstream_request_duration_seconds`: how long forwarded queries took (Istio's buckets).

Labels: `request_query_type` ("a", "aaaa", "srv", ...), `request_protocol` ("udp", "tcp"),
`source_canonical_service`, `source_canonical_revision` (the client pod's, "unknown" when not known).
Plain families (ambit/dataplane/telemetry/families.py) on ztunnel's registry, expiring with
`--metrics-expiry` as the TCP ones do.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from ambit.dataplane.telemetry.families import Family

LABELS = ("request_query_type", "request_protocol", "source_canonical_service", "source_canonical_revision")
DURATION_BUCKETS = (0.0005, 0.001, 0.01, 0.1, 1.0, 5.0)
UNKNOWN = "unknown"


class DnsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, expiry: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        def family(name: str, doc: str, kind: str = "counter") -> Family:
            return Family(name, doc, kind, LABELS, buckets=DURATION_BUCKETS if kind == "histogram" else (),
                          expiry=expiry, clock=clock)
        self.requests = family("istio_dns_requests", "Total number of DNS requests")
        self.upstream_requests = family("istio_dns_upstream_requests",
                                        "Total number of DNS requests forwarded to upstream")
        self.upstream_failures = family("istio_dns_upstream_failures",
                                        "Total number of DNS requests that failed to forward upstream")
        self.upstream_duration = family("istio_dns_upstream_request_duration_seconds",
                                        "Total time in seconds Istio takes to get DNS response from upstream",
                                        "histogram")
        if registry is not None:
            for f in (self.requests, self.upstream_requests, self.upstream_failures, self.upstream_duration):
                registry.register(f)    # type: ignore[arg-type]
