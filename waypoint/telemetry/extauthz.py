"""External authorization checks as a Prometheus family (waypoint/authz/extauthz.py):

- `ambit_waypoint_ext_authz_checks_total{provider, result}`: every check the waypoint made for a
  CUSTOM AuthorizationPolicy, by MeshConfig provider and result: `allowed`, `denied` (the
  authorizer said no), `error` (it could not be asked or failed: unreachable, reset, timed out,
  an HTTP 5xx, a failed gRPC call; answered statusOnError, or let through with failOpen).

Envoy counts the same as its ext_authz filter's `ok`, `denied` and `error` stats.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from waypoint.authz.extauthz import RESULTS


class CheckCounts:
    """Checks by (provider, result); read at scrape time."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def count(self, provider: str, result: str) -> None:
        k = (provider, result)
        self.counts[k] = self.counts.get(k, 0) + 1


class CheckCollector(Collector):
    def __init__(self, counts: CheckCounts) -> None:
        self.checks = counts

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily("ambit_waypoint_ext_authz_checks", "External authorization checks by provider "
                                "and result", labels=["provider", "result"])
        for provider in sorted({p for p, _ in self.checks.counts}):
            for r in RESULTS:
                c.add_metric([provider, r], self.checks.counts.get((provider, r), 0))
        yield c
