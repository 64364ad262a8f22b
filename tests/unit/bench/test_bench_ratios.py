from __future__ import annotations

import pytest

from bench import ratios

from .helpers import results_with


def test_ratio_pairs_reps_and_takes_the_median_of_per_rep_ratios():
    # The machine got faster between reps; pairing removes that drift from the ratio.
    res = results_with(3, {
        "ambit-l4-cross-node": {"tput_1s_gbps": [1.0, 2.0, 4.0]},
        "stunnel": {"tput_1s_gbps": [2.0, 4.0, 8.0]},
    })
    r = ratios.ratio(res, "ambit-l4-cross-node", "stunnel", "tput_1s_gbps")
    assert r is not None
    assert r.ratio == pytest.approx(0.5)
    assert r.added is None       # throughput: no "added"
    assert r.pairs == 3


def test_latency_ratio_also_reports_added_milliseconds_and_skips_missing_reps():
    res = results_with(3, {
        "ambit-l4-cross-node": {"lat1000_p99_ms": [1.0, None, 1.6]},
        "direct": {"lat1000_p99_ms": [0.5, 0.5, 0.6]},
    })
    r = ratios.ratio(res, "ambit-l4-cross-node", "direct", "lat1000_p99_ms")
    assert r.pairs == 2
    assert r.added == pytest.approx(0.75)          # median of 0.5 and 1.0
    assert r.ratio == pytest.approx((2.0 + 1.6 / 0.6) / 2)


def test_no_pairs_no_ratio_and_all_ratios_lists_only_measured_pairs():
    res = results_with(2, {"ambit-l4-cross-node": {"conn_per_s": [900.0, 1100.0]},
                           "haproxy": {"conn_per_s": [700.0, 800.0]}})
    assert ratios.ratio(res, "ambit-l4-cross-node", "direct", "conn_per_s") is None
    got = ratios.all_ratios(res)
    assert [(r.scenario, r.baseline, r.metric) for r in got] == [("ambit-l4-cross-node", "haproxy", "conn_per_s")]
    assert ratios.find(got, "ambit-l4-cross-node", "haproxy", "conn_per_s") is got[0]
