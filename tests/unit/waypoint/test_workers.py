"""waypoint/workers.py without processes: what makes a worker (its flags parse to a worker's
settings), where the workers' sockets go, and the supervisor's own metric families. The real
supervisor and workers run in tests/lab/test_waypoint_workers.py; the hand-off itself in
tests/unit/dataplane/test_handoff.py."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane.handoff import Dealer
from ambit.dataplane.workers import SUN_PATH_MAX
from waypoint.settings import load
from waypoint.workers import HANDOFF, Worker, _Metrics, run_dir

BASE = ["--waypoint", "ns/wp", "--pod-name", "wp-0", "--node", "n1"]


def test_a_worker_is_one_process_on_private_sockets_fed_by_the_hand_off(tmp_path):
    sup = load([*BASE, "--workers", "4", "--admin-address", "127.0.0.1:15021", "--metrics-address", ":15020"], {})
    assert (sup.worker_count, sup.worker_index, sup.handoff_socket) == (4, -1, None)
    dealer = Dealer.__new__(Dealer)
    dealer.path = tmp_path / HANDOFF
    w = Worker(2, tmp_path, dealer)
    s = load(w.argv([*BASE, "--workers", "4", "--admin-address", "127.0.0.1:15000",
                     "--status-address", "0.0.0.0:15021"])[3:], {})
    assert (s.workers, s.worker_count, s.worker_index) == (1, 1, 2)
    assert (s.admin_address, s.metrics_address, s.status_address) == ("", "", "")     # the supervisor's ports
    assert (s.admin_socket, s.metrics_socket, s.handoff_socket) == (
        tmp_path / "w2.admin.sock", tmp_path / "w2.metrics.sock", tmp_path / HANDOFF)
    # an ingress gateway's workers listen themselves (SO_REUSEPORT): no hand-off
    s = load(Worker(0, tmp_path, None).argv([*BASE, "--gateway-class", "ambit"])[3:], {})
    assert s.handoff_socket is None and s.worker_index == 0 and s.ingress


def test_the_workers_sockets_go_beside_the_admin_socket_or_under_the_run_dir(tmp_path):
    s = load([*BASE, "--admin-socket", str(tmp_path / "wp.admin.sock")], {})
    assert run_dir(s) == tmp_path / "wp.admin.workers"
    deep = tmp_path / ("d" * 80)
    s = load([*BASE, "--admin-socket", str(deep / "wp.admin.sock"), "--run-dir", "/var/run/ambit"], {})
    d = run_dir(s)
    assert d.parent == Path("/var/run/ambit") and d.name.startswith("ambit-waypoint-")
    assert len(str(d / "w99.metrics.sock").encode()) <= SUN_PATH_MAX
    other = load([*BASE, "--pod-name", "wp-1", "--run-dir", "/var/run/ambit"], {})
    assert run_dir(other) != run_dir(load([*BASE, "--run-dir", "/var/run/ambit"], {}))   # per pod


def test_the_supervisor_counts_what_it_handed_each_worker(tmp_path):
    dealer = Dealer.__new__(Dealer)
    dealer.handed, dealer.dropped = {0: 3, 1: 2}, 1
    workers = [Worker(i, tmp_path, dealer) for i in (0, 1)]
    workers[1].restarts = 2
    text = _Metrics(workers, dealer).handle("GET", "/metrics").body.decode()   # no worker answers: own families only
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert {(s.labels["worker"], s.value) for s in fams["ambit_waypoint_worker_connections_handed"].samples
            if s.name.endswith("_total")} == {("0", 3.0), ("1", 2.0)}
    assert [s.value for s in fams["ambit_waypoint_connections_dropped"].samples if s.name.endswith("_total")] == [1.0]
    assert {(s.labels["worker"], s.value) for s in fams["ambit_waypoint_worker_restarts"].samples
            if s.name.endswith("_total")} == {("0", 0.0), ("1", 2.0)}


def test_a_stopping_supervisor_removes_its_socket_directory_unless_a_successor_took_it(tmp_path):
    import os

    from waypoint.workers import OWNER, remove_run_dir
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for d, pid in ((mine, os.getpid()), (theirs, os.getpid() + 1)):
        d.mkdir()
        (d / OWNER).write_text(str(pid))
        (d / "w0.admin.sock").write_text("")
    assert remove_run_dir(mine) and not mine.exists()
    assert not remove_run_dir(theirs) and (theirs / "w0.admin.sock").exists()
