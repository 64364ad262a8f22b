"""The lab's readiness checks ask what the manifest's probes ask, over real sockets and processes:
a file a killed process left behind (a unix socket, a status file) is not readiness."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from ambit import readymark
from ambitctl.lab import components


def test_a_controller_socket_nothing_listens_on_is_not_ready(tmp_path: Path) -> None:
    path = components.controller_socket(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()
        assert components.controller_ready(tmp_path)
    assert path.exists(), "a controller killed hard leaves its socket file"
    assert not components.controller_ready(tmp_path)


def test_the_agent_is_ready_on_its_own_status_only(tmp_path: Path) -> None:
    status = components.agent_status_file(tmp_path, "node1")
    gone = json.loads(subprocess.run([sys.executable, "-c", "import json; from ambit import readymark; "
                                      "print(json.dumps(readymark.writer()))"],
                                     capture_output=True, text=True, check=True).stdout)
    status.write_text(json.dumps({"pods": {}, readymark.WRITER: gone}))
    assert not components.agent_ready(tmp_path, "node1", os.getpid()), "another (dead) agent's status"
    status.write_text(json.dumps({"pods": {}, readymark.WRITER: readymark.writer()}))
    assert components.agent_ready(tmp_path, "node1", os.getpid())
    assert not components.agent_ready(tmp_path, "node1", os.getppid()), "the other agent of a surge roll"
    assert not components.agent_ready(tmp_path, "node1", None)
