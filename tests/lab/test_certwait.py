"""An inbound HBONE handshake for a pod whose certificate is still on its way waits for it (up to
the handshake deadline) instead of being refused: a CA that is slow or briefly stopped costs a
slow connection, not a failed one. docs/security.md, "Certificates not there yet".

The scenario: a new pod with an identity ztunnel holds no certificate for, whose Workload the
other node already has (so its clients speak HBONE to it), while the CA (the controller) does not
answer. To get there the node's agent is held (SIGSTOP) while the pod is created and reported
Running, so the controller pushes the Workload before node1's ztunnel hears of the pod; then the
controller is stopped and the agent let go: ztunnel serves the pod and asks the CA in vain. A mesh
client on node2 connects; the controller resumes a moment later; the connection must succeed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ambit.dataplane import endpoint
from ambitctl.lab import components
from ambitctl.lab.runtime import Pod, Runtime
from tests.lab.labctl import REPO, Lab
from tests.lab.test_readiness import serving

pytestmark = pytest.mark.lab

IDENTITY = "spiffe://cluster.local/ns/demo/sa/late-identity"


def knows(lab: Lab, node: str, ip: str) -> bool:
    status, doc = endpoint.get_json(components.ztunnel_admin_socket(lab.dir, node), "/workloads", timeout=2.0)
    return status == 200 and f'"{ip}"' in json.dumps(doc)


def missing_certificates(lab: Lab, node: str) -> list[str]:
    """The identities `node`'s ztunnel serves a pod of without a certificate (its readiness body)."""
    _status, body = endpoint.get_json(components.ztunnel_admin_socket(lab.dir, node), "/healthz/ready",
                                      timeout=2.0)
    return list((body or {}).get("certificates_missing", []))


def test_inbound_handshake_waits_for_a_certificate_the_ca_is_late_with(lab: Lab) -> None:
    rt = Runtime.for_lab(lab.dir)
    net = rt.nodes["node1"]["pod_cidr"].rsplit(".", 1)[0]
    ip = f"{net}.243"
    pod = Pod(name="late", namespace="demo", node="node1", ip=ip, service_account="late-identity",
              labels={"app": "late"})
    agent, ctl = lab.proc_pid("agent/node1"), lab.proc_pid("controller")
    assert agent and ctl
    stopped: list[int] = []

    def stop(pgid: int) -> None:
        os.killpg(pgid, signal.SIGSTOP)
        stopped.append(pgid)

    def cont(pgid: int) -> None:
        if pgid in stopped:
            os.killpg(pgid, signal.SIGCONT)
            stopped.remove(pgid)

    app = None
    created = threading.Thread(target=rt.create, args=(pod,), daemon=True)
    try:
        stop(agent)                 # the CNI ADD waits for the agent: ztunnel does not hear of the pod
        created.start()
        lab.wait_for(lambda: rt.netns(pod).exists(), 10, 0.1, "the pod's sandbox")
        time.sleep(0.5)             # the lab network's veth (the chain's first plugin)
        app = rt.start(pod, [sys.executable, "-m", "ambitctl.lab.apps.echo", "--port", "8080"])
        lab.wait_for(lambda: knows(lab, "node2", ip), 15, 0.2, "node2 knowing the new Workload")
        stop(ctl)                   # the CA does not answer
        cont(agent)
        created.join(30)
        lab.wait_for(lambda: pod.uid in serving(lab, "node1"), 20, 0.2, "ztunnel serving the new pod")
        assert IDENTITY in missing_certificates(lab, "node1")

        # A mesh client on node2 connects while node1 holds no certificate for the pod.
        curl = subprocess.Popen(
            lab.exec_argv("demo/echo-v2", "curl", "-sS", "-m", "25", f"http://{ip}:8080/"),
            env=lab.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)             # the handshake has arrived and found no certificate
        assert IDENTITY in missing_certificates(lab, "node1")
        cont(ctl)                   # the CA answers: the waiting handshake proceeds
        out, err = curl.communicate(timeout=60)
        assert curl.returncode == 0, f"the connection failed instead of waiting: {err.strip()}"
        assert json.loads(out.splitlines()[0]), out
    finally:
        for pgid in list(stopped):
            cont(pgid)
        created.join(30)
        if app is not None:
            app.kill()
            app.wait()
        rt.remove(pod)

