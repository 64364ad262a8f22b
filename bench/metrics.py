"""The metrics the suite reports, their units and which direction is better (sans-IO).

Every measure ends up as one float per repetition under a flat key (e.g. `lat1000_p99_ms`), so
ratios, targets, tables and charts all work from the same table instead of each digging through
tool-specific structures.
"""

from __future__ import annotations

from dataclasses import dataclass

RATES = (100, 1000)              # fixed request rates for the latency measure (req/s)
LAT_PS = ("p50", "p90", "p99")   # the percentiles the tables show


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


def _build() -> dict[str, Metric]:
    ms: list[Metric] = [
        Metric("tput_1s_gbps", "Throughput, 1 stream (iperf3)", "Gbit/s", True),
        Metric("tput_4s_gbps", "Throughput, 4 streams (iperf3)", "Gbit/s", True),
    ]
    for rate in RATES:
        for p in LAT_PS:
            ms.append(Metric(f"lat{rate}_{p}_ms", f"Latency {p} at {rate} req/s (CO-corrected)", "ms", False))
            ms.append(Metric(f"lat{rate}_{p}_ms_raw", f"Latency {p} at {rate} req/s (as sent)", "ms", False))
    ms.append(Metric("max_rps", "Max request rate (1 KiB, keep-alive)", "req/s", True))
    for p in LAT_PS:
        ms.append(Metric(f"max_{p}_ms", f"Latency {p} at max rate", "ms", False))
    ms += [
        Metric("conn_per_s", "New connections/s (HTTP/1.0, 1 KiB)", "conn/s", True),
        Metric("proxy_cpu_per_1k", "Proxy CPU-seconds per 1000 requests (all proxies, at 1000 req/s)", "CPU-s", False),
        Metric("zt_cpu_per_1k", "ztunnel CPU-seconds per 1000 requests (busiest ztunnel, at 1000 req/s)",
               "CPU-s", False),
        Metric("l7_cpu_per_1k", "L7 proxy CPU-seconds per 1000 requests (nginx, haproxy or the waypoint alone, "
               "at 1000 req/s)", "CPU-s", False),
        Metric("l7_cpu_per_1k_max", "L7 proxy CPU-seconds per 1000 requests at max rate (nginx, haproxy or the "
               "waypoint alone)", "CPU-s", False),
        Metric("l7_rss_mb", "L7 proxy RSS at 1000 req/s (nginx, haproxy or the waypoint)", "MB", False),
        Metric("zt_rss_idle_mb", "ztunnel RSS, idle (largest ztunnel)", "MB", False),
        Metric("zt_rss_load_mb", "ztunnel RSS at 1000 req/s (largest ztunnel)", "MB", False),
        Metric("zt_rss_1000conn_mb", "ztunnel RSS with 1000 open connections (largest ztunnel)", "MB", False),
        Metric("push_initial_s", "Config push: initial 1000-pod snapshot", "s", False),
        Metric("push_p50_ms", "Config push latency p50 (1 change, 1000 pods)", "ms", False),
        Metric("push_p99_ms", "Config push latency p99 (1 change, 1000 pods)", "ms", False),
    ]
    return {m.key: m for m in ms}


METRICS: dict[str, Metric] = _build()


def metric(key: str) -> Metric:
    try:
        return METRICS[key]
    except KeyError:
        raise KeyError(f"unknown metric {key!r} (known: {', '.join(METRICS)})") from None


def fmt(value: float | None, unit: str) -> str:
    """A number as a table shows it: enough digits to compare, no false precision."""
    if value is None:
        return "–"
    if unit in ("req/s", "conn/s"):
        return f"{value:,.0f}"
    a = abs(value)
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
