"""ztunnel/workers.py without processes: the worker flags, and the zds fan-out
over real SEQPACKET sockets to stand-in workers that speak the zds protocol (tests/lab/
test_ztunnel_workers.py runs real worker processes in a lab)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from ambit import zds
from ambit.dataplane.workers import SUN_PATH_MAX
from ztunnel.settings import MAX_AUTO_WORKERS, load
from ztunnel.workers import Fanout, Worker, WorkerPaths, run_dir, tend, worker_argv


def test_a_worker_runs_as_one_process_on_private_sockets(tmp_path):
    paths = WorkerPaths.under(tmp_path, 3)
    argv = ["--node", "n1", "--zds-socket", "/run/zds.sock", "--workers", "4", "--admin-address", "127.0.0.1:15000"]
    s = load(worker_argv(argv, 3, paths)[3:], environ={})
    assert (s.workers, s.worker_count, s.worker_index) == (1, 1, 3)
    assert (s.zds_socket, s.admin_socket, s.metrics_socket) == (paths.zds, paths.admin, paths.metrics)
    assert s.admin_address == "" and s.metrics_address == ""     # the supervisor serves the node's ports
    assert s.node == "n1"


def test_worker_sockets_always_fit_a_unix_socket_path(tmp_path):
    # Next to the zds socket when they fit; otherwise a short directory of their own, the same for
    # every process that names that zds socket, and distinct per zds socket (surge generations).
    assert run_dir(Path("/var/run/ambit/zds.sock")) == Path("/var/run/ambit/zds.workers")
    deep = tmp_path / ("d" * 60) / "node1"
    a, b = run_dir(deep / "zds.sock"), run_dir(deep / "zds.2.sock")
    assert a == run_dir(deep / "zds.sock") and a != b
    for d in (a, b):
        for p in (WorkerPaths.under(d, 99).zds, WorkerPaths.under(d, 99).metrics):
            assert len(os.fsencode(p)) <= SUN_PATH_MAX


def test_zero_workers_means_one_per_usable_cpu_capped():
    s = load(["--node", "n", "--zds-socket", "/z"], environ={})
    assert s.worker_count == max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))
    with pytest.raises(ValueError, match="workers"):
        load(["--node", "n", "--zds-socket", "/z", "--workers", "-1"], environ={})


class StandIn(Worker):
    """A worker process stood in for by a thread that answers zds requests and records them."""

    def __init__(self, index: int, paths: WorkerPaths, refuse: set[str] = frozenset()) -> None:
        super().__init__(index, paths)
        self.got: list[tuple[str, str]] = []      # (type, uid)
        self.refuse = refuse
        self.up = True
        paths.zds.parent.mkdir(parents=True, exist_ok=True)
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.srv.bind(str(paths.zds))
        self.srv.listen(1)
        threading.Thread(target=self._serve, daemon=True).start()

    def alive(self) -> bool:
        return self.up

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        while True:
            msg, fds = zds.recv(conn)
            if msg is None:
                return
            uid = msg.get("uid") or msg.get("pod", {}).get("uid", "")
            assert (len(fds) == 1) == (msg["type"] == "add")
            for fd in fds:
                os.fstat(fd)        # a live fd, passed on
                os.close(fd)
            self.got.append((msg["type"], uid))
            zds.send(conn, {"type": "error", "reason": "port in use"} if uid in self.refuse else {"type": "ack"})


def pod(uid: str) -> dict:
    return {"uid": uid, "name": uid, "namespace": "ns", "ip": "10.0.0.1", "node": "n", "service_account": "sa"}


def add(fan: Fanout, uid: str) -> str | None:
    r, w = os.pipe()
    os.close(w)
    return fan.handle({"type": "add", "pod": pod(uid)}, [r])


def test_fanout_reaches_every_worker_and_replays_the_table_to_a_new_one(tmp_path: Path):
    stopping = threading.Event()
    w0 = StandIn(0, WorkerPaths.under(tmp_path, 0))
    fan = Fanout(tmp_path / "zds.sock", [w0])
    try:
        assert add(fan, "a") == "no ztunnel worker is serving yet"     # the agent retries; kept for replay
        fan.attach(w0, stopping)
        assert w0.got == [("snapshot_start", ""), ("add", "a"), ("snapshot_end", "")]
        assert add(fan, "b") is None
        assert fan.handle({"type": "del", "uid": "a", "drain": 1.0}, []) is None
        w1 = StandIn(1, WorkerPaths.under(tmp_path, 1), refuse={"c"})
        fan.workers.append(w1)
        fan.attach(w1, stopping)
        assert w1.got == [("snapshot_start", ""), ("add", "b"), ("snapshot_end", "")]   # a was deleted
        assert add(fan, "c") == "worker 1: port in use"      # every worker's answer counts
        assert ("add", "c") in w0.got
        # A worker that died is skipped (its restart gets a replay), not an error for the agent.
        w1.unlink()
        assert add(fan, "d") is None
        assert sorted(fan.pods) == ["b", "c", "d"]
    finally:
        fan.close()


def test_a_worker_linked_during_the_agents_snapshot_follows_that_snapshot(tmp_path: Path):
    stopping = threading.Event()
    w0 = StandIn(0, WorkerPaths.under(tmp_path, 0))
    fan = Fanout(tmp_path / "zds.sock", [w0])
    try:
        fan.attach(w0, stopping)
        add(fan, "old")
        add(fan, "kept")
        assert fan.handle({"type": "snapshot_start"}, []) is None
        add(fan, "kept")
        w1 = StandIn(1, WorkerPaths.under(tmp_path, 1))
        fan.workers.append(w1)
        fan.attach(w1, stopping)
        # Only what the agent re-added so far, and no end: the agent's own end follows.
        assert w1.got == [("snapshot_start", ""), ("add", "kept")]
        add(fan, "new")
        assert fan.handle({"type": "snapshot_end"}, []) is None
        assert w1.got[-2:] == [("add", "new"), ("snapshot_end", "")]
        assert sorted(fan.pods) == ["kept", "new"]          # "old" was not re-added: gone
    finally:
        fan.close()


def test_the_agent_talks_to_the_supervisor_as_to_a_single_ztunnel(tmp_path: Path):
    from agent.ztunnel_link import ZtunnelLink
    from ambit.zds import PodInfo
    netns = tmp_path / "netns"          # any file: the fan-out passes the fd on without using it
    netns.write_text("")
    stopping = threading.Event()
    w0 = StandIn(0, WorkerPaths.under(tmp_path, 0), refuse={"bad"})
    fan = Fanout(tmp_path / "zds.sock", [w0])
    fan.attach(w0, stopping)
    fan.start()
    link = ZtunnelLink(tmp_path / "zds.sock", timeout=5)
    try:
        link.connect(deadline=float("inf"))
        errors = link.snapshot([(PodInfo.from_dict(pod("ok")), str(netns)), (PodInfo.from_dict(pod("bad")), str(netns))])
        assert [uid for uid, _ in errors] == ["bad"] and "worker 0: port in use" in errors[0][1]
        link.delete("ok", 1.0)
        link.ping()
        assert w0.got[-4:] == [("add", "bad"), ("snapshot_end", ""), ("del", "ok"), ("ping", "")]
        assert sorted(fan.pods) == ["bad"]      # kept: the agent retries it
    finally:
        link.close()
        fan.stop()
        fan.close()


def test_an_agent_gone_mid_snapshot_leaves_no_partial_snapshot_for_a_restarted_worker(tmp_path: Path):
    # The agent restarts (or is killed) between its snapshot_start and snapshot_end: the pods it
    # had not re-added yet are still the node's, and a worker (re)started afterwards must be
    # given every one of them, and a snapshot_end, not the dead agent's half of a snapshot.
    netns = tmp_path / "netns"
    netns.write_text("")
    stopping = threading.Event()
    w0 = StandIn(0, WorkerPaths.under(tmp_path, 0))
    fan = Fanout(tmp_path / "zds.sock", [w0])
    fan.attach(w0, stopping)
    add(fan, "a")
    add(fan, "b")
    fan.start()
    try:
        agent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        agent.connect(str(tmp_path / "zds.sock"))
        for msg, fds in (({"type": "snapshot_start"}, None), ({"type": "add", "pod": pod("a")}, [os.open(netns, os.O_RDONLY)])):
            zds.send(agent, msg, fds)
            for fd in fds or ():
                os.close(fd)
            assert zds.recv(agent)[0]["type"] == "ack"
        agent.close()           # gone before re-adding "b" and before its snapshot_end
        nxt = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        nxt.connect(str(tmp_path / "zds.sock"))     # agents are served one at a time: once this one
        zds.send(nxt, {"type": "ping"})             # is answered, the first one's end was handled
        assert zds.recv(nxt)[0]["type"] == "ack"
        w1 = StandIn(1, WorkerPaths.under(tmp_path, 1))
        fan.workers.append(w1)
        fan.attach(w1, stopping)
        assert (w1.got[0], sorted(w1.got[1:-1]), w1.got[-1]) == (("snapshot_start", ""), [("add", "a"), ("add", "b")],
                                                                 ("snapshot_end", ""))
        nxt.close()
    finally:
        fan.stop()
        fan.close()


def test_restarting_a_dead_worker_does_not_freeze_the_supervisors_loop(tmp_path: Path):
    """The agent's thread holds the fan-out's lock while a wedged worker keeps it waiting (up to
    30 s); the monitor took that lock on the loop to restart another worker that died, freezing the
    supervisor's endpoints and hand-offs meanwhile. Now it waits for the lock in a thread."""
    class Dead(Worker):
        def spawn(self, argv):                  # a stand-in process instead of a ztunnel
            self.started = 0.0
            self.proc = subprocess.Popen(["sleep", "30"])

    w = Dead(0, WorkerPaths.under(tmp_path, 0))
    w.proc = subprocess.Popen(["true"])
    w.proc.wait()                               # died long ago: due for a restart
    w.started = 0.0
    w.linking = True                            # not linked here: only the restart is under test
    fan = Fanout(tmp_path / "zds.sock", [w])
    fan.lock.acquire()                          # the agent's thread, waiting on a wedged worker
    release = threading.Timer(1.0, fan.lock.release)

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.02)
        t = asyncio.ensure_future(ticker())
        release.start()
        await tend([w], fan, [], threading.Event())
        t.cancel()
        return ticks

    try:
        ticks = asyncio.run(main())
        assert ticks >= 10, f"the loop ran {ticks} times while the lock was held for 1 s"
        assert w.restarts == 1 and w.alive()     # and the worker was restarted once the lock was free
    finally:
        release.cancel()
        if w.proc is not None:
            w.proc.kill()
            w.proc.wait()
