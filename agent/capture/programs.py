"""The capture programs: what each one is, where it attaches, and how bcc compiles them.

One bcc compilation covers every program. The node's map pin directory is passed to the C source
as AMBIT_PIN_DIR, so each node's programs use that node's pinned maps (several lab nodes share one
kernel), and a restarted agent's programs reuse the maps the old ones filled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.capture import libbpf
from agent.capture.constants import bpf_dir

HEADER = "ambit_maps.h"
SOURCES = ("outbound.c", "origdst.c", "inbound.c", "hostguard.c")

# enum bpf_prog_type
PROG_SCHED_CLS = 3
PROG_SOCK_OPS = 13
PROG_CGROUP_SOCK_ADDR = 18
PROG_CGROUP_SOCKOPT = 25

SCOPE_POD_CGROUP = "pod-cgroup"
SCOPE_POD_ETH0 = "pod-eth0"
SCOPE_ZTUNNEL = "ztunnel-cgroup"
SCOPE_HOST_VETH = "host-veth"   # the host-side peer of the pod's eth0, in the agent's (node) netns


@dataclass(frozen=True)
class Program:
    func: str              # C function == kernel program name (<= 15 chars, so bpftool shows it whole)
    pin: str               # link pin file name
    prog_type: int
    attach_type: int       # bpf_link attach type (also the expected attach type at load, if needed)
    expected_at_load: bool  # cgroup sock_addr/sockopt programs must be loaded with their attach type
    scope: str


PROGRAMS: tuple[Program, ...] = (
    Program("ambit_connect4", "connect4", PROG_CGROUP_SOCK_ADDR, libbpf.CGROUP_INET4_CONNECT, True, SCOPE_POD_CGROUP),
    Program("ambit_connect6", "connect6", PROG_CGROUP_SOCK_ADDR, libbpf.CGROUP_INET6_CONNECT, True, SCOPE_POD_CGROUP),
    Program("ambit_sendmsg4", "sendmsg4", PROG_CGROUP_SOCK_ADDR, libbpf.CGROUP_UDP4_SENDMSG, True, SCOPE_POD_CGROUP),
    Program("ambit_sendmsg6", "sendmsg6", PROG_CGROUP_SOCK_ADDR, libbpf.CGROUP_UDP6_SENDMSG, True, SCOPE_POD_CGROUP),
    Program("ambit_recvmsg4", "recvmsg4", PROG_CGROUP_SOCK_ADDR, libbpf.CGROUP_UDP4_RECVMSG, True, SCOPE_POD_CGROUP),
    Program("ambit_recvmsg6", "recvmsg6", PROG_CGROUP_SOCK_ADDR, libbpf.CGROUP_UDP6_RECVMSG, True, SCOPE_POD_CGROUP),
    Program("ambit_bind4", "bind4", PROG_CGROUP_SOCK_ADDR, libbpf.CGROUP_INET4_BIND, True, SCOPE_POD_CGROUP),
    Program("ambit_bind6", "bind6", PROG_CGROUP_SOCK_ADDR, libbpf.CGROUP_INET6_BIND, True, SCOPE_POD_CGROUP),
    Program("ambit_sockops", "sockops", PROG_SOCK_OPS, libbpf.CGROUP_SOCK_OPS, False, SCOPE_POD_CGROUP),
    Program("ambit_peername4", "peername4", PROG_CGROUP_SOCK_ADDR, libbpf.CGROUP_INET4_GETPEERNAME, True,
            SCOPE_POD_CGROUP),
    Program("ambit_tc_in", "tc_in", PROG_SCHED_CLS, libbpf.TCX_INGRESS, False, SCOPE_POD_ETH0),
    Program("ambit_tc_host", "tc_host", PROG_SCHED_CLS, libbpf.TCX_EGRESS, False, SCOPE_HOST_VETH),
    Program("ambit_origdst", "getsockopt", PROG_CGROUP_SOCKOPT, libbpf.CGROUP_GETSOCKOPT, True, SCOPE_ZTUNNEL),
)
BY_PIN = {p.pin: p for p in PROGRAMS}
POD_CGROUP_PROGRAMS = tuple(p for p in PROGRAMS if p.scope == SCOPE_POD_CGROUP)
TC_PROGRAM = BY_PIN["tc_in"]
HOST_GUARD_PROGRAM = BY_PIN["tc_host"]
ORIGDST_PROGRAM = BY_PIN["getsockopt"]


def source_text(src_dir: Path | None = None) -> str:
    """The header and sources as one text: bcc rewrites map calls (`m.lookup(...)`) only in the
    main file, not in #included files. The header's include guard makes the sources' own
    `#include "ambit_maps.h"` a no-op here, while each file still compiles on its own."""
    d = src_dir or bpf_dir()
    return "".join(f'#line 1 "{name}"\n' + (d / name).read_text() for name in (HEADER, *SOURCES))


def compile_module(maps_dir: Path, src_dir: Path | None = None):
    """Compile all programs with bcc; creates (or opens) the node's pinned maps.

    Programs are not loaded into the kernel yet: `load(module, program)` does that, so a mode
    that only needs the maps (iptables) loads none.
    """
    from bcc import BPF  # imported late: only the engine needs bcc, ztunnel imports constants

    d = src_dir or bpf_dir()
    path = str(maps_dir)
    if '"' in path or "\\" in path:
        raise ValueError(f"pin directory {path!r} cannot be used in C source")
    return BPF(text=source_text(d).encode(), cflags=[f"-I{d}", f'-DAMBIT_PIN_DIR="{path}"', "-Wno-unused-function"])


def load(module, program: Program) -> int:
    """Load one program into the kernel; returns its fd (owned by the bcc module)."""
    if program.expected_at_load:
        fn = module.load_func(program.func.encode(), program.prog_type, attach_type=program.attach_type)
    else:
        fn = module.load_func(program.func.encode(), program.prog_type)
    return fn.fd
