"""The agent↔ztunnel hand-off carries a real fd across a real unix socket."""

from __future__ import annotations

import os
import socket

from ambit import zds
from ambit.dataplane.workers import SupervisorMetrics
from ambit.zds import PodInfo
from tests.unit.scrape import exposition, sample
from ztunnel.proxy import Proxy


def test_message_and_fd_round_trip(tmp_path) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    f = tmp_path / "x"
    f.write_text("netns stand-in")
    fd = os.open(f, os.O_RDONLY)
    info = PodInfo(uid="u1", name="p", namespace="demo", ip="10.0.0.1", node="n1", service_account="sa")
    zds.send(a, {"type": "add", "pod": info.to_dict()}, [fd])
    os.close(fd)
    msg, fds = zds.recv(b)
    assert msg == {"type": "add", "pod": info.to_dict()}
    assert len(fds) == 1
    assert os.read(fds[0], 100) == b"netns stand-in"  # the same open file, passed by the kernel
    os.close(fds[0])
    assert PodInfo.from_dict(msg["pod"]) == info
    a.close()
    assert zds.recv(b) == (None, [])
    b.close()


def test_the_accept_loop_outlives_running_out_of_descriptors(tmp_path) -> None:
    """ztunnel at its fd limit when the agent (re)connects: accept() fails with EMFILE. That used
    to end the accept loop for good (taken for `close_listener`), so the agent never reached
    ztunnel again; now it waits and serves the agent once descriptors are free.

    The scenario runs in a process of its own (`_emfile_scenario`): in the test process, another
    test's thread closing a socket during the exhausted window freed a descriptor, and accept()
    succeeded where it had to fail (a flake under `-n 2` even with the collector held off)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", f"from tests.unit.agent.test_zds import _emfile_scenario; "
                        f"_emfile_scenario({str(tmp_path / 'zds.sock')!r})"],
                       capture_output=True, text=True, timeout=60, cwd=os.getcwd(),
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(),
                                                                                    os.environ.get("PYTHONPATH")]))})
    assert r.returncode == 0, r.stdout + r.stderr


def _emfile_scenario(path: str) -> None:
    """The body of the test above, in a fresh process with no other thread that could free an fd."""
    import logging
    import resource
    import threading

    before = backoffs("zds")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    served = threading.Event()
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    loop = threading.Thread(target=zds.accept_loop, args=(listener, lambda c: served.set(),
                                                          logging.getLogger("test")), daemon=True)
    try:
        agent.connect(path)                     # waits in the backlog
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        loop.start()
        assert not served.wait(0.3), "accept() succeeded although no descriptor was free"
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert served.wait(10), "the accept loop gave up at EMFILE"
    zds.close_listener(listener)
    loop.join(5)
    assert not loop.is_alive()
    agent.close()
    # An operator sees it: ztunnel's own exposition (one process) and its supervisor's (workers).
    assert backoffs("zds") >= before + 1
    supervisor = SupervisorMetrics([], "ambit_ztunnel_worker_restarts").handle("GET", "/metrics").body.decode()
    assert (sample(supervisor, "ambit_accept_backoffs_total", listener="zds") or 0) >= before + 1


def backoffs(listener: str) -> float:
    return sample(exposition(Proxy().health()), "ambit_accept_backoffs_total", listener=listener) or 0.0
