from __future__ import annotations

import pytest

from bench import targets

from .helpers import results_with

CROSS = "ambit-l4-cross-node"


def by_id(verdicts):
    return {v.target.id: v for v in verdicts}


def test_targets_met_missed_and_not_measured():
    res = results_with(3, {
        CROSS: {"lat1000_p50_ms": [0.40, 0.42, 0.41], "lat1000_p99_ms": [1.2, 1.3, 1.1],
                "conn_per_s": [2500.0, 2600.0, 2400.0], "zt_cpu_per_1k": [0.2, 0.3, 0.25]},
        "direct": {"lat1000_p50_ms": [0.10, 0.12, 0.11], "lat1000_p99_ms": [0.5, 0.6, 0.4]},
    })
    v = by_id(targets.evaluate(res))
    assert v["l4-added-p50"].status == "missed"
    assert v["l4-added-p50"].value == pytest.approx(0.30)
    assert v["l4-added-p50"].shortfall == "by 0.050 ms (1.20× the target)"
    assert v["l4-added-p99"].status == "met" and v["l4-added-p99"].shortfall == ""
    assert v["new-connections"].status == "met"
    assert v["ztunnel-cpu"].status == "missed"
    assert v["ztunnel-rss"].status == "not measured" and v["ztunnel-rss"].value is None
    assert v["config-push-p99"].status == "not measured"


def test_throughput_target_compares_with_the_faster_tunnel():
    res = results_with(3, {
        CROSS: {"tput_1s_gbps": [1.5, 1.5, 1.5]},
        "stunnel": {"tput_1s_gbps": [1.0, 1.0, 1.0]},
        "haproxy": {"tput_1s_gbps": [2.0, 2.0, 2.0]},
    })
    v = by_id(targets.evaluate(res))["hbone-throughput"]
    assert v.value == pytest.approx(0.75)          # against haproxy, the faster one
    assert v.status == "missed"
    assert v.shortfall == "by 0.250 (75% of the target)"


def test_higher_is_better_target_reports_shortfall_as_a_fraction():
    t = next(t for t in targets.TARGETS if t.id == "new-connections")
    v = targets.judge(t, 1000.0)
    assert v.status == "missed" and v.shortfall == "by 1,000 conn/s (50% of the target)"
    assert targets.judge(t, 2000.0).status == "met"


def test_istio_references_use_the_same_run():
    res = results_with(1, {CROSS: {"zt_cpu_per_1k": [0.12], "lat1000_p90_ms": [0.5]},
                           "direct": {"lat1000_p90_ms": [0.3]}})
    refs = {ref.what: ours for ref, ours in targets.references(res)}
    assert refs["ztunnel vCPU per 1000 req/s"] == pytest.approx(0.12)
    assert refs["two ztunnels add, p90 at 1000 req/s"] == pytest.approx(0.2)
    assert refs["ztunnel memory at 1000 req/s"] is None
    assert targets.ratio_to_istio(0.12, 0.06) == pytest.approx(2.0)


