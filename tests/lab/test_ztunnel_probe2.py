"""Hostile HBONE peers the first probe (test_hbone_hostile.py) missed, in the lab with real TLS and
a real mesh certificate, from legacy/client (node2, not in the mesh) against echo-v1's :15008:

- MadeYouReset (CVE-2025-8671): CONNECTs each followed by a protocol error that makes ztunnel reset
  the stream itself (WINDOW_UPDATE of 0, a window overflow, DATA after END_STREAM). Each stream
  cost ztunnel a tunnel set up and torn down, like rapid reset, but spent none of its budget.
- A flood of PINGs or SETTINGS whose answers the peer never reads (CVE-2019-9512/9515): ztunnel's
  TLS write buffer grew with every one (+140 MB RSS in 10 s).
- A connection to a port nothing listens on hung until ztunnel's connect timeout: the pod's RST
  left by eth0 instead of coming back to ztunnel.
- A ztunnel restarted without its config cache while the controller does not answer served its
  pods with an empty config: plaintext reached a STRICT pod.

The sans-IO counterparts are tests/unit/ztunnel/test_hbone_probe2.py and
tests/unit/dataplane/test_hbone_unread.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import MESH_SPEC
from tests.lab.labctl import REPO, Lab, running_lab
from tests.lab.test_hbone_hostile import (  # noqa: F401 (fixtures)
    ATTACKER,
    ENHANCE_YOUR_CALM,
    TARGET,
    baseline,
    bystander,
    cert,
    ip,
    settle,
    tool,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def hlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab of this module's own, always torn down; `cert` and `baseline` use it. (Its prefix is
    letters only: the pid follows, and `sweep_stale` reads it back to tell a dead run's lab.)"""
    with running_lab(tmp_path_factory.mktemp("zpb"), "zpb", MESH_SPEC, "ztunnel-probe2-lab") as lab:
        yield lab


