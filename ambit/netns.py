"""Network-namespace helpers built on setns(2).

Python 3.11 has no os.setns, so we call libc through ctypes. setns is per *thread*: code that
enters a pod's netns to create a socket must run on one thread and come back before yielding.
Sockets keep the netns they were created in, which is how ztunnel listens inside each pod.
We never use `ip netns exec` for our own daemons: it remounts /sys, which hides the cgroup and
bpf filesystems they need.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/var/run/netns")
SO_NETNS_COOKIE = 71

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(target: str | Path | int) -> Iterator[None]:
    """Run the body with this thread inside another netns, then come back.

    `target` is a netns name (under /var/run/netns), a path, or an open fd.
    """
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    own_fd = None
    try:
        if isinstance(target, int):
            fd = target
        else:
            p = Path(target)
            if not p.is_absolute():
                p = netns_path(str(target))
            own_fd = fd = os.open(p, os.O_RDONLY)
        setns(fd)
        try:
            yield
        finally:
            setns(orig)
    finally:
        os.close(orig)
        if own_fd is not None:
            os.close(own_fd)


def netns_cookie(target: str | Path | int | None = None) -> int:
    """The kernel's 64-bit cookie for a netns: what bpf_get_netns_cookie() returns there."""
    ctx = entered(target) if target is not None else contextlib.nullcontext()
    with ctx:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
        finally:
            s.close()
    return struct.unpack("=Q", raw)[0]


_home = threading.local()


def socket_at(fd: int, family: int = socket.AF_INET, type_: int = socket.SOCK_STREAM,
              proto: int = socket.IPPROTO_TCP) -> socket.socket:
    """A socket in the netns open at `fd`, made from this thread's home netns and back to it.

    The home netns is the one the thread was in at its first call, its fd kept open for the
    thread's life: ztunnel makes one socket in a pod's netns for every connection it delivers,
    and opening and closing /proc/thread-self/ns/net for each was a third of the cost (17.5 →
    11 µs per socket here; docs/performance.md, §72). So, unlike `entered`, this must not be called
    from inside `entered()`: it would come back to the home netns, not to the one entered."""
    home = getattr(_home, "fd", None)
    if home is None:
        home = _home.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    setns(fd)
    try:
        return socket.socket(family, type_, proto)
    finally:
        setns(home)


def socket_in(target: str | Path | int, family: int = socket.AF_INET,
              type_: int = socket.SOCK_STREAM, proto: int = socket.IPPROTO_TCP) -> socket.socket:
    """Create a socket that lives in another netns. proto=IPPROTO_TCP so asyncio sets TCP_NODELAY."""
    with entered(target):
        return socket.socket(family, type_, proto)


def preexec_enter(netns: str | Path | None, cgroup: Path | None):
    """A preexec_fn for subprocess: join the cgroup first, then the netns (setns keeps /sys)."""
    def _fn() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")
        if netns is not None:
            p = Path(netns)
            if not p.is_absolute():
                p = netns_path(str(netns))
            fd = os.open(p, os.O_RDONLY)
            setns(fd)
            os.close(fd)
    return _fn
