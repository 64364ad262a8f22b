"""CPU time and memory of proxies: cgroup cpu.stat, /proc/<pid>/stat and status.

ztunnel runs in a cgroup of its own (with any worker processes it forks), so its CPU time is that
cgroup's `usage_usec` and its memory the sum of its processes' RSS. RSS counts the pages of shared
libraries (grpc, cryptography, libpython) in full although, in the lab, the agent and controller map
the same files; that is the honest figure for a ztunnel deployed in a container of its own (nobody
shares its libraries there), and it is what Istio's figure is. PSS (shared pages divided among the
processes mapping them) and anonymous memory (heap, Python objects, stacks: what grows with
connections) are recorded next to it, from /proc/<pid>/smaps_rollup. The tunnels (stunnel, haproxy)
share their pods' cgroups, so they are measured by pid instead. The parsers are pure; the readers
are one-liners around them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ambit import cgroups

CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_cpu_stat(text: str) -> float:
    """CPU seconds from a cgroup v2 cpu.stat."""
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == "usage_usec":
            return int(v) / 1e6
    raise ValueError("cpu.stat: no usage_usec line")


def parse_proc_stat_cpu(text: str, clk_tck: int = CLK_TCK) -> float:
    """utime + stime (all threads) in seconds from /proc/<pid>/stat."""
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    rest = text[text.rindex(")") + 2:].split()
    utime, stime = int(rest[11]), int(rest[12])      # fields 14 and 15 of proc(5)
    return (utime + stime) / clk_tck


def parse_vmrss_kb(text: str) -> int:
    """VmRSS in kB from /proc/<pid>/status (0 for a kernel thread or a zombie, which have none)."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


SMAPS_KEYS = {"Rss": "rss", "Pss": "pss", "Anonymous": "anon"}


def parse_smaps_rollup_kb(text: str) -> dict[str, int]:
    """{"rss", "pss", "anon"} in kB from /proc/<pid>/smaps_rollup (zeros for a kernel thread)."""
    out = dict.fromkeys(SMAPS_KEYS.values(), 0)
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in SMAPS_KEYS:
            out[SMAPS_KEYS[key]] = int(rest.split()[0])
    return out


def pids_memory_mb(pids: Iterable[int]) -> dict[str, float]:
    """RSS, PSS and anonymous memory of `pids`, summed, in MB."""
    total = dict.fromkeys(SMAPS_KEYS.values(), 0)
    for pid in pids:
        try:
            one = parse_smaps_rollup_kb(Path(f"/proc/{pid}/smaps_rollup").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for k, v in one.items():
            total[k] += v
    return {k: round(v / 1024.0, 1) for k, v in total.items()}


def cgroup_memory_mb(cg: Path) -> dict[str, float]:
    return pids_memory_mb(cgroups.pids(cg))


def cgroup_cpu_seconds(cg: Path) -> float:
    return parse_cpu_stat((cg / "cpu.stat").read_text())


def pids_cpu_seconds(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += parse_proc_stat_cpu(Path(f"/proc/{pid}/stat").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def pids_rss_mb(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += parse_vmrss_kb(Path(f"/proc/{pid}/status").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024.0


def cgroup_rss_mb(cg: Path) -> float:
    return pids_rss_mb(cgroups.pids(cg))


def children(pid: int) -> list[int]:
    """`pid`'s child processes (every thread's list: a child belongs to the thread that forked it)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for t in tasks:
        try:
            out += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out
