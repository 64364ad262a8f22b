"""A proxy's shutdown after SIGTERM ends, whatever one step waits for (ambit/dataplane/shutdown.py,
the steps; ambit/dataplane/process.py, the loop's end).

Each step runs within its own time, so a step that never finishes (a controller that went away
first, a stream that does not end, a task that lost its cancellation, gh-86296) is named in the log
and left behind, and the later steps and the process exit still happen. A make-test run once saw an
ingress gateway take over 10 s to exit after SIGTERM; a ztunnel had no bound on any step at all.

The processes are real ztunnel and waypoint processes, with one shutdown step made to hang: production
code has no hook for that, so the test brings its own (a close() that ignores its cancellation)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ambit.dataplane import endpoint
from ambit.dataplane.shutdown import run_steps

REPO = Path(__file__).resolve().parents[3]
log = logging.getLogger("ambit.test.shutdown")


async def _stubborn() -> None:
    """A step that swallows its cancellation, as a loop does that lost one (gh-86296)."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


def test_a_step_that_hangs_is_named_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def fails() -> None:
        raise RuntimeError("boom")

    async def record(name: str) -> None:
        done.append(name)

    async def main() -> list[str]:
        return await run_steps([("first", lambda: record("first"), 1.0), ("tap feed", hangs, 0.2),
                                ("absent", None, 1.0), ("broken", fails, 1.0), ("last", lambda: record("last"), 1.0)],
                               log)
    with caplog.at_level(logging.WARNING, logger=log.name):
        left = asyncio.run(main())
    assert done == ["first", "last"] and left == ["tap feed"]
    assert "shutdown: tap feed did not finish within 0.2 s" in caplog.text
    assert "shutdown: broken failed" in caplog.text


def test_a_step_that_ignores_its_cancellation_is_left_behind(caplog: pytest.LogCaptureFixture) -> None:
    """The waypoint's steps were bounded by wait_for, which waits until the cancelled step has
    unwound: here, for ever. The loop runs in a thread, so that hang fails the test instead."""
    done: list[str] = []
    left: list[list[str]] = []

    async def record() -> None:
        done.append("last")

    async def main() -> list[str]:
        names = await run_steps([("status reporter", _stubborn, 0.2), ("last", record, 1.0)], log)
        for t in asyncio.all_tasks() - {asyncio.current_task()}:     # asyncio.run would wait for it
            t.get_coro().close()
        return names
    with caplog.at_level(logging.WARNING, logger=log.name):
        loop = threading.Thread(target=lambda: left.append(asyncio.run(main())), daemon=True)
        loop.start()
        loop.join(20)
    assert left == [["status reporter"]] and done == ["last"]
    assert "shutdown: status reporter did not finish within 0.2 s" in caplog.text


# argv: the component's module, the class whose close() hangs, then the component's own arguments.
HANGS = r'''
import asyncio, importlib, sys
from ambit.dataplane import process, shutdown
shutdown.STEP_TIMEOUT = process.EXIT_GRACE = 0.5    # the bounds, short for the test

async def close(self):
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

module, cls = sys.argv[2].rsplit(".", 1)
setattr(getattr(importlib.import_module(module), cls), "close", close)
importlib.import_module(sys.argv[1] + ".__main__").main(sys.argv[3:])
'''


def sigterm(p: subprocess.Popen[str], timeout: float = 30) -> str:
    """SIGTERM `p` and wait for its exit; its stderr. Killed if it is still there after `timeout`,
    so that a shutdown that hangs fails the test."""
    try:
        p.send_signal(signal.SIGTERM)
        return p.communicate(timeout=timeout)[1]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _ztunnel(d: Path) -> list[str]:
    return ["ztunnel", "ambit.dataplane.telemetry.metrics.MetricsServer", "--node", "n1", "--workers", "1",
            "--termination-drain", "0", "--zds-socket", str(d / "zds.sock"), "--admin-address", "",
            "--admin-socket", str(d / "admin.sock"), "--metrics-address", "", "--metrics-socket", str(d / "m.sock")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _waypoint(d: Path) -> list[str]:
    return ["waypoint", "waypoint.admin.AdminServer", "--waypoint", "demo/wp", "--pod-name", "wp-0", "--node", "n1",
            "--listen", f"127.0.0.1:{_free_port()}", "--workers", "1", "--http-drain-timeout", "0", "--http-drain-accept", "0",
            "--admin-address", "", "--admin-socket", str(d / "admin.sock"), "--status-address", "",
            "--metrics-address", "", "--metrics-socket", str(d / "m.sock")]


@pytest.mark.parametrize("component, hung, gone", [
    (_ztunnel, "metrics server", "admin.sock"), (_waypoint, "admin endpoint", "m.sock")])
def test_a_proxy_whose_shutdown_step_hangs_still_exits_on_sigterm(tmp_path: Path, component, hung: str,  # noqa: ANN001
                                                                   gone: str) -> None:
    script = tmp_path / "hangs.py"
    script.write_text(HANGS)
    p = subprocess.Popen([sys.executable, str(script), *component(tmp_path)], cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 30
    while p.poll() is None and time.monotonic() < deadline:     # serving: SIGTERM is a drain now
        try:
            if "ambit_event_loop_stalls_total" in endpoint.fetch(tmp_path / "m.sock", "/metrics")[1].decode():
                break
        except OSError:
            pass
        time.sleep(0.1)
    err = sigterm(p)
    assert p.returncode == 0, err
    assert f"shutdown: {hung} did not finish within 0.5 s; exiting without it" in err
    assert not (tmp_path / gone).exists(), "the steps after the hung one did not run"
    assert "exit: task" in err and "did not end within 0.5 s of being cancelled" in err


def test_the_loop_ends_within_its_bound_when_a_task_ignores_its_cancellation(tmp_path: Path) -> None:
    """What is still running when the main coroutine returns is cancelled, and the process exits
    whether it ends or not (asyncio.run waited for it for ever)."""
    script = tmp_path / "stubborn.py"
    script.write_text(r'''
import asyncio
from types import SimpleNamespace
from ambit.dataplane import process
process.EXIT_GRACE = 0.5

async def stubborn():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

async def amain(settings):
    asyncio.ensure_future(stubborn(), loop=None).set_name("feed:n1")
    await asyncio.sleep(0.1)

process.run("stubborn", lambda argv: SimpleNamespace(log_level="INFO", max_connections=0), amain, [])
''')
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "exit: task feed:n1 (stubborn) did not end within 0.5 s of being cancelled" in done.stderr
