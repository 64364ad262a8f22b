"""Per-cluster stats as Prometheus metrics, with Envoy's names as Istio exposes them:
`envoy_cluster_<stat>{cluster_name="outbound|8080|v1|reviews.default.svc.cluster.local"}`.

Counters are exposed untyped, not as Prometheus counters: a Prometheus counter family must end in
`_total`, and Envoy's (which Istio dashboards and alerts query) do not; `rate()` works on either.

A collector reads every cluster's `stats()` at scrape time, so the request path only bumps plain
integers in the cluster's parts (retries, circuit breaker, outlier detection), and a cluster that is
gone from the config is gone from the next scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from waypoint.traffic.cluster import GAUGES, Cluster


class ClusterCollector(Collector):
    def __init__(self, clusters: Callable[[], Iterable[Cluster]]) -> None:
        self.clusters = clusters

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | UnknownMetricFamily] = {}
        for c in self.clusters():
            for stat, value in sorted(c.stats().items()):
                fam = families.get(stat)
                if fam is None:
                    name = f"envoy_cluster_{stat}"
                    doc = f"Envoy cluster stat {stat}, per cluster"
                    fam = GaugeMetricFamily(name, doc, labels=["cluster_name"]) if stat in GAUGES \
                        else UnknownMetricFamily(name, doc, labels=["cluster_name"])
                    families[stat] = fam
                fam.add_metric([c.name], value)
        yield from families.values()
