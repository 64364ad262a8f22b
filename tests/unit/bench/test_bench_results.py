from __future__ import annotations

import json

import pytest

from bench.results import RunResults

from .helpers import results_with


def test_record_keeps_rep_positions_and_summary_has_median_min_max():
    res = results_with(3, {"direct": {"tput_1s_gbps": [2.0, None, 4.0]}})
    assert res.per_rep("direct", "tput_1s_gbps") == [2.0, None, 4.0]
    assert res.values("direct", "tput_1s_gbps") == [2.0, 4.0]
    cell = res.summary()["direct"]["tput_1s_gbps"]
    assert cell["unit"] == "Gbit/s"
    assert (cell["median"], cell["min"], cell["max"], cell["n"]) == (3.0, 2.0, 4.0, 2)
    assert res.median("direct", "conn_per_s") is None


def test_unknown_metric_and_bad_rep_are_refused_by_name():
    res = RunResults(reps=2)
    with pytest.raises(KeyError, match="unknown metric 'latency'"):
        res.record("direct", "latency", 0, 1.0)
    with pytest.raises(IndexError, match=r"rep 2 is outside 0..1"):
        res.record("direct", "conn_per_s", 2, 1.0)


def test_round_trip_through_the_results_file():
    res = results_with(3, {"direct": {"lat1000_p99_ms": [1.0, 2.0, 3.0]}, "stunnel": {"conn_per_s": [None, 5.0, 6.0]}})
    res.error("haproxy", "tunnel start", None, "boom")
    res.notes.append("a note")
    doc = json.loads(json.dumps({"plan": {"reps": 3}, "results": res.summary(), "details": res.details,
                                 "errors": res.errors, "notes": res.notes}))
    back = RunResults.from_json(doc)
    assert back.samples == res.samples
    assert back.errors == res.errors and back.notes == ["a note"]


def test_results_file_with_wrong_rep_count_is_refused():
    doc = {"plan": {"reps": 3}, "results": {"direct": {"conn_per_s": {"samples": [1.0]}}}}
    with pytest.raises(ValueError, match=r"direct.conn_per_s.samples has 1 reps, plan says 3"):
        RunResults.from_json(doc)
