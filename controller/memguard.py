"""The controller's memory guard: refuse new config streams once the process holds a fraction of
its container's memory limit, so a mesh larger than the limit was sized for gets RESOURCE_EXHAUSTED
on its newest subscribers (they back off and keep their last good config) instead of an OOM kill
that drops every subscriber at once (docs/operations.md, "Sizing the controller").

Why a guard and not only a smaller default: what a subscription costs grows with the view (every
workload and Service in the cluster for a ztunnel), and the number of subscriptions is bounded by
no connection count (HTTP/2 carries up to `--max-config-streams-per-client` per credential on one
connection), so no fixed count is safe for every cluster size. Envoy's overload manager does the
same with its heap (`stop_accepting_requests` at a fraction of `max_heap_size_bytes`).

The limit is the cgroup's (v2 `memory.max`, or v1 `memory.limit_in_bytes` on a hybrid host), found
from /proc/self/mountinfo and /proc/self/cgroup, not a hard-coded path. The usage is the process's
resident set (/proc/self/statm): what the kernel charges and the OOM killer weighs, without the
page cache the cgroup also counts and reclaims first. Parsing is pure (tested on fixtures); only
`MemoryGuard.from_proc` and `_rss` touch the filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The default fraction: past it new config streams are refused. The rest of the limit is headroom
# for what existing subscribers allocate transiently (a push round at 10,000 pods: about 100 MB).
MEMORY_GUARD_FRACTION = 0.8
# A v1 cgroup without a limit reports a page-rounded 2**63 - 1; anything above this is "no limit".
_UNLIMITED = 1 << 60


def _cgroup_path(cgroup_text: str, controller: str | None) -> str | None:
    """The process's cgroup path: the v2 line (`0::/path`) when `controller` is None, else the v1
    line that lists `controller`."""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if controller is None and parts[0] == "0" and parts[1] == "":
            return parts[2]
        if controller is not None and controller in parts[1].split(","):
            return parts[2]
    return None


def _mounts(mountinfo_text: str) -> list[tuple[str, str, str, str]]:
    """(root, mount point, fs type, super options) of each mount in /proc/self/mountinfo."""
    out = []
    for line in mountinfo_text.splitlines():
        pre, sep, post = line.partition(" - ")
        f, p = pre.split(), post.split()
        if sep and len(f) >= 5 and len(p) >= 3:
            out.append((f[3], f[4], p[0], p[2]))
    return out


def limit_files(mountinfo_text: str, cgroup_text: str) -> list[Path]:
    """Where this process's memory limit may be read, best first: the v2 `memory.max` of its cgroup
    on each cgroup2 mount, then the v1 memory controller's `memory.limit_in_bytes`."""
    out: list[Path] = []
    mounts = _mounts(mountinfo_text)
    for kind, controller, name in (("cgroup2", None, "memory.max"), ("cgroup", "memory", "memory.limit_in_bytes")):
        path = _cgroup_path(cgroup_text, controller)
        if path is None:
            continue
        for root, point, fstype, opts in mounts:
            if fstype != kind or (controller and controller not in opts.split(",")):
                continue
            # Inside a container the mount's root is the container's own cgroup ("/" after a
            # cgroup namespace): the path is relative to it.
            rel = path[len(root):] if root != "/" and path.startswith(root) else path
            out.append(Path(point) / rel.lstrip("/") / name)
            out.append(Path(point) / name)          # a namespaced mount whose root is the cgroup itself
    return out


def parse_limit(text: str) -> int | None:
    """Bytes, or None for no limit ("max", or v1's near-2**63)."""
    text = text.strip()
    if not text or text == "max":
        return None
    v = int(text)
    return None if v <= 0 or v >= _UNLIMITED else v


def read_limit(files: list[Path]) -> tuple[int | None, Path | None]:
    """The first readable limit among `files` (and where it was read); (None, None) when none is."""
    for f in files:
        try:
            return parse_limit(f.read_text()), f
        except (OSError, ValueError):
            continue
    return None, None


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class MemoryGuard:
    """`over()`: whether usage has reached `fraction` of `limit` bytes (never, without a limit or with
    fraction 0). `usage` is injected (the process's RSS in production)."""

    limit: int | None
    fraction: float = MEMORY_GUARD_FRACTION
    usage: Callable[[], int] = _rss
    source: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"memory guard: fraction {self.fraction} is not within 0..1")

    @property
    def threshold(self) -> int | None:
        return int(self.limit * self.fraction) if self.limit and self.fraction else None

    def over(self) -> int | None:
        """The usage in bytes when at or over the threshold, else None."""
        t = self.threshold
        if t is None:
            return None
        used = self.usage()
        return used if used >= t else None

    @classmethod
    def from_proc(cls, fraction: float, proc: Path = Path("/proc/self"),
                  usage: Callable[[], int] = _rss) -> MemoryGuard:
        """The guard for this process's cgroup (read once: a pod's limit does not change under it)."""
        try:
            files = limit_files((proc / "mountinfo").read_text(), (proc / "cgroup").read_text())
        except OSError:
            files = []
        limit, where = read_limit(files)
        return cls(limit, fraction, usage, str(where or ""))
