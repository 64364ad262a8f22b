"""Issue 3 acceptance: the agent enrols ambient pods and their TCP goes through ztunnel, for real.

Every check is made by connections made after the step it checks, and "captured" is read from
ztunnel's own access log (one JSON line per connection, with the original destination).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from ambitctl.lab.topology import BPF_PIN_ROOT
from tests.lab import hoststate
from tests.lab.labctl import Lab

pytestmark = pytest.mark.lab


def outbound_from(lab: Lab, node: str, ns: str, pod: str, since: int = 0) -> list[dict]:
    return [r for r in lab.access_log(node)[since:]
            if r["direction"] == "outbound" and r.get("src.namespace") == ns and r.get("src.workload") == pod]


def connect(lab: Lab, pod: str, ip: str, port: int) -> subprocess.CompletedProcess[str]:
    code = f"import socket; s=socket.create_connection(('{ip}',{port}),3); s.close()"
    return lab.exec(pod, "python3", "-c", code)


def is_captured_now(lab: Lab, pod: str, node: str, url: str) -> bool:
    ns, name = pod.split("/")
    before = len(lab.access_log(node))
    lab.curl(pod, url)
    # The access log line is written when ztunnel closes the connection, just after curl exits.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if outbound_from(lab, node, ns, name, before):
            return True
        time.sleep(0.05)
    return False


def test_cross_node_connection_is_captured_with_its_original_destination(lab: Lab) -> None:
    v2 = lab.pod("demo/echo-v2")
    before = len(lab.access_log("node1"))
    r = lab.curl("demo/client", f"http://{v2['ip']}:8080/captured")
    assert r["pod"] == "echo-v2" and r["path"] == "/captured"
    recs = lab.wait_for(lambda: outbound_from(lab, "node1", "demo", "client", before), timeout=3,
                        what="ztunnel access log entry")
    assert recs[-1]["dst.addr"] == f"{v2['ip']}:8080"
    assert recs[-1]["bytes_sent"] > 0 and recs[-1]["bytes_recv"] > len("{}")
    assert lab.pod("demo/client")["capture"]["state"] == "captured"


def test_service_vip_is_the_original_destination_and_iperf3_completes(lab: Lab) -> None:
    before = len(lab.access_log("node1"))
    p = lab.exec("demo/client", "iperf3", "-c", "iperf.demo.svc.cluster.local", "-t", "2", "-J", timeout=60)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["end"]["sum_received"]["bytes"] > 1_000_000
    recs = lab.wait_for(lambda: outbound_from(lab, "node1", "demo", "client", before), timeout=3,
                        what="iperf3 connections in the access log")
    s = lab.status()
    vip = next(x["vip"] for x in s["services"] if x["name"] == "iperf")
    assert {r["dst.addr"] for r in recs} == {f"{vip}:5201"}
    assert max(r["bytes_sent"] for r in recs) >= result["end"]["sum_received"]["bytes"]


def test_enrolment_follows_the_namespace_label(lab: Lab) -> None:
    # How fast a change reaches the node is `make bench`'s config-push figure; here, that it does.
    url = f"http://{lab.pod('demo/echo-v1')['ip']}:8080/"
    assert not is_captured_now(lab, "legacy/client", "node2", url), "legacy is not in the mesh yet"
    try:
        lab.ambit("label", "namespace", "legacy", "ambit.io/dataplane-mode=ambient")
        lab.wait_for(lambda: is_captured_now(lab, "legacy/client", "node2", url), timeout=15,
                     what="legacy/client captured after labelling")
        assert is_captured_now(lab, "legacy/client", "node2", url)
    finally:
        lab.ambit("label", "namespace", "legacy", "ambit.io/dataplane-mode-")
    lab.wait_for(lambda: not is_captured_now(lab, "legacy/client", "node2", url), timeout=15,
                 what="legacy/client released after unlabelling")
    assert not is_captured_now(lab, "legacy/client", "node2", url)
    assert lab.pod("legacy/client")["capture"] == "none"


def test_opted_out_pod_is_not_captured(lab: Lab) -> None:
    assert lab.pod("demo/optout")["capture"]["state"] == "opted-out"
    url = f"http://{lab.pod('demo/echo-v2')['ip']}:8080/"
    assert not is_captured_now(lab, "demo/optout", "node1", url)
    assert is_captured_now(lab, "demo/client", "node1", url)  # same node, same target: the control


def test_excluded_outbound_port_is_not_captured_but_others_are(lab: Lab) -> None:
    v1 = lab.pod("demo/echo-v1")
    assert not is_captured_now(lab, "demo/excluded", "node2", f"http://{v1['ip']}:8080/")
    before = len(lab.access_log("node2"))
    assert connect(lab, "demo/excluded", lab.pod("demo/iperf")["ip"], 5201).returncode == 0
    lab.wait_for(lambda: outbound_from(lab, "node2", "demo", "excluded", before), timeout=3,
                 what="port 5201 (not excluded) captured")


def inbound_to(lab: Lab, node: str, dst: str, since: int) -> list[dict]:
    return [r for r in lab.access_log(node)[since:] if r["direction"] == "inbound" and r["dst.addr"] == dst]


def test_inbound_plaintext_goes_through_ztunnel_and_keeps_the_client_ip(lab: Lab) -> None:
    legacy, v1 = lab.pod("legacy/client"), lab.pod("demo/echo-v1")
    before = len(lab.access_log("node1"))
    r = lab.curl("legacy/client", f"http://{v1['ip']}:8080/in")
    assert r["peer"].split(":")[0] == legacy["ip"], "the app must see the real client IP"
    recs = lab.wait_for(lambda: inbound_to(lab, "node1", f"{v1['ip']}:8080", before), timeout=3,
                        what="inbound access log entry")
    assert recs[-1]["route"] == "inbound-plaintext" and recs[-1]["src.addr"].startswith(legacy["ip"] + ":")


def test_traffic_from_the_node_to_a_probe_port_bypasses_inbound_capture(lab: Lab) -> None:
    # echo-v1's readinessProbe uses 8080 (tests/lab/specs/mesh.yaml); other ports and spoofed node
    # IPs are covered in test_capture_holes.py.
    v1 = lab.pod("demo/echo-v1")
    node = next(n for n in lab.status()["nodes"] if n["name"] == "node1")
    before = len(lab.access_log("node1"))
    p = subprocess.run(["ip", "netns", "exec", node["netns"], "curl", "-sS", "-m", "3", f"http://{v1['ip']}:8080/probe"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["peer"].startswith(node["gatewayIP"] + ":")
    time.sleep(0.3)
    assert inbound_to(lab, "node1", f"{v1['ip']}:8080", before) == []


def test_excluded_inbound_port_is_not_captured(lab: Lab) -> None:
    ex = lab.pod("demo/excluded")
    before = len(lab.access_log("node2"))
    assert lab.curl("legacy/client", f"http://{ex['ip']}:9090/")["pod"] == "excluded"
    assert lab.curl("legacy/client", f"http://{ex['ip']}:8080/")["pod"] == "excluded"
    lab.wait_for(lambda: inbound_to(lab, "node2", f"{ex['ip']}:8080", before), timeout=3, what="8080 captured")
    assert inbound_to(lab, "node2", f"{ex['ip']}:9090", before) == []


def ambit_progs(lab: Lab) -> dict[str, int]:
    """Ambit's BPF programs of `lab`, by name: those that use a map pinned under the lab's bpffs
    directory (other tests' labs load programs of the same names at the same time)."""
    maps = set()
    for pin in (BPF_PIN_ROOT / lab.name).glob("*/maps/*"):
        shown = subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(pin)], capture_output=True, text=True)
        if shown.returncode == 0:
            maps.add(json.loads(shown.stdout)["id"])
    assert maps, f"no maps pinned under {BPF_PIN_ROOT / lab.name}"
    out = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout)
    counts: dict[str, int] = {}
    for p in out:
        if (p.get("name") or "").startswith("ambit_") and maps.intersection(p.get("map_ids") or ()):
            counts[p["name"]] = counts.get(p["name"], 0) + 1
    return counts


