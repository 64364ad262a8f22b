"""The collector settings of the proxies (ambit/dataplane/gctune.py): parsing, applying, pause stats."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from ambit.dataplane import gctune
from ambit.settings import SettingsError
from ztunnel.settings import load as parse_args


class FakeGC:
    """Records what tune() asks of the collector, so the test process's own collector is untouched."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.callbacks: list[Any] = []

    def freeze(self) -> None:
        self.calls.append("freeze")

    def get_freeze_count(self) -> int:
        return 0

    def set_threshold(self, *t: int) -> None:
        self.calls.append(("threshold", t))

    def get_threshold(self) -> tuple[int, int, int]:
        return (700, 10, 10)

    def collect(self, generation: int = 2) -> int:
        self.calls.append("collect")
        return 0


@pytest.mark.parametrize(("text", "want"), [("", None), (" ", None), ("7000", (7000,)),
                                            ("7000,20", (7000, 20)), ("7000, 20, 50", (7000, 20, 50))])
def test_threshold_parses(text, want):
    assert gctune.parse_threshold(text) == want
    assert gctune.check_threshold(text) is None


@pytest.mark.parametrize(("text", "reason"), [("1,2,3,4", "at most 3"), ("a,10", "integers"),
                                              ("700,-1", "negative"), ("0", "disables the collector")])
def test_bad_threshold_is_refused_with_the_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        gctune.parse_threshold(text)
    assert reason in (gctune.check_threshold(text) or "")


def test_freeze_collects_start_up_garbage_first_then_freezes():
    fake = FakeGC()
    stats = gctune.tune(True, (5000, 20), gc=fake)  # type: ignore[arg-type]
    assert fake.calls == [("threshold", (5000, 20)), "collect", "freeze"]
    assert fake.callbacks == [stats.callback]


def test_no_freeze_and_no_threshold_leave_the_collector_alone():
    fake = FakeGC()
    gctune.tune(False, None, gc=fake)  # type: ignore[arg-type]
    assert fake.calls == []
    assert len(fake.callbacks) == 1     # the pauses are still counted


def test_stats_count_pauses_per_generation():
    now = [0.0]
    stats = gctune.GCStats(clock=lambda: now[0])
    for gen, took in ((0, 0.001), (0, 0.003), (2, 0.020)):
        stats.callback("start", {"generation": gen})
        now[0] += took
        stats.callback("stop", {"generation": gen, "collected": 0})
    stats.callback("stop", {"generation": 1})    # a stop without a start (hook added mid-collection)
    r = stats.report()
    assert r["collections"] == [2, 0, 1]
    assert r["max_ms"] == [3.0, 0.0, 20.0]
    assert r["total_ms"] == [4.0, 0.0, 20.0]


def test_stats_hook_sees_real_collections():
    stats = gctune.GCStats()
    gc.callbacks.append(stats.callback)
    try:
        gc.collect(2)
    finally:
        gc.callbacks.remove(stats.callback)
    assert stats.collections[2] >= 1 and stats.max_s[2] > 0


def test_ztunnel_gc_flags():
    base = ["--node", "n1", "--zds-socket", "/tmp/x.sock"]
    s = parse_args(base, {})
    assert s.gc_freeze is True and s.gc_threshold == ""
    s = parse_args(base, {"AMBIT_ZTUNNEL_GC_FREEZE": "false", "AMBIT_ZTUNNEL_GC_THRESHOLD": "7000,20,20"})
    assert s.gc_freeze is False and gctune.parse_threshold(s.gc_threshold) == (7000, 20, 20)
    with pytest.raises(SettingsError, match="--gc-threshold: '0': a generation-0 threshold of 0 disables"):
        parse_args([*base, "--gc-threshold", "0"], {})
