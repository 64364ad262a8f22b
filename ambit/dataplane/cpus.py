"""How many CPUs this process may use: the number `--workers 0` resolves to (ztunnel, waypoint).

The affinity mask alone over-counts in a container: a pod limited to 2 CPUs on a 32-core node sees
32 in its mask, and 32 workers would each get a sliver of the quota and cost a whole process of
memory. So the cgroup's quota (`cpu.max`, cgroup v2) caps it, rounded up."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

MAX_AUTO_WORKERS = 8        # `--workers 0` stops here: past that, per-worker pools cost more than cores gain


def _cgroup2_root() -> Path | None:
    """Where cgroup v2 is mounted (found in mountinfo: it is not always /sys/fs/cgroup)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split()[4])
    return None


def cpu_quota(root: Path | None = None, cgroup_file: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs this process's cgroup may use per period (`cpu.max`, the tightest along its path up
    to the root), or None when unlimited or unknown."""
    root = root or _cgroup2_root()
    if root is None:
        return None
    rel = ""
    with contextlib.suppress(OSError):
        for line in cgroup_file.read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip().lstrip("/")
    path = root / rel if rel else root
    best: float | None = None
    while True:
        with contextlib.suppress(OSError, ValueError):
            quota, period = (path / "cpu.max").read_text().split()[:2]
            if quota != "max":
                cpus = int(quota) / int(period)
                best = cpus if best is None else min(best, cpus)
        if path == root or root not in path.parents:
            return best
        path = path.parent


def resolve_count(requested: int, *, cap: int = MAX_AUTO_WORKERS, quota: float | None = None) -> int:
    """`--workers N` as a number of processes: N itself, or for 0 one per CPU this process may use
    (affinity mask, then the cgroup's quota rounded up), at most `cap`."""
    if requested:
        return requested
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota() if quota is None else quota
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, min(cpus, cap))


def memory_request_mib(requested: int, *, first_mib: int, per_worker_mib: int,
                       cap: int = MAX_AUTO_WORKERS) -> int:
    """The memory request, in MiB, of a pod running a proxy with `--workers requested`: `first_mib`
    for a single process, `per_worker_mib` more for each further worker (each is a whole proxy
    process; docs/operations.md, "Memory requests"). A manifest cannot know the node `--workers 0`
    will run on, so 0 is sized for `cap` workers: asking a node for too little is the dangerous
    side, as the scheduler then packs the proxy below its working set."""
    n = requested or cap
    return first_mib + (max(1, n) - 1) * per_worker_mib
