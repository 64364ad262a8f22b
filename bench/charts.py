"""PNG charts of a run (matplotlib, Agg backend: no display needed).

- `<stamp>-latency.png`: latency by percentile at each fixed rate, one line per scenario
  (median over reps of each rep's CO-corrected percentile ladder). Lines close together mean the
  mesh adds little; where a line bends up at the right is tail latency.
- `<stamp>-throughput.png`: iperf3 throughput (1 and 4 streams), bars = median, whiskers = min/max.
- `<stamp>-rates.png`: max request rate and new connections per second, same style.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import stats
from bench.metrics import RATES, fmt, metric
from bench.report import ordered
from bench.results import RunResults


def _plt() -> Any:
    """matplotlib loads on first use: `ambit` imports every command module at start, and half a
    second of numpy/matplotlib import would tax every CLI call that is not a bench."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt

LADDER_KEYS = [stats.pkey(p) for p in stats.LADDER if 0 < p < 100]


def _ladder_median(results: RunResults, scenario: str, rate: int) -> list[float] | None:
    reps = [d for d in results.details.get(scenario, {}).get(f"latency_{rate}", []) if d]
    if not reps:
        return None
    return [stats.median(d["corrected_ms"][k] for d in reps) for k in LADDER_KEYS]


def latency_chart(results: RunResults, path: Path) -> bool:
    scs = ordered(results.scenarios())
    rates = [r for r in RATES if any(_ladder_median(results, s, r) for s in scs)]
    if not rates:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(rates), figsize=(6.5 * len(rates), 4.5), squeeze=False)
    for ax, rate in zip(axes[0], rates, strict=True):
        for sc in scs:
            ys = _ladder_median(results, sc, rate)
            if ys:
                ax.plot(range(len(LADDER_KEYS)), ys, marker="o", label=sc)
        ax.set_xticks(range(len(LADDER_KEYS)), LADDER_KEYS)
        ax.set_yscale("log")
        # Plain decimals (0.2, 0.5, 1, 2 ms) read better than powers of ten at these scales.
        from matplotlib.ticker import FormatStrFormatter, LogLocator
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter(""))
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title(f"1 KiB request latency at {rate} req/s (CO-corrected)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def bar_chart(results: RunResults, keys: list[str], title: str, path: Path) -> bool:
    scs = [s for s in ordered(results.scenarios()) if any(results.values(s, k) for k in keys)]
    if not scs:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        m = metric(key)
        meds, lo, hi, names = [], [], [], []
        for sc in scs:
            vals = results.values(sc, key)
            if not vals:
                continue
            med = stats.median(vals)
            names.append(sc)
            meds.append(med)
            lo.append(med - min(vals))
            hi.append(max(vals) - med)
        bars = ax.bar(range(len(names)), meds, yerr=[lo, hi], capsize=4, color="tab:blue", alpha=0.8)
        ax.bar_label(bars, labels=[fmt(v, m.unit) for v in meds], fontsize=8, padding=2)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(m.unit)
        ax.set_title(m.label, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(results: RunResults, out_dir: Path, stamp: str) -> list[str]:
    """Write every chart that has data; return their file names (relative to out_dir)."""
    made = []
    specs = [
        (f"{stamp}-latency.png", lambda p: latency_chart(results, p)),
        (f"{stamp}-throughput.png",
         lambda p: bar_chart(results, ["tput_1s_gbps", "tput_4s_gbps"], "Throughput (iperf3)", p)),
        (f"{stamp}-rates.png",
         lambda p: bar_chart(results, ["max_rps", "conn_per_s"], "Request and connection rates", p)),
    ]
    for name, fn in specs:
        if fn(out_dir / name):
            made.append(name)
    return made
