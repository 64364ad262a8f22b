"""Readiness as the kubelet's probes read it (deploy/ambit.yaml), asked of real lab processes: a
node's ztunnel is not ready while it holds no certificate for a pod handed to it, since it refuses
that pod's inbound handshakes meanwhile; once the CA answers it is. docs/operations.md, "Readiness"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ambit.dataplane import endpoint
from ambitctl.commands import install
from ambitctl.lab import components
from ambitctl.lab.runtime import Pod, Runtime
from tests.lab.labctl import Lab

pytestmark = pytest.mark.lab


def ztunnel_probe(lab: Lab, node: str) -> list[str]:
    """ztunnel's readiness probe as the manifest renders it, pointed at the lab node's admin socket."""
    ds = next(d for d in install.objects(install.parse([])) if d["kind"] == "DaemonSet")
    zt = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "ztunnel")
    cmd = list(zt["readinessProbe"]["exec"]["command"])
    cmd[cmd.index("--unix-socket") + 1] = str(components.ztunnel_admin_socket(lab.dir, node))
    return cmd


def serving(lab: Lab, node: str) -> set[str]:
    status, doc = endpoint.get_json(components.ztunnel_admin_socket(lab.dir, node), "/pods", timeout=2.0)
    return {p["uid"] for p in (doc or {}).get("serving", [])} if status == 200 else set()


def test_ztunnel_is_not_ready_while_a_pod_it_serves_has_no_certificate(lab: Lab) -> None:
    probe = ztunnel_probe(lab, "node1")
    assert subprocess.run(probe, capture_output=True).returncode == 0, "ztunnel/node1 should be ready"
    rt = Runtime.for_lab(lab.dir)
    net = rt.nodes["node1"]["pod_cidr"].rsplit(".", 1)[0]
    pod = Pod(name="fresh", namespace="demo", node="node1", ip=f"{net}.242", service_account="fresh-identity",
              labels={"app": "fresh"})
    identity = "spiffe://cluster.local/ns/demo/sa/fresh-identity"
    ctl = lab.proc_pid("controller")
    assert ctl
    os.killpg(ctl, signal.SIGSTOP)          # the CA does not answer (the config stays synced)
    app = None
    try:
        rt.create(pod)                      # CNI ADD: the agent hands the pod to ztunnel
        app = rt.start(pod, [sys.executable, "-c", "import time; time.sleep(600)"])   # Running, with its IP
        lab.wait_for(lambda: pod.uid in serving(lab, "node1"), 30, 0.2, "ztunnel serving the new pod")
        status, body = endpoint.get_json(components.ztunnel_admin_socket(lab.dir, "node1"), "/healthz/ready")
        assert status == 503 and body["synced"] is True, body
        assert identity in body["certificates_missing"], body
        assert subprocess.run(probe, capture_output=True).returncode != 0, "the kubelet's probe passed"
        assert not components.ztunnel_ready(lab.dir, "node1")
    finally:
        os.killpg(ctl, signal.SIGCONT)
        try:
            lab.wait_for(lambda: subprocess.run(probe, capture_output=True).returncode == 0, 90, 0.5,
                         "ztunnel ready once its certificate arrived")
        finally:
            if app is not None:
                app.kill()
                app.wait()
            rt.remove(pod)
