from __future__ import annotations

import pytest

from bench import stats


def test_nearest_rank_percentiles_are_observed_values():
    s = list(range(1, 101))
    assert stats.percentile(s, 50) == 50
    assert stats.percentile(s, 99) == 99
    assert stats.percentile(s, 99.9) == 100
    assert stats.percentile(s, 0) == 1
    assert stats.percentile(s, 100) == 100
    # With 10 samples, p99 is the largest (no interpolation between 9 and 10).
    assert stats.percentile(list(range(1, 11)), 99) == 10
    assert stats.percentile(list(range(1, 11)), 90) == 9


def test_percentiles_sorts_and_keys_by_shortest_spelling():
    got = stats.percentiles([5, 1, 3, 2, 4], ps=(50, 99.9))
    assert got == {"p50": 3.0, "p99.9": 5.0}


def test_empty_and_out_of_range_name_what_was_summarised():
    with pytest.raises(stats.EmptySamples, match="p99 of latencies: no samples"):
        stats.percentile([], 99, "latencies")
    with pytest.raises(ValueError, match="p=101 is outside"):
        stats.percentile([1], 101)
    with pytest.raises(stats.EmptySamples, match="median of throughput"):
        stats.median([], "throughput")


def test_spread_is_median_min_max():
    assert stats.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert stats.median([1, 2, 3, 4]) == 2.5
