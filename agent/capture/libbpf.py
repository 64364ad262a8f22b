"""Minimal cffi (ABI mode) bindings to the few libbpf calls bcc does not wrap.

bcc 0.26 loads programs and creates maps, but it only knows the legacy BPF_PROG_ATTACH, whose
attachments outlive the agent anonymously. Ambit attaches everything through *bpf_link*s instead:
a link can be pinned in bpffs (so capture survives an agent restart), atomically switched to a
freshly loaded program (`bpf_link_update`, so a restart has no capture gap and leaves no duplicate
programs), and disappears with its last pin/fd (so nothing stays behind after an uninstall).

Every wrapper raises `LibbpfError` (an OSError) naming the call and the object it was about.
libbpf >= 1.0 returns -errno and also sets errno; we use the return value.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

import cffi

_CDEF = """
int bpf_link_create(int prog_fd, int target_fd, int attach_type, const void *opts);
int bpf_link_update(int link_fd, int new_prog_fd, const void *opts);
int bpf_link_detach(int link_fd);
int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, unsigned int *info_len);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, unsigned long long flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
"""

ffi = cffi.FFI()
ffi.cdef(_CDEF)
_lib = None

# enum bpf_attach_type values used by Ambit (uapi/linux/bpf.h; stable ABI numbers).
CGROUP_SOCK_OPS = 3
CGROUP_INET4_BIND = 8
CGROUP_INET6_BIND = 9
CGROUP_INET4_CONNECT = 10
CGROUP_INET6_CONNECT = 11
CGROUP_UDP4_SENDMSG = 14
CGROUP_UDP6_SENDMSG = 15
CGROUP_UDP4_RECVMSG = 19
CGROUP_UDP6_RECVMSG = 20
CGROUP_GETSOCKOPT = 21
CGROUP_INET4_GETPEERNAME = 29
TCX_INGRESS = 46
TCX_EGRESS = 47

# enum bpf_link_type
LINK_TYPE_CGROUP = 3
LINK_TYPE_TCX = 11


class LibbpfError(OSError):
    """A libbpf call failed; `errno` is set and the message names the call and its object."""


def lib():
    """Open libbpf.so.1 once (lazily, so importing this module never fails on a host without it)."""
    global _lib
    if _lib is None:
        _lib = ffi.dlopen("libbpf.so.1")
    return _lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret
        raise LibbpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def link_create(prog_fd: int, target_fd: int, attach_type: int, what: str = "") -> int:
    """BPF_LINK_CREATE: for cgroup hooks target_fd is a cgroup dir fd; for tcx it is an ifindex
    resolved in the *calling thread's* netns. Returns the link fd (the caller owns it)."""
    return _check(lib().bpf_link_create(prog_fd, target_fd, attach_type, ffi.NULL),
                  f"bpf_link_create({what or attach_type})")


def link_update(link_fd: int, new_prog_fd: int, what: str = "") -> None:
    """Atomically make an existing link run another program of the same type and attach type."""
    _check(lib().bpf_link_update(link_fd, new_prog_fd, ffi.NULL), f"bpf_link_update({what})")


def link_detach(link_fd: int, what: str = "") -> None:
    """Force-detach a link even if other fds or pins still reference it (kernel 5.9+)."""
    _check(lib().bpf_link_detach(link_fd), f"bpf_link_detach({what})")


def obj_pin(fd: int, path: str | os.PathLike) -> None:
    _check(lib().bpf_obj_pin(fd, os.fsencode(path)), f"bpf_obj_pin({path})")


def obj_get(path: str | os.PathLike) -> int:
    """Open a pinned object; the caller owns (and must close) the returned fd."""
    return _check(lib().bpf_obj_get(os.fsencode(path)), f"bpf_obj_get({path})")


@dataclass(frozen=True)
class LinkInfo:
    """The parts of struct bpf_link_info that Ambit needs."""

    type: int
    id: int
    prog_id: int
    cgroup_id: int = 0       # cgroup links
    attach_type: int = 0     # cgroup and tcx links
    ifindex: int = 0         # tcx links


def link_info(link_fd: int) -> LinkInfo:
    # struct bpf_link_info: u32 type, id, prog_id; union (8-aligned, at offset 16):
    #   cgroup: u64 cgroup_id; u32 attach_type     tcx: u32 ifindex; u32 attach_type
    buf = ffi.new("unsigned char[]", 256)
    ln = ffi.new("unsigned int *", 256)
    _check(lib().bpf_obj_get_info_by_fd(link_fd, buf, ln), "bpf_obj_get_info_by_fd(link)")
    raw = bytes(ffi.buffer(buf, 256))
    typ, lid, prog_id = struct.unpack_from("=III", raw, 0)
    if typ == LINK_TYPE_CGROUP:
        cg, at = struct.unpack_from("=QI", raw, 16)
        return LinkInfo(typ, lid, prog_id, cgroup_id=cg, attach_type=at)
    if typ == LINK_TYPE_TCX:
        ifindex, at = struct.unpack_from("=II", raw, 16)
        return LinkInfo(typ, lid, prog_id, attach_type=at, ifindex=ifindex)
    return LinkInfo(typ, lid, prog_id)


def prog_id(prog_fd: int) -> int:
    """The kernel id of a loaded program (struct bpf_prog_info: u32 type, u32 id, ...)."""
    buf = ffi.new("unsigned char[]", 256)
    ln = ffi.new("unsigned int *", 256)
    _check(lib().bpf_obj_get_info_by_fd(prog_fd, buf, ln), "bpf_obj_get_info_by_fd(prog)")
    return struct.unpack_from("=II", bytes(ffi.buffer(buf, 8)))[1]


def map_id(map_fd: int) -> int:
    """The kernel id of a map (struct bpf_map_info: u32 type, u32 id, ...)."""
    return prog_id(map_fd)  # same leading layout


class RawMap:
    """Byte-level access to a pinned map, for code that must not compile anything (purge).

    Keys and values are `bytes` of the map's exact key/value size.
    """

    def __init__(self, fd: int, key_size: int, value_size: int, name: str) -> None:
        self.fd, self.key_size, self.value_size, self.name = fd, key_size, value_size, name

    @classmethod
    def open_pinned(cls, path: str | os.PathLike, key_size: int, value_size: int) -> RawMap:
        return cls(obj_get(path), key_size, value_size, os.fspath(path))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RawMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        cur = ffi.NULL
        nxt = ffi.new("unsigned char[]", self.key_size)
        while True:
            r = lib().bpf_map_get_next_key(self.fd, cur, nxt)
            if r == -errno.ENOENT:
                return out
            _check(r, f"bpf_map_get_next_key({self.name})")
            k = bytes(ffi.buffer(nxt, self.key_size))
            out.append(k)
            cur = ffi.new("unsigned char[]", k)

    def get(self, key: bytes) -> bytes | None:
        val = ffi.new("unsigned char[]", self.value_size)
        r = lib().bpf_map_lookup_elem(self.fd, key, val)
        if r == -errno.ENOENT:
            return None
        _check(r, f"bpf_map_lookup_elem({self.name})")
        return bytes(ffi.buffer(val, self.value_size))

    def put(self, key: bytes, value: bytes) -> None:
        _check(lib().bpf_map_update_elem(self.fd, key, value, 0), f"bpf_map_update_elem({self.name})")

    def delete(self, key: bytes) -> bool:
        r = lib().bpf_map_delete_elem(self.fd, key)
        if r == -errno.ENOENT:
            return False
        _check(r, f"bpf_map_delete_elem({self.name})")
        return True
