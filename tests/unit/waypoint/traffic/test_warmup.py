"""Slow start: Envoy's weight factor over the window, with aggression and the minimum weight."""

from __future__ import annotations

import pytest

from waypoint.traffic.warmup import SlowStart


def test_endpoints_present_at_the_start_are_warm_and_new_ones_ramp_up() -> None:
    s = SlowStart(10.0, aggression=1.0, min_percent=10.0)
    s.observe(["a", "b"], now=100.0)
    assert s.factor("a", 100.0) == 1.0 and not s.warming(["a", "b"], 100.0)
    s.observe(["a", "b", "c"], now=200.0)
    assert s.factor("c", 200.0) == 0.1                   # min_percent floor (time factor 1 ms / 10 s)
    assert s.factor("c", 205.0) == pytest.approx(0.5)    # linear with aggression 1
    assert s.factor("c", 210.0) == 1.0 and s.warming(["c"], 209.9)
    assert not s.warming(["a", "b", "c"], 210.0)


def test_aggression_and_a_host_coming_back_starts_over() -> None:
    s = SlowStart(10.0, aggression=2.0, min_percent=0.0)
    s.observe(["a"], 0.0)
    s.observe(["a", "b"], 0.0)
    assert s.factor("b", 2.5) == pytest.approx(0.25 ** 0.5)     # time_factor ** (1 / aggression)
    s.observe(["a"], 20.0)
    s.observe(["a", "b"], 30.0)
    assert s.factor("b", 31.0) == pytest.approx(0.1 ** 0.5)
    assert SlowStart(10.0, aggression=0.0).aggression == 1.0    # invalid: Envoy uses 1.0
