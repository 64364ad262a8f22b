"""The bpffs layout of one node's capture state, and the pin-level operations on it.

    /sys/fs/bpf/ambit/<node>/maps/ambit_*            the node's maps (BPF_TABLE_PINNED)
    /sys/fs/bpf/ambit/<node>/pods/<pod-uid>/<prog>   one bpf_link per (pod, program)
    /sys/fs/bpf/ambit/<node>/ztunnel/<cgroup-id>/getsockopt
                                                     the SO_ORIGINAL_DST link on each ztunnel's cgroup
                                                     (agent/capture/ztunnels.py)

Programs themselves are never pinned: a program lives exactly as long as a link (or the agent's fd)
holds it, so removing the link pins is what makes Ambit disappear from `bpftool prog`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from agent.capture import libbpf

log = logging.getLogger(__name__)

BPF_FS_TYPE = "bpf"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_name(kind: str, value: str) -> str:
    """Node names and pod uids become path components (and a C string): keep them plain."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{kind} {value!r} is not usable: use 1-63 characters from [A-Za-z0-9._-]")
    return value


@dataclass(frozen=True)
class PinLayout:
    root: Path   # /sys/fs/bpf/ambit/<node>

    @property
    def maps(self) -> Path:
        return self.root / "maps"

    @property
    def pods(self) -> Path:
        return self.root / "pods"

    @property
    def ztunnel(self) -> Path:
        return self.root / "ztunnel"

    def pod(self, uid: str) -> Path:
        return self.pods / check_name("pod uid", uid)

    def pod_uids(self) -> list[str]:
        if not self.pods.is_dir():
            return []
        return sorted(p.name for p in self.pods.iterdir() if p.is_dir())


def _mount_fstype(path: Path, mountinfo: str) -> str | None:
    """The filesystem type of the mount that contains `path`."""
    best, best_type = "", None
    target = str(path)
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mnt = fields[4].replace("\\040", " ")
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, best_type = mnt, right.split()[0]
    return best_type


def ensure_bpffs(pin_base: Path) -> None:
    """Make sure `pin_base` lives on a bpf filesystem, mounting one at /sys/fs/bpf if none is.

    Hosts without systemd (and some containers) do not mount bpffs; pins need it.
    """
    mountinfo = Path("/proc/self/mountinfo").read_text()
    if _mount_fstype(pin_base, mountinfo) == BPF_FS_TYPE:
        return
    bpffs = Path("/sys/fs/bpf")
    if _mount_fstype(bpffs, mountinfo) != BPF_FS_TYPE:
        import subprocess

        r = subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError(f"cannot mount bpffs on {bpffs}: {r.stderr.strip()}")
    if _mount_fstype(pin_base, Path("/proc/self/mountinfo").read_text()) != BPF_FS_TYPE:
        raise OSError(f"pin directory {pin_base} is not on a bpf filesystem (mount one, or use /sys/fs/bpf/...)")


def remove_link_pin(path: Path) -> None:
    """Detach a pinned link for good and remove its pin.

    bpf_link_detach cuts the attachment even if someone (a crashed agent's leftover fd, a bpftool
    session) still holds a reference; unlinking the pin then frees the link.
    """
    try:
        fd = libbpf.obj_get(path)
    except libbpf.LibbpfError as e:
        if e.errno == errno.ENOENT:
            return
        fd = -1
    if fd >= 0:
        try:
            with contextlib.suppress(libbpf.LibbpfError):
                libbpf.link_detach(fd, str(path))
        finally:
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def update_link(pin: Path, prog_fd: int, cgroup_id: int | None = None) -> bool:
    """Point a pinned link at `prog_fd` (bpf_link_update: atomic, no capture gap). A defunct link
    (its cgroup or device is gone), or one on another cgroup than `cgroup_id`, is removed instead.
    Returns whether the link is live."""
    fd = libbpf.obj_get(pin)
    try:
        info = libbpf.link_info(fd)
        if cgroup_id is None or info.cgroup_id == cgroup_id:
            if info.prog_id != libbpf.prog_id(prog_fd):
                libbpf.link_update(fd, prog_fd, str(pin))
            return True
    except libbpf.LibbpfError as e:
        if e.errno not in (errno.ENOLINK, errno.ENOENT, errno.EINVAL):
            raise
        log.warning("capture link %s is defunct (%s): removing it", pin, e)
    finally:
        os.close(fd)
    remove_link_pin(pin)
    return False


def remove_tree(root: Path) -> None:
    """Remove a pin directory: links are detached first, then every other pin is unlinked."""
    if not root.exists():
        return
    for d, _dirs, files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        for f in files:
            p = Path(d, f)
            if p.parent.name != "maps":
                remove_link_pin(p)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(d)


def rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        path.rmdir()
