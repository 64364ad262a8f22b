"""The operator's CLI in a real lab: `ambit tap`, `ambit stat`/`top`, `ambit bug-report`, and the
node agent's clean-up on SIGTERM once its DaemonSet is deleted (what `ambit uninstall` relies on).

One lab (specs/cliops.yaml): frontend (node1) -> waypoint (node2) -> myapp-v1 (node2), real HBONE.
The agents run with `--cleanup-on-delete ambit-system/ambit-node --kube-api ...`; node1's reads
an API-server emulator the test serves inside node1's netns (its 127.0.0.1), where the test
creates and deletes that DaemonSet.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambit import netns
from ambitctl.lab.components import AGENT_ARGS_ENV
from ambitctl.lab.topology import LabNames
from tests.lab.labctl import AMBIT, REPO, Lab, running_lab
from tests.support.kube_emulator import KubeEmulator

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")]

SPEC = Path(__file__).parent / "specs" / "cliops.yaml"
KUBE_PORT = 21000 + os.getpid() % 20000
DS = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ambit-node", "namespace": "ambit-system"},
      "spec": {}}
GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
    "metadata": {"name": "waypoint", "namespace": "default", "labels": {"ambit.io/waypoint-for": "service"},
                 "annotations": {"lab.ambit.io/node": "node2"}},
    "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
}
DENY_ADMIN = {
    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "deny-admin", "namespace": "default"},
    "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}], "action": "DENY",
             "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]},
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    env = {AGENT_ARGS_ENV: f"--cleanup-on-delete ambit-system/ambit-node --kube-api http://127.0.0.1:{KUBE_PORT}"}
    with running_lab(tmp_path_factory.mktemp("tp"), "tp", SPEC, "cli-ops-lab", env=env) as lab:
        tmp = tmp_path_factory.mktemp("tpcfg")
        f = tmp / "cfg.yaml"
        f.write_text(yaml.safe_dump_all([GATEWAY, DENY_ADMIN]))
        lab.ambit("apply", "-f", str(f))
        lab.wait_for(lambda: http(lab, "/ok") == 200, timeout=40, interval=0.5, what="myapp through the waypoint")
        lab.wait_for(lambda: http(lab, "/admin") == 403, timeout=20, interval=0.5, what="deny-admin enforced")
        yield lab


def http(lab: Lab, path: str) -> int:
    p = lab.exec("default/frontend", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5",
                 f"http://myapp{path}")
    return int(p.stdout.strip() or 0)


def start_cli(lab: Lab, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*AMBIT, *args], env=lab.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_tapping(p: subprocess.Popen[str]) -> None:
    """Until the tap says every component's stream is open (its first stderr line)."""
    assert p.stderr is not None
    line = p.stderr.readline()
    assert line.startswith("tapping 3 components"), line + (p.stderr.read() if p.poll() is not None else "")


def test_tap_streams_l4_and_l7_flows_with_verdicts_and_filters(lab: Lab) -> None:
    # to the Service: a denied request never had a destination pod chosen
    l7 = start_cli(lab, "tap", "-o", "json", "--layer", "L7", "-n", "default", "--to", "svc/myapp",
                   "--max-events", "2", "--duration", "30")
    denied = start_cli(lab, "tap", "-o", "json", "--status", "4xx", "--max-events", "1", "--duration", "30")
    l4 = start_cli(lab, "tap", "-o", "json", "--layer", "L4", "--from", "frontend", "--max-events", "1",
                   "--duration", "30")
    for p in (l7, denied, l4):
        wait_tapping(p)
    t0 = time.monotonic()
    assert http(lab, "/ok") == 200
    assert http(lab, "/admin") == 403
    outs = {}
    for name, p in (("l7", l7), ("denied", denied), ("l4", l4)):
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        outs[name] = [json.loads(x) for x in out.splitlines()]
    assert time.monotonic() - t0 < 20, f"the taps should stop at --max-events, long before --duration: {outs}"

    ok, admin = outs["l7"]
    assert (ok["method"], ok["path"], ok["status"], ok["verdict"]) == ("GET", "/ok", 200, "allowed")
    assert ok["source"] == "waypoint/default/waypoint" and ok["layer"] == "L7"
    assert ok["src"]["workload"] == "frontend" and ok["src"]["identity"] == "spiffe://cluster.local/ns/default/sa/frontend"
    assert ok["dst"]["workload"] == "myapp-v1" and ok["dst"]["identity"].endswith("/sa/myapp")
    assert ok["latency_ms"] > 0 and ok["bytes_recv"] > 0
    assert (admin["path"], admin["status"], admin["verdict"], admin["policy"]) == ("/admin", 403, "denied",
                                                                                   "default/deny-admin")
    [d] = outs["denied"]
    assert d["path"] == "/admin" and d["verdict"] == "denied"
    [c] = outs["l4"]
    assert c["source"] == "ztunnel/node1" and c["direction"] == "outbound" and c["src"]["workload"] == "frontend"
    assert c["bytes_sent"] > 0 and c["verdict"] == "allowed"


