"""A one-pod netns/cgroup lab for the DNS capture tests, and the DNS servers they talk to.

    <lab>-dnsc-node   br0 10.78.0.1/24: "the node", and the resolver outside the pod (port 53)
      └─ veth <-> <lab>-dnsc-pod   eth0 10.78.0.11/24   cgroup <cg2>/<lab>-dnsc/pod
    cgroups <cg2>/<lab>-dnsc/zt (the ztunnel's: never captured)

<lab> is $AMBIT_LAB_NAME, so two checkouts' runs never share a name. The DNS servers are threads of
the test process (root cgroup: outside the pod's), with sockets made inside a netns: an "upstream"
resolver on the node (answers UPSTREAM_ANSWER) and the test's stand-in for ztunnel's DNS proxy on
127.0.0.1:15053 in the pod netns (answers PROXY_ANSWER), which records the peers it saw.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.rdatatype
import dns.rrset

from ambit import cgroups
from ambit.netns import netns_path, preexec_enter, socket_in
from tests.lab.capture_fixtures import build_bridged_pods, sh

LAB = os.environ.get("AMBIT_LAB_NAME", "ambit")
NS_NODE, NS_POD = f"{LAB}-dnsc-node", f"{LAB}-dnsc-pod"
NODE_IP, POD_IP = "10.78.0.1", "10.78.0.11"
ENGINE_NODE = f"{LAB}-dnsc"              # the engine's node name: its pins under /sys/fs/bpf/ambit
PIN_BASE = Path("/sys/fs/bpf/ambit")
UPSTREAM_ANSWER = "192.0.2.1"
PROXY_ANSWER = "192.0.2.2"
LOCAL_ANSWER = "192.0.2.3"
NAME = "web.example."


@dataclass
class DnsLab:
    cg_root: Path

    node_ns: str = str(netns_path(NS_NODE))
    pod_ns: str = str(netns_path(NS_POD))

    @property
    def pod_cg(self) -> Path:
        return self.cg_root / "pod"

    @property
    def zt_cg(self) -> Path:
        return self.cg_root / "zt"

    @classmethod
    def create(cls) -> DnsLab:
        lab = cls(cgroups.find_cgroup2_mount() / f"{LAB}-dnsc")
        sweep()
        try:
            build_bridged_pods(NS_NODE, NODE_IP, ((NS_POD, "vpod", POD_IP),))
            for cg in (lab.pod_cg, lab.zt_cg):
                cgroups.create(cg)
        except BaseException:
            sweep()
            raise
        return lab

    def run(self, argv: list[str], cgroup: Path | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
        """Run a real client in the pod netns and `cgroup` (default: the pod's)."""
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=preexec_enter(self.pod_ns, cgroup or self.pod_cg))

    def dig(self, *args: str, cgroup: Path | None = None) -> str:
        """dig's whole output for NAME/A (+short: only the answer, or dig's complaints)."""
        r = self.run(["dig", "+short", "+time=1", "+tries=1", *args, NAME, "A"], cgroup)
        return (r.stdout + r.stderr).strip()


def sweep() -> None:
    """Remove everything this lab creates (idempotent; also after a killed run)."""
    from agent.capture import purge

    cg_root = cgroups.find_cgroup2_mount() / f"{LAB}-dnsc"
    with contextlib.suppress(Exception):
        cgroups.kill_all(cg_root)
    purge(PIN_BASE / ENGINE_NODE)
    for ns in (NS_POD, NS_NODE):
        if netns_path(ns).exists():
            sh("ip", "netns", "del", ns, check=False)
    cgroups.remove_tree(cg_root)
    conf = Path("/etc/netns") / NS_POD
    if conf.exists():
        for f in conf.iterdir():
            f.unlink()
        conf.rmdir()


def answer(query: bytes, address: str) -> bytes:
    """A real DNS response to `query`: one A record with `address`."""
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    for question in q.question:
        if question.rdtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text(question.name, 30, "IN", "A", address))
    return r.to_wire()


@dataclass
class DnsServer:
    """UDP and TCP DNS on (host, port) in a netns, answering every A query with `address`."""

    netns: str
    host: str
    port: int
    address: str
    peers: list[tuple[str, str, int]] = field(default_factory=list)   # (proto, ip, port) per query
    reuseport: bool = False     # SO_REUSEPORT, as ztunnel opens 127.0.0.1:15053 (ztunnel/pods.py)

    def __post_init__(self) -> None:
        self.udp = socket_in(self.netns, socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self.tcp = socket_in(self.netns)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuseport:
            for s in (self.udp, self.tcp):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self.udp.bind((self.host, self.port))
            self.tcp.bind((self.host, self.port))
        except OSError:
            self.udp.close()
            self.tcp.close()
            raise
        self.tcp.listen(16)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ)
        sel.register(self.tcp, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(0.1):
                with contextlib.suppress(OSError, dns.exception.DNSException):
                    if key.fileobj is self.udp:
                        data, peer = self.udp.recvfrom(4096)
                        self.peers.append(("udp", peer[0], peer[1]))
                        self.udp.sendto(answer(data, self.address), peer)
                    else:
                        self._tcp_one()

    def _tcp_one(self) -> None:
        c, peer = self.tcp.accept()
        self.peers.append(("tcp", peer[0], peer[1]))
        with c:
            c.settimeout(2)
            n = struct.unpack("!H", _read(c, 2))[0]
            out = answer(_read(c, n), self.address)
            c.sendall(struct.pack("!H", len(out)) + out)

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.udp.close()
        self.tcp.close()


def _read(c: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        if not chunk:
            raise OSError("short read")
        buf += chunk
    return buf
