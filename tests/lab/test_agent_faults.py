"""The node agent under faults, read from real traffic: no window in which an enrolled pod takes a
connection that did not go through ztunnel.

A pod captured at sandbox creation (the CNI plugin's ADD) is in no view of the pod source until its
app runs (the API says Pending while images are pulled). An agent restarted in that window must
keep its capture: the app must never take a plaintext connection from outside the mesh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambit import readymark
from ambit.netns import preexec_enter, socket_in
from ambitctl.lab import components
from ambitctl.lab.components import AGENT_ARGS_ENV
from ambitctl.lab.runtime import Pod, Runtime
from ambitctl.lab.topology import LabNames
from tests.lab.conftest import MESH_SPEC
from tests.lab.labctl import Lab, running_lab

pytestmark = pytest.mark.lab

# The app: accepts one connection and prints what it got (nothing, if nothing reaches it).
APP = ("import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
       "s.bind(('0.0.0.0', 8080)); s.listen(); s.settimeout(10)\n"
       "try:\n c, _ = s.accept(); c.settimeout(2); print(c.recv(100).decode(), flush=True)\n"
       "except OSError: pass\n")


def start_app(lab: Lab, rt: Runtime, pod: Pod) -> subprocess.Popen[str]:
    """The pod's app, in its netns and cgroup (as the runtime starts a container), once listening."""
    app = subprocess.Popen([sys.executable, "-c", APP], stdout=subprocess.PIPE, text=True,
                           preexec_fn=preexec_enter(rt.netns(pod), rt.cgroup(pod)))
    lab.wait_for(lambda: b":1F90 " in subprocess.run(["ip", "netns", "exec", rt.netns(pod).name, "cat", "/proc/net/tcp"],
                                                     capture_output=True).stdout, 10, 0.1, "the app listening")
    return app


def plaintext(netns: str, ip: str, payload: str) -> None:
    """Connect from outside the mesh (a non-enrolled pod's netns, this test's own cgroup) and send."""
    s = socket_in(netns)
    s.settimeout(3)
    try:
        s.connect((ip, 8080))
        s.sendall(payload.encode())
    except OSError:
        pass
    finally:
        s.close()


def test_an_agent_restart_keeps_a_pod_captured_at_sandbox_creation_before_it_runs(lab: Lab) -> None:
    rt = Runtime.for_lab(lab.dir)
    net = rt.nodes["node1"]["pod_cidr"].rsplit(".", 1)[0]
    pod = Pod(name="pending", namespace="demo", node="node1", ip=f"{net}.240", service_account="client",
              labels={"app": "pending"})
    pins = Path("/sys/fs/bpf/ambit") / lab.name / "node1" / "pods" / pod.uid
    status = components.agent_status_file(lab.dir, "node1")
    rt.create(pod)                                   # CNI ADD: captured; the API still says Pending
    app = None
    try:
        assert pins.is_dir(), "the plugin's ADD should have captured the pod"
        old = lab.proc_pid("agent/node1")
        assert old
        killed_at = time.time()
        os.kill(old, signal.SIGKILL)
        lab.wait_for(lambda: (lab.proc_pid("agent/node1") or old) != old, 30, 0.2, "the agent restarted")

        def rewritten() -> bool:
            # The new agent's own status (its time stamp is after the kill): read by content, not by
            # mtime, which the new agent may have changed before this test read it.
            try:
                return json.loads(status.read_text()).get("time", 0) > killed_at
            except (OSError, ValueError):
                return False
        lab.wait_for(rewritten, 60, 0.2, "the new agent's first reconcile")
        assert pins.is_dir(), "the restarted agent removed the capture of a pod that has not started yet"
        # Its app starts now, and a pod outside the mesh connects to it in plaintext.
        app = start_app(lab, rt, pod)
        token = f"AGF-{uuid.uuid4().hex[:12]}"
        plaintext(lab.pod("demo/optout")["netns"], pod.ip, token)
        out, _ = app.communicate(timeout=30)
        assert token not in out, "plaintext from outside the mesh reached the pod's app, bypassing ztunnel"
    finally:
        if app is not None and app.poll() is None:
            app.kill()
            app.wait()
        rt.remove(pod)
    lab.wait_for(lambda: not pins.exists(), 30, 0.2, "the removed pod unenrolled")


