"""A snapshot of the host state a lab may touch, to prove `lab down` leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ambit import cgroups


def _bpftool(kind: str) -> set[str]:
    p = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True)
    if p.returncode != 0 or not p.stdout.strip():
        return set()
    out = set()
    for o in json.loads(p.stdout):
        name = o.get("name") or ""
        if name.startswith("ambit"):
            out.add(f"{kind}:{name}:{o.get('id')}")
        if kind == "link":
            out.add(f"link:{o.get('id')}:{o.get('type')}:{o.get('prog_id')}")
    return out


def _walk(root: Path, depth: int) -> set[str]:
    out: set[str] = set()
    if not root.exists():
        return out
    base = len(root.parts)
    for d, dirs, files in os.walk(root):
        if len(Path(d).parts) - base >= depth:
            dirs[:] = []
        out.add(d)
        out.update(os.path.join(d, f) for f in files if root == Path("/sys/fs/bpf") or root.name == "netns")
    return out


def snapshot(markers: tuple[str, ...] = ("ambit",)) -> dict[str, set[str]]:
    cg2 = cgroups.find_cgroup2_mount()
    procs = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cg = Path(f"/proc/{pid}/cgroup").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            continue  # already dead, waiting for init to reap it
        if any(m in cg for m in markers):
            procs.add(f"{pid}:{cg.strip()}")
    return {
        "netns": set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set(),
        "links": set(subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.split("\n")),
        "etc_netns": _walk(Path("/etc/netns"), 2),
        "cgroups": {d for d in _walk(cg2, 3) if any(m in d for m in markers)},
        "bpffs": _walk(Path("/sys/fs/bpf"), 6),
        "bpf_progs": _bpftool("prog"),
        "bpf_maps": _bpftool("map"),
        "bpf_links": {x for x in _bpftool("link") if "ambit" in x},
        "processes": procs,
    }


def _strip_counters(links: set[str]) -> set[str]:
    # `ip -o link` lines are stable apart from nothing we care about; compare interface names.
    return {ln.split(":")[1].strip() for ln in links if ln.count(":") >= 2}


def diff(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, set[str]]:
    """What `after` has that `before` did not (leftovers)."""
    out = {}
    for k in before:
        a, b = after[k], before[k]
        if k == "links":
            a, b = _strip_counters(a), _strip_counters(b)
        extra = a - b
        if extra:
            out[k] = extra
    return out
