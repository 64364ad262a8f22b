from __future__ import annotations

import pytest

from bench import plan as planmod
from bench import tools


def test_quick_and_full_plans_repeat_each_scenario_at_least_three_times():
    for quick in (True, False):
        p = planmod.make_plan(quick=quick)
        assert p.reps >= 3
        assert p.scenarios == list(planmod.SCENARIOS)
    assert planmod.make_plan(quick=True).seconds < planmod.make_plan().seconds


def test_rate_is_split_over_single_connection_clients_of_at_most_100_rps():
    p = planmod.make_plan()
    assert p.clients_for(1000) == 10 and p.clients_for(100) == 1 and p.clients_for(150) == 2
    assert tools.split_rate(1000, 100) == [100.0] * 10
    assert tools.split_rate(150, 100) == [75.0, 75.0]
    with pytest.raises(ValueError, match="rps=150 per client"):
        tools.h2load_rate_argv("http://x/1k", 150, 1, 0.5, "/tmp/l")


def test_scenario_selection_keeps_canonical_order_and_rejects_unknown_names():
    p = planmod.make_plan(scenarios=["haproxy", "direct"])
    assert p.scenarios == ["direct", "haproxy"]
    assert [s.name for s in p.phase_scenarios("ebpf")] == ["direct", "haproxy"]
    assert p.phase_scenarios("iptables") == []
    with pytest.raises(ValueError, match="unknown ambit-l7"):
        planmod.make_plan(scenarios=["ambit-l7"])
    with pytest.raises(ValueError, match="--reps: 0"):
        planmod.make_plan(reps=0)


def test_iptables_scenario_runs_in_its_own_lab_phase():
    sc = planmod.SCENARIOS["ambit-iptables-capture"]
    assert sc.phase == "iptables" and sc.mesh and sc.client_key == f"{planmod.MESH_NS}/client"
    same = planmod.SCENARIOS["ambit-l4-same-node"]
    assert same.client == "client-local"


def test_tool_command_lines():
    assert tools.h2load_rate_argv("http://h/1k", 100, 5, 1, "/t/l.tsv") == [
        "h2load", "--h1", "-c", "1", "-m", "1", "--rps", "100", "-D", "5000ms", "--warm-up-time", "1000ms",
        "--log-file=/t/l.tsv", "http://h/1k"]
    # the HTTP/2 scenarios: h2load's default for an http:// URL, h2c with prior knowledge
    assert "--h1" not in tools.h2load_rate_argv("http://h/1k", 100, 5, 1, "/t/l.tsv", h2=True)
    assert tools.h2load_max_argv("http://h/1k", 8, 5, 1, "/t/l.tsv")[:2] == ["h2load", "--h1"]
    assert tools.h2load_max_argv("http://h/1k", 8, 5, 1, "/t/l.tsv", h2=True)[:3] == ["h2load", "-c", "8"]
    # wrk takes whole seconds only.
    assert tools.wrk_conn_argv("http://h/1k", 8, 1.5)[5:7] == ["-d", "2s"]
    assert tools.iperf3_argv("10.0.0.1", 5201, 4, 5)[:8] == ["iperf3", "-c", "10.0.0.1", "-p", "5201", "-P", "4", "-t"]
    assert tools.LUA_CONN.exists()


def test_workers_scenario_runs_in_its_own_lab_phase():
    sc = planmod.SCENARIOS["ambit-l4-workers"]
    assert sc.phase == "workers" and sc.mesh and sc.client_key == f"{planmod.MESH_NS}/client"
    assert "workers" in planmod.PHASES
    p = planmod.make_plan(quick=True, scenarios=["haproxy", "ambit-l4-workers"])
    assert [s.name for s in p.phase_scenarios("workers")] == ["ambit-l4-workers"]
    assert [s.name for s in p.phase_scenarios("ebpf")] == ["haproxy"]