def test_issue_17_l4_targets_compare_with_the_better_tunnel_per_metric():
    res = results_with(2, {
        CROSS: {"lat1000_p99_ms": [1.5, 1.5], "proxy_cpu_per_1k": [0.2, 0.2], "tput_1s_gbps": [6.0, 6.0],
                "tput_4s_gbps": [4.0, 4.0], "conn_per_s": [1500.0, 1500.0], "zt_rss_idle_mb": [61.0, 63.0]},
        # stunnel has the lower p99, haproxy the lower CPU and the higher rates
        "stunnel": {"lat1000_p99_ms": [0.75, 0.75], "proxy_cpu_per_1k": [0.4, 0.4], "tput_1s_gbps": [3.0, 3.0],
                    "tput_4s_gbps": [2.0, 2.0], "conn_per_s": [500.0, 500.0]},
        "haproxy": {"lat1000_p99_ms": [1.0, 1.0], "proxy_cpu_per_1k": [0.1, 0.1], "tput_1s_gbps": [4.0, 4.0],
                    "tput_4s_gbps": [5.0, 5.0], "conn_per_s": [1000.0, 1000.0]},
    })
    v = by_id(targets.evaluate(res))
    assert v["l4-p99-vs-tunnel"].value == pytest.approx(2.0) and v["l4-p99-vs-tunnel"].status == "missed"
    assert v["l4-cpu-vs-tunnel"].value == pytest.approx(2.0) and v["l4-cpu-vs-tunnel"].status == "missed"
    assert v["l4-tput-1s-vs-tunnel"].value == pytest.approx(1.5) and v["l4-tput-1s-vs-tunnel"].status == "met"
    assert v["l4-tput-4s-vs-tunnel"].value == pytest.approx(0.8) and v["l4-tput-4s-vs-tunnel"].status == "missed"
    assert v["l4-conn-vs-tunnels"].value == pytest.approx(1.5) and v["l4-conn-vs-tunnels"].status == "met"
    assert v["ztunnel-rss-idle"].value == pytest.approx(62.0) and v["ztunnel-rss-idle"].shortfall == \
        "by 22.0 MB (1.55× the target)"
    assert v["ztunnel-rss"].target.threshold == 50.0


def test_issue_17_ratio_targets_are_not_measured_without_a_tunnel():
    res = results_with(1, {CROSS: {"lat1000_p99_ms": [1.0]}})
    assert by_id(targets.evaluate(res))["l4-p99-vs-tunnel"].status == "not measured"


L7_RUN = {
    # the waypoint's own CPU per 1000 requests at max rate: 1.3× nginx's (HTTP/1.1), 2.5× (HTTP/2)
    "ambit-waypoint": {"l7_cpu_per_1k_max": [0.13, 0.26], "lat1000_p50_ms": [0.50, 0.60],
                       "proxy_cpu_per_1k": [0.30, 0.34], "l7_rss_mb": [55.0, 57.0]},
    "nginx-l7": {"l7_cpu_per_1k_max": [0.10, 0.20], "lat1000_p50_ms": [0.30, 0.35]},
    "ambit-waypoint-h2": {"l7_cpu_per_1k_max": [0.25, 0.25]},
    "nginx-l7-h2": {"l7_cpu_per_1k_max": [0.10, 0.10]},
    "direct": {"lat1000_p50_ms": [0.20, 0.30]},
}


def test_issue_17_l7_targets_from_a_run():
    v = by_id(targets.evaluate(results_with(2, L7_RUN)))
    assert v["waypoint-cpu-vs-nginx"].value == pytest.approx(1.3) and v["waypoint-cpu-vs-nginx"].status == "met"
    # added p50: waypoint (0.30, 0.30) over direct, nginx (0.10, 0.05): medians 0.30 and 0.075
    assert v["waypoint-added-p50-vs-nginx"].value == pytest.approx(0.225)
    assert v["waypoint-added-p50-vs-nginx"].status == "missed"
    assert v["waypoint-added-p50-vs-nginx"].shortfall == "by 0.175 ms (4.50× the target)"
    assert v["waypoint-h2-cpu-vs-nginx"].value == pytest.approx(2.5) and v["waypoint-h2-cpu-vs-nginx"].status == "missed"
    assert v["waypoint-path-cpu"].value == pytest.approx(0.32) and v["waypoint-path-cpu"].status == "missed"
    assert v["waypoint-rss"].value == pytest.approx(56.0) and v["waypoint-rss"].status == "met"


def test_l7_targets_need_their_peers_in_the_run():
    """No nginx, no ratio; no direct, no "added" (not a silent 0 or an absolute p50)."""
    run = {k: v for k, v in L7_RUN.items() if k not in ("nginx-l7", "direct")}
    v = by_id(targets.evaluate(results_with(2, run)))
    assert v["waypoint-cpu-vs-nginx"].status == "not measured"
    assert v["waypoint-added-p50-vs-nginx"].status == "not measured"
    assert v["waypoint-h2-cpu-vs-nginx"].value == pytest.approx(2.5), "its own pair is in the run"
