"""Prometheus's `histogram_quantile`, for the tools that compute percentiles from scraped
histograms themselves (`ambit stat/top`, the controller's topology view) and must agree with the
same query run in Prometheus: linear interpolation inside the bucket that holds the rank; a rank
in the +Inf bucket answers the highest finite bound."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def histogram_quantile(q: float, buckets: Mapping[float, float] | Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative (upper bound `le`, count) buckets; None without observations."""
    pairs = sorted(buckets.items() if isinstance(buckets, Mapping) else buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in pairs:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le
