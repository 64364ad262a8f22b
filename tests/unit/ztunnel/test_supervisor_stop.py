"""`--workers N`: SIGTERM to ztunnel's supervisor ends every worker and the supervisor, at any time.

A supervisor stopped before every worker had linked (a worker still waiting for its first config)
died of the signal itself (it installed its handler only once every worker was linked): its
workers were never stopped by it (no SIGKILL for one that does not drain) and its sockets and
workers' directory stayed behind. And a worker that does not end within its drain is killed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ambit.dataplane import endpoint
from ambit.dataplane.workers import WorkerProcess, stop_workers
from tests.unit.dataplane.test_shutdown import sigterm
from ztunnel.pods import reuseport_supported

REPO = Path(__file__).resolve().parents[3]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not reuseport_supported(), reason="one process, no supervisor, before Linux 6.5")
def test_a_supervisor_stopped_before_its_workers_linked_stops_them_and_cleans_up(tmp_path: Path) -> None:
    admin = tmp_path / "admin.sock"
    p = subprocess.Popen([sys.executable, "-m", "ztunnel", "--node", "n1", "--workers", "2", "--termination-drain", "0",
                          "--controller", f"127.0.0.1:{_closed_port()}", "--zds-socket", str(tmp_path / "zds.sock"),
                          "--admin-address", "", "--admin-socket", str(admin), "--metrics-address", "",
                          "--metrics-socket", str(tmp_path / "m.sock")],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while p.poll() is None and time.monotonic() < deadline:     # both workers up, waiting for config
            try:
                workers = json.loads(endpoint.fetch(admin, "/workers")[1])["workers"]
                pids = [w["pid"] for w in workers]
                if all((tmp_path / "zds.workers" / f"w{w['index']}.admin.sock").exists() for w in workers):
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert len(pids) == 2 and not any(json.loads(endpoint.fetch(admin, "/workers")[1])["workers"][i]["linked"]
                                          for i in (0, 1))
        err = sigterm(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    assert p.returncode == 0, err
    assert not any(_running(pid) for pid in pids)
    assert not (tmp_path / "zds.workers").exists() and not admin.exists(), sorted(os.listdir(tmp_path))


def test_a_worker_that_does_not_end_after_sigterm_is_killed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = WorkerProcess(0, tmp_path / "a.sock", tmp_path / "m.sock")
    w.proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print(flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    assert w.proc.stdout is not None and w.proc.stdout.readline()     # ignoring SIGTERM now
    with caplog.at_level(logging.WARNING, logger="ambit.dataplane.workers"):
        asyncio.run(stop_workers([w], 0.3))
    assert w.proc.returncode == -signal.SIGKILL
    assert f"worker 0 (pid {w.proc.pid}) still running 0.3 s after SIGTERM; killing it (SIGKILL)" in caplog.text
