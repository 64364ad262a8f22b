"""A surge roll while the CA is slow: the new ztunnel listens in the pods' netns (SO_REUSEPORT,
beside the old one) before its certificates arrived, and the kernel hands it some of the new
inbound HBONE connections. Those wait for the certificate instead of being reset
(docs/operations.md, "The node pod"; ambit/dataplane/identity/wait.py).

In a cluster the new node pod starts with an empty certificate cache (an emptyDir of its own); the
lab's generations share one, so the test empties it, and holds the CA (SIGSTOP of the controller)
while the new ztunnel comes up from its config cache. An HBONE connection is pooled per source
pod, so traffic that flowed before the roll stays on the old ztunnel's connection: eight pods on
node2 that have not talked to echo-v1 yet each open one during the overlap. The kernel spreads
them over both ztunnels' listeners (all eight on the old one: 1 in 256)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.lab.labctl import AMBIT, REPO
from tests.lab.test_certwait import missing_certificates

pytestmark = pytest.mark.lab

SPEC = Path(__file__).parent / "specs" / "surge_certwait.yaml"
ECHO = "spiffe://cluster.local/ns/demo/sa/echo"
SOURCES = [f"demo/src{i}" for i in range(1, 9)]


def test_surge_roll_while_the_ca_is_slow_refuses_no_new_inbound_connection(fresh_lab) -> None:
    lab = fresh_lab
    lab.up("--spec", str(SPEC))
    target = lab.pod("demo/echo-v1")["ip"]
    ctl = lab.proc_pid("controller")
    assert ctl
    go = lab.dir / "certwait-go"
    # Each source's curl is started now and waits for `go`: started later, the eight `lab exec`
    # processes could take longer than the CA's pause on a busy box.
    curls = [(src, subprocess.Popen(
        lab.exec_argv(src, "sh", "-c",
                      f"while [ ! -e {go} ]; do sleep 0.05; done; curl -sS -o /dev/null -m 25 http://{target}:8080/"),
        env=lab.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) for src in SOURCES]
    roll = None
    stopped = False
    try:
        for f in (lab.dir / "node1" / "certs").glob("*.json"):
            f.unlink()                      # the new node pod's cache starts empty, as in a cluster
        os.killpg(ctl, signal.SIGSTOP)      # the CA does not answer
        stopped = True
        roll = subprocess.Popen([*AMBIT, "lab", "roll", "node1", "--surge"], env=lab.env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The new ztunnel (it took over the admin socket) serves echo-v1 without its certificate.
        lab.wait_for(lambda: ECHO in missing_certificates(lab, "node1"), 60, 0.2,
                     "the new ztunnel serving echo-v1 without a certificate")
        go.touch()
        time.sleep(3.0)                     # their handshakes have arrived, some at the new ztunnel
        os.killpg(ctl, signal.SIGCONT)
        stopped = False
        failed = []
        for src, c in curls:
            _out, err = c.communicate(timeout=60)
            if c.returncode != 0:
                failed.append((src, err.strip()))
        assert failed == [], failed
        out, err = roll.communicate(timeout=120)
        assert roll.returncode == 0 and "rolled (surge)" in out, (out, err)
    finally:
        if stopped:
            os.killpg(ctl, signal.SIGCONT)
        go.touch()                          # no waiting loop outlives the test
        for _src, c in curls:
            if c.poll() is None:
                c.kill()
                c.communicate()
        if roll is not None and roll.poll() is None:
            roll.communicate(timeout=120)