def agent_probe() -> tuple[int, str]:
    """(port, path) of the agent container's readiness probe as deploy/ambit.yaml renders it."""
    from ambitctl.commands import install
    ds = next(d for d in install.objects(install.parse([])) if d["kind"] == "DaemonSet")
    agent = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")
    get = agent["readinessProbe"]["httpGet"]
    return int(get["port"]), get["path"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The mesh lab, its agents serving the manifest's probe port (the lab's do not by default: a
    surge roll runs two agents of a node in its netns), so the kubelet's probe can be asked here."""
    port, _ = agent_probe()
    with running_lab(tmp_path_factory.mktemp("af"), "af", MESH_SPEC, "agent-faults-lab",
                     env={AGENT_ARGS_ENV: f"--metrics-port {port}"}) as lab:
        yield lab


def probe(lab: Lab, node: str) -> tuple[int, str]:
    """The kubelet's httpGet probe of the node's agent, from the node pod's netns: (status, body);
    status 0 when nothing answers (connection refused)."""
    port, path = agent_probe()
    r = subprocess.run(["ip", "netns", "exec", LabNames(lab.name).node_netns(node), "curl", "-s", "-m", "3",
                        "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def test_a_restarted_agent_is_not_ready_until_it_has_handed_its_pods_to_ztunnel(lab: Lab) -> None:
    """After a container restart the previous run's status file is still in the pod's volume. The
    probe must not pass: the new agent is ready only once it has done its own first reconcile (eBPF
    loaded, the node's pods handed to ztunnel). ztunnel is stopped (SIGSTOP) so the new agent cannot
    get that far; the lab's own check (the status file's writer stamp) says the same."""
    status = components.agent_status_file(lab.dir, "node1")
    assert probe(lab, "node1")[0] == 200, "the running agent should be ready"
    zt = lab.proc_pid("ztunnel/node1")
    old = lab.proc_pid("agent/node1")
    assert zt and old
    started = lab.log("agent", "node1").count("eBPF programs ready")
    os.killpg(zt, signal.SIGSTOP)
    try:
        os.kill(old, signal.SIGKILL)
        lab.wait_for(lambda: (lab.proc_pid("agent/node1") or old) != old, 30, 0.2, "the agent restarted")
        # Past its start (eBPF loaded, adopted the pinned pods, serving), now waiting for ztunnel.
        lab.wait_for(lambda: lab.log("agent", "node1").count("eBPF programs ready") > started, 60, 0.5,
                     "the new agent's start")
        lab.wait_for(lambda: probe(lab, "node1")[0] != 0, 30, 0.2, "the new agent's probe port answering")
        status_code, body = probe(lab, "node1")
        assert status_code == 503, f"the probe passed on an agent that has not handed its pods to ztunnel: {body}"
        assert "first reconcile" in json.loads(body)["reason"]
        assert "previous run" in (readymark.file_problem(status) or ""), "the killed agent's file is there"
        assert "agent/node1" in components.not_ready(lab_state(lab), lab.dir)
    finally:
        os.killpg(zt, signal.SIGCONT)
    lab.wait_for(lambda: probe(lab, "node1")[0] == 200, 60, 0.2, "the new agent ready once ztunnel answers")
    assert "agent/node1" not in components.not_ready(lab_state(lab), lab.dir)


def lab_state(lab: Lab):  # noqa: ANN201
    from ambitctl.lab import state
    return state.load(lab.dir)


def test_plaintext_control_reaches_an_uncaptured_app(lab: Lab) -> None:
    """The probe above can see a bypass: the same connection reaches an app that is not captured."""
    rt = Runtime.for_lab(lab.dir)
    net = rt.nodes["node1"]["pod_cidr"].rsplit(".", 1)[0]
    pod = Pod(name="uncaptured", namespace="legacy", node="node1", ip=f"{net}.241", service_account="default")
    rt.create(pod)
    app = start_app(lab, rt, pod)
    try:
        token = f"AGF-{uuid.uuid4().hex[:12]}"
        plaintext(lab.pod("demo/optout")["netns"], pod.ip, token)
        out, _ = app.communicate(timeout=30)
        assert token in out
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        rt.remove(pod)



def test_a_bad_ztunnel_cgroup_is_a_message_naming_the_flag_not_a_traceback(tmp_path: Path) -> None:
    """An agent given a --ztunnel-cgroup that is no cgroup stops with one line that names the flag."""
    r = subprocess.run([sys.executable, "-m", "agent", "--node", "node1", "--zds-socket", str(tmp_path / "zds"),
                        "--ztunnel-cgroup", str(tmp_path / "no-such-cgroup"), "--node-ip", "10.0.0.1",
                        "--store", str(tmp_path / "store.json"), "--pin-base", str(tmp_path / "pins")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--ztunnel-cgroup" in r.stderr and "Traceback" not in r.stderr, r.stderr
