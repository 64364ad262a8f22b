"""A proxy started at a container runtime's soft descriptor limit (1,024 under a far higher hard one:
containerd 2 under systemd) raises it to the hard limit before it listens, or accept() fails with
EMFILE near a thousand connections, far below the waypoint's --max-connections (8,192). A pod spec
cannot set rlimits, so only the process can. The real binary, started the way a runtime starts it."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.spawn import with_rlimit

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def test_the_waypoint_raises_a_runtimes_soft_descriptor_limit_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard descriptor limit here is {hard}: nothing to raise to")

    # the child starts as a runtime would start it: soft limit 1,024
    argv = [sys.executable, "-m", "waypoint", "--waypoint", "demo/wp", "--pod-name", "wp-0", "--node", "n1",
            "--listen", f"127.0.0.1:{_free_port()}", "--admin-address", "", "--metrics-address", ""]
    p = subprocess.Popen(with_rlimit(argv, "RLIMIT_NOFILE", 1024, hard), cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        # the limits read before the wrapper's exec are the wrapper's, not the waypoint's
        while b"RLIMIT_NOFILE" in Path(f"/proc/{p.pid}/cmdline").read_bytes() and p.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        while _limits(p.pid)[0] == 1024 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
        assert _limits(p.pid) == (hard, hard)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ztunnel's process edge with nothing behind it: the warning comes from `process.run`, before any listener.
ZTUNNEL_EDGE = """
import sys
from ambit.dataplane import process
from ztunnel.settings import load

async def nothing(settings):
    pass

process.run("ztunnel", load, nothing, sys.argv[1:])
"""


def _ztunnel_start_log(hard: int, *flags: str) -> str:
    argv = [sys.executable, "-c", ZTUNNEL_EDGE, "--node", "n1", "--zds-socket", "/nonexistent/zds.sock", *flags]
    p = subprocess.run(with_rlimit(argv, "RLIMIT_NOFILE", min(1024, hard), hard), cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stderr


def test_ztunnel_warns_when_the_hard_descriptor_limit_is_below_one_pods_connection_bounds() -> None:
    """ztunnel has no --max-connections, so it never warned: under a hard limit of 4,096 a pod at its
    default bounds (16,384 connections each way, one descriptor each) meets EMFILE unannounced."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard descriptor limit here is {hard}: cannot start a child at 4,096")
    log = _ztunnel_start_log(4096)
    assert "ztunnel: the descriptor limit is 4096, below the 17408 that one pod at --max-outbound-per-pod/" \
           "--max-inbound-per-pod may need" in log, log
    # Control: bounds that fit the limit, no warning.
    log = _ztunnel_start_log(4096, "--max-outbound-per-pod", "2000", "--max-inbound-per-pod", "2000")
    assert "descriptor limit" not in log, log
