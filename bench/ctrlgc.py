"""The cyclic garbage collector in a running controller: what it costs per snapshot, with the
collector enabled as in production.

    python -m bench.ctrlscale --pods 1000 10000 --stage snapshot_gc
    python -m bench.ctrlgc --pods 10000 --snapshots 20 --gc-threshold 700,10,10 --no-gc-freeze

The other stages of bench.ctrlscale collect garbage before each run and time one call, which
hides the collector: in a running controller it walks what the process holds (the source cache of
Kubernetes objects, the translation, the encodings, the server snapshot) whenever enough objects
have been allocated, and each snapshot allocates a new translation. Here a controller that has
applied the cluster's first snapshot goes through `--snapshots` churns as the Kubernetes source
delivers them: 50 pods deleted and 50 new ones, each a fresh JSON-decoded dict as the watch hands
it over, and the EndpointSlices of their Services rewritten, all through the source's
`LastGoodCache`; then `Controller.on_snapshot` of the cache's objects. A `gc.callbacks` hook times
every collection (start to stop, wall) by generation.

Reported per snapshot: the step's wall time (the watch events and the snapshot), the part of it
spent in the collector, the collections by generation, the longest single pause (what the event
loop serving the config streams and the CA waits for: the collector holds the GIL), and at the
end the objects the collector tracks (and those frozen) and the process's RSS. On a shared box
wall times include preemption, so the snapshot's and the collector's CPU time (`thread_time`) are
printed too.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ambit.dataplane.gctune import GCStats, parse_threshold
from bench.ctlmem import rss_mib
from bench.ctrlscale import _ip, cluster, endpoint_slice
from controller.gcpolicy import FULL_INTERVAL, THRESHOLD, SnapshotGC

PYTHON_THRESHOLD = (700, 10, 10)

Obj = dict[str, Any]


def _decoded(obj: Obj) -> Obj:
    """`obj` as the API client hands it over: a fresh tree of JSON-decoded dicts and lists."""
    return json.loads(json.dumps(obj))


class ChurningCluster:
    """bench.ctrlscale's cluster in a source cache, changed as the watch would change it."""

    def __init__(self, pods: int, seed: int = 3):
        from controller.sources.cache import LastGoodCache, cache_key
        self._key = cache_key
        self.cache = LastGoodCache()
        objs = _decoded(cluster(pods))
        self.cache.replace(objs, owns=lambda _k: True)
        self.size = len(objs)
        self._pods = {cache_key(o): o for o in self.cache.objects() if o["kind"] == "Pod"}
        self._order = sorted(self._pods)
        self._rng = random.Random(seed)
        self._made = 0

    def step(self, n: int = 50) -> None:
        """`n` pods gone, `n` new ones, their Services' EndpointSlices following (each a watch event)."""
        rng = self._rng
        touched: set[tuple[str, str]] = set()
        for key in rng.sample(self._order, n):
            pod = self._pods.pop(key)
            self.cache.delete(key)
            touched.add((pod["metadata"]["namespace"], pod["metadata"]["labels"]["app"]))
        templates = rng.sample(list(self._pods.values()), n)
        for tmpl in templates:
            self._made += 1
            pod = _decoded(tmpl)
            pod["metadata"]["name"] = f"churn-{self._made}"
            pod["metadata"]["uid"] = f"churn-uid-{self._made}"
            ip = _ip(300_000 + self._made)
            pod["status"]["podIP"], pod["status"]["podIPs"] = ip, [{"ip": ip}]
            errors = self.cache.upsert(pod)
            assert not errors, errors
            self._pods[self._key(pod)] = pod
            touched.add((pod["metadata"]["namespace"], pod["metadata"]["labels"]["app"]))
        self._order = sorted(self._pods)
        members: dict[tuple[str, str], list[Obj]] = defaultdict(list)
        for pod in self._pods.values():
            k = (pod["metadata"]["namespace"], pod["metadata"]["labels"]["app"])
            if k in touched:
                members[k].append(pod)
        for ns, app in sorted(touched):
            errors = self.cache.upsert(_decoded(endpoint_slice(int(app.split("-")[1]), ns, members[(ns, app)])))
            assert not errors, errors


