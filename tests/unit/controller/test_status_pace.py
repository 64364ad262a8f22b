"""The status writer's pacing (controller/sources/statuspace.py), sans-IO with the clock given."""

from __future__ import annotations

import random

import pytest

from ambit.backoff import Backoff
from controller.sources.statuspace import StatusPace


def pace() -> StatusPace[str, str]:
    return StatusPace(retry=Backoff(1.0, 8.0, jitter=0.0), rewrite=Backoff(10.0, 80.0, jitter=0.0), burst=2,
                      quiet=60.0, rng=random.Random(1))


def test_the_latest_item_of_a_key_wins() -> None:
    p = pace()
    p.put("a", "old")
    p.put("a", "new")
    assert p.take(0.0) == ("a", "new")
    assert p.take(0.0) is None and p.due() is None


def test_a_failed_write_is_retried_after_a_growing_backoff() -> None:
    p = pace()
    p.put("a", "x")
    for now, delay in ((0.0, 1.0), (1.0, 2.0), (3.0, 4.0)):
        assert p.take(now) == ("a", "x")
        p.done("a", "x", ok=False, now=now)
        assert p.due() == now + delay and p.take(now) is None and p.deferred(now) == {"a"}
    assert p.take(7.0) == ("a", "x")
    p.done("a", "x", ok=True, now=7.0)
    assert p.due() is None


def test_a_newer_item_replaces_one_waiting_for_a_retry() -> None:
    p = pace()
    p.put("a", "x")
    p.take(0.0)
    p.done("a", "x", ok=False, now=0.0)
    p.put("a", "y")
    assert p.take(1.0) == ("a", "y")


def test_quick_rewrites_of_one_object_back_off_and_are_reported_once() -> None:
    p = pace()
    contested = []
    now = 0.0
    dues = []
    for _ in range(5):
        p.put("a", "x")
        due = p.due()
        assert due is not None
        now = max(now, due)
        dues.append(now)
        assert p.take(now) == ("a", "x")
        contested.append(p.done("a", "x", ok=True, now=now))
        now += 0.1                                 # the other writer sets it back at once
    assert dues == pytest.approx([0.0, 0.1, 0.2, 10.2, 30.2])   # the write and 2 quick rewrites free, then 10, 20 s
    assert contested == [False, False, True, False, False]
    p.put("b", "y")                                # another object is not held back
    assert p.take(now) == ("b", "y")


def test_a_rewrite_after_a_quiet_spell_starts_afresh() -> None:
    p = pace()
    for now in (0.0, 1.0, 2.0, 3.0):
        p.put("a", "x")
        if now == 3.0:
            assert p.take(now) is None             # the third quick rewrite: backed off
            break
        p.take(now)
        p.done("a", "x", ok=True, now=now)
    p2 = pace()
    for now in (0.0, 100.0, 200.0, 300.0):         # one write every 100 s: never held back
        p2.put("a", "x")
        assert p2.take(now) == ("a", "x")
        assert p2.done("a", "x", ok=True, now=now) is False
