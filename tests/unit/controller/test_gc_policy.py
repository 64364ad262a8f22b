"""The controller's collector settings (controller/gcpolicy.py): everything alive after a snapshot
is frozen, and everything is collected in full on the first snapshot and once per interval.

What a user relies on: a running controller does not grow (no snapshot, source object or cyclic
garbage is kept by the freezing), and the flags are honoured or refused. No timing here:
bench/ctrlgc.py measures the pauses."""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bench.ctrlgc import ChurningCluster
from bench.ctrlscale import _NoSource
from controller.__main__ import parse_args
from controller.app import Controller
from controller.configserver import ConfigServer
from controller.gcpolicy import SnapshotGC


class FakeGC:
    """Records what the policy asks of the collector."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def collect(self, generation: int = 2) -> int:
        self.calls.append("collect")
        return 0

    def get_freeze_count(self) -> int:
        return 0

    def set_threshold(self, *t: int) -> None:
        self.calls.append(("threshold", t))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_snapshot_is_frozen_and_everything_collected_in_full_first_and_once_per_interval():
    fake, clock = FakeGC(), Clock()
    policy = SnapshotGC(full_interval=60, clock=clock, gc=fake)
    policy.start()
    assert fake.calls == [("threshold", (700, 10, 100))]
    fake.calls.clear()
    policy.on_applied()                 # the first snapshot: start-up heap and initial list
    assert fake.calls == ["unfreeze", "collect", "freeze"]
    fake.calls.clear()
    for _ in range(3):
        clock.now += 19
        policy.on_applied()
    assert fake.calls == ["freeze"] * 3
    fake.calls.clear()
    clock.now += 3                      # 60 s since the last full collection
    policy.on_applied()
    assert fake.calls == ["unfreeze", "collect", "freeze"]
    assert policy.full_collections == 2


def test_without_the_freeze_only_the_thresholds_are_set():
    fake = FakeGC()
    policy = SnapshotGC(freeze=False, threshold=(5000,), gc=fake)
    policy.start()
    for _ in range(3):
        policy.on_applied()
    assert fake.calls == [("threshold", (5000,))]
    fake.calls.clear()
    SnapshotGC(threshold=None, gc=fake).start()
    assert fake.calls == []             # None keeps the interpreter's


def test_the_flags_are_parsed_and_bad_values_refused(tmp_path):
    args = parse_args(["--lab-store", str(tmp_path / "s.json")], {})
    assert (args.gc_freeze, args.gc_threshold, args.gc_full_interval) == (True, "700,10,100", 300.0)
    args = parse_args(["--lab-store", str(tmp_path / "s.json"), "--no-gc-freeze", "--gc-threshold", "2000",
                       "--gc-full-interval", "30"], {})
    assert (args.gc_freeze, args.gc_threshold, args.gc_full_interval) == (False, "2000", 30.0)
    with pytest.raises(SystemExit, match="--gc-threshold.*disables the collector"):
        parse_args(["--lab-store", "x", "--gc-threshold", "0,10,10"], {})
    with pytest.raises(SystemExit, match="--gc-full-interval.*must be > 0"):
        parse_args(["--lab-store", "x", "--gc-full-interval", "0"], {})


@pytest.fixture
def real_gc() -> Iterator[None]:
    """The test process's own collector, restored afterwards."""
    threshold = gc.get_threshold()
    gc.collect()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    gc.collect()


def _controller(policy: SnapshotGC) -> Controller:
    return Controller(_NoSource(), ConfigServer(registry=CollectorRegistry()), on_applied=policy.on_applied)


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_running_controller_stays_bounded_over_many_churn_snapshots(real_gc):
    clock = Clock()
    policy = SnapshotGC(full_interval=10, clock=clock)
    policy.start()
    cluster = ChurningCluster(200)
    ctl = _controller(policy)

    def snapshots(n: int) -> None:
        for _ in range(n):
            cluster.step(10)
            clock.now += 1
            ctl.on_snapshot(cluster.cache.objects())

    ctl.on_snapshot(cluster.cache.objects())
    snapshots(20)
    held, rss = len(gc.get_objects()) + gc.get_freeze_count(), _rss_kib()
    snapshots(100)
    assert policy.full_collections == 13        # the first snapshot, then every 10th
    # Each snapshot makes about as many objects as it frees; had any snapshot's translation,
    # replaced source objects or garbage stayed, 100 snapshots would add thousands of objects
    # (a snapshot at 200 pods is about 3,500 tracked objects) and megabytes.
    assert len(gc.get_objects()) + gc.get_freeze_count() < held + 500
    assert _rss_kib() - rss < 8 * 1024
    assert gc.garbage == []
    assert ctl.snapshots == 121


def test_a_frozen_snapshot_and_a_replaced_source_object_are_freed_when_replaced(real_gc):
    class Pod(dict[str, Any]):
        """A source object that a weak reference can watch (a plain dict cannot)."""

    cluster = ChurningCluster(50)
    policy = SnapshotGC(clock=Clock())
    ctl = _controller(policy)
    ctl.on_snapshot(cluster.cache.objects())
    pod = Pod(next(o for o in cluster.cache.objects() if o["kind"] == "Pod"))
    pod["metadata"] = {**pod["metadata"], "name": "watched", "uid": "watched-uid"}
    assert not cluster.cache.upsert(pod)
    ctl.on_snapshot(cluster.cache.objects())             # frozen with the snapshot that holds it
    watched_pod = weakref.ref(pod)
    translation = weakref.ref(ctl.translation)
    del pod
    assert watched_pod() is not None and translation() is not None
    cluster.cache.delete(("", "Pod", "ns-0", "watched"))
    gc.disable()                                        # reference counting alone frees them
    try:
        ctl.on_snapshot(cluster.cache.objects())
    finally:
        gc.enable()
    assert watched_pod() is None
    assert translation() is None
    assert policy.full_collections == 1


def test_cyclic_garbage_frozen_while_alive_is_freed_at_the_next_full_collection(real_gc):
    class Stream:
        """Something alive at a freeze that later ends as a reference cycle (a finished stream)."""

        def __init__(self) -> None:
            self.me = self

    clock = Clock()
    policy = SnapshotGC(full_interval=60, clock=clock)
    ctl = _controller(policy)
    cluster = ChurningCluster(50)
    ctl.on_snapshot(cluster.cache.objects())
    stream = Stream()
    watched = weakref.ref(stream)
    cluster.step(5)
    ctl.on_snapshot(cluster.cache.objects())            # frozen while alive
    del stream
    gc.collect()
    assert watched() is not None        # frozen: the collector does not walk it (what the interval bounds)
    clock.now += 60
    cluster.step(5)
    ctl.on_snapshot(cluster.cache.objects())
    assert watched() is None
    assert policy.full_collections == 2
