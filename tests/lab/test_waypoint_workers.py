"""A waypoint with two workers (`ambit lab up --waypoint-workers 2`, waypoint/workers.py): the
supervisor deals the ztunnels' HBONE connections to both workers in turn, the metrics are merged
with a `worker` label, a killed worker is restarted while the other keeps serving every new
request, and `lab down` leaves no worker behind. docs/performance.md, "All cores: waypoint workers"."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane import endpoint
from ambit.dataplane.telemetry.metrics import scrape
from ambitctl.lab import state
from ambitctl.lab import waypoints as waypoints_mod
from tests.lab.labctl import artifacts, gone, running_lab
from tests.lab.test_waypoint import GATEWAY, SPEC, apply, status_of, waypoints

pytestmark = pytest.mark.lab


def workers(lab) -> list[dict]:
    return endpoint.get_json(waypoints_mod.admin_socket(lab.dir, "default", "waypoint"), "/workers")[1]["workers"]


def requests_per_worker(lab) -> dict[str, float]:
    out: dict[str, float] = {}
    text = scrape(waypoints_mod.metrics_socket(lab.dir, "default", "waypoint"))
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "istio_requests_total" and s.labels.get("response_code") == "200":
                out[s.labels["worker"]] = out.get(s.labels["worker"], 0.0) + s.value
    return out


def test_two_waypoint_workers_share_the_tunnels_and_a_killed_one_loses_no_new_request(tmp_path_factory):
    # the lab's own short directory: its unix socket paths must fit in 107 bytes
    with running_lab(tmp_path_factory.mktemp("wpw"), "wpw", SPEC, "waypoint-workers", "--waypoint-workers", "2") as lab:
        _two_workers(lab, tmp_path_factory.mktemp("wpwcfg"))


def _two_workers(lab, tmp_path: Path) -> None:
    apply(lab, [GATEWAY], tmp_path, "gateway")
    lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=60, what="waypoint ready")
    before = workers(lab)
    assert [w["index"] for w in before] == [0, 1] and all(w["alive"] and w["linked"] for w in before), before
    supervisor = waypoints(lab)[0]["pid"]
    pids = {supervisor, *(w["pid"] for w in before)}

    # Two client identities: two pooled HBONE connections from node1's ztunnel, one per worker.
    for pod in ("default/frontend", "default/other"):
        lab.wait_for(lambda pod=pod: status_of(lab, pod, "http://myapp/")[0] == 200, timeout=30, interval=0.5,
                     what=f"myapp through the waypoint from {pod}")
    assert sorted(w["connections_handed"] for w in workers(lab)) == [1, 1], workers(lab)
    lab.wait_for(lambda: set(requests_per_worker(lab)) == {"0", "1"}, timeout=15, what="requests on both workers")
    health = endpoint.fetch(waypoints_mod.admin_socket(lab.dir, "default", "waypoint"), "/healthz/ready")
    assert health[0] == 200, health

    victim = before[1]["pid"]
    os.kill(victim, signal.SIGKILL)
    lab.wait_for(lambda: gone(victim), timeout=10, what="the killed worker to exit")
    # While worker 1 is down or restarting, every new request is served: the tunnels it held die
    # with it, the ztunnels dial again, and the supervisor hands the new connections to worker 0
    # (or to worker 1 once it is back).
    loop = "for i in $(seq 40); do curl -s -o /dev/null -m 5 -w '%{http_code} ' http://myapp/; done"
    outs = {pod: lab.exec(pod, "sh", "-c", loop, timeout=120).stdout.split() for pod in ("default/frontend",
                                                                                        "default/other")}
    restarted_at = workers(lab)[1]
    codes = [c for out in outs.values() for c in out]
    assert len(codes) == 80 and set(codes) == {"200"}, outs
    print(f"80 requests right after the kill, all 200; worker 1 then: {restarted_at}; "
          f"per worker: {requests_per_worker(lab)}")
    lab.wait_for(lambda: (w := workers(lab)[1])["restarts"] == 1 and w["alive"] and w["linked"]
                 and w["pid"] != victim, timeout=60, what="worker 1 restarted and linked")
    pids.add(workers(lab)[1]["pid"])
    # beside the admin socket, or under --run-dir when that path is too long for a unix socket
    rdir = Path(workers(lab)[0]["admin_socket"]).parent
    assert (rdir / "handoff.sock").exists()

    # Stopped as a kubelet stops a pod (SIGTERM to the process group, SIGKILL after a grace): every
    # process goes, and the supervisor takes its socket directory with it.
    with state.editing(lab.dir) as st:
        st.proc("waypoint/default/waypoint").enabled = False
    lab.wait_for(lambda: all(gone(p) for p in pids), timeout=30, what="the waypoint's processes to exit")
    lab.save_logs(artifacts("waypoint-workers"))
    assert not rdir.exists(), sorted(p.name for p in rdir.iterdir())
    lab.down()
