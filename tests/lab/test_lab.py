"""The netns lab, end to end through the CLI: topology, pods, services, exec, logs, teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ambit import cgroups
from tests.lab import hoststate
from tests.lab.labctl import AMBIT, REPO, Lab

pytestmark = pytest.mark.lab


def test_status_json_names_every_netns_and_pod(lab: Lab) -> None:
    s = lab.status()
    assert s["underlay"]["netns"] in s["netns"]
    existing = set(os.listdir("/var/run/netns"))
    assert set(s["netns"]) <= existing
    assert len(s["nodes"]) == 2
    pods = {f"{p['namespace']}/{p['name']}": p for p in s["pods"]}
    assert {"demo/echo-v1", "demo/echo-v2", "demo/client", "legacy/client", "demo/iperf"} <= set(pods)
    for key, p in pods.items():
        assert p["pid"], f"{key} has no running process"
        # The process really is in the pod's netns and cgroup.
        assert os.stat(f"/proc/{p['pid']}/ns/net").st_ino == os.stat(f"/var/run/netns/{p['netns']}").st_ino
        cg = Path(f"/proc/{p['pid']}/cgroup").read_text().strip().split("::", 1)[1]
        assert str(cgroups.find_cgroup2_mount()) + cg == p["cgroup"]
    assert pods["demo/echo-v1"]["node"] == "node1" and pods["demo/echo-v2"]["node"] == "node2"
    assert Path(s["logDir"]).is_dir()


def test_service_name_resolves_and_echo_replies_across_nodes(lab: Lab) -> None:
    seen = set()
    for _ in range(12):
        r = lab.curl("demo/client", "http://echo.demo.svc.cluster.local:8080/hello")
        assert r["namespace"] == "demo" and r["path"] == "/hello"
        assert r["version"] in ("v1", "v2")
        seen.add(r["pod"])
    assert seen == {"echo-v1", "echo-v2"}, "the service VIP should reach both endpoints"


def test_echo_sees_the_client_pod_ip(lab: Lab) -> None:
    s = lab.status()
    legacy_ip = next(p["ip"] for p in s["pods"] if p["namespace"] == "legacy" and p["name"] == "client")
    v1_ip = next(p["ip"] for p in s["pods"] if p["name"] == "echo-v1")
    r = lab.curl("legacy/client", f"http://{v1_ip}:8080/")
    assert r["peer"].split(":")[0] == legacy_ip


def test_the_pods_gateway_mac_stays_put_while_ports_come_and_go(lab: Lab) -> None:
    # A pod resolves its gateway (the node's br0) once; if br0's MAC followed its ports (a Linux
    # bridge's default: the lowest port MAC), a pod starting or leaving beside it would send its
    # neighbours' frames to an address nobody owns, and their new connections would stall.
    nns = next(n["netns"] for n in lab.status()["nodes"] if n["name"] == "node1")

    def mac() -> str:
        return json.loads(subprocess.run(["ip", "-n", nns, "-j", "link", "show", "br0"], check=True,
                                         capture_output=True, text=True).stdout)[0]["address"]
    before = mac()
    try:
        # The lowest possible unicast MAC: a bridge that inherits its address would take it.
        subprocess.run(["ip", "-n", nns, "link", "add", "gwtest0", "address", "00:00:00:00:00:01",
                        "type", "veth", "peer", "name", "gwtest1"], check=True)
        subprocess.run(["ip", "-n", nns, "link", "set", "gwtest0", "master", "br0", "up"], check=True)
        assert mac() == before
    finally:
        subprocess.run(["ip", "-n", nns, "link", "del", "gwtest0"], check=False)
    assert mac() == before


def test_exec_runs_in_pod_netns_and_cgroup(lab: Lab) -> None:
    s = lab.status()
    pod = next(p for p in s["pods"] if p["namespace"] == "demo" and p["name"] == "client")
    out = lab.exec("demo/client", "sh", "-c", "cat /proc/self/cgroup; ip -o -4 addr show dev eth0", check=True).stdout
    assert pod["cgroup"].split("/unified", 1)[-1].split(str(cgroups.find_cgroup2_mount()), 1)[-1] in out
    assert pod["ip"] in out


def test_exec_names_unknown_pod(lab: Lab) -> None:
    p = lab.exec("demo/nope", "true")
    assert p.returncode != 0 and "no pod demo/nope" in p.stderr


def test_logs_show_each_component(lab: Lab) -> None:
    for node in ("node1", "node2"):
        assert f"ztunnel for {node} ready" in lab.log("ztunnel", node)
        assert "enrolled demo/" in lab.log("agent", node)
    assert lab.ambit("lab", "logs", "controller", check=False).returncode == 0
    # Per-node components need --node; the error says so instead of guessing.
    p = lab.ambit("lab", "logs", "ztunnel", check=False)
    assert p.returncode != 0 and "--node" in p.stderr
    p = lab.ambit("lab", "logs", "nonsense", check=False)
    assert p.returncode != 0 and "unknown component" in p.stderr


def test_label_namespace_round_trip(lab: Lab) -> None:
    lab.ambit("label", "namespace", "legacy", "team=blue")
    ns = {n["name"]: n["labels"] for n in lab.status()["namespaces"]}
    assert ns["legacy"].get("team") == "blue"
    lab.ambit("label", "namespace", "legacy", "team-")
    ns = {n["name"]: n["labels"] for n in lab.status()["namespaces"]}
    assert "team" not in ns["legacy"]
    bad = lab.ambit("label", "namespace", "legacy", "novalue", check=False)
    assert bad.returncode != 0 and "KEY=VALUE" in bad.stderr


def test_supervisor_restarts_a_crashed_pod(lab: Lab) -> None:
    pod = next(p for p in lab.status()["pods"] if p["name"] == "echo-v2")
    os.kill(pod["pid"], signal.SIGKILL)
    def restarted():
        p = next(p for p in lab.status()["pods"] if p["name"] == "echo-v2")
        return p["pid"] and p["pid"] != pod["pid"] and p
    lab.wait_for(restarted, timeout=10, what="echo-v2 restarted")
    lab.wait_for(lambda: lab.curl("demo/client", "http://10.210.2.10:8080/")["pod"] == "echo-v2",
                 timeout=10, what="echo-v2 serving again")


@pytest.mark.host_exclusive
def test_custom_spec_and_teardown_leave_host_exactly_as_before(fresh_lab: Lab, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("""
nodes: 3
namespaces: [{name: shop, labels: {tier: web}}]
pods:
  - {name: web, namespace: shop, node: node3, command: [python, -m, ambitctl.lab.apps.echo, --port, "9090"],
     labels: {app: web}, ports: [{containerPort: 9090}]}
  - {name: shopper, namespace: shop, node: node1, command: [sleep, infinity]}