def test_tap_and_stat_through_the_controller(lab: Lab) -> None:
    """The cluster path in the lab: the CLI reads only the controller's debug API; the ztunnels and the
    waypoint send flows and metrics over the feeds they keep open to it."""
    from ambitctl.lab.components import controller_socket
    ctl = f"unix:{controller_socket(lab.dir)}"
    denied = start_cli(lab, "tap", "--controller", ctl, "-o", "json", "--status", "4xx", "--to", "svc/myapp",
                       "--max-events", "1", "--duration", "30")
    assert denied.stderr is not None
    line = denied.stderr.readline()
    assert line.startswith("tapping 3 components through the controller"), line
    assert "waypoint/default/waypoint@" in line and "ztunnel/node1" in line
    assert http(lab, "/ok") == 200 and http(lab, "/admin") == 403
    out, err = denied.communicate(timeout=30)
    assert denied.returncode == 0, err
    [ev] = [json.loads(x) for x in out.splitlines()]
    assert (ev["path"], ev["status"], ev["verdict"], ev["source"]) == ("/admin", 403, "denied",
                                                                       "waypoint/default/waypoint")
    stat = start_cli(lab, "stat", "--controller", ctl, "-o", "json", "--window", "3", "-n", "default")
    p = lab.exec("default/frontend", "sh", "-c",      # traffic before, during and after the window
                 "for i in $(seq 60); do curl -s -o /dev/null -m 3 http://myapp/ok; sleep 0.1; done", timeout=90)
    assert p.returncode == 0, p.stderr
    s = run_json(stat)
    [row] = [r for r in s["rows"] if r["destination_workload"] == "myapp-v1"]
    assert row["requests"] > 0 and row["success_rate"] == 1.0 and row["p50_ms"] is not None


def subscribers(sock: Path) -> int:
    """How many taps the component has, counting a probe tap opened here (its first status line)."""
    import socket
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(3)
        c.connect(str(sock))
        c.sendall(b"GET /tap HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1].endswith(b"\n"):
            data += c.recv(4096)
        return int(json.loads(data.split(b"\r\n\r\n", 1)[1].splitlines()[0])["subscribers"])


def test_a_stopped_tap_leaves_no_subscriber(lab: Lab) -> None:
    from ambitctl.lab import components
    sock = components.ztunnel_admin_socket(lab.dir, "node1")
    p = start_cli(lab, "tap", "--duration", "30")
    wait_tapping(p)
    assert subscribers(sock) == 2           # the CLI's and the probe's
    p.terminate()                            # Ctrl-C / kill: the connection closes
    p.communicate(timeout=10)
    lab.wait_for(lambda: subscribers(sock) == 1, timeout=5, what="the tap's subscription released")


def in_its_window(p: subprocess.Popen[str]) -> bool:
    """`ambit stat`/`top` is sleeping between its two scrapes (so it took the first)."""
    assert p.poll() is None, p.communicate()
    return Path(f"/proc/{p.pid}/wchan").read_text() == "hrtimer_nanosleep"


def run_json(p: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return json.loads(out)


def test_stat_and_top_count_the_window(lab: Lab) -> None:
    stat = start_cli(lab, "stat", "-o", "json", "--window", "5", "-n", "default")
    top = start_cli(lab, "top", "-o", "json", "--window", "5", "-n", "default")
    # Both took their first scrape: each is asleep in its window (the only sleep of `stat`/`top`;
    # a CLI's start-up alone can take longer than any fixed wait on a loaded box).
    for p in (stat, top):
        lab.wait_for(lambda p=p: in_its_window(p), timeout=30, interval=0.05, what=f"ambit {p.args[3]}: its first scrape")
    n = 30
    p = lab.exec("default/frontend", "sh", "-c",
                 f"for i in $(seq {n}); do curl -s -o /dev/null -m 3 http://myapp/ok; done", timeout=60)
    assert p.returncode == 0, p.stderr
    s, t = run_json(stat), run_json(top)
    [row] = [r for r in s["rows"] if r["destination_workload"] == "myapp-v1"]
    assert row["requests"] == n and row["success_rate"] == 1.0
    assert row["rps"] == pytest.approx(n / s["window_s"], rel=0.01)
    assert row["p50_ms"] is not None and 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] < 1000
    # (no TCP assertion: the waypoint pools its HBONE connections to myapp-v1, and ztunnel counts a
    # connection's bytes when it closes; the TCP aggregation is tested in tests/unit/ambitctl/test_top.py)
    [edge] = [e for e in t["rows"] if e["destination_workload"] == "myapp-v1"]
    assert (edge["source_workload"], edge["requests"]) == ("frontend", n)


def test_bug_report_has_config_status_logs_and_no_secrets(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "report.tar.gz"
    lab.ambit("bug-report", "-o", str(out))
    token = (lab.dir / "node1" / "bootstrap-token").read_text().strip()
    keys = [f.read_text().strip() for f in lab.dir.rglob("*.key") if f.is_file()]
    with tarfile.open(out) as t:
        names = {n.split("/", 1)[1] for n in t.getnames()}
        blob = b"".join(t.extractfile(m).read() for m in t.getmembers() if m.isfile())  # type: ignore[union-attr]
    assert {"versions.json", "config/store.json", "config/ztunnel-node1.json", "config/ztunnel-node2.json",
            "config/waypoint-default.waypoint.json", "status/lab-state.json", "check.txt", "analyze.json"} <= names
    assert any(n.startswith("logs/") and "ztunnel" in n for n in names)
    assert b"deny-admin" in blob                   # the applied config is there
    assert token.encode() not in blob
    for k in keys:
        assert k.splitlines()[1].encode() not in blob
    assert b"PRIVATE KEY-----\nMI" not in blob


def bpftool_cgroup(cgroup: str) -> list[str]:
    p = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup], capture_output=True, text=True)
    return sorted(a["name"] for a in json.loads(p.stdout.strip() or "[]"))


