"""A small netns/cgroup lab for the capture tests, and the real processes that run in it.

Topology (all in network namespaces; nothing in the host's):

    ambit-ct-node   br0 10.77.0.1/24 ("the node"; its IP is the kubelet-probe source)
      ├─ vp1 <-> ambit-ct-p1  eth0 10.77.0.11/24   cgroup <cg2>/ambit-test-capture/p1
      └─ vp2 <-> ambit-ct-p2  eth0 10.77.0.12/24   cgroup <cg2>/ambit-test-capture/p2
    ztunnel test double: a process in <cg2>/ambit-test-capture/zt with listeners inside a pod
    netns (127.0.0.1:15001, 0.0.0.0:15006, 0.0.0.0:15008), which reports what the kernel told it.

Run as a script, this file is also those processes (`ztunnel`, `client`, `client-loop`,
`engine`), so the tests exercise real sockets, real cgroups and the real kernel programs.
Names are fixed so that `sweep()` can remove what a killed test run left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ambit import cgroups  # noqa: E402
from ambit.netns import netns_path, preexec_enter, socket_in  # noqa: E402
from tests.support.wait import wait_for as _wait_for  # noqa: E402

NS_NODE, NS_P1, NS_P2 = "ambit-ct-node", "ambit-ct-p1", "ambit-ct-p2"
NODE_IP, P1_IP, P2_IP = "10.77.0.1", "10.77.0.11", "10.77.0.12"
CG_ROOT_NAME = "ambit-test-capture"
PIN_BASE = Path("/sys/fs/bpf/ambit")
NODE_NAMES = ("ambit-ct", "ambit-ct-b")   # the engines' node names (pin roots under PIN_BASE)
IP_TRANSPARENT = 19


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


@dataclass
class CaptureLab:
    cg_root: Path

    @property
    def p1_ns(self) -> str:
        return str(netns_path(NS_P1))

    @property
    def p2_ns(self) -> str:
        return str(netns_path(NS_P2))

    @property
    def node_ns(self) -> str:
        return str(netns_path(NS_NODE))

    @property
    def p1_cg(self) -> Path:
        return self.cg_root / "p1"

    @property
    def p2_cg(self) -> Path:
        return self.cg_root / "p2"

    @property
    def zt_cg(self) -> Path:
        return self.cg_root / "zt"

    @property
    def agent_cg(self) -> Path:
        """Where engine subprocesses run, so sweep() kills them even after a crashed test run."""
        return self.cg_root / "agent"

    @classmethod
    def create(cls) -> CaptureLab:
        lab = cls(cgroups.find_cgroup2_mount() / CG_ROOT_NAME)
        sweep()
        try:
            build_bridged_pods(NS_NODE, NODE_IP, ((NS_P1, "vp1", P1_IP), (NS_P2, "vp2", P2_IP)))
            for cg in (lab.p1_cg, lab.p2_cg, lab.zt_cg, lab.agent_cg):
                cgroups.create(cg)
        except BaseException:
            sweep()
            raise
        return lab


def build_bridged_pods(node_ns: str, node_ip: str, pods: tuple[tuple[str, str, str], ...]) -> None:
    """A "node" netns with br0 at node_ip/24 and, per (netns, host-side veth, ip), a pod netns whose
    eth0 is bridged there, with its default route via the node."""
    sh("ip", "netns", "add", node_ns)
    sh("ip", "-n", node_ns, "link", "set", "lo", "up")
    sh("ip", "-n", node_ns, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", node_ns, "addr", "add", f"{node_ip}/24", "dev", "br0")
    sh("ip", "-n", node_ns, "link", "set", "br0", "up")
    for ns, veth, ip in pods:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", node_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", node_ns, "link", "set", veth, "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", node_ip)


def sweep() -> None:
    """Remove everything this lab creates (idempotent; also cleans up after a killed run)."""
    from agent.capture import purge

    cg_root = cgroups.find_cgroup2_mount() / CG_ROOT_NAME
    with contextlib.suppress(Exception):
        cgroups.kill_all(cg_root)
    for node in NODE_NAMES:
        purge(PIN_BASE / node)
    for ns in (NS_P1, NS_P2, NS_NODE):
        if netns_path(ns).exists():
            sh("ip", "netns", "del", ns, check=False)
    cgroups.remove_tree(cg_root)


# ---- servers living in a netns (threads of the test process) -----------------------------------

class IdentityServer:
    """Accepts on (host, port) in a netns and answers one JSON line: who it is and what it saw."""

    def __init__(self, netns: str, host: str, port: int, who: str) -> None:
        self.who = who
        self.sock = socket_in(netns)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.accepted = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        while not self._stop.is_set():
            if not sel.select(0.1):
                continue
            try:
                c, peer = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with c:
                msg = {"who": self.who, "peer": list(peer[:2]), "local": list(c.getsockname()[:2]),
                       "mark": c.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)}
                with contextlib.suppress(OSError):
                    c.sendall(json.dumps(msg).encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


def read_json_line(sock: socket.socket) -> dict:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf) if buf.strip() else {}


def connect_from(netns: str, ip: str, port: int, timeout: float = 5.0, bind: tuple[str, int] | None = None,
                 mark: int | None = None, transparent: bool = False) -> dict:
    """Connect from a thread of the test process (root cgroup: never redirected) in `netns`."""
    s = socket_in(netns)
    try:
        s.settimeout(timeout)
        if transparent:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        if mark is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if bind:
            s.bind(bind)
        s.connect((ip, port))
        return {"local": list(s.getsockname()[:2]), "reply": read_json_line(s)}
    finally:
        s.close()


# ---- processes ---------------------------------------------------------------------------------

def python_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run_client(netns: str, cgroup: Path, ip: str, port: int, family: int = 4) -> dict:
    """One connect() from a process in (cgroup, netns): what a pod's app would do."""
    r = subprocess.run(python_cmd("client", ip, str(port), str(family)), capture_output=True, text=True,
                       preexec_fn=preexec_enter(netns, cgroup), env=_env(), timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"client failed: {r.stderr}")
    return json.loads(r.stdout)


