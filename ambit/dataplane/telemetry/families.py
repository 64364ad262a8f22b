"""Counter and histogram families as plain Python objects, read by a collector at scrape time.

Why not prometheus_client's `Counter` and `Histogram`: each `inc`/`observe` on their children takes
a lock (one per value; a histogram's `observe` takes two and scans its buckets in Python) and
checks observability, and a proxy updates them on its one event loop thread: the waypoint four
to six children per request, ztunnel two to four per connection and side. Here a child is a few
slots: `inc` is one addition, `observe` one addition and one `bisect` into its bucket counts. The cost moves to the scrape, which builds the samples.

The exposition is the one prometheus_client gives for the same family (names, `_total`, `_bucket`
with prometheus_client's `le` strings, `_count`, `_sum`, `_created`, sample and series order), so
dashboards and the Prometheus lab tests see no difference; tests/unit/dataplane/test_families.py
compares the two byte for byte. Scrapes may run on another thread: the collector copies the child
dict before iterating, and a histogram's count is the sum of its buckets, as prometheus_client's.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import metrics as _pc_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import INF, floatToGoString


class CounterChild:
    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Amounts are never negative here (request counts and gRPC message counts), so unlike
        prometheus_client's `inc` this does not check."""
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """The first bucket whose upper bound is >= amount, as prometheus_client's scan finds it."""
        self.sum += amount
        self.counts[bisect_left(self.bounds, amount)] += 1


def _activity(child: CounterChild | HistogramChild) -> float:
    """What changes whenever a child is updated: a counter's value, a histogram's observation count
    (its sum may not move: an observation of 0)."""
    return child.value if isinstance(child, CounterChild) else float(sum(child.counts))


class Family:
    """One metric family with labels (`kind` "counter" or "histogram"); `labels(*values)` gives the
    series' child, created on first use. `collect()` is the Collector interface (the family is
    served through overrides.Pruned).

    With `expiry` > 0 a series not updated for `expiry` seconds is dropped (Envoy's stats eviction,
    Istio's `sidecar.istio.io/statsEvictionInterval`): label values name pods, workloads, principals
    and services, and a mesh whose pods come and go would otherwise keep every one it ever saw, in
    the proxy's memory and in every scrape. A dropped series that is counted again starts from zero,
    which Prometheus reads as a counter reset. The check costs nothing per update: a sweep compares
    each child with what it was at the previous sweep, and runs only when a new series is created
    (the only way the family grows), at most once per `expiry / 2`. `on_evict` callbacks run after
    a sweep dropped something, for callers that cache children (they must forget them)."""

    def __init__(self, name: str, documentation: str, kind: str, labelnames: Sequence[str],
                 buckets: Sequence[float] = (), expiry: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if kind not in ("counter", "histogram"):
            raise ValueError(f"Family {name}: kind {kind!r} is not counter or histogram")
        self.name = name
        self.documentation = documentation
        self.kind = kind
        self.labelnames = tuple(labelnames)
        bounds = [float(b) for b in buckets]
        if kind == "histogram":
            if bounds != sorted(bounds):
                raise ValueError(f"Family {name}: buckets not in sorted order")
            if not bounds or bounds[-1] != INF:
                bounds.append(INF)
        self.bounds = tuple(bounds)
        self._le = tuple(floatToGoString(b) for b in self.bounds)
        self._children: dict[tuple[str, ...], CounterChild | HistogramChild] = {}
        if expiry < 0:
            raise ValueError(f"Family {name}: expiry {expiry} is negative")
        self.expiry = expiry
        self.clock = clock
        self.on_evict: list[Callable[[], None]] = []
        self._seen: dict[tuple[str, ...], tuple[float, float]] = {}     # values -> (activity, since)
        self._next_sweep = clock() + expiry / 2

    def labels(self, *values: str) -> CounterChild | HistogramChild:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"Family {self.name}: {len(values)} label values for {len(self.labelnames)} labels")
            if self.expiry and self.clock() >= self._next_sweep:
                self.sweep()
            child = CounterChild() if self.kind == "counter" else HistogramChild(self.bounds)
            self._children[values] = child
        return child

    def sweep(self) -> int:
        """Drop the series not updated since a sweep at least `expiry` seconds ago; returns how many."""
        now = self.clock()
        self._next_sweep = now + self.expiry / 2
        seen, gone = self._seen, []
        for values, child in self._children.items():
            act = _activity(child)
            mark = seen.get(values)
            if mark is None or mark[0] != act:
                seen[values] = (act, now)
            elif now - mark[1] >= self.expiry:
                gone.append(values)
        for values in gone:
            del self._children[values]
            del seen[values]
        if gone:
            for forget in self.on_evict:
                forget()
        return len(gone)

    def __len__(self) -> int:
        return len(self._children)

    def collect(self) -> Iterable[Metric]:
        metric = Metric(self.name, self.documentation, self.kind)
        created = _pc_metrics._use_created      # PROMETHEUS_DISABLE_CREATED_SERIES, as prometheus_client
        name, names = self.name, self.labelnames
        for values, child in list(self._children.items()):
            labels = dict(zip(names, values, strict=True))
            if isinstance(child, CounterChild):
                metric.add_sample(name + "_total", labels, child.value)
            else:
                acc = 0.0
                for le, n in zip(self._le, child.counts, strict=True):
                    acc += n
                    metric.add_sample(name + "_bucket", {**labels, "le": le}, acc)
                metric.add_sample(name + "_count", labels, acc)
                if self.bounds[0] >= 0:
                    metric.add_sample(name + "_sum", labels, child.sum)
            if created:
                metric.add_sample(name + "_created", labels, child.created)
        return [metric]
