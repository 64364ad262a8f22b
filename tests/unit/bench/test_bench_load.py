"""The load average at each rep's start, and the reps the report flags as run on a busy machine."""

from __future__ import annotations

from bench import load, ratios, report, targets
from bench.results import RunResults


def sample(load1: float, cores: int = 2) -> dict:
    return {"load1": load1, "load5": 1.0, "load15": 1.0, "cores": cores}


def test_sample_reads_this_machine() -> None:
    s = load.sample()
    assert s["cores"] >= 1 and s["load1"] >= 0 and set(s) == {"load1", "load5", "load15", "cores"}


def test_busy_reps_are_those_above_the_core_count() -> None:
    res = RunResults(reps=3)
    for rep, l1 in enumerate((0.5, 2.0, 3.5)):
        res.detail("direct", load.DETAIL, rep, sample(l1))
    res.detail("nginx-l7", load.DETAIL, 0, sample(5.0, cores=8))
    assert load.busy_reps(res) == [load.Busy("direct", 2, 3.5, 2)]
    assert load.sampled_reps(res) == 4


def render(res: RunResults) -> str:
    meta = {"plan": {"mode": "quick", "reps": res.reps}, "machine": {"cores": 2}}
    return report.render(res, meta, targets.evaluate(res), ratios.all_ratios(res))


def test_report_flags_busy_reps_and_says_when_none_was() -> None:
    res = RunResults(reps=2)
    res.record("direct", "max_rps", 0, 1000.0)
    res.detail("direct", load.DETAIL, 0, sample(1.0))
    res.detail("direct", load.DETAIL, 1, sample(6.25))
    md = render(res)
    assert "**Busy machine:** 1 of 2 reps started with the 1-minute load average above the core count" in md
    assert "- direct rep 2: load average 6.25 > 2 cores" in md
    res.details["direct"][load.DETAIL][1] = sample(1.5)
    md = render(res)
    assert "Busy machine" not in md
    assert "Machine load: all 2 reps started with the 1-minute load average at or below the core count." in md


def test_a_run_without_load_samples_says_nothing_about_load() -> None:
    """Results files written before loads were recorded re-render without a load line."""
    res = RunResults(reps=1)
    res.record("direct", "max_rps", 0, 1000.0)
    assert "load average" not in render(res)
