"""Two ztunnel workers per node (`ambit lab up --ztunnel-workers 2`, ztunnel/workers.py): the kernel
spreads one pod's new connections over both workers' SO_REUSEPORT listeners, a killed worker is
restarted while the other keeps taking every new connection, and `lab down` leaves no worker
behind. docs/performance.md, "All cores"."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane import endpoint
from ambit.dataplane.telemetry.metrics import scrape
from tests.lab import surge_traffic
from tests.lab.labctl import gone

pytestmark = pytest.mark.lab

SPEC = Path(__file__).parent / "specs" / "surge.yaml"


def workers(lab, node: str) -> list[dict]:
    return endpoint.get_json(lab.dir / node / "admin.sock", "/workers")[1]["workers"]


def opened_per_worker(lab, node: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(scrape(lab.dir / node / "metrics.sock")):
        for s in fam.samples:
            if s.name == "istio_tcp_connections_opened_total":
                out[s.labels["worker"]] = out.get(s.labels["worker"], 0.0) + s.value
    return out


def test_two_workers_share_the_node_and_a_killed_one_loses_no_new_connection(fresh_lab):
    lab = fresh_lab
    lab.up("--spec", str(SPEC), "--ztunnel-workers", "2")
    before = workers(lab, "node1")
    assert [w["index"] for w in before] == [0, 1] and all(w["alive"] and w["linked"] for w in before), before
    all_pids = {w["pid"] for node in ("node1", "node2") for w in workers(lab, node)}
    assert len(all_pids) == 4

    traffic = surge_traffic.start(lab)
    try:
        # One client pod's connections land on both workers of its node (kernel reuseport hash).
        lab.wait_for(lambda: len([v for v in opened_per_worker(lab, "node1").values() if v > 0]) == 2,
                     timeout=60, what="connections on both node1 workers")

        victim = before[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        lab.wait_for(lambda: gone(victim), timeout=10, what="the killed worker to exit")
        dead_at = time.time()
        # Restarted, given every pod again (a replay), and serving new connections.
        lab.wait_for(lambda: (w := workers(lab, "node1")[1])["restarts"] == 1 and w["linked"] and w["pid"] != victim,
                     timeout=60, what="worker 1 restarted and linked")
        lab.wait_for(lambda: opened_per_worker(lab, "node1").get("1", 0) > 0, timeout=60,
                     what="the restarted worker to serve")
        all_pids.add(workers(lab, "node1")[1]["pid"])
    finally:
        lines, err = traffic.communicate(input="", timeout=30)
    short = [r for r in (json.loads(x) for x in lines.splitlines() if x.strip()) if r["kind"] == "short"]
    after = [r for r in short if r["t"] >= dead_at]
    assert after, ("no new connection was made after the kill", dead_at, short[-3:], err[-2000:])
    # Connections the killed worker was serving die with it; every one opened after it died succeeds.
    failed = [r for r in after if not r["ok"]]
    assert failed == [], failed[:5]
    print(f"short connections: {len(short)}, after the kill: {len(after)}, "
          f"failed before: {len([r for r in short if not r['ok']])}")

    lab.down()
    assert [p for p in all_pids if not gone(p)] == []
    assert not lab.dir.joinpath("node1", "zds.workers").exists()
