"""The agent's status file as readiness (ambit/readymark.py): stamped by the agent that wrote it,
and written again when another writer took it over (the lab's surge roll shares the path)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.__main__ import Agent
from ambit import readymark


def test_the_status_is_stamped_and_taken_back_after_another_writer_replaced_it(tmp_path: Path) -> None:
    status = tmp_path / "agent-status.json"
    a = Agent("node1", source=None, engine=None, link=None, node_ip="10.0.0.1", status_file=status)
    a.keep_status()
    assert not status.exists(), "nothing is written before the first reconcile: not ready yet"
    a.write_status()
    assert readymark.file_problem(status, os.getpid()) is None
    # The other generation of a surge roll writes its own status over ours.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"pods": {}, readymark.WRITER: {**readymark.writer(), "pid": 1}}))
    os.replace(other, status)
    assert readymark.file_problem(status, os.getpid()) is not None
    a.keep_status()                 # the next heartbeat
    assert readymark.file_problem(status, os.getpid()) is None
    status.unlink()
    a.keep_status()
    assert readymark.file_problem(status, os.getpid()) is None
