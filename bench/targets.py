"""The project's performance targets and Istio ambient's published figures (sans-IO).

Targets are *reported*, never asserted: a missed target is a finding for the summary (by how
much, and a slot for what a profile shows), not a failed run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench import ratios as ratiomod
from bench.metrics import fmt
from bench.results import RunResults

CROSS = "ambit-l4-cross-node"


@dataclass(frozen=True)
class Target:
    id: str
    description: str
    op: str                 # "<=" or ">="
    threshold: float
    unit: str
    value: Callable[[RunResults], float | None]
    basis: str              # how the value is derived, for the reader


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float | None
    status: str             # "met" | "missed" | "not measured"
    shortfall: str          # "" when met; "by 0.31 ms (2.2× the target)" when missed


def _added(results: RunResults, key: str) -> float | None:
    r = ratiomod.ratio(results, CROSS, "direct", key)
    return r.added if r else None


def _tput_vs_best_tunnel(results: RunResults) -> float | None:
    """Paired ratio against whichever of stunnel/haproxy had the higher median single stream."""
    best, best_med = None, -1.0
    for base in ("stunnel", "haproxy"):
        m = results.median(base, "tput_1s_gbps")
        if m is not None and m > best_med:
            best, best_med = base, m
    if best is None:
        return None
    r = ratiomod.ratio(results, CROSS, best, "tput_1s_gbps")
    return r.ratio if r else None


def _median(scenario: str, key: str) -> Callable[[RunResults], float | None]:
    return lambda res: res.median(scenario, key)


TARGETS: tuple[Target, ...] = (
    Target("l4-added-p50", "L4 cross-node added latency at 1000 req/s, p50", "<=", 0.25, "ms",
           lambda r: _added(r, "lat1000_p50_ms"), f"{CROSS} − direct, median of paired reps"),
    Target("l4-added-p99", "L4 cross-node added latency at 1000 req/s, p99", "<=", 1.0, "ms",
           lambda r: _added(r, "lat1000_p99_ms"), f"{CROSS} − direct, median of paired reps"),
    Target("hbone-throughput", "HBONE single-stream throughput vs the faster of stunnel/haproxy", ">=", 1.0, "×",
           _tput_vs_best_tunnel, f"{CROSS} / best tunnel, median of paired reps"),
    Target("new-connections", "New tunnelled connections per second", ">=", 2000.0, "conn/s",
           _median(CROSS, "conn_per_s"), f"{CROSS}, HTTP/1.0 connect-request-close"),
    Target("ztunnel-cpu", "ztunnel CPU per 1000 req/s", "<=", 0.15, "vCPU",
           _median(CROSS, "zt_cpu_per_1k"), "busiest ztunnel, CPU-seconds per 1000 requests at 1000 req/s"),
    Target("ztunnel-rss", "ztunnel RSS with 1000 open connections", "<=", 60.0, "MB",
           _median(CROSS, "zt_rss_1000conn_mb"), "largest ztunnel, all its processes"),
    Target("config-push-p99", "Config push latency p99 with 1000 pods", "<=", 1000.0, "ms",
           _median("controller", "push_p99_ms"), "one change to the client's on_change, 1000-Workload state"),
)


def judge(t: Target, value: float | None) -> Verdict:
    if value is None:
        return Verdict(t, None, "not measured", "")
    ok = value <= t.threshold if t.op == "<=" else value >= t.threshold
    if ok:
        return Verdict(t, value, "met", "")
    gap = abs(value - t.threshold)
    unit = "" if t.unit == "×" else f" {t.unit}"
    if t.op == "<=":
        factor = f"{value / t.threshold:.2f}× the target" if t.threshold else ""
    else:
        factor = f"{value / t.threshold:.0%} of the target" if t.threshold else ""
    return Verdict(t, value, "missed", f"by {fmt(gap, t.unit)}{unit} ({factor})")


def evaluate(results: RunResults, targets: Sequence[Target] = TARGETS) -> list[Verdict]:
    return [judge(t, t.value(results)) for t in targets]


@dataclass(frozen=True)
class Reference:
    what: str
    istio: float
    unit: str
    ours: Callable[[RunResults], float | None]
    basis: str


def _zt_cpu(results: RunResults) -> float | None:
    return results.median(CROSS, "zt_cpu_per_1k")


# Istio ambient's published figures (ztunnel, 1 KiB payloads, 1000 req/s).
ISTIO: tuple[Reference, ...] = (
    Reference("ztunnel vCPU per 1000 req/s", 0.06, "vCPU", _zt_cpu, "busiest ztunnel, cross-node"),
    Reference("ztunnel memory at 1000 req/s", 12.0, "MB", _median(CROSS, "zt_rss_load_mb"),
              "largest ztunnel RSS during the 1000 req/s run"),
    Reference("two ztunnels add, p90 at 1000 req/s", 0.17, "ms", lambda r: _added(r, "lat1000_p90_ms"),
              f"{CROSS} − direct"),
    Reference("two ztunnels add, p99 at 1000 req/s", 0.20, "ms", lambda r: _added(r, "lat1000_p99_ms"),
              f"{CROSS} − direct"),
)


def references(results: RunResults) -> list[tuple[Reference, float | None]]:
    return [(ref, ref.ours(results)) for ref in ISTIO]


def ratio_to_istio(ours: float | None, istio: float) -> float | None:
    return ours / istio if ours is not None and istio else None

