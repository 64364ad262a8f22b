"""The Markdown summary of a run (sans-IO: results in, text out).

Layout: what ran where, the targets (met or missed and by how much), Istio's figures beside ours,
the main table (median [min–max] per scenario), the ratios, then errors and notes. A missed target
leaves a "profile" slot: what `--profile` (py-spy) showed, or a line saying how to get it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench import load as loadmod
from bench import ratios as ratiomod
from bench import targets as targetmod
from bench.metrics import LAT_PS, RATES, fmt, metric
from bench.results import RunResults

SCENARIO_ORDER = ("direct", "ambit-l4-cross-node", "ambit-l4-same-node", "ambit-iptables-capture",
                  "ambit-l4-workers", "stunnel", "haproxy", "ambit-waypoint", "ambit-waypoint-workers",
                  "ambit-waypoint-resilient",
                  "ambit-waypoint-traced", "nginx-l7", "haproxy-l7", "ambit-waypoint-h2", "nginx-l7-h2",
                  "haproxy-l7-h2")

TABLE_METRICS = (
    ["tput_1s_gbps", "tput_4s_gbps"]
    + [f"lat{r}_{p}_ms" for r in RATES for p in LAT_PS]
    + ["max_rps"] + [f"max_{p}_ms" for p in LAT_PS]
    + ["conn_per_s", "proxy_cpu_per_1k", "zt_cpu_per_1k", "l7_cpu_per_1k", "l7_cpu_per_1k_max", "l7_rss_mb",
       "zt_rss_idle_mb",
       "zt_rss_load_mb", "zt_rss_1000conn_mb"]
)


def cell(results: RunResults, scenario: str, key: str) -> str:
    vals = results.values(scenario, key)
    if not vals:
        return "–"
    unit = metric(key).unit
    med = results.median(scenario, key)
    if len(vals) == 1:
        return fmt(med, unit)
    return f"{fmt(med, unit)} [{fmt(min(vals), unit)}–{fmt(max(vals), unit)}]"


def ordered(scenarios: Sequence[str]) -> list[str]:
    known = [s for s in SCENARIO_ORDER if s in scenarios]
    return known + sorted(s for s in scenarios if s not in SCENARIO_ORDER and s != "controller")


def main_table(results: RunResults) -> list[str]:
    scs = ordered(results.scenarios())
    if not scs:
        return ["_No scenario produced results._"]
    lines = ["| metric | unit | " + " | ".join(scs) + " |", "|---|---|" + "---|" * len(scs)]
    for key in TABLE_METRICS:
        if not any(results.values(s, key) for s in scs):
            continue
        m = metric(key)
        lines.append(f"| {m.label} | {m.unit} | " + " | ".join(cell(results, s, key) for s in scs) + " |")
    return lines


# The ratio table's columns: (metric, heading). All ratios are in the JSON; the table keeps it readable.
RATIO_COLUMNS = (
    ("tput_1s_gbps", "tput 1 stream"), ("tput_4s_gbps", "tput 4 streams"),
    ("lat1000_p50_ms", "p50 @1000/s"), ("lat1000_p99_ms", "p99 @1000/s"),
    ("lat100_p99_ms", "p99 @100/s"), ("max_rps", "max req/s"), ("conn_per_s", "new conn/s"),
    ("proxy_cpu_per_1k", "proxy CPU"), ("l7_cpu_per_1k", "L7 proxy CPU"),
    ("l7_cpu_per_1k_max", "L7 proxy CPU @max"), ("l7_rss_mb", "L7 proxy RSS"),
)


def ratio_table(rs: Sequence[ratiomod.Ratio]) -> list[str]:
    """One row per (Ambit scenario, baseline); cells are ratios, latencies also as added ms."""
    if not rs:
        return ["_No pairs to compare (a scenario or its baseline produced no results)._"]
    pairs = list(dict.fromkeys((r.scenario, r.baseline) for r in rs))
    cols = [(k, h) for k, h in RATIO_COLUMNS if any(r.metric == k for r in rs)]
    lines = ["| scenario | vs | " + " | ".join(h for _, h in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for sc, base in pairs:
        cells = []
        for key, _ in cols:
            r = ratiomod.find(rs, sc, base, key)
            if r is None:
                cells.append("–")
            elif r.added is not None:
                cells.append(f"{r.ratio:.2f}× ({r.added:+.3f} ms)")
            else:
                cells.append(f"{r.ratio:.2f}×")
        lines.append(f"| {sc} | {base} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios are Ambit / baseline, the median over paired reps (rep *i* with rep *i*); for latency "
              "and CPU lower is better, for the rest higher is better. All ratios are in the JSON."]
    return lines


def targets_table(verdicts: Sequence[targetmod.Verdict], profiles: Mapping[str, str]) -> list[str]:
    lines = ["| target | goal | ours | status | basis |", "|---|---|---|---|---|"]
    for v in verdicts:
        t = v.target
        unit = "×" if t.unit == "×" else f" {t.unit}"
        goal = f"{t.op} {t.threshold:g}{unit}".replace("<=", "≤").replace(">=", "≥")
        ours = "–" if v.value is None else f"{fmt(v.value, t.unit)}{unit}"
        status = {"met": "✅ met", "missed": f"❌ missed {v.shortfall}", "not measured": "⚪ not measured"}[v.status]
        lines.append(f"| {t.description} | {goal} | {ours} | {status} | {t.basis} |")
    missed = [v for v in verdicts if v.status == "missed"]
    if missed:
        prof = profiles.get("ztunnel") or (
            "_not profiled in this run: re-run with `--profile` (needs py-spy) to see which functions the "
            "ztunnels spend their time in_")
        lines += ["", f"**Missed:** {', '.join(v.target.description for v in missed)}.", "",
                  f"**Where the time goes (py-spy):** {prof}"]
    for key, line in sorted(profiles.items()):     # the waypoint's, one per waypoint scenario profiled
        if key != "ztunnel":
            lines += ["", f"**The waypoint (py-spy):** {line}"]
    return lines


def istio_table(results: RunResults) -> list[str]:
    lines = ["| figure | Istio ambient (published) | Ambit (this run) | Ambit / Istio | basis |", "|---|---|---|---|---|"]
    for ref, ours in targetmod.references(results):
        rel = targetmod.ratio_to_istio(ours, ref.istio)
        sign = "+" if ref.unit == "ms" else ""
        ours_s = "–" if ours is None else f"{sign}{fmt(ours, ref.unit)} {ref.unit}"
        rel_s = "–" if rel is None else f"{rel:.1f}×"
        lines.append(f"| {ref.what} | {sign}{ref.istio:g} {ref.unit} | {ours_s} | {rel_s} | {ref.basis} |")
    return lines


def tracing_line(cost: Mapping[str, float]) -> str:
    """The cost of tracing every request (ambit-waypoint-traced against ambit-waypoint at 0 %)."""
    parts = []
    if "cpu_us_per_request" in cost:
        parts.append(f"waypoint CPU per request {cost['cpu_us_per_request_traced']:.0f} µs at 100 % against "
                     f"{cost['cpu_us_per_request_untraced']:.0f} µs at 0 %, so tracing costs "
                     f"{cost['cpu_us_per_request']:.0f} µs of waypoint CPU per request")
    if "p50_added_ms" in cost:
        parts.append(f"p50 {cost['p50_added_ms']:+.2f} ms")
    if "p99_added_ms" in cost:
        parts.append(f"p99 {cost['p99_added_ms']:+.2f} ms at 1000 req/s")
    if "max_rps_ratio" in cost:
        parts.append(f"max rate ×{cost['max_rps_ratio']:.2f}")
    return "Tracing at 100 % sampling against 0 % (same waypoint, same run): " + ", ".join(parts) + "."


def load_lines(results: RunResults) -> list[str]:
    """Which reps started on a busy machine (1-minute load average above the core count)."""
    n = loadmod.sampled_reps(results)
    if not n:
        return []
    busy = loadmod.busy_reps(results)
    if not busy:
        return [f"Machine load: all {n} reps started with the 1-minute load average at or below the core count."]
    lines = [f"**Busy machine:** {len(busy)} of {n} reps started with the 1-minute load average above the core "
             "count; their figures may carry other work's CPU and latency (re-run on a quiet machine to trust them):",
             ""]
    lines += [f"- {b.scenario} rep {b.rep + 1}: load average {b.load1:.2f} > {b.cores} cores" for b in busy]
    return lines


SATURATED = 0.9     # a fixed-rate run that got fewer answers per second than this share of its rate


def saturation_lines(results: RunResults) -> list[str]:
    """Fixed-rate reps whose path answered under 90 % of the rate: it was saturated, so those
    latencies are mostly the queue h2load kept, not what the path adds at that rate."""
    lines = []
    for sc in ordered(results.scenarios()):
        for rate in RATES:
            runs = [(i, d["achieved_rps"]) for i, d in enumerate(results.details.get(sc, {}).get(f"latency_{rate}") or [])
                    if d and "achieved_rps" in d]
            slow = [(i, a) for i, a in runs if a < SATURATED * rate]
            if slow:
                reps = ", ".join(f"rep {i + 1}: {a:,.0f}" for i, a in slow)
                lines.append(f"- {sc} at {rate} req/s answered {reps} req/s ({len(slow)} of {len(runs)} reps)")
    if not lines:
        return []
    return ["**Saturated at a fixed rate:** these runs got under 90 % of the rate answered, so their latencies "
            "are mostly queueing (coordinated omission corrected), not what the path adds at that rate:", ""] + lines


def render(results: RunResults, meta: Mapping[str, Any], verdicts: Sequence[targetmod.Verdict],
           rs: Sequence[ratiomod.Ratio], charts: Sequence[str] = (), profiles: Mapping[str, str] | None = None) -> str:
    mach = meta.get("machine", {})
    tools = meta.get("tools", {})
    plan = meta.get("plan", {})
    out = [f"# Ambit benchmark — {meta.get('started', '')}", ""]
    out.append(f"Mode **{plan.get('mode', '?')}**: {plan.get('reps', '?')} reps per scenario, interleaved; "
               f"{plan.get('seconds', '?')} s per load run. Machine: {mach.get('cpu', '?')}, "
               f"{mach.get('cores', '?')} cores, kernel {mach.get('kernel', '?')}, Python {mach.get('python', '?')}. "
               f"Everything (load tools, servers, ztunnels) shares these cores.")
    if tools:
        out.append("")
        out.append("Tools: " + ", ".join(f"{k} {v}" for k, v in sorted(tools.items())) + ".")
    out += ["", "Cells are the median over reps with [min–max]. Latencies at fixed rates are corrected for "
            "coordinated omission (see bench/README.md); `max` rates are closed-loop.", ""]
    out += ["## Targets", ""] + targets_table(verdicts, profiles or {})
    out += ["", "## Beside Istio ambient's published figures", ""] + istio_table(results)
    push = [k for k in ("push_initial_s", "push_p50_ms", "push_p99_ms") if results.values("controller", k)]
    out += ["", "## Results", ""] + main_table(results)
    for extra in (saturation_lines(results), load_lines(results)):
        if extra:
            out += [""] + extra
    if push:
        out += ["", "Controller config push (1000 synthetic pods, real gRPC on loopback): "
                + ", ".join(f"{metric(k).label.split(': ')[-1]} {cell(results, 'controller', k)} {metric(k).unit}"
                            for k in push) + "."]
    out += ["", "## Ratios (pair by pair within this run)", ""] + ratio_table(rs)
    cost = ratiomod.tracing_cost(results)
    if cost:
        out += ["", tracing_line(cost)]
    if charts:
        out += ["", "## Charts", ""] + [f"![{c}]({c})" for c in charts]
    if results.errors:
        out += ["", "## Errors", ""]
        out += [f"- {e['scenario']} / {e['measure']}" + (f" rep {e['rep']}" if e.get("rep") is not None else "")
                + f": {e['error']}" for e in results.errors]
    if results.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in results.notes]
    return "\n".join(out) + "\n"
