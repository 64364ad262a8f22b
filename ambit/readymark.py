"""A status file that says which process wrote it, and the readiness check that reads it.

Why: a component that reports readiness by writing a file (the agent's status file) leaves that
file behind when it dies. A file that merely exists, or is not empty (`test -s`), is then "ready"
straight after a container restart, before the new process has loaded anything: the kubelet
would count the node pod Ready, and a DaemonSet roll would move on, while nothing serves. So the
writer stamps the file with its own process (`writer()`: pid, the kernel's start time of that
pid, the boot id), and the check (`problem()`) accepts the file only while that very process is
alive. A pid reused by another process has another start time; a file from before a reboot has
another boot id. Nothing is ever deleted, so a second process sharing the path (the lab's surge
roll, where both generations of a node's agent write the same file) is never made to see
"nothing" by the other's start.

`python3 -m ambit.readymark FILE [--pid PID]` checks it from outside (exit 0 ready, 1 not, with
the reason on stdout). Without --pid any live writer will do (a file in a pod's own emptyDir: a
live writer is that pod's process). The lab, which shares one path between the two generations of
a surge roll, names the process it asks about (--pid). The cluster's node pod no longer execs it
as its readiness probe (a Python started every period on every node): the agent answers the same
condition over HTTP from its memory (agent/health.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

WRITER = "writer"       # the key of the writer's stamp in the status document
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The start time of `pid` in clock ticks since boot (/proc/PID/stat, field 22), or None when
    there is no such process: with the pid, what tells one process from a later one given the same
    pid. The command name (field 2) may hold spaces and ')': split after the last one."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def writer(pid: int | None = None) -> dict[str, Any]:
    """The stamp of the process `pid` (this one by default), to store under WRITER."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start": start_time(pid), "boot": _boot_id()}


def problem(doc: Any, pid: int | None = None) -> str | None:
    """Why a status document does not show a ready process (None when it does): it must carry a
    writer stamp of a process that is alive now (same pid, same start time, same boot), and, when
    `pid` is given, that process must be `pid`."""
    if not isinstance(doc, dict):
        return "the status file holds no JSON object"
    w = doc.get(WRITER)
    if not isinstance(w, dict) or not isinstance(w.get("pid"), int):
        return "the status file names no writer process (written by an older version?)"
    if w.get("boot") != _boot_id():
        return "the status file was written before this boot"
    if pid is not None and w["pid"] != pid:
        return f"the status file was written by pid {w['pid']}, not by pid {pid}"
    if w.get("start") is None or start_time(w["pid"]) != w.get("start"):
        return f"the status file's writer (pid {w['pid']}) is no longer running: left by a previous run"
    return None


def file_problem(path: Path, pid: int | None = None) -> str | None:
    """`problem()` of the status file at `path` (a missing or unreadable file is not ready)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return f"no status file {path} yet"
    except (OSError, ValueError) as e:
        return f"cannot read {path}: {e}"
    return problem(doc, pid)


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python3 -m ambit.readymark",
                                description="exit 0 if FILE was written by a process that still runs")
    p.add_argument("file", type=Path)
    p.add_argument("--pid", type=int, default=None, help="the process that must have written it")
    args = p.parse_args(argv)
    why = file_problem(args.file, args.pid)
    print(f"not ready: {why}" if why else "ready")
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
