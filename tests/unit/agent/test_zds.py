"""The agent↔ztunnel hand-off carries a real fd across a real unix socket."""

from __future__ import annotations

import os
import socket

from ambit import zds
from ambit.zds import PodInfo


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
