"""The event-loop watchdog in real processes: a loop wedged by a blocking call is aborted (SIGABRT,
so its container or supervisor restarts it) with the blocking function's stack on stderr; without
`--watchdog-kill-after` the stall is counted and its stack logged; and a real waypoint stopped
(SIGSTOP) for longer than its kill time is not a wedged loop, so it lives on.

The wedged process runs the shared runtime the components run (`process.run`, uvloop,
`process.serve_until_stopped`), with one callback that blocks: production code has no hook to
wedge it, so the test brings its own blocking callback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ambit.dataplane import endpoint
from tests.support.spawn import without_core

REPO = Path(__file__).resolve().parents[3]

# argv: KILL_AFTER WEDGE_SECONDS [log|startup]. Wedges the loop 0.5 s after serving starts, prints the metrics
# exposition once the loop runs again, then stops itself as SIGTERM would.
WEDGED = r'''
import asyncio, logging, os, signal, sys, time
from types import SimpleNamespace
from prometheus_client import CollectorRegistry, generate_latest
from ambit.dataplane import process

def load(argv):
    return SimpleNamespace(log_level="INFO", max_connections=0, gc_freeze=True, gc_threshold="",
                           memory_trim_interval=0.0, watchdog_kill_after=float(argv[0]))

def a_blocking_callback():
    if sys.argv[3:] == ["log"]:     # log until stderr, a pipe nobody reads, is full: the write blocks
        while True:
            logging.getLogger("flood").warning("x" * 1000)
    time.sleep(float(sys.argv[2]))

async def amain(settings):
    registry = CollectorRegistry()
    loop = asyncio.get_running_loop()
    if sys.argv[3:] == ["startup"]:     # a long synchronous start-up step, then serving as usual
        time.sleep(float(sys.argv[2]))
    else:
        loop.call_later(0.5, a_blocking_callback)
    def report():
        sys.stdout.write(generate_latest(registry).decode())
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGTERM)
    loop.call_later(0.6, report)
    await process.serve_until_stopped(settings, SimpleNamespace(), registry)

process.run("wedged", load, amain, sys.argv[1:])
'''


def _run(tmp_path: Path, kill_after: str, wedge: str, *mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "wedged.py"         # a file, so the stack shows its source lines
    script.write_text(WEDGED)
    return subprocess.run(without_core([sys.executable, str(script), kill_after, wedge, *mode]), cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_wedged_loop_is_aborted_with_the_blocking_functions_stack(tmp_path: Path) -> None:
    p = _run(tmp_path, "2", "30")
    assert p.returncode == -signal.SIGABRT, (p.returncode, p.stderr)
    assert "event loop stalled for 2." in p.stderr and "--watchdog-kill-after 2" in p.stderr, p.stderr
    assert "in a_blocking_callback" in p.stderr and "time.sleep(float(sys.argv[2]))" in p.stderr, p.stderr


def test_a_long_synchronous_start_up_step_is_no_stall(tmp_path: Path) -> None:
    """Start-up (certificates, config, listeners) runs before the watchdog starts, however long a
    synchronous step of it takes: not counted, and not aborted with a kill time shorter than it."""
    p = _run(tmp_path, "1", "2.5", "startup")
    assert p.returncode == 0, p.stderr
    assert 'ambit_event_loop_stalls_total{severity="miss"} 0.0' in p.stdout, p.stdout


def test_a_loop_wedged_writing_its_log_is_aborted_all_the_same(tmp_path: Path) -> None:
    """The loop blocks inside a log call (stderr is a pipe its reader stopped reading, as a stuck
    log collector's): the watchdog's own log line then waits for the same handler lock, and the
    abort must not wait for it."""
    script = tmp_path / "wedged.py"
    script.write_text(WEDGED)
    p = subprocess.Popen(without_core([sys.executable, str(script), "2", "0", "log"]), cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert p.wait(60) == -signal.SIGABRT
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        assert p.stderr is not None
        p.stderr.close()


def test_without_kill_after_a_stall_is_counted_and_its_stack_logged(tmp_path: Path) -> None:
    p = _run(tmp_path, "0", "1.5")
    assert p.returncode == 0, p.stderr
    assert 'ambit_event_loop_stalls_total{severity="miss"} 1.0' in p.stdout, p.stdout
    assert 'ambit_event_loop_stalls_total{severity="mega_miss"} 1.0' in p.stdout, p.stdout
    assert "(mega-miss); the loop thread is in:" in p.stderr and "in a_blocking_callback" in p.stderr, p.stderr


def _stop(p: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGTERM (a drain), and SIGKILL if it is still there 20 s later."""
    p.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(20)
    if p.poll() is None:
        p.kill()
        p.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(sock: Path) -> str:
    status, body = endpoint.fetch(sock, "/metrics")
    assert status == 200
    return body.decode()


def _sample(text: str, line_start: str) -> float:
    return float(next(ln for ln in text.splitlines() if ln.startswith(line_start)).rsplit(" ", 1)[1])


def test_a_waypoint_stopped_longer_than_its_kill_time_is_not_aborted(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.sock"
    p = subprocess.Popen([sys.executable, "-m", "waypoint", "--waypoint", "demo/wp", "--pod-name", "wp-0",
                          "--node", "n1", "--listen", f"127.0.0.1:{_free_port()}", "--admin-address", "",
                          "--metrics-address", "", "--metrics-socket", str(metrics), "--workers", "1",
                          "--watchdog-kill-after", "1"],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        text = ""
        while "ambit_event_loop_stalls_total" not in text and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                text = _scrape(metrics)
            except OSError:
                pass
        assert "ambit_event_loop_stalls_total" in text, p.stderr.read() if p.poll() is not None and p.stderr else text
        p.send_signal(signal.SIGSTOP)
        time.sleep(3)
        p.send_signal(signal.SIGCONT)
        time.sleep(2)                   # the watchdog's thread and the loop run again
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
        text = _scrape(metrics)
        assert _sample(text, 'ambit_event_loop_stalls_total{severity="mega_miss"}') == 0, text
    finally:
        _stop(p)


def _wait_for(what, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = what()
        except (OSError, StopIteration):
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def test_a_supervisors_workers_and_itself_are_watched_and_an_aborted_worker_is_restarted(tmp_path: Path) -> None:
    """`--workers 2`: each worker's loop and the supervisor's own are watched (the merged scrape has
    both workers' samples and the supervisor's, unlabelled), and a worker that aborts as the
    watchdog aborts it (SIGABRT) is started again while the supervisor's HBONE listener stays open."""
    metrics, admin, port = tmp_path / "metrics.sock", tmp_path / "admin.sock", _free_port()
    p = subprocess.Popen(without_core([sys.executable, "-m", "waypoint", "--waypoint", "demo/wp", "--pod-name", "wp-0",
                                       "--node", "n1", "--listen", f"127.0.0.1:{port}", "--admin-address", "",
                                       "--admin-socket", str(admin), "--metrics-address", "", "--metrics-socket",
                                       str(metrics), "--workers", "2", "--run-dir", str(tmp_path),
                                       "--watchdog-kill-after", "30"]),
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stalls = 'ambit_event_loop_stalls_total{severity="mega_miss"'
    try:
        def watched() -> str | None:
            text = _scrape(metrics)
            lines = [ln for ln in text.splitlines() if ln.startswith(stalls)]
            return text if {'worker="0"' in " ".join(lines), 'worker="1"' in " ".join(lines),
                            f"{stalls}}} 0.0" in lines} == {True} else None
        _wait_for(watched)
        worker0 = json.loads(endpoint.fetch(admin, "/workers")[1])["workers"][0]["pid"]
        os.kill(worker0, signal.SIGABRT)
        _wait_for(lambda: json.loads(endpoint.fetch(admin, "/workers")[1])["workers"][0]["restarts"] == 1)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        text = _wait_for(watched)
        assert 'ambit_waypoint_worker_restarts_total{worker="0"} 1.0' in text, text
        assert json.loads(endpoint.fetch(admin, "/workers")[1])["workers"][0]["pid"] != worker0
    finally:
        _stop(p)
