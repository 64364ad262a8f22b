"""The Markdown summary: what a reader of RESULTS.md sees."""

from __future__ import annotations

from bench import ratios, report, targets

from .helpers import results_with

CROSS = "ambit-l4-cross-node"
META = {"started": "2026-01-01T00:00:00+00:00", "plan": {"mode": "quick", "reps": 3, "seconds": 1.0},
        "machine": {"cpu": "AMD EPYC", "cores": 2, "kernel": "6.18", "python": "3.11.2"},
        "tools": {"h2load": "1.52.0", "iperf3": "3.12"}}


def sample_results():
    return results_with(3, {
        "direct": {"tput_1s_gbps": [10.0, 12.0, 11.0], "lat1000_p50_ms": [0.10, 0.11, 0.12],
                   "lat1000_p99_ms": [0.5, 0.6, 0.7]},
        CROSS: {"tput_1s_gbps": [1.0, 1.2, 1.1], "lat1000_p50_ms": [0.50, 0.52, 0.51],
                "lat1000_p99_ms": [1.0, 1.1, 1.2], "zt_cpu_per_1k": [0.1, 0.1, 0.1]},
        "controller": {"push_p99_ms": [60.0, 70.0, 65.0]},
    })


def render(res, profiles=None):
    return report.render(res, META, targets.evaluate(res), ratios.all_ratios(res), ["x-latency.png"], profiles or {})


def test_table_has_scenarios_in_order_and_median_with_range():
    md = render(sample_results())
    header = next(line for line in md.splitlines() if line.startswith("| metric |"))
    assert header == "| metric | unit | direct | ambit-l4-cross-node |"
    row = next(line for line in md.splitlines() if line.startswith("| Throughput, 1 stream"))
    assert row == "| Throughput, 1 stream (iperf3) | Gbit/s | 11.0 [10.0–12.0] | 1.10 [1.00–1.20] |"
    assert "Config push latency p99" not in header and "p99 (1 change, 1000 pods) 65.0 [60.0–70.0] ms" in md


def test_missed_target_says_by_how_much_and_leaves_a_profile_slot():
    md = render(sample_results())
    line = next(x for x in md.splitlines() if x.startswith("| L4 cross-node added latency at 1000 req/s, p50"))
    assert "❌ missed by 0.150 ms (1.60× the target)" in line
    assert "**Missed:** L4 cross-node added latency at 1000 req/s, p50." in md
    assert "re-run with `--profile`" in md
    md2 = render(sample_results(), {"ztunnel": "ztunnel node1: ssl.py:read 40%"})
    assert "**Where the time goes (py-spy):** ztunnel node1: ssl.py:read 40%" in md2
    assert "The waypoint (py-spy)" not in md2
    md3 = render(sample_results(), {"ztunnel": "z", "ambit-waypoint": "waypoint at saturation: protocol.py:_write_out 42%"})
    assert "**The waypoint (py-spy):** waypoint at saturation: protocol.py:_write_out 42%" in md3


def test_ratios_istio_charts_errors_and_notes_are_rendered():
    res = sample_results()
    res.error("haproxy", "tunnel start", None, "haproxy exited at start (1)")
    res.notes.append("the run was interrupted; results are partial")
    md = render(res)
    assert "| scenario | vs | tput 1 stream | p50 @1000/s | p99 @1000/s |" in md
    assert "| ambit-l4-cross-node | direct | 0.10× | 4.73× (+0.400 ms) | 1.83× (+0.500 ms) |" in md
    assert "| ztunnel vCPU per 1000 req/s | 0.06 vCPU | 0.100 vCPU | 1.7× |" in md
    assert "![x-latency.png](x-latency.png)" in md
    assert "- haproxy / tunnel start: haproxy exited at start (1)" in md
    assert "- the run was interrupted; results are partial" in md


def test_empty_run_still_renders():
    md = render(results_with(3, {}))
    assert "_No scenario produced results._" in md
    assert md.count("⚪ not measured") == len(targets.TARGETS)


def test_l7_h2_rows_targets_and_ratios_are_rendered():
    res = results_with(2, {
        "ambit-waypoint": {"l7_cpu_per_1k_max": [0.13, 0.13], "l7_rss_mb": [50.0, 52.0]},
        "nginx-l7": {"l7_cpu_per_1k_max": [0.10, 0.10]},
        "ambit-waypoint-h2": {"l7_cpu_per_1k_max": [0.30, 0.30], "max_rps": [2000.0, 2000.0]},
        "nginx-l7-h2": {"l7_cpu_per_1k_max": [0.10, 0.10], "max_rps": [8000.0, 8000.0]},
        "haproxy-l7-h2": {"l7_cpu_per_1k_max": [0.12, 0.12], "max_rps": [10000.0, 10000.0]},
    })
    md = report.render(res, META, targets.evaluate(res), ratios.all_ratios(res))
    header = next(line for line in md.splitlines() if line.startswith("| metric |"))
    assert header == "| metric | unit | ambit-waypoint | nginx-l7 | ambit-waypoint-h2 | nginx-l7-h2 | haproxy-l7-h2 |"
    assert "| L7 proxy CPU-seconds per 1000 requests at max rate (nginx, haproxy or the waypoint alone) | CPU-s |" in md
    assert "| ambit-waypoint-h2 | nginx-l7-h2 | 0.25× | 3.00× |" in md
    assert "| ambit-waypoint-h2 | haproxy-l7-h2 | 0.20× | 2.50× |" in md
    line = next(x for x in md.splitlines() if x.startswith("| Waypoint HTTP/2 CPU per request vs nginx h2c"))
    assert "| ≤ 2× | 3.00× | ❌ missed by 1.000 (1.50× the target) |" in line
    line = next(x for x in md.splitlines() if x.startswith("| Waypoint L7 hop CPU per request vs nginx"))
    assert "| ≤ 1.5× | 1.30× | ✅ met |" in line
    line = next(x for x in md.splitlines() if x.startswith("| Waypoint RSS, 1 worker"))
    assert "| ≤ 60 MB | 51.0 MB | ✅ met |" in line


def test_fixed_rate_runs_of_a_saturated_path_are_flagged():
    res = results_with(2, {"ambit-waypoint": {"lat1000_p50_ms": [30.0, 0.6]}, "nginx-l7": {"lat1000_p50_ms": [0.4, 0.4]}})
    res.detail("ambit-waypoint", "latency_1000", 0, {"achieved_rps": 540.0})
    res.detail("ambit-waypoint", "latency_1000", 1, {"achieved_rps": 990.0})
    res.detail("nginx-l7", "latency_1000", 0, {"achieved_rps": 1001.0})
    md = report.render(res, META, targets.evaluate(res), ratios.all_ratios(res))
    assert "**Saturated at a fixed rate:**" in md
    assert "- ambit-waypoint at 1000 req/s answered rep 1: 540 req/s (1 of 2 reps)" in md
    assert "nginx-l7 at" not in md
    res.details["ambit-waypoint"]["latency_1000"][0]["achieved_rps"] = 950.0
    assert "Saturated" not in report.render(res, META, targets.evaluate(res), ratios.all_ratios(res))
