"""The tracing bench pair (bench/tracing.py, bench/l7.py, bench/ratios.py): the scenario, its
switch, the receiver pod in the lab spec, and the cost per request in the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import labenv, ratios, report, tracing
from bench import plan as planmod
from bench.results import RunResults
from waypoint.telemetry.tracing_settings import SamplingFile, from_flags


def test_the_traced_waypoint_is_paired_with_the_plain_one() -> None:
    sc = planmod.SCENARIOS["ambit-waypoint-traced"]
    assert sc.waypoint and sc.mesh and sc.l7 == tracing.TRACED
    res = RunResults(reps=2)
    for rep, (plain, traced) in enumerate(((3000.0, 2400.0), (3100.0, 2480.0))):
        res.record("ambit-waypoint", "max_rps", rep, plain)
        res.record("ambit-waypoint-traced", "max_rps", rep, traced)
    got = {(r.scenario, r.baseline): r.ratio for r in ratios.all_ratios(res) if r.metric == "max_rps"}
    assert got == {("ambit-waypoint-traced", "ambit-waypoint"): pytest.approx(0.8)}


def test_cost_per_request_is_paired_rep_by_rep() -> None:
    res = RunResults(reps=2)
    # CPU-seconds per 1000 requests: 0.30 and 0.34 traced against 0.20 and 0.22 -> 100 and 120 µs
    for rep, (plain, traced) in enumerate(((0.20, 0.30), (0.22, 0.34))):
        res.record("ambit-waypoint", "l7_cpu_per_1k", rep, plain)
        res.record("ambit-waypoint-traced", "l7_cpu_per_1k", rep, traced)
        res.record("ambit-waypoint", "lat1000_p50_ms", rep, 1.0)
        res.record("ambit-waypoint-traced", "lat1000_p50_ms", rep, 1.25)
    cost = ratios.tracing_cost(res)
    assert cost["cpu_us_per_request"] == pytest.approx(110.0)
    assert cost["cpu_us_per_request_traced"] == pytest.approx(320.0)
    assert cost["cpu_us_per_request_untraced"] == pytest.approx(210.0)
    assert cost["p50_added_ms"] == pytest.approx(0.25)
    assert "max_rps_ratio" not in cost
    line = report.tracing_line(cost)
    assert "110 µs of waypoint CPU per request" in line and "p50 +0.25 ms" in line
    assert "320 µs at 100 % against 210 µs at 0 %" in line
    assert ratios.tracing_cost(RunResults(reps=1)) == {}


def test_the_switch_is_the_waypoints_sampling_file(tmp_path: Path) -> None:
    f = tracing.sampling_file(tmp_path)
    env = tracing.waypoint_env("10.210.2.13", f)
    assert env["AMBIT_WAYPOINT_TRACING_OTLP"] == "10.210.2.13:4317"
    assert env["AMBIT_WAYPOINT_TRACING_SAMPLING_FILE"] == str(f)
    now = [0.0]
    sf = SamplingFile(from_flags(env["AMBIT_WAYPOINT_TRACING_OTLP"],
                                 sampling=float(env["AMBIT_WAYPOINT_TRACING_SAMPLING"])), f, clock=lambda: now[0])
    for name, pct in (("waypoint", 0.0), (tracing.TRACED, 100.0), ("waypoint-resilient", 0.0), (tracing.TRACED, 100.0)):
        tracing.set_sampling(f, name)
        now[0] += 1.5
        assert sf().sampling_percent == pct, name


def test_the_l7_lab_has_the_receiver_pod_outside_the_mesh(tmp_path: Path) -> None:
    spec = labenv.spec_dict(tmp_path, l7=True)
    pod = next(p for p in spec["pods"] if p["name"] == tracing.RECEIVER_POD)
    assert pod["namespace"] == planmod.PLAIN_NS and pod["command"][1:3] == ["-m", tracing.RECEIVER_MODULE]
    assert not any(p["name"] == tracing.RECEIVER_POD for p in labenv.spec_dict(tmp_path)["pods"])
