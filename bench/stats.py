"""Percentiles, medians and per-rep summaries (sans-IO).

Percentiles use the *nearest-rank* definition: p99 is the smallest sample such that at least 99 %
of the samples are at or below it. Unlike interpolating definitions it always returns a latency
that was really observed, which is what HdrHistogram-based tools (wrk2, fortio) report too, so
our figures compare with theirs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

# The percentile ladder kept per rep in the JSON (and drawn in the latency charts).
LADDER = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0)


class EmptySamples(ValueError):
    """A statistic of no samples was asked for; the message names what was being summarised."""


def percentile(sorted_samples: Sequence[float], p: float, what: str = "samples") -> float:
    """Nearest-rank percentile of already-sorted samples; p in [0, 100]."""
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile of {what}: p={p} is outside [0, 100]")
    n = len(sorted_samples)
    if n == 0:
        raise EmptySamples(f"percentile p{p:g} of {what}: no samples")
    if p == 0.0:
        return float(sorted_samples[0])
    rank = math.ceil(p / 100.0 * n)
    return float(sorted_samples[min(max(rank, 1), n) - 1])


def percentiles(samples: Iterable[float], ps: Iterable[float] = LADDER, what: str = "samples") -> dict[str, float]:
    """{"p50": ..., "p99.9": ...} for each p (keys use the shortest spelling of p)."""
    s = sorted(samples)
    return {pkey(p): percentile(s, p, what) for p in ps}


def pkey(p: float) -> str:
    return f"p{p:g}"


def median(values: Iterable[float], what: str = "values") -> float:
    v = list(values)
    if not v:
        raise EmptySamples(f"median of {what}: no values")
    return float(statistics.median(v))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-rep values: what a table cell shows (median [min–max])."""
    return {"median": median(values), "min": float(min(values)), "max": float(max(values)), "n": len(values)}