def probe(lab: Lab, *args: str, timeout: float = 180) -> dict[str, Any]:
    """One tests/lab/probe2_tools.py mode in the attacker's pod; its JSON result."""
    argv = lab.exec_argv(ATTACKER, sys.executable, "-m", "tests.lab.probe2_tools", *args)
    p = subprocess.run(argv, env=lab.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert p.returncode == 0 and lines, f"probe2_tools {args[0]} failed ({p.returncode}): {p.stderr[-2000:]}"
    return json.loads(lines[-1])


def ztunnel_rss_kib(lab: Lab, node: str = "node1") -> int:
    pid = lab.proc_pid(f"ztunnel/{node}")
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:"))


@pytest.mark.parametrize("kind", ["window-update-0", "window-overflow", "data-after-end"])
def test_streams_a_peer_makes_ztunnel_reset_end_in_goaway(hlab: Lab, cert: str, baseline: int,  # noqa: F811
                                                          kind: str) -> None:
    target = ip(hlab, TARGET)
    # Positive control: the attacker's certificate and path work (a normal CONNECT gets 200).
    ok = tool(hlab, ATTACKER, "connect", "--cert", cert, "--ip", target, "--authority", f"{target}:8080")
    assert ok["statuses"] == {f"{target}:8080": 200}
    with bystander(hlab):
        for _ in range(3):
            r = probe(hlab, "made-you-reset", "--kind", kind, "--cert", cert, "--ip", target,
                      "--authority", f"{target}:8080")
            assert r["goaway"] == ENHANCE_YOUR_CALM, r
            assert 300 <= r["streams"] < 5000, r        # the reset budget (burst 400) ended it
    # Positive control: the streams did reach ztunnel's tunnel handler before it reset them, and
    # its access log says who reset them and why (not "reset by the peer").
    assert any("reset by us" in x.get("error", "") and "for the peer's protocol error" in x.get("error", "")
               for x in hlab.access_log("node1"))
    settle(hlab, baseline, f"made-you-reset {kind}")


@pytest.mark.parametrize("frame", ["ping", "settings"])
def test_a_peer_that_floods_frames_and_never_reads_the_answers_is_cut_off(hlab: Lab, cert: str,  # noqa: F811
                                                                           baseline: int, frame: str) -> None:  # noqa: F811
    target = ip(hlab, TARGET)
    rss = ztunnel_rss_kib(hlab)
    with bystander(hlab):
        r = probe(hlab, "unread-flood", "--frame", frame, "--cert", cert, "--ip", target, "--mib", "100")
    # Cut off after a bounded number of unread answers, long before the 100 MiB it would send.
    assert r["cut"], r
    assert r["sent_mib"] < 50, r
    grown = ztunnel_rss_kib(hlab) - rss
    assert grown < 64 * 1024, f"ztunnel grew by {grown // 1024} MiB during the flood: {r}"
    assert any("peer does not read" in ln for ln in (hlab.dir / "logs" / "ztunnel-node1.log").read_text().splitlines())
    settle(hlab, baseline, f"unread {frame} flood")


# demo/client: a mesh pod, so HBONE to echo-v1's ztunnel; legacy/client: plaintext into :15006.
@pytest.mark.parametrize("client", ["demo/client", ATTACKER])
def test_a_port_nothing_listens_on_is_refused_at_once_through_either_door(hlab: Lab, client: str) -> None:
    """ztunnel's delivery SYN to a closed port is answered by the pod's kernel with a RST, which
    must come back to ztunnel (fwmark_reflect) rather than leave towards the real client: then the
    client is refused at once (curl exit 7 or 56), not left hanging until ztunnel's 10 s connect
    timeout (curl's 8 s timeout, exit 28)."""
    target = ip(hlab, TARGET)
    assert hlab.curl_rc(client, f"http://{target}:8080/") == 0, "control: the app's port answers"
    rc = hlab.curl_rc(client, f"http://{target}:9999/", timeout=8)
    assert rc in (7, 56), f"{client} -> {target}:9999: curl exit {rc} (28: hung until the timeout)"
    refused = [x for x in hlab.access_log("node1")
               if x.get("dst.addr") == f"{target}:9999" and "refused" in x.get("error", "")]
    assert refused, "ztunnel's access log names the refusal"


STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: probe2-strict, namespace: demo}
spec: {mtls: {mode: STRICT}}
"""


def test_a_ztunnel_without_any_config_serves_no_pod_rather_than_serve_it_without_policy(
        hlab: Lab, tmp_path: Path) -> None:
    """ztunnel restarted with no config cache (a new DaemonSet pod: the cache is in an emptyDir)
    while the controller does not answer (SIGSTOP): until the config arrives it must not admit
    plaintext to a STRICT pod. It takes no pod at all meanwhile (the capture drops, as while
    ztunnel is down); once the controller answers, the mesh works and STRICT holds."""
    target = ip(hlab, TARGET)
    spec = tmp_path / "strict.yaml"
    spec.write_text(STRICT)
    hlab.ambit("apply", "-f", str(spec))
    try:
        hlab.wait_for(lambda: hlab.curl_rc(ATTACKER, f"http://{target}:8080/") != 0, 30, 0.5,
                      "control: STRICT refuses plaintext")
        ctrl, zt = hlab.proc_pid("controller"), hlab.proc_pid("ztunnel/node1")
        assert ctrl and zt
        log = hlab.dir / "logs" / "ztunnel-node1.log"
        start = len(log.read_text())
        os.kill(ctrl, signal.SIGSTOP)
        try:
            (hlab.dir / "node1" / "config-cache.json").unlink()
            os.kill(zt, signal.SIGKILL)
            hlab.wait_for(lambda: hlab.proc_pid("ztunnel/node1") not in (None, zt), 30, 0.5, "ztunnel restarted")
            hlab.wait_for(lambda: any(m in log.read_text()[start:] for m in ("waiting for the first mesh config",
                                                                             "serving pod demo/echo-v1")),
                          30, 0.5, "the new ztunnel to wait for its config (or to take its pods)")
            rc = hlab.curl_rc(ATTACKER, f"http://{target}:8080/")
            assert rc != 0, "plaintext reached a STRICT pod while ztunnel had no config"
        finally:
            os.kill(ctrl, signal.SIGCONT)
        hlab.wait_for(lambda: hlab.curl_rc("demo/client", f"http://{target}:8080/") == 0, 60, 0.5,
                      "mesh traffic once the controller answers")
        assert hlab.curl_rc(ATTACKER, f"http://{target}:8080/") != 0, "STRICT after the config arrived"
    finally:
        hlab.ambit("delete", "-f", str(spec))
