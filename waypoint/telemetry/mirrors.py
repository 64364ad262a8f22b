"""The mirror gate's counters as Prometheus metrics (waypoint/resilience/mirror.py `MirrorGate`):

- `ambit_waypoint_mirror_requests_total{result=...}`: every shadow a request was picked for ends
  in one result: `completed` (a response came back, any status), `failed` (connect failure,
  reset, timeout, pool overflow), `cut` (body over `mirror_buffer_bytes`, or the primary ended
  before its body did), `overflow` (dropped at the `mirror_max_active` bound), `no_upstream`;
- `ambit_waypoint_mirror_active`: shadows in flight.

Envoy has no such family (its shadows only show in the shadow cluster's stats, which the shadows
here feed too); these say what the bound dropped. Read at scrape time, like the cluster stats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

RESULTS = ("completed", "failed", "cut", "overflow", "no_upstream")


class MirrorCollector(Collector):
    def __init__(self, engine: Callable[[], Any]) -> None:
        self.engine = engine        # the waypoint's Engine (None before it starts)

    def collect(self) -> Iterator[Metric]:
        e = self.engine()
        if e is None:
            return
        s = e.mirrors.stats()
        c = CounterMetricFamily("ambit_waypoint_mirror_requests", "Shadow (mirrored) requests by result",
                                labels=["result"])
        for r in RESULTS:
            c.add_metric([r], s[r])
        yield c
        yield GaugeMetricFamily("ambit_waypoint_mirror_active", "Shadow requests in flight", value=s["active"])
