"""Byte layouts of Ambit's BPF maps, mirrored from bpf/ambit_maps.h.

Userspace writes map keys and values as packed bytes (`struct`), not through bcc's generated
ctypes classes: the same code then serves the running engine and `purge`, which must work without
compiling anything. Sizes are checked against the kernel's map sizes when maps are opened.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from agent.capture.constants import bpf_dir

DIR_OUT = 1
DIR_IN = 2
DIR_PROBE = 3           # kubelet probe ports: node-originated packets pass uncaptured
POD_OUTBOUND = 0x1
POD_INBOUND = 0x2
POD_NODE_GUARD = 0x4    # ambit_tc_host guards the pod's host-side veth (else: no node exemption)
POD_DNS = 0x8           # DNS capture: port-53 queries go to ztunnel's DNS proxy (127.0.0.1:15053)
POD_INBOUND_BYPASS = 0x10  # ingress mode: plaintext inbound goes to the app; ztunnel's ports stay guarded
MODE_EBPF = 1
MODE_IPTABLES = 2
TC_NONE = 0
TC_TCX = 1
TC_CLSACT = 2

UID_LEN = 64
PATH_LEN = 256

POD = struct.Struct("=4s4sII")           # struct ambit_pod: pod_ip, node_ip (network order), flags, pad
DST = struct.Struct("=4s2sH")            # struct ambit_dst: ip, port (network order), pad
PORT_KEY = struct.Struct("=QHHI")        # struct ambit_port_key
XPORT_KEY = struct.Struct("=QHBBI")      # struct ambit_xport_key
XCIDR_KEY = struct.Struct("=III4s")      # struct ambit_xcidr_key: prefixlen, netns lo/hi, ip
META_KEY = struct.Struct(f"={UID_LEN}s")
META = struct.Struct(f"=QIIII{PATH_LEN}s{PATH_LEN}s")  # netns, pod_ip, node_ip (host int), mode, tc_mode, paths
ZTUNNEL = struct.Struct(f"={PATH_LEN}s")  # struct ambit_ztunnel: cgroup path
U64 = struct.Struct("=Q")
U32_NET = struct.Struct("=4s")
U8 = struct.Struct("=B")


@dataclass(frozen=True)
class MapSpec:
    name: str
    key_size: int
    value_size: int
    percpu: bool = False


MAPS: dict[str, MapSpec] = {m.name: m for m in [
    MapSpec("ambit_pods", U64.size, POD.size),
    MapSpec("ambit_pod_ips", U32_NET.size, U64.size),
    MapSpec("ambit_ck_dst", U64.size, DST.size),
    MapSpec("ambit_port_dst", PORT_KEY.size, DST.size),
    MapSpec("ambit_xports", XPORT_KEY.size, U8.size),
    MapSpec("ambit_xcidr", XCIDR_KEY.size, U8.size),
    MapSpec("ambit_stats", 4, 8, percpu=True),
    MapSpec("ambit_meta", META_KEY.size, META.size),
    MapSpec("ambit_ztunnels", U64.size, ZTUNNEL.size),
]}


def ip4(addr: str) -> bytes:
    """An IPv4 address as 4 network-order bytes (what BPF compares against)."""
    return ipaddress.IPv4Address(addr).packed


def pod_value(pod_ip: str, node_ip: str, flags: int) -> bytes:
    return POD.pack(ip4(pod_ip), ip4(node_ip), flags, 0)


def xport_key(netns: int, port: int, direction: int) -> bytes:
    return XPORT_KEY.pack(netns, port, direction, 0, 0)


def xcidr_key(netns: int, cidr: str) -> bytes:
    net = ipaddress.IPv4Network(cidr, strict=False)
    return XCIDR_KEY.pack(64 + net.prefixlen, netns & 0xFFFFFFFF, netns >> 32, net.network_address.packed)


def xcidr_netns(key: bytes) -> int:
    _, lo, hi, _ = XCIDR_KEY.unpack(key)
    return lo | (hi << 32)


def port_key(netns: int, port: int) -> bytes:
    return PORT_KEY.pack(netns, port, 0, 0)


@dataclass(frozen=True)
class Meta:
    """What an agent must remember about an enrolled pod (the ambit_meta map's value)."""

    uid: str
    netns: int
    pod_ip: str
    node_ip: str
    mode: int
    tc_mode: int
    netns_path: str
    cgroup_path: str

    def key(self) -> bytes:
        return meta_key(self.uid)

    def pack(self) -> bytes:
        return META.pack(self.netns, int(ipaddress.IPv4Address(self.pod_ip)), int(ipaddress.IPv4Address(self.node_ip)),
                         self.mode, self.tc_mode, _cstr(self.netns_path, "netns_path"),
                         _cstr(self.cgroup_path, "cgroup_path"))

    @classmethod
    def unpack(cls, key: bytes, raw: bytes) -> Meta:
        netns, pod_ip, node_ip, mode, tc_mode, nsp, cgp = META.unpack(raw)
        return cls(uid=key.rstrip(b"\0").decode(), netns=netns, pod_ip=str(ipaddress.IPv4Address(pod_ip)),
                   node_ip=str(ipaddress.IPv4Address(node_ip)), mode=mode, tc_mode=tc_mode,
                   netns_path=nsp.rstrip(b"\0").decode(), cgroup_path=cgp.rstrip(b"\0").decode())


def ztunnel_value(cgroup_path: str) -> bytes:
    return ZTUNNEL.pack(_cstr(cgroup_path, "ztunnel cgroup path"))


def ztunnel_path(raw: bytes) -> str:
    return ZTUNNEL.unpack(raw)[0].rstrip(b"\0").decode()


def meta_key(uid: str) -> bytes:
    return META_KEY.pack(_cstr(uid, "uid", UID_LEN))


def _cstr(s: str, field: str, size: int = PATH_LEN) -> bytes:
    b = s.encode()
    if len(b) >= size:
        raise ValueError(f"{field} {s!r} is too long: at most {size - 1} bytes")
    return b


@cache
def stat_names(header: Path | None = None) -> tuple[str, ...]:
    """Counter names, index order, parsed from `enum ambit_stat` in the header (one source)."""
    text = (header or bpf_dir() / "ambit_maps.h").read_text()
    body = re.search(r"enum ambit_stat \{(.*?)\};", text, re.S)
    if not body:
        raise RuntimeError("ambit_maps.h: enum ambit_stat not found")
    pairs = re.findall(r"AMBIT_STAT_(\w+)\s*=\s*(\d+)", body.group(1))
    names = {int(v): n.lower() for n, v in pairs if n != "MAX"}
    return tuple(names[i] for i in range(len(names)))


@cache
def possible_cpus() -> int:
    """Per-CPU map values hold one slot per *possible* CPU."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def sum_percpu_u64(raw: bytes) -> int:
    return sum(v for (v,) in struct.iter_unpack("=Q", raw))
