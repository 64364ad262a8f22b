"""Telemetry `tagOverrides` on prometheus_client families, shared by ztunnel and the waypoint.

A prometheus_client metric has a fixed label set, but Istio's `REMOVE` drops a label and `UPSERT`
may add one, per workload. So each family is declared with the standard labels plus one hidden
label (`EXTRA`) holding the added labels, encoded; a removed label is counted with the value
REMOVED. The families are not registered themselves: `Pruned` serves them, each sample's labels
rewritten (ambit.telemetrymetrics.prune) to what Istio would export. Series whose removed labels
differed collapse into one (the child is looked up by the rewritten values), as in Istio.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from ambit.telemetrymetrics import prune

EXTRA = "ambit_added_tags"


class Pruned(Collector):
    """Serves `metrics` (unregistered prometheus_client metrics) with overridden labels applied."""

    def __init__(self, metrics: Iterable[Any]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        for m in self.metrics:
            for fam in m.collect():
                out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                out.samples = [Sample(s.name, prune(s.labels, EXTRA), s.value, s.timestamp, s.exemplar)
                               for s in fam.samples]
                yield out
