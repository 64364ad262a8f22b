"""The node's ztunnels, as the capture layer knows them: a small pinned set, one entry per cgroup.

Why a set and not one cgroup: a surge roll of the node DaemonSet (docs/operations.md) runs the old
and the new node pod side by side, each with its ztunnel in a cgroup of its own. Both ztunnels
listen in every pod netns (SO_REUSEPORT), so both must be exempt from capture and both must get
SO_ORIGINAL_DST answers on the connections they accept. The set lives in the pinned map
`ambit_ztunnels` (cgroup id -> cgroup path), so it is shared by the two agents and outlives them:

* each agent adds its own ztunnel's cgroup when it loads (`register`);
* eBPF mode: every live entry has a getsockopt link (`ambit_origdst`), pinned at
  `ztunnel/<cgroup id>/getsockopt`; iptables mode: every live entry is a `-m cgroup --path`
  RETURN rule in each pod netns (`live_paths`);
* an entry whose cgroup is gone (its pod was deleted, or the lab removed it after the roll) is
  dropped with its link (`sync`, which the agent runs on load and every few seconds). An entry is
  never dropped while its cgroup exists: connections the old ztunnel accepted keep its cgroup, and
  their SO_ORIGINAL_DST comes from that cgroup's link.

The agents' lock (`NodeLock`) serialises every change, across processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Any

from agent.capture import libbpf, maps, programs
from agent.capture.pins import PinLayout, remove_link_pin, remove_tree, update_link

log = logging.getLogger(__name__)

LEGACY_PIN = "getsockopt"     # before the set: one link at ztunnel/getsockopt


def cgroup_id(path: Path) -> int:
    """cgroup v2: a cgroup's id is its directory's inode number."""
    return os.stat(path).st_ino


def _alive(cg_id: int, path: str) -> bool:
    try:
        return cgroup_id(Path(path)) == cg_id
    except OSError:
        return False


def entries(ztunnels: libbpf.RawMap) -> dict[int, str]:
    out = {}
    for k in ztunnels.keys():
        raw = ztunnels.get(k)
        if raw is not None:
            out[maps.U64.unpack(k)[0]] = maps.ztunnel_path(raw)
    return out


def register(ztunnels: libbpf.RawMap, cgroup: Path) -> int:
    """Add a ztunnel cgroup to the set (idempotent); returns its id."""
    cg_id = cgroup_id(cgroup)
    ztunnels.put(maps.U64.pack(cg_id), maps.ztunnel_value(str(cgroup)))
    return cg_id


def live_paths(ztunnels: libbpf.RawMap) -> list[str]:
    """The cgroup paths of every ztunnel whose cgroup still exists (for iptables' RETURN rules)."""
    return sorted(p for i, p in entries(ztunnels).items() if _alive(i, p))


def sync(ztunnels: libbpf.RawMap, layout: PinLayout, prog_fd: int | None,
         create_link: Any) -> list[str]:
    """Make the links match the set: drop entries (and links) of vanished cgroups; with `prog_fd`
    (eBPF mode) give each live entry a getsockopt link running that program. `create_link(cgroup,
    pin)` attaches and pins a new link. Returns the live cgroup paths."""
    _adopt_legacy_pin(layout)
    live = {}
    for cg_id, path in entries(ztunnels).items():
        if _alive(cg_id, path):
            live[cg_id] = path
            continue
        log.info("ztunnel cgroup %s is gone: dropping it from the capture exemptions", path)
        ztunnels.delete(maps.U64.pack(cg_id))
    if layout.ztunnel.is_dir():
        for d in layout.ztunnel.iterdir():
            if not (d.is_dir() and d.name.isdigit() and int(d.name) in live):
                remove_tree(d) if d.is_dir() else remove_link_pin(d)
    if prog_fd is not None:
        for cg_id, path in live.items():
            pin = layout.ztunnel / str(cg_id) / programs.ORIGDST_PROGRAM.pin
            if not _update(pin, cg_id, prog_fd):
                pin.parent.mkdir(parents=True, exist_ok=True)
                create_link(Path(path), pin)
    return sorted(live.values())


def _update(pin: Path, cg_id: int, prog_fd: int) -> bool:
    """Point an existing link on cgroup `cg_id` at `prog_fd`; False if there is none (or it is
    for another cgroup, or defunct: then it is removed)."""
    return pin.exists() and update_link(pin, prog_fd, cg_id)


def _adopt_legacy_pin(layout: PinLayout) -> None:
    """An agent from before the set pinned one link at ztunnel/getsockopt: move it under its
    cgroup id (pin the same link again, then drop the old name), so it is neither lost nor doubled."""
    old = layout.ztunnel / LEGACY_PIN
    if not old.is_file():
        return
    fd = libbpf.obj_get(old)
    try:
        cg = libbpf.link_info(fd).cgroup_id
        if cg:
            new = layout.ztunnel / str(cg) / programs.ORIGDST_PROGRAM.pin
            new.parent.mkdir(parents=True, exist_ok=True)
            if not new.exists():
                libbpf.obj_pin(fd, new)
    except libbpf.LibbpfError as e:
        log.warning("dropping the old ztunnel getsockopt link %s: %s", old, e)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        old.unlink()


class NodeLock:
    """One node's capture state is changed by one agent at a time, across processes: during a
    surge roll two agents (old and new node pod) share the pins. A thread lock inside the process,
    and flock(2) on the node's pin directory between processes; re-entrant within a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._thread = threading.RLock()
        self._depth = 0
        self._fd = -1

    def __enter__(self) -> NodeLock:
        self._thread.acquire()
        try:
            if self._depth == 0 and self.directory.is_dir():   # no directory: no shared state yet
                self._fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._thread.release()
            raise
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd >= 0:
            os.close(self._fd)      # releases the flock
            self._fd = -1
        self._thread.release()
