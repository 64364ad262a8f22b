"""Issue 9, "capture covers every path into and out of an enrolled pod", attacked in a real lab.

One lab of its own (name `ambit-hcap<pid>`): namespace `mesh` is ambient, under PeerAuthentication STRICT
and an AuthorizationPolicy that admits only `mesh/client` (so: deny-all for anyone else).

    node1  mesh/server     enrolled; tests/lab/recorder.py on 8080 (app) and 8081 (its readiness probe)
           mesh/client     enrolled; the legitimate mesh client (positive control for mesh traffic)
           legacy/attacker not enrolled; the hostile tenant
           legacy/bystander not enrolled; the recorder again (positive control: the attack path works)

Every verdict is read from the *app side*: the recorder logs each connection's bytes, and the
attacker's bytes carry a unique token that must never appear in mesh/server's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambit.dataplane import endpoint
from ambit.netns import socket_in
from tests.lab.labctl import Lab, running_lab
from tests.support.wait import wait_for

pytestmark = pytest.mark.lab

RECORDER = str(Path(__file__).with_name("recorder.py"))
TEST_LAB_RE = re.compile(r"^(ambit-hcap(\d+))[.-]")
ULA = "fd00:9::"          # a "global" IPv6 prefix the tests put on the pods' eth0 (the lab has none)

STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "mesh-strict", "namespace": "mesh"}, "spec": {"mtls": {"mode": "STRICT"}}}
ONLY_CLIENT = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "server-only-client", "namespace": "mesh"},
               "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": "ALLOW",
                        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/mesh/sa/client"]}}]}]}}


def spec() -> dict[str, Any]:
    rec = ["{python}", RECORDER, "8080", "8081"]
    ports = [{"name": "http", "containerPort": 8080}, {"name": "health", "containerPort": 8081}]
    return {
        "nodes": 2,
        "namespaces": [{"name": "mesh", "labels": {"ambit.io/dataplane-mode": "ambient"}}, {"name": "legacy"}],
        "pods": [
            {"name": "server", "namespace": "mesh", "node": "node1", "serviceAccount": "server",
             "labels": {"app": "server"}, "ports": ports, "command": rec,
             "readinessProbe": {"tcpSocket": {"port": "health"}}},
            {"name": "client", "namespace": "mesh", "node": "node1", "serviceAccount": "client",
             "labels": {"app": "client"}, "command": ["sleep", "infinity"]},
            {"name": "attacker", "namespace": "legacy", "node": "node1", "command": ["sleep", "infinity"]},
            {"name": "bystander", "namespace": "legacy", "node": "node1", "ports": ports, "command": rec},
        ],
        "services": [],
    }


def sweep_stale_hcap() -> None:
    """Labs of this module whose pytest run died without `lab down`."""
    from ambitctl.lab import lab as labmod
    names = os.listdir("/var/run/netns") if os.path.isdir("/var/run/netns") else []
    for name, pid in sorted({(m.group(1), int(m.group(2))) for n in names if (m := TEST_LAB_RE.match(n))}):
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            labmod.down(name, base=Path("/nonexistent-ambit-lab-dir"), quiet=True)


# ---- helpers ---------------------------------------------------------------------------------------

def sh(*argv: str, check: bool = True) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p.stdout


def apply(lab: Lab, *objs: dict[str, Any]) -> None:
    lab.ambit("apply", "-f", "-", input=yaml.safe_dump_all(list(objs)))


def records(lab: Lab, pod: str) -> list[dict[str, Any]]:
    out = []
    for line in lab.log(pod).splitlines():
        with contextlib.suppress(ValueError):
            r = json.loads(line)
            if isinstance(r, dict) and "bytes" in r:
                out.append(r)
    return out


def got(lab: Lab, pod: str, token: str) -> list[dict[str, Any]]:
    return [r for r in records(lab, pod) if token in r["data"]]


def token() -> str:
    return f"HCAP-{uuid.uuid4().hex[:12]}"


def send(netns: str, addr: str, port: int, payload: str, *, family: int = socket.AF_INET, scope: int = 0,
         bind: str | None = None, timeout: float = 2.0) -> str:
    """Connect from a thread of this test (root cgroup: never captured) in `netns` and send `payload`.
    Returns "sent" or the error; the verdict is read from the recorder, not from this."""
    s = socket_in(netns, family)
    try:
        s.settimeout(timeout)
        if bind:
            s.setsockopt(socket.SOL_IP, 19, 1)          # IP_TRANSPARENT: bind an address the netns lacks
            s.bind((bind, 0))
        s.connect((addr, port, 0, scope) if family == socket.AF_INET6 else (addr, port))
        s.sendall(payload.encode())
        s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            s.recv(100)
        return "sent"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        s.close()


def in_pod(lab: Lab, pod: str, code: str) -> subprocess.CompletedProcess[str]:
    """Python run *as the pod* (its cgroup and netns: its connect()s meet the capture programs)."""
    return lab.exec(pod, sys.executable, "-c", code, timeout=60)


def mesh_send(lab: Lab, server_ip: str, port: int, payload: str) -> subprocess.CompletedProcess[str]:
    return in_pod(lab, "mesh/client", f"import socket; s=socket.create_connection(('{server_ip}',{port}),5); "
                                      f"s.sendall({payload!r}.encode()); s.shutdown(socket.SHUT_WR); s.recv(10)")


def link(netns: str) -> dict[str, Any]:
    return json.loads(sh("ip", "-n", netns, "-j", "link", "show", "eth0"))[0]


def v6_addrs(netns: str) -> list[str]:
    out = json.loads(sh("ip", "-n", netns, "-j", "-6", "addr", "show", "dev", "eth0") or "[]")
    return [a["local"] for i in out for a in i.get("addr_info", [])]


def sysctl(netns: str, key: str, value: str) -> None:
    sh("ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}")


def node_stats(lab: Lab, node: str) -> dict[str, int]:
    """ambit_stats of a node, read from the pinned map (the agent's status file is not live)."""
    from agent.capture import libbpf, maps
    pin = Path("/sys/fs/bpf/ambit") / lab.name / node / "maps" / "ambit_stats"
    spec_ = maps.MAPS["ambit_stats"]
    out = {}
    with libbpf.RawMap.open_pinned(pin, spec_.key_size, spec_.value_size * maps.possible_cpus()) as m:
        for i, name in enumerate(maps.stat_names()):
            raw = m.get(i.to_bytes(4, sys.byteorder))
            out[name] = maps.sum_percpu_u64(raw) if raw else 0
    return out


def capture_state(lab: Lab, pod: str) -> dict[str, Any]:
    c = lab.pod(pod)["capture"]
    return c if isinstance(c, dict) else {"state": c}


def supervisor_pid(lab: Lab) -> int:
    from ambit import cgroups
    procs = (cgroups.find_cgroup2_mount() / f"{lab.name}-lab" / "supervisor" / "cgroup.procs").read_text().split()
    assert len(procs) == 1, procs
    return int(procs[0])


def listening(netns: str, port: int) -> bool:
    return bool(sh("ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}").strip())


def enrolled_pods(lab: Lab, node: str) -> list[dict[str, Any]]:
    return [p for p in lab.status()["pods"] if p["node"] == node and p["namespace"] == "mesh"]


@contextlib.contextmanager
def ztunnel_down(lab: Lab, node: str) -> Iterator[None]:
    """SIGKILL the node's ztunnel and keep it down (the supervisor, our lab's kubelet, is paused so
    it cannot restart it) for the body; then let it come back."""
    sup = supervisor_pid(lab)
    zt = lab.proc_pid(f"ztunnel/{node}")
    assert zt
    os.kill(sup, signal.SIGSTOP)
    try:
        os.kill(zt, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{zt}").exists() or "Z" in Path(f"/proc/{zt}/stat").read_text().split()[2],
                 "ztunnel to die", 10)
        # Its listeners go with it, a moment after the process (a SYN that met the dying listener
        # would still complete a handshake with the kernel, though no one would ever read it).
        wait_for(lambda: all(not listening(p["netns"], 15006) for p in enrolled_pods(lab, node)),
                 "ztunnel's listeners to close", 10)
        yield
    finally:
        os.kill(sup, signal.SIGCONT)
    wait_for(lambda: lab.proc_pid(f"ztunnel/{node}") not in (None, zt), "ztunnel to be restarted", 30)


def mesh_works(lab: Lab, server_ip: str) -> bool:
    t = token()
    if mesh_send(lab, server_ip, 8080, t).returncode != 0:
        return False
    with contextlib.suppress(AssertionError):
        return bool(wait_for(lambda: got(lab, "mesh/server", t), "mesh bytes at the app", 5, 0.2))
    return False


def absent_after(lab: Lab, pod: str, tok: str, settle: float = 1.5) -> None:
    """The recorder prints a connection when it ends; give a delivered one time to show up."""
    time.sleep(settle)
    assert got(lab, pod, tok) == [], f"attacker bytes reached {pod}: {got(lab, pod, tok)}"


# ---- the lab ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    sweep_stale_hcap()
    d = tmp_path_factory.mktemp("hcap")
    (d / "spec.yaml").write_text(yaml.safe_dump(spec()))
    with running_lab(d, "hcap", d / "spec.yaml", "capture-holes") as lab:
        apply(lab, STRICT, ONLY_CLIENT)
        for pod in ("mesh/server", "mesh/client"):
            lab.wait_for(lambda p=pod: capture_state(lab, p)["state"] == "captured", 30, 0.2, f"{pod} captured")
        server_ip = lab.pod("mesh/server")["ip"]
        lab.wait_for(lambda: mesh_works(lab, server_ip), 30, 0.5, "mesh traffic client -> server under the policy")
        yield lab


@pytest.fixture(scope="module")
def pods(hlab: Lab) -> dict[str, dict[str, Any]]:
    return {k: hlab.pod(k) for k in ("mesh/server", "mesh/client", "legacy/attacker", "legacy/bystander")}


# ---- 1. IPv6 ---------------------------------------------------------------------------------------

def test_ipv6_never_reaches_an_enrolled_pod(hlab: Lab, pods: dict[str, dict[str, Any]]) -> None:
    srv, att, bys = (pods[k]["netns"] for k in ("mesh/server", "legacy/attacker", "legacy/bystander"))
    srv_mac = link(srv)["address"]
    scope = link(att)["ifindex"]
    # Enrolment made the pod IPv4-only: no IPv6 address on eth0 at all.
    assert v6_addrs(srv) == []
    assert sh("ip", "netns", "exec", srv, "sysctl", "-n", "net.ipv6.conf.eth0.disable_ipv6").strip() == "1"

    # Positive control: the attacker reaches a non-enrolled pod over IPv6 link-local and a global
    # address, and the app gets the bytes.
    bys_ll = next(a for a in v6_addrs(bys) if a.startswith("fe80"))
    t = token()
    assert send(att, bys_ll, 8080, t, family=socket.AF_INET6, scope=scope) == "sent"
    wait_for(lambda: got(hlab, "legacy/bystander", t), "v6 link-local bytes at the bystander", 5)
    added = []
    try:
        for ns, host in ((att, "1"), (bys, "2"), (srv, "3")):
            if ns == srv:   # as a pod with CAP_NET_ADMIN could: IPv6 back on, an address on eth0
                sysctl(srv, "net.ipv6.conf.eth0.accept_dad", "0")
                sysctl(srv, "net.ipv6.conf.eth0.disable_ipv6", "0")
            sh("ip", "-n", ns, "-6", "addr", "add", f"{ULA}{host}/64", "dev", "eth0", "nodad")
            added.append(ns)
        t = token()
        wait_for(lambda: send(att, f"{ULA}2", 8080, t, family=socket.AF_INET6) == "sent", "v6 ULA to bystander", 10)
        wait_for(lambda: got(hlab, "legacy/bystander", t), "v6 ULA bytes at the bystander", 5)

        # The attack: link-local and global, to the app port and to the probe port. The target
        # never answers neighbour discovery (IPv6 is dropped at its eth0), so the attacker pins
        # its MAC, as a hostile tenant would.
        before = node_stats(hlab, "node1")["inbound_drop_ipv6"]
        srv_ll = wait_for(lambda: next((a for a in v6_addrs(srv) if a.startswith("fe80")), None),
                          "link-local back on the target", 10)
        for addr in (srv_ll, f"{ULA}3"):
            sh("ip", "-n", att, "-6", "neigh", "replace", addr, "lladdr", srv_mac, "dev", "eth0", "nud", "permanent")
        t = token()
        for addr in (srv_ll, f"{ULA}3"):
            for port in (8080, 8081):
                r = send(att, addr, port, t, family=socket.AF_INET6, scope=scope if addr == srv_ll else 0)
                assert r != "sent", f"[{addr}]:{port}: a TCP connection to the STRICT pod was established"
        absent_after(hlab, "mesh/server", t)
        assert node_stats(hlab, "node1")["inbound_drop_ipv6"] > before, "ambit_tc_in saw and dropped the IPv6"
    finally:
        for ns, host in ((att, "1"), (bys, "2"), (srv, "3")):
            if ns in added:
                sh("ip", "-n", ns, "-6", "addr", "del", f"{ULA}{host}/64", "dev", "eth0", check=False)
        sh("ip", "-n", att, "-6", "neigh", "flush", "dev", "eth0", check=False)
        sysctl(srv, "net.ipv6.conf.eth0.disable_ipv6", "1")


def test_native_ipv6_from_an_enrolled_pod_never_bypasses_the_mesh(hlab: Lab, pods: dict[str, dict[str, Any]]) -> None:
    cli, bys = pods["mesh/client"]["netns"], pods["legacy/bystander"]["netns"]
    bys_ll = next(a for a in v6_addrs(bys) if a.startswith("fe80"))
    code = """
import errno, json, socket, sys
addr, scope, tok = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(3)
try:
    s.connect((addr, 8080, 0, scope)); s.sendall(tok.encode()); out["tcp"] = "connected"
except OSError as e:
    out["tcp"] = errno.errorcode.get(e.errno, str(e))
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
try:
    u.sendto(tok.encode(), (addr, 8080, 0, scope)); out["udp_sendto"] = "sent"
except OSError as e:
    out["udp_sendto"] = errno.errorcode.get(e.errno, str(e))
try:
    u.connect((addr, 8080, 0, scope)); out["udp_connect"] = "connected"
except OSError as e:
    out["udp_connect"] = errno.errorcode.get(e.errno, str(e))
print(json.dumps(out))
"""
    scope = link(cli)["ifindex"]
    try:
        for enabled in (False, True):
            if enabled:   # as a pod with CAP_NET_ADMIN could: IPv6 back on its eth0
                sysctl(cli, "net.ipv6.conf.eth0.accept_dad", "0")
                sysctl(cli, "net.ipv6.conf.eth0.disable_ipv6", "0")
                wait_for(lambda: any(a.startswith("fe80") for a in v6_addrs(cli)), "client link-local", 10)
            t = token()
            p = hlab.exec("mesh/client", sys.executable, "-c", code, bys_ll, str(scope), t, timeout=60)
            assert p.returncode == 0, p.stderr
            r = json.loads(p.stdout.splitlines()[-1])
            # connect6/sendmsg6 refuse native IPv6 for enrolled pods before any packet exists.
            assert r == {"tcp": "EPERM", "udp_sendto": "EPERM", "udp_connect": "EPERM"}, (enabled, r)
            absent_after(hlab, "legacy/bystander", t, settle=1.0)
        # Positive control: the same program from a pod that is not enrolled reaches the bystander.
        t = token()
        p = hlab.exec("legacy/attacker", sys.executable, "-c", code, bys_ll, str(link(pods["legacy/attacker"]["netns"])["ifindex"]),
                      t, timeout=60)
        assert json.loads(p.stdout.splitlines()[-1])["tcp"] == "connected", p.stdout + p.stderr
        wait_for(lambda: got(hlab, "legacy/bystander", t), "bytes from the non-enrolled pod", 5)
    finally:
        sysctl(cli, "net.ipv6.conf.eth0.disable_ipv6", "1")


# ---- 2. no fail-open window while ztunnel is down ---------------------------------------------------

def test_ztunnel_down_drops_inbound_and_mesh_recovers(hlab: Lab, pods: dict[str, dict[str, Any]]) -> None:
    att = pods["legacy/attacker"]["netns"]
    srv_ip = pods["mesh/server"]["ip"]
    with ztunnel_down(hlab, "node1"):
        t = token()
        for port in (8080, 8081):
            assert send(att, srv_ip, port, t) != "sent", f"a plaintext connection to :{port} was established"
        absent_after(hlab, "mesh/server", t)
        assert capture_state(hlab, "mesh/server")["state"] != "opted-out"
    hlab.wait_for(lambda: mesh_works(hlab, srv_ip), 60, 0.5, "mesh traffic after ztunnel is back")
    # And STRICT holds again for the plaintext attacker (ztunnel refuses it; the app sees nothing).
    t = token()
    send(att, srv_ip, 8080, t)
    absent_after(hlab, "mesh/server", t)

    # Control: with capture removed (namespace unenrolled) the same connection reaches the app.
    hlab.ambit("label", "namespace", "mesh", "ambit.io/dataplane-mode-")
    try:
        hlab.wait_for(lambda: capture_state(hlab, "mesh/server")["state"] == "none", 30, 0.2, "server unenrolled")
        t = token()
        hlab.wait_for(lambda: send(att, srv_ip, 8080, t) == "sent", 10, 0.2, "plaintext to the unenrolled server")
        wait_for(lambda: got(hlab, "mesh/server", t), "the attacker's bytes at the unenrolled app", 5)
    finally:
        hlab.ambit("label", "namespace", "mesh", "ambit.io/dataplane-mode=ambient")
        hlab.wait_for(lambda: capture_state(hlab, "mesh/server")["state"] == "captured", 30, 0.2, "re-enrolled")
        hlab.wait_for(lambda: mesh_works(hlab, srv_ip), 30, 0.5, "mesh traffic after re-enrolment")


# ---- 3. port squatting ----------------------------------------------------------------------------

SQUAT = """
import json, socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
# SO_REUSEPORT, as root (ztunnel's uid): the kernel would let ztunnel's listener join this one's group
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", 15006)); s.listen(16)
print(json.dumps({"squatting": 15006}), flush=True)
def take():
    while True:
        c, peer = s.accept(); c.settimeout(2)
        try: data = c.recv(4096)
        except OSError: data = b""
        print(json.dumps({"peer": peer[0], "data": data.decode("latin-1")}), flush=True)
threading.Thread(target=take, daemon=True).start()
sys.stdin.read()
"""


BIND_ZTUNNEL_PORTS = """
import errno, json, socket
out = {}
for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in (15001, 15006, 15008):
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.bind((host, port)); out[f"{host}:{port}"] = "bound"
        except OSError as e:
            out[f"{host}:{port}"] = errno.errorcode.get(e.errno, str(e))
        s.close()
print(json.dumps(out))
"""


def test_an_enrolled_pod_cannot_squat_ztunnel_ports_even_while_ztunnel_is_down(hlab: Lab) -> None:
    srv_ip = hlab.pod("mesh/server")["ip"]
    with ztunnel_down(hlab, "node1"):
        p = in_pod(hlab, "mesh/server", BIND_ZTUNNEL_PORTS)
        assert p.returncode == 0, p.stderr
        assert set(json.loads(p.stdout.splitlines()[-1]).values()) == {"EPERM"}, p.stdout
    # Control: a pod that is not enrolled binds the same ports freely.
    p = in_pod(hlab, "legacy/bystander", BIND_ZTUNNEL_PORTS)
    assert set(json.loads(p.stdout.splitlines()[-1]).values()) == {"bound"}, p.stdout
    hlab.wait_for(lambda: mesh_works(hlab, srv_ip), 60, 0.5, "mesh traffic after ztunnel is back")


def test_a_pod_holding_ztunnels_port_fails_closed_reports_the_truth_and_heals(
        hlab: Lab, pods: dict[str, dict[str, Any]]) -> None:
    """The squat that bind prevention cannot stop: the pod took 15006 before it was enrolled (its
    app started before the agent acted), so ztunnel's hand-off fails when the pod is enrolled."""
    att = pods["legacy/attacker"]["netns"]
    srv_ip = pods["mesh/server"]["ip"]
    squatter: subprocess.Popen[str] | None = None
    hlab.ambit("label", "namespace", "mesh", "ambit.io/dataplane-mode-")
    try:
        hlab.wait_for(lambda: capture_state(hlab, "mesh/server")["state"] == "none", 30, 0.2, "server unenrolled")
        squatter = subprocess.Popen(hlab.exec_argv("mesh/server", sys.executable, "-c", SQUAT), env=hlab.env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert squatter.stdout is not None
        assert json.loads(squatter.stdout.readline()) == {"squatting": 15006}
    finally:
        hlab.ambit("label", "namespace", "mesh", "ambit.io/dataplane-mode=ambient")
    try:
        # Enrolled, but ztunnel cannot serve it: the status says so, in both places.
        st = hlab.wait_for(lambda: (s := capture_state(hlab, "mesh/server"))["state"] == "capture-failed" and s,
                           30, 0.2, "capture-failed in lab status")
        assert "port 15006 in use" in st["reason"]
        table = hlab.ambit("lab", "status").stdout
        assert re.search(r"mesh/server .*capture-failed: port 15006 in use", table), table
        code, view = endpoint.get_json(hlab.dir / "node1" / "admin.sock", "/pods")
        assert code == 200
        assert [p["name"] for p in view["failed"]] == ["server"] and "port 15006 in use" in view["failed"][0]["reason"]
        hlab.wait_for(lambda: "client" in [p["name"] for p in endpoint.get_json(hlab.dir / "node1" / "admin.sock",
                                                                         "/pods")[1]["serving"]],
                      30, 0.2, "the node's other pods served")

        # Fail closed meanwhile: nothing reaches the app, nor the squatter, by the app port or 15006.
        t = token()
        for port in (8080, 15006):
            assert send(att, srv_ip, port, t) != "sent", f":{port} accepted a plaintext connection"
        absent_after(hlab, "mesh/server", t)
        assert hlab.wait_for(lambda: capture_state(hlab, "mesh/server").get("failures", 0) >= 2, 15, 0.2,
                             "the hand-off to be retried")
    finally:
        if squatter is not None:
            squatter.kill()
            out, _ = squatter.communicate(timeout=30)
            assert all("HCAP-" not in line for line in out.splitlines()), f"the squatter got bytes: {out}"
    # The squatter is gone: the retried hand-off succeeds without anyone's help.
    hlab.wait_for(lambda: capture_state(hlab, "mesh/server")["state"] == "captured", 45, 0.2, "captured again")
    hlab.wait_for(lambda: mesh_works(hlab, srv_ip), 30, 0.5, "mesh traffic after the squatter left")
    code, view = endpoint.get_json(hlab.dir / "node1" / "admin.sock", "/pods")
    assert view["failed"] == [] and "server" in [p["name"] for p in view["serving"]]


# ---- 4. the node-IP exemption ------------------------------------------------------------------------

def test_node_ip_exemption_is_probe_ports_from_the_node_netns_only(hlab: Lab, pods: dict[str, dict[str, Any]]) -> None:
    from agent.capture.pins import remove_link_pin
    node = next(n for n in hlab.status()["nodes"] if n["name"] == "node1")
    node_ns, node_ip = node["netns"], node["gatewayIP"]
    srv, att = pods["mesh/server"], pods["legacy/attacker"]["netns"]
    # The real node (kubelet) reaches the probe port, uncaptured: the app sees the node's bytes.
    t = token()
    assert send(node_ns, srv["ip"], 8081, t) == "sent"
    rec = wait_for(lambda: got(hlab, "mesh/server", t), "the probe's bytes at the app", 5)
    assert rec[0]["peer"] == node_ip
    # ... but not any other port: that is captured, and STRICT refuses the node's plaintext.
    t = token()
    send(node_ns, srv["ip"], 8080, t)
    absent_after(hlab, "mesh/server", t)

    # A pod on the same node spoofs the node IP (IP_TRANSPARENT bind) and wins the ARP race for it
    # at the target (pinned here; a bridge does not stop gratuitous ARP).
    uid = capture_state(hlab, "mesh/server")["uid"]
    guard = Path("/sys/fs/bpf/ambit") / hlab.name / "node1" / "pods" / uid / "tc_host"
    assert guard.exists(), "the node-IP guard is attached to the server's host-side veth"
    att_mac = link(att)["address"]
    sh("ip", "-n", srv["netns"], "neigh", "replace", node_ip, "lladdr", att_mac, "dev", "eth0", "nud", "permanent")
    sh("ip", "-n", att, "route", "add", "local", node_ip, "dev", "lo", "table", "local", check=False)
    try:
        before = node_stats(hlab, "node1")["host_spoof_dropped"]
        t = token()
        for port in (8081, 8080):
            assert send(att, srv["ip"], port, t, bind=node_ip) != "sent", f"spoofed node IP got a connection on :{port}"
        absent_after(hlab, "mesh/server", t)
        assert node_stats(hlab, "node1")["host_spoof_dropped"] > before

        # Control: the same spoof with the guard detached gets through on the probe port (the
        # attack works; the guard is what stops it), and still not on the app port (captured).
        remove_link_pin(guard)
        t = token()
        assert send(att, srv["ip"], 8081, t, bind=node_ip) == "sent"
        rec = wait_for(lambda: got(hlab, "mesh/server", t), "the spoofer's bytes at the probe port", 5)
        assert rec[0]["peer"] == node_ip
        t = token()
        send(att, srv["ip"], 8080, t, bind=node_ip)
        absent_after(hlab, "mesh/server", t)
    finally:
        sh("ip", "-n", srv["netns"], "neigh", "del", node_ip, "dev", "eth0", check=False)
        sh("ip", "-n", att, "route", "del", "local", node_ip, "dev", "lo", "table", "local", check=False)
        # A restarted agent re-enrols the pod and puts the guard back.
        hlab.ambit("lab", "restart", "agent", "--node", "node1")
        hlab.wait_for(guard.exists, 30, 0.2, "the guard re-attached by the restarted agent")
    t = token()
    send(att, srv["ip"], 8081, t, bind=node_ip)
    absent_after(hlab, "mesh/server", t)

