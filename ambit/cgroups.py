"""cgroup v2 helpers.

Ambit attaches its outbound capture programs to each pod's cgroup v2 directory, and runs ztunnel
in a cgroup of its own so that its sockets are never redirected. The v2 hierarchy is not always at
/sys/fs/cgroup: hybrid hosts (like these machines) mount it at /sys/fs/cgroup/unified, so we find it
from /proc/self/mountinfo instead of assuming a path.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class CgroupError(RuntimeError):
    pass


def find_cgroup2_mount(mountinfo: str | None = None) -> Path:
    """Return the mount point of the cgroup v2 hierarchy, read from mountinfo."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    candidates = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        if right.split()[0] == "cgroup2":
            candidates.append(Path(fields[4].replace("\\040", " ")))
    if not candidates:
        raise CgroupError("no cgroup2 filesystem is mounted (need a cgroup v2 hierarchy)")
    # Prefer the shortest path: the host's own mount rather than a bind of a sub-tree.
    return sorted(candidates, key=lambda p: len(str(p)))[0]


def create(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def join(path: Path, pid: int | None = None) -> None:
    """Move a process (default: the caller) into the cgroup at `path`."""
    (path / "cgroup.procs").write_text(f"{pid if pid is not None else os.getpid()}\n")


def pids(path: Path) -> list[int]:
    """All processes in `path` and below it."""
    out: list[int] = []
    if not path.exists():
        return out
    for d, _dirs, _files in os.walk(path):
        try:
            out += [int(x) for x in Path(d, "cgroup.procs").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def kill_all(path: Path, timeout: float = 5.0) -> None:
    """Kill every process in the cgroup subtree and wait until it is empty.

    cgroup.kill (5.14+) is atomic against forks; we fall back to SIGKILL per pid.
    """
    if not path.exists():
        return
    deadline = time.monotonic() + timeout
    while True:
        remaining = pids(path)
        if not remaining:
            return
        killfile = path / "cgroup.kill"
        if killfile.exists():
            try:
                killfile.write_text("1\n")
            except OSError:
                pass
        for pid in remaining:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise CgroupError(f"processes still alive in {path}: {remaining}")
        time.sleep(0.05)


def remove_tree(path: Path) -> None:
    """rmdir a cgroup subtree, deepest first (cgroup directories can only be rmdir'ed when empty)."""
    if not path.exists():
        return
    for d, _dirs, _files in sorted(os.walk(path), key=lambda t: -len(t[0])):
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise CgroupError(f"cannot remove cgroup {d}")
