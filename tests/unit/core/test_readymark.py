"""The writer stamp of a status file and the readiness check on it (ambit/readymark.py): a file
left by a process that is gone is not readiness, whatever it holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ambit import readymark


def stamp_of_a_process_that_exited() -> dict:
    """The stamp a short-lived process wrote of itself (it has exited when this returns)."""
    out = subprocess.run([sys.executable, "-c", "import json; from ambit import readymark; "
                          "print(json.dumps(readymark.writer()))"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_a_live_writer_is_ready_and_one_that_exited_is_not() -> None:
    assert readymark.problem({readymark.WRITER: readymark.writer()}) is None
    why = readymark.problem({readymark.WRITER: stamp_of_a_process_that_exited()})
    assert why is not None and "no longer running" in why


def test_a_reused_pid_is_not_the_writer() -> None:
    """Another process under the writer's pid has another start time: still the old run's file."""
    w = readymark.writer()
    w["start"] -= 1
    assert "no longer running" in (readymark.problem({readymark.WRITER: w}) or "")


def test_a_file_from_before_the_boot_or_without_a_stamp_is_not_ready() -> None:
    w = {**readymark.writer(), "boot": "another-boot"}
    assert "before this boot" in (readymark.problem({readymark.WRITER: w}) or "")
    assert "names no writer" in (readymark.problem({"pods": {}}) or "")
    assert readymark.problem([]) is not None


def test_a_named_process_must_be_the_writer() -> None:
    """The lab's surge roll: two live agents share the file; only the one that wrote it is ready."""
    doc = {readymark.WRITER: readymark.writer()}
    assert readymark.problem(doc, os.getpid()) is None
    assert f"not by pid {os.getppid()}" in (readymark.problem(doc, os.getppid()) or "")


def test_the_probe_command_exits_by_the_stamp(tmp_path: Path) -> None:
    f = tmp_path / "status.json"
    probe = [sys.executable, "-m", "ambit.readymark", str(f)]
    r = subprocess.run(probe, capture_output=True, text=True)
    assert r.returncode == 1 and "no status file" in r.stdout
    f.write_text(json.dumps({"pods": {}, readymark.WRITER: stamp_of_a_process_that_exited()}))
    r = subprocess.run(probe, capture_output=True, text=True)
    assert r.returncode == 1 and "previous run" in r.stdout, r.stdout
    f.write_text(json.dumps({"pods": {}, readymark.WRITER: readymark.writer()}))
    r = subprocess.run(probe, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    r = subprocess.run([*probe, "--pid", str(os.getppid())], capture_output=True, text=True)
    assert r.returncode == 1, r.stdout