class Proc:
    """A long-running helper process that prints one JSON line when ready."""

    def __init__(self, argv: list[str], netns: str | None, cgroup: Path | None) -> None:
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, preexec_fn=preexec_enter(netns, cgroup), env=_env())
        line = self.p.stdout.readline()
        if not line:
            err = self.p.stderr.read()
            self.p.wait()
            raise RuntimeError(f"{argv[2:]} failed to start: {err}")
        self.ready = json.loads(line)

    @property
    def pid(self) -> int:
        return self.p.pid

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def lines(self) -> list[dict]:
        """Stop the process (close stdin) and return the JSON lines it printed after 'ready'."""
        out, _ = self.p.communicate(input="", timeout=30)   # EOF on stdin: the helper exits
        return [json.loads(x) for x in out.splitlines() if x.strip()]


def start_ztunnel(lab: CaptureLab, netns: str) -> Proc:
    return Proc(python_cmd("ztunnel", netns), None, lab.zt_cg)


def start_engine(lab: CaptureLab, node: str, pods: list[dict], mode: str = "ebpf") -> Proc:
    """A CaptureEngine in its own process (an agent that the test can SIGKILL)."""
    return Proc(python_cmd("engine", node, str(lab.zt_cg), json.dumps(pods), "--mode", mode), None, lab.agent_cg)


# ---- script entry points (run inside the lab) ---------------------------------------------------

def _ztunnel_main(netns: str) -> None:
    from ambit.dataplane.origdst import original_dst
    from ambit.dataplane.ports import AMBIT_LISTENER_MARK

    listeners = {}
    for host, port, who in (("127.0.0.1", 15001, "ztunnel-out"), ("0.0.0.0", 15006, "ztunnel-in"),
                            ("0.0.0.0", 15008, "hbone")):
        s = socket_in(netns)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if port != 15001:   # as the real ztunnel does: ambit_tc_in only feeds marked listeners
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, AMBIT_LISTENER_MARK)
        s.bind((host, port))
        s.listen(128)
        listeners[s] = who
    sel = selectors.DefaultSelector()
    for s in listeners:
        sel.register(s, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                return
            c, peer = key.fileobj.accept()
            with c:
                try:
                    raw = c.getsockopt(socket.SOL_IP, 80, 16)
                    so = [socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")]
                except OSError as e:
                    so = f"errno {e.errno}"
                msg = {"who": listeners[key.fileobj], "orig": list(original_dst(c)), "so_original_dst": so,
                       "peer": list(peer[:2]), "local": list(c.getsockname()[:2])}
                with contextlib.suppress(OSError):
                    c.sendall(json.dumps(msg).encode() + b"\n")


def _connect(ip: str, port: int, family: int, timeout: float = 5.0) -> dict:
    if family == 6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        target: tuple = (ip, port, 0, 0)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (ip, port)
    s.settimeout(timeout)
    try:
        s.connect(target)
        return {"local": list(s.getsockname()[:2]), "peer": list(s.getpeername()[:2]), "reply": read_json_line(s)}
    except OSError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        s.close()


def _client_loop_main(ip: str, port: int, interval: float) -> None:
    print(json.dumps({"ready": True}), flush=True)
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    while True:
        print(json.dumps(_connect(ip, port, 4)), flush=True)
        if sel.select(interval):
            return


def _engine_main(node: str, zt_cg: str, pods: str, mode: str) -> None:
    from agent.capture import CaptureEngine, PodCapture

    eng = CaptureEngine(node, Path(zt_cg), mode=mode)
    eng.load()
    for p in json.loads(pods):
        eng.enrol(PodCapture(**p))
    print(json.dumps({"progs": eng.program_ids(), "maps": eng.map_ids()}), flush=True)
    sys.stdin.read()   # until the test closes stdin or kills us


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    z = sub.add_parser("ztunnel")
    z.add_argument("netns")
    c = sub.add_parser("client")
    c.add_argument("ip")
    c.add_argument("port", type=int)
    c.add_argument("family", type=int, nargs="?", default=4)
    cl = sub.add_parser("client-loop")
    cl.add_argument("ip")
    cl.add_argument("port", type=int)
    cl.add_argument("interval", type=float)
    e = sub.add_parser("engine")
    e.add_argument("node")
    e.add_argument("zt_cg")
    e.add_argument("pods")
    e.add_argument("--mode", default="ebpf")
    a = ap.parse_args(argv)
    if a.cmd == "ztunnel":
        _ztunnel_main(a.netns)
    elif a.cmd == "client":
        print(json.dumps(_connect(a.ip, a.port, a.family)))
    elif a.cmd == "client-loop":
        _client_loop_main(a.ip, a.port, a.interval)
    elif a.cmd == "engine":
        _engine_main(a.node, a.zt_cg, a.pods, a.mode)





def wait_for(pred, timeout: float = 5.0, what: str = "condition") -> None:
    _wait_for(pred, what, timeout, interval=0.05)


if __name__ == "__main__":
    main(sys.argv[1:])