def cgroup_attachments(cgroup: str) -> list[tuple[str, str]]:
    p = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup], capture_output=True, text=True)
    return sorted((a["attach_type"], a["name"]) for a in json.loads(p.stdout or "[]"))


def test_agent_restart_keeps_capture_without_gap_or_duplicates(lab: Lab) -> None:
    client, v2 = lab.pod("demo/client"), lab.pod("demo/echo-v2")
    progs_before = ambit_progs(lab)
    assert progs_before.get("ambit_connect4") == 2, progs_before     # one per node
    attach_before = cgroup_attachments(client["cgroup"])
    assert attach_before, "the client's cgroup should carry Ambit's programs"
    pid = lab.proc_pid("agent/node1")
    before = len(lab.access_log("node1"))
    n = 40
    loop = subprocess.Popen(
        lab.exec_argv("demo/client", "sh", "-c",
                      f"for i in $(seq {n}); do curl -s -o /dev/null -w '%{{http_code}}\\n' -m 3 http://{v2['ip']}:8080/; "
                      "sleep 0.05; done"), env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    lab.wait_for(lambda: (lab.proc_pid("agent/node1") or pid) != pid, timeout=10, what="agent restarted")
    out, err = loop.communicate(timeout=120)
    assert out.split() == ["200"] * n, err
    lab.wait_for(lambda: len(outbound_from(lab, "node1", "demo", "client", before)) >= n, timeout=5,
                 what=f"all {n} connections in the access log")
    # The new agent adopted the pinned links: same attachments, no extra programs.
    lab.wait_for(lambda: lab.pod("demo/client")["capture"]["state"] == "captured", timeout=10, what="re-adopted")
    assert cgroup_attachments(client["cgroup"]) == attach_before
    # The links now point at the new agent's programs; the kernel frees the old ones (no longer
    # referenced) after an RCU grace period, later on a busy machine: a leak would never go.
    lab.wait_for(lambda: ambit_progs(lab) == progs_before, timeout=15, what="the old agent's programs freed")
    assert "adopted" in lab.log("agent", "node1")


@pytest.mark.host_exclusive
def test_sigkilled_agents_leave_nothing_after_lab_down(fresh_lab: Lab) -> None:
    before = hoststate.snapshot()
    fresh_lab.up()
    assert fresh_lab.pod("demo/client")["capture"]["state"] == "captured"
    assert hoststate.diff(before, hoststate.snapshot()).get("bpf_progs"), "programs should be loaded"
    for node in ("node1", "node2"):
        os.kill(fresh_lab.proc_pid(f"agent/{node}"), signal.SIGKILL)
    fresh_lab.down()
    leftovers = hoststate.diff(before, hoststate.snapshot())
    assert leftovers == {}, f"left behind: {leftovers}"
    assert not os.path.exists(f"/sys/fs/bpf/ambit/{fresh_lab.name}")
