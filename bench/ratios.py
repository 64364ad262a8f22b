"""Ambit against its baselines, pair by pair within one run (sans-IO).

For each (ambit scenario, baseline) and metric, rep i of the one is divided by rep i of the other
and the median of those ratios is reported; for latencies the median added milliseconds too.
Pairing by rep (reps are interleaved in time) removes the machine's slow drift from the ratio,
which a ratio of two medians taken minutes apart would keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench import stats
from bench.metrics import LAT_PS, RATES, metric
from bench.results import RunResults

AMBIT_SCENARIOS = ("ambit-l4-cross-node", "ambit-l4-same-node", "ambit-iptables-capture", "ambit-l4-workers")
BASELINES = ("direct", "stunnel", "haproxy")
RATIO_METRICS = (
    ("tput_1s_gbps", "tput_4s_gbps")
    + tuple(f"lat{r}_{p}_ms" for r in RATES for p in LAT_PS)
    + ("max_rps", "conn_per_s", "proxy_cpu_per_1k")
)


@dataclass(frozen=True)
class Ratio:
    scenario: str
    baseline: str
    metric: str
    ratio: float              # median over paired reps of scenario / baseline
    added: float | None       # median over paired reps of scenario - baseline (latencies only)
    pairs: int


def paired(a: Sequence[float | None], b: Sequence[float | None]) -> list[tuple[float, float]]:
    """(a_i, b_i) for every rep where both produced a value (b_i must be non-zero to divide by)."""
    return [(x, y) for x, y in zip(a, b, strict=False) if x is not None and y is not None and y != 0]


def ratio(results: RunResults, scenario: str, baseline: str, key: str) -> Ratio | None:
    pairs = paired(results.per_rep(scenario, key), results.per_rep(baseline, key))
    if not pairs:
        return None
    is_latency = metric(key).unit == "ms"
    return Ratio(scenario=scenario, baseline=baseline, metric=key,
                 ratio=stats.median(x / y for x, y in pairs),
                 added=stats.median(x - y for x, y in pairs) if is_latency else None,
                 pairs=len(pairs))


# The waypoint against nginx and HAProxy doing the same header routing (bench/l7.py).
L7_SCENARIOS = ("ambit-waypoint", "ambit-waypoint-workers", "ambit-waypoint-resilient")
# What resilience costs on the happy path: the waypoint with retries and a traffic policy against
# the same waypoint and route without them, in the same run.
RESILIENCE_PAIR = ("ambit-waypoint-resilient", "ambit-waypoint")
# What tracing costs: the same waypoint at 100 % sampling against 0 % (bench/l7.py switches it).
TRACING_PAIR = ("ambit-waypoint-traced", "ambit-waypoint")
L7_BASELINES = ("nginx-l7", "haproxy-l7")
# The same over HTTP/2 (h2c prior knowledge from the client; HTTP/1.1 upstream for all three).
L7_H2_SCENARIOS = ("ambit-waypoint-h2",)
L7_H2_BASELINES = ("nginx-l7-h2", "haproxy-l7-h2")
L7_RATIO_METRICS = ("max_rps", "lat100_p50_ms", "lat100_p99_ms", "lat1000_p50_ms", "lat1000_p99_ms",
                    "proxy_cpu_per_1k", "l7_cpu_per_1k", "l7_cpu_per_1k_max", "l7_rss_mb")


def all_ratios(results: RunResults, scenarios: Sequence[str] = AMBIT_SCENARIOS,
               baselines: Sequence[str] = BASELINES, keys: Sequence[str] = RATIO_METRICS,
               l7: bool = True) -> list[Ratio]:
    """Every (scenario, baseline, metric) ratio with data; with `l7`, also the waypoint's against
    the L7 proxies."""
    out = []
    for sc in scenarios:
        for base in baselines:
            for key in keys:
                r = ratio(results, sc, base, key)
                if r is not None:
                    out.append(r)
    if l7:
        out += all_ratios(results, L7_SCENARIOS, L7_BASELINES, L7_RATIO_METRICS, l7=False)
        out += all_ratios(results, L7_H2_SCENARIOS, L7_H2_BASELINES, L7_RATIO_METRICS, l7=False)
        out += all_ratios(results, RESILIENCE_PAIR[:1], RESILIENCE_PAIR[1:], L7_RATIO_METRICS, l7=False)
        out += all_ratios(results, TRACING_PAIR[:1], TRACING_PAIR[1:], L7_RATIO_METRICS, l7=False)
    return out


def find(ratios: Sequence[Ratio], scenario: str, baseline: str, key: str) -> Ratio | None:
    for r in ratios:
        if (r.scenario, r.baseline, r.metric) == (scenario, baseline, key):
            return r
    return None


def tracing_cost(results: RunResults) -> dict[str, float]:
    """What 100 % sampling adds per request, paired rep by rep with the 0 % waypoint: waypoint
    CPU in µs per request (from l7_cpu_per_1k, CPU-seconds per 1000 requests: at 100 %, at 0 %, and
    the difference, each the median over the paired reps), p50/p99 latency
    added at 1000 req/s (ms), and the max-rate ratio. Only the keys with data."""
    traced, plain = TRACING_PAIR
    out: dict[str, float] = {}
    cpu = paired(results.per_rep(traced, "l7_cpu_per_1k"), results.per_rep(plain, "l7_cpu_per_1k"))
    if cpu:
        out["cpu_us_per_request"] = stats.median((x - y) * 1000.0 for x, y in cpu)
        out["cpu_us_per_request_traced"] = stats.median(x * 1000.0 for x, _ in cpu)
        out["cpu_us_per_request_untraced"] = stats.median(y * 1000.0 for _, y in cpu)
    for key, name in (("lat1000_p50_ms", "p50_added_ms"), ("lat1000_p99_ms", "p99_added_ms")):
        pairs = paired(results.per_rep(traced, key), results.per_rep(plain, key))
        if pairs:
            out[name] = stats.median(x - y for x, y in pairs)
    r = ratio(results, traced, plain, "max_rps")
    if r is not None:
        out["max_rps_ratio"] = r.ratio
    return out