@dataclass
class Run:
    """One controller through `snapshots` churns: the figures `report` prints."""

    pods: int
    objects: int
    step_ms: list[float] = field(default_factory=list)
    snapshot_ms: list[float] = field(default_factory=list)
    gc_ms: list[float] = field(default_factory=list)
    snapshot_cpu_ms: list[float] = field(default_factory=list)
    stats: GCStats = field(default_factory=GCStats)
    cpu: GCStats = field(default_factory=lambda: GCStats(clock=time.thread_time))
    tracked: int = 0
    frozen: int = 0
    rss_mib: float = 0.0

    def line(self, label: str) -> str:
        n = len(self.step_ms)
        per = [c / n for c in self.stats.collections]
        return (f"pods={self.pods:6d} {label:28s} step {statistics.median(self.step_ms):7.1f} ms "
                f"(max {max(self.step_ms):7.1f})  on_snapshot {statistics.median(self.snapshot_ms):7.1f} ms  "
                f"gc/snapshot {statistics.mean(self.gc_ms):6.1f} ms  collections/snapshot "
                f"{per[0]:.0f}/{per[1]:.1f}/{per[2]:.2f}  max pause {max(self.stats.max_s) * 1000:6.1f} ms "
                f"(gen {self.stats.max_s.index(max(self.stats.max_s))})  tracked {self.tracked} "
                f"frozen {self.frozen}  rss {self.rss_mib:.0f} MiB\n"
                f"{'':12s} CPU: on_snapshot {statistics.median(self.snapshot_cpu_ms):7.1f} ms  collector "
                f"{sum(self.cpu.total_s) * 1000 / n:6.1f} ms/snapshot  longest {max(self.cpu.max_s) * 1000:6.1f} ms")


def run(pods: int, snapshots: int, policy: SnapshotGC, warm: int = 3) -> Run:
    """A controller with `policy` applied as the controller's start-up applies it, through
    `warm` churns (not counted) and then `snapshots` counted ones, the collector enabled."""
    from prometheus_client import CollectorRegistry

    from bench.ctrlscale import _NoSource
    from controller.app import Controller
    from controller.configserver import ConfigServer

    gc.unfreeze()                   # as a fresh process: nothing frozen, Python's thresholds
    gc.set_threshold(*PYTHON_THRESHOLD)
    gc.collect()
    source = ChurningCluster(pods)
    policy.start()
    ctl = Controller(_NoSource(), ConfigServer(registry=CollectorRegistry()), on_applied=policy.on_applied)
    ctl.on_snapshot(source.cache.objects())
    for _ in range(warm):
        source.step()
        ctl.on_snapshot(source.cache.objects())
    out = Run(pods, source.size)
    gc.callbacks.extend([out.stats.callback, out.cpu.callback])
    try:
        for _ in range(snapshots):
            before = sum(out.stats.total_s)
            t0 = time.perf_counter()
            source.step()
            t1, c1 = time.perf_counter(), time.thread_time()
            ctl.on_snapshot(source.cache.objects())
            t2, c2 = time.perf_counter(), time.thread_time()
            out.step_ms.append((t2 - t0) * 1000)
            out.snapshot_ms.append((t2 - t1) * 1000)
            out.snapshot_cpu_ms.append((c2 - c1) * 1000)
            out.gc_ms.append((sum(out.stats.total_s) - before) * 1000)
        out.tracked, out.frozen, out.rss_mib = len(gc.get_objects()), gc.get_freeze_count(), rss_mib(os.getpid())
    finally:
        gc.callbacks.remove(out.stats.callback)
        gc.callbacks.remove(out.cpu.callback)
        gc.unfreeze()               # the process's other stages run as before
        gc.set_threshold(*PYTHON_THRESHOLD)
    return out


def report(pods: int, snapshots: int = 20, policy: SnapshotGC | None = None, label: str = "snapshot_gc") -> Run:
    """Print one run's line (bench.ctrlscale's `--stage snapshot_gc`)."""
    policy = policy or SnapshotGC()
    r = run(pods, snapshots, policy)
    print(r.line(f"{label} {policy.describe()}"), flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--snapshots", type=int, default=20)
    ap.add_argument("--gc-threshold", default=THRESHOLD, help="as the controller's flag (700,10,10: Python's)")
    ap.add_argument("--no-gc-freeze", action="store_true", help="as the controller's flag")
    ap.add_argument("--gc-full-interval", type=float, default=FULL_INTERVAL, help="as the controller's flag")
    a = ap.parse_args()
    for n in a.pods:
        report(n, a.snapshots, SnapshotGC(freeze=not a.no_gc_freeze, threshold=parse_threshold(a.gc_threshold),
                                          full_interval=a.gc_full_interval))


if __name__ == "__main__":
    main()