def pod_netns_rules(lab: Lab) -> dict[str, str]:
    ns = LabNames(lab.name).pod_netns("default", "frontend")
    rule = subprocess.run(["ip", "-n", ns, "rule", "show"], capture_output=True, text=True).stdout
    tc = subprocess.run(["tc", "-n", ns, "filter", "show", "dev", "eth0", "ingress"], capture_output=True,
                        text=True).stdout
    return {"fwmark_rule": "\n".join(x for x in rule.splitlines() if "0x539" in x), "tc_ingress": tc.strip()}


def cni_chain(lab: Lab) -> list[str]:
    """The plugin types of node1's CNI network configuration (the one the lab's runtime uses)."""
    conf = json.loads((lab.dir / "node1" / "cni" / "net.d" / "10-ambit-lab.conflist").read_text())
    return [p["type"] for p in conf["plugins"]]


def test_agent_keeps_capture_on_restart_and_removes_it_when_its_daemonset_is_deleted(lab: Lab) -> None:
    names = LabNames(lab.name)
    with netns.entered(names.node_netns("node1")):
        emu = KubeEmulator(port=KUBE_PORT)      # its socket lives in node1's netns, where the agent is
    with emu:
        emu.create(DS)
        pin_root = names.bpf_pin_base / "node1"
        frontend = lab.pod("default/frontend")
        ztunnel_cg = str(names.component_cgroup("node1", "ztunnel"))
        pid = lab.proc_pid("agent/node1")
        lab.ambit("lab", "restart", "agent", "--node", "node1")
        lab.wait_for(lambda: "keeping capture" in lab.log("agent", "node1"), timeout=15,
                     what="the agent's stop decision")
        lab.wait_for(lambda: (lab.proc_pid("agent/node1") or pid) != pid, timeout=15, what="agent restarted")
        lab.wait_for(lambda: lab.log("agent", "node1").count("connected to ztunnel") >= 2, timeout=15,
                     what="the new agent running")
        assert "the DaemonSet still exists" in lab.log("agent", "node1")
        assert pin_root.exists() and bpftool_cgroup(frontend["cgroup"])
        assert http(lab, "/ok") == 200
        lab.wait_for(lambda: lab.pod("default/frontend")["capture"]["state"] == "captured", timeout=15,
                     what="re-adopted")
        before = pod_netns_rules(lab)
        assert before["fwmark_rule"], before
        assert bpftool_cgroup(ztunnel_cg)
        assert cni_chain(lab) == ["ambit-lab-veth", "ambit-cni"], "a restart keeps the CNI plugin chained"

        emu.delete("apps/v1", "DaemonSet", "ambit-node", "ambit-system")       # `ambit uninstall`
        lab.ambit("lab", "stop", "agent", "--node", "node1")                   # kubelet: SIGTERM, no restart
        lab.wait_for(lambda: "uninstalling capture" in lab.log("agent", "node1"), timeout=15,
                     what="the agent's uninstall")
        lab.wait_for(lambda: not pin_root.exists(), timeout=10, what="node1's pins removed")
        assert bpftool_cgroup(frontend["cgroup"]) == []
        assert bpftool_cgroup(ztunnel_cg) == []
        after = pod_netns_rules(lab)
        assert after == {"fwmark_rule": "", "tc_ingress": ""}, after
        assert cni_chain(lab) == ["ambit-lab-veth"], "uninstall takes ambit-cni out of the node's chain"
        assert not (lab.dir / "node1" / "cni" / "bin" / "ambit-cni").exists()
        assert emu.requests and all(p.endswith("/daemonsets/ambit-node") for _, p, _ in emu.requests)
