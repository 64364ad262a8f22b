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


TUNNELS = ("stunnel", "haproxy")


def _best_tunnel(results: RunResults, key: str, higher_is_better: bool) -> str | None:
    """The C tunnel with the better median for `key`: "the faster C tunnel" of issue 17."""
    meds = [(m, base) for base in TUNNELS if (m := results.median(base, key)) is not None]
    if not meds:
        return None
    return (max(meds) if higher_is_better else min(meds))[1]


def _vs_best_tunnel(key: str, higher_is_better: bool) -> Callable[[RunResults], float | None]:
    """Paired ratio of the cross-node scenario to whichever tunnel did better on `key`."""
    def value(results: RunResults) -> float | None:
        best = _best_tunnel(results, key, higher_is_better)
        r = ratiomod.ratio(results, CROSS, best, key) if best else None
        return r.ratio if r else None
    return value


_tput_vs_best_tunnel = _vs_best_tunnel("tput_1s_gbps", higher_is_better=True)


def _median(scenario: str, key: str) -> Callable[[RunResults], float | None]:
    return lambda res: res.median(scenario, key)


BEST = f"{CROSS} / the better of stunnel and haproxy on this metric, median of paired reps"

WAYPOINT, WAYPOINT_H2 = "ambit-waypoint", "ambit-waypoint-h2"
NGINX_L7, NGINX_L7_H2 = "nginx-l7", "nginx-l7-h2"


def _paired_ratio(scenario: str, baseline: str, key: str) -> Callable[[RunResults], float | None]:
    def value(results: RunResults) -> float | None:
        r = ratiomod.ratio(results, scenario, baseline, key)
        return r.ratio if r else None
    return value


def _added_vs_added(scenario: str, baseline: str, key: str) -> Callable[[RunResults], float | None]:
    """What `scenario` adds over `direct` minus what `baseline` adds over `direct` (ms): each added
    figure is the median over paired reps, as the L4 targets' "added"; needs all three in the run."""
    def value(results: RunResults) -> float | None:
        ours, theirs = ratiomod.ratio(results, scenario, "direct", key), ratiomod.ratio(results, baseline, "direct", key)
        if ours is None or theirs is None or ours.added is None or theirs.added is None:
            return None
        return ours.added - theirs.added
    return value

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
    Target("ztunnel-rss", "ztunnel RSS with 1000 open connections", "<=", 50.0, "MB",
           _median(CROSS, "zt_rss_1000conn_mb"), "largest ztunnel, all its processes (issue 17: ≤ 50 MB)"),
    Target("config-push-p99", "Config push latency p99 with 1000 pods", "<=", 1000.0, "ms",
           _median("controller", "push_p99_ms"), "one change to the client's on_change, 1000-Workload state"),
    # Issue 17 (performance, round 2), L4: ratios to the faster C tunnel in the same run.
    Target("l4-p99-vs-tunnel", "L4 p99 at 1000 req/s vs the faster C tunnel", "<=", 1.0, "×",
           _vs_best_tunnel("lat1000_p99_ms", higher_is_better=False), BEST),
    Target("l4-cpu-vs-tunnel", "L4 proxy CPU per request vs the faster C tunnel", "<=", 1.0, "×",
           _vs_best_tunnel("proxy_cpu_per_1k", higher_is_better=False), BEST + " (all proxies at 1000 req/s)"),
    Target("l4-tput-1s-vs-tunnel", "L4 throughput, 1 stream, vs the faster C tunnel", ">=", 1.2, "×",
           _vs_best_tunnel("tput_1s_gbps", higher_is_better=True), BEST),
    Target("l4-tput-4s-vs-tunnel", "L4 throughput, 4 streams, vs the faster C tunnel", ">=", 1.2, "×",
           _vs_best_tunnel("tput_4s_gbps", higher_is_better=True), BEST),
    Target("l4-conn-vs-tunnels", "L4 new connections per second vs the C tunnels", ">=", 1.5, "×",
           _vs_best_tunnel("conn_per_s", higher_is_better=True), BEST + " (≥ 1.5× both)"),
    Target("ztunnel-rss-idle", "ztunnel RSS, idle", "<=", 40.0, "MB",
           _median(CROSS, "zt_rss_idle_mb"), "largest ztunnel, all its processes, before a rep's load"),
    # Issue 17, L7: the waypoint against nginx doing the same header routing, in the same run.
    Target("waypoint-cpu-vs-nginx", "Waypoint L7 hop CPU per request vs nginx, HTTP/1.1 at saturation", "<=", 1.5,
           "×", _paired_ratio(WAYPOINT, NGINX_L7, "l7_cpu_per_1k_max"),
           f"{WAYPOINT} / {NGINX_L7}: the L7 proxy's own CPU per request (waypoint without the ztunnels) during "
           "the max-rate run, median of paired reps"),
    Target("waypoint-added-p50-vs-nginx", "Waypoint added p50 at 1000 req/s vs nginx's added p50", "<=", 0.05, "ms",
           _added_vs_added(WAYPOINT, NGINX_L7, "lat1000_p50_ms"),
           f"({WAYPOINT} − direct) − ({NGINX_L7} − direct): each the median over paired reps of the p50 added to "
           "direct at 1000 req/s (the waypoint path also crosses two ztunnels)"),
    Target("waypoint-h2-cpu-vs-nginx", "Waypoint HTTP/2 CPU per request vs nginx h2c", "<=", 2.0, "×",
           _paired_ratio(WAYPOINT_H2, NGINX_L7_H2, "l7_cpu_per_1k_max"),
           f"{WAYPOINT_H2} / {NGINX_L7_H2}: as the HTTP/1.1 target with the client speaking h2c (prior knowledge) "
           "to the proxy, HTTP/1.1 upstream for both, median of paired reps"),
    Target("waypoint-path-cpu", "Full waypoint path, vCPU per 1000 req/s (Istio publishes 0.25)", "<=", 0.25, "vCPU",
           _median(WAYPOINT, "proxy_cpu_per_1k"),
           f"{WAYPOINT}: CPU-seconds of both ztunnels and the waypoint per 1000 requests at 1000 req/s"),
    Target("waypoint-rss", "Waypoint RSS, 1 worker (Istio publishes 60 MB)", "<=", 60.0, "MB",
           _median(WAYPOINT, "l7_rss_mb"), f"{WAYPOINT}: VmRSS of the waypoint (one process) during the 1000 req/s "
           "run"),
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