services:
  - {name: web, namespace: shop, selector: {app: web}, ports: [{port: 80, targetPort: 9090}]}
""")
    before = hoststate.snapshot()
    fresh_lab.up("--spec", str(spec))
    s = fresh_lab.status()
    assert len(s["nodes"]) == 3
    r = fresh_lab.curl("shop/shopper", "http://web/")
    assert r["pod"] == "web"
    during = hoststate.snapshot()
    assert hoststate.diff(before, during).get("netns"), "the lab should have created netns"
    fresh_lab.down()
    leftovers = hoststate.diff(before, hoststate.snapshot())
    assert leftovers == {}, f"lab down left things behind: {leftovers}"
    assert not fresh_lab.dir.exists()


@pytest.mark.host_exclusive
def test_bad_spec_is_rejected_with_field_and_nothing_is_created(fresh_lab: Lab, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("pods:\n  - {name: web, namespace: shop, node: node7, command: [sleep, '1']}\n")
    before = hoststate.snapshot()
    p = fresh_lab.ambit("lab", "up", "--name", fresh_lab.name, "--spec", str(spec), check=False)
    assert p.returncode != 0
    assert "pods[0].node" in p.stderr and "node7" in p.stderr
    assert hoststate.diff(before, hoststate.snapshot()) == {}


@pytest.mark.host_exclusive
def test_interrupted_up_leaves_nothing(fresh_lab: Lab) -> None:
    """Ctrl-C (SIGINT) in the middle of `lab up` tears down what was built."""
    before = hoststate.snapshot()
    assert not [n for n in before["netns"] if n.startswith(f"{fresh_lab.name}.")], "an earlier lab of this name is still up"
    # SIGINT as a terminal delivers it: a suite started in the background (`make test &`) runs with
    # SIGINT ignored, which children inherit, and Python then keeps ignoring it.
    p = subprocess.Popen([*AMBIT, "lab", "up", "--name", fresh_lab.name, "--nodes", "3"], env=fresh_lab.env,
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Interrupt as soon as the first netns exists: mid-build.
    def ours() -> list[str]:
        return [n for n in (os.listdir("/var/run/netns") if os.path.isdir("/var/run/netns") else [])
                if n.startswith(f"{fresh_lab.name}.")]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not ours() and p.poll() is None:
        time.sleep(0.005)
    assert p.poll() is None, f"lab up ended (rc {p.returncode}) before it could be interrupted: {p.stderr.read() if p.stderr else ''}"
    assert ours(), "lab up built no netns within 20 s"
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    assert p.returncode != 0, f"interrupted up should fail: {err[-2000:]}"
    assert "tearing down" in err
    assert hoststate.diff(before, hoststate.snapshot()) == {}


def test_second_up_is_refused(lab: Lab) -> None:
    p = lab.ambit("lab", "up", "--name", lab.name, check=False)
    assert p.returncode != 0 and "already up" in p.stderr


def test_check_json_reports_every_item() -> None:
    p = subprocess.run([*AMBIT, "check", "--json"], capture_output=True, text=True, cwd=REPO)
    doc = json.loads(p.stdout)
    names = {c["name"]: c for c in doc["checks"]}
    assert set(names) == {"kernel", "bpf-syscall", "btf", "cgroup-v2", "bcc-sched-cls", "bcc-cgroup-sock-addr",
                          "capabilities", "netns-veth", "python-deps"}
    failed = {k: v for k, v in names.items() if not v["ok"]}
    assert not failed, f"this machine should pass every check: {failed}"
    assert p.returncode == 0 and doc["ok"] is True
    assert "unified" in names["cgroup-v2"]["detail"] or "/sys/fs/cgroup" in names["cgroup-v2"]["detail"]
