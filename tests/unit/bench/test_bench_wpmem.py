"""bench/wpmem.py measures what it says on a small cluster: the waypoint's config holds every
Workload and Service of its scope, a churn's responses reach it, and a real waypoint process
syncs to a real config server (docs/performance.md, "The waypoint and the node agent at 10,000
pods"). No sizes or timing asserted: those are the bench's output."""

from __future__ import annotations

from ambit.model import Service, Workload
from bench import wpmem


def test_the_in_process_stages_hold_the_waypoints_whole_scope() -> None:
    by_type = wpmem.translated(200)
    steps, (cfg, states) = wpmem.waypoint_memory(by_type)
    assert [k for k, _ in steps] == ["bodies", "decoded", "apply", "total held"]
    assert all(v > 0 for _, v in steps)
    assert set(cfg.view.workloads) == {w.uid for w in by_type[Workload.TYPE]}
    assert set(cfg.view.services) == {s.resource_name for s in by_type[Service.TYPE]}
    assert cfg.synced and states[Workload.TYPE].resources == cfg.view.workloads
    _, (zt, _) = wpmem.ztunnel_memory(by_type)
    assert len(zt.view.workloads) == len(by_type[Workload.TYPE])
    costs = wpmem.waypoint_delta(by_type, wpmem.cluster(200), repeat=1)
    assert set(costs) == {"decode", "apply", "cache write"}
    pods, _ms = wpmem.agent_delta(by_type, repeat=1)
    assert 0 < pods < len(by_type[Workload.TYPE])


def test_a_real_waypoint_process_syncs_to_a_real_config_server() -> None:
    mib, synced = wpmem.waypoint_rss(100, settle=0.0, timeout=60.0)
    assert mib > 0 and synced > 0
