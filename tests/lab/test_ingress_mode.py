"""Ingress mode in a real lab (real capture, real ztunnels, curl): an enrolled pod annotated
`ambient.istio.io/bypass-inbound-capture: "true"` under STRICT takes plaintext from a client outside
the mesh, which its captured neighbour refuses; its own outbound still leaves through ztunnel as
HBONE, a mesh client still reaches it over HBONE, and turning the annotation off on the running pod
restores capture. Both capture modes: eBPF and the iptables baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambit.labstore import LabStore
from tests.lab.labctl import Lab, running_lab
from tests.lab.test_capture_holes import SQUAT

pytestmark = pytest.mark.lab

SPEC = Path(__file__).parent / "specs" / "ingress_mode.yaml"
BYPASS = "ambient.istio.io/bypass-inbound-capture"
STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "strict", "namespace": "edge"}, "spec": {"mtls": {"mode": "STRICT"}}}
BACKEND = "http://backend.edge.svc.cluster.local:8080/"


@pytest.fixture(scope="module", params=["ebpf", "iptables"])
def ilab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    mode = request.param
    with running_lab(tmp_path_factory.mktemp(f"im-{mode}"), "imebpf" if mode == "ebpf" else "imipt", SPEC,
                     f"ingress-mode-{mode}", "--capture", mode) as lab:
        p = lab.ambit("apply", "-f", "-", "--wait", input=yaml.safe_dump(STRICT))
        lab.applied = p.stderr          # type: ignore[attr-defined]
        lab.wait_for(lambda: plain_rc(lab, "edge/app") != 0, timeout=15, what="STRICT in force on edge/app")
        yield lab


def url(lab: Lab, pod: str, port: int = 8080) -> str:
    return f"http://{lab.pod(pod)['ip']}:{port}/"


def plain_rc(lab: Lab, pod: str) -> int:
    """curl's exit code from the legacy (non-mesh) client to `pod`, in plaintext."""
    return lab.curl_rc("legacy/client", url(lab, pod), timeout=2)


def inbound_note(lab: Lab) -> str:
    capture = lab.pod("edge/gateway")["capture"]
    return capture.get("inbound", "") if isinstance(capture, dict) else ""


def set_bypass(lab: Lab, value: str) -> None:
    def fn(cur: dict) -> list:
        key = ("Pod", "edge", "gateway")
        cur[key]["metadata"].setdefault("annotations", {})[BYPASS] = value
        return [key]
    LabStore(lab.dir / "store.json").mutate(fn)


def access(lab: Lab, node: str, since: int, **match: Any) -> list[dict[str, Any]]:
    return [r for r in lab.access_log(node)[since:] if all(r.get(k) == v for k, v in match.items())]


def test_apply_warns_that_strict_does_not_cover_the_ingress_mode_pod(ilab: Lab) -> None:
    assert ("Warning: PeerAuthentication/edge/strict: spec.mtls.mode: does not apply to the plaintext inbound of "
            "edge/gateway") in ilab.applied     # type: ignore[attr-defined]
    note = inbound_note(ilab)
    assert BYPASS in note and "STRICT" in note, ilab.pod("edge/gateway")
    assert "inbound" not in ilab.pod("edge/app")["capture"]
    assert f"pod edge/gateway: inbound bypassed ({BYPASS}=true)" in ilab.log("agent", "node1")


def test_a_legacy_client_reaches_the_ingress_mode_pod_in_plaintext_not_its_captured_neighbour(ilab: Lab) -> None:
    before = len(ilab.access_log("node1"))
    r = json.loads(ilab.exec("legacy/client", "curl", "-sS", "--fail", "-m", "5", url(ilab, "edge/gateway"),
                             check=True).stdout)
    assert r["peer"].split(":")[0] == ilab.pod("legacy/client")["ip"]     # straight from the client
    assert plain_rc(ilab, "edge/app") != 0                               # STRICT refuses it there
    # ztunnel saw the refused one, and nothing of the one the gateway took itself.
    assert not access(ilab, "node1", before, **{"dst.workload": "gateway"})
    assert ilab.wait_for(lambda: access(ilab, "node1", before, **{"dst.workload": "app"}), timeout=5,
                         what="ztunnel's record of the refused plaintext connection")


def test_its_outbound_still_goes_through_ztunnel_as_hbone(ilab: Lab) -> None:
    before1, before2 = len(ilab.access_log("node1")), len(ilab.access_log("node2"))
    r = ilab.curl("edge/gateway", BACKEND)
    assert r["peer"].split(":")[0] == ilab.pod("edge/gateway")["ip"]
    out = ilab.wait_for(lambda: access(ilab, "node1", before1, direction="outbound", **{"src.workload": "gateway"}),
                        timeout=5, what="the gateway's outbound record")
    assert {x["route"] for x in out} == {"hbone"} and {x["dst.workload"] for x in out} == {"backend"}
    inb = ilab.wait_for(lambda: access(ilab, "node2", before2, route="inbound-hbone", **{"dst.workload": "backend"}),
                        timeout=5, what="the backend's inbound HBONE record")
    assert inb[-1]["src.identity"] == "spiffe://cluster.local/ns/edge/sa/gateway"


def test_a_mesh_client_still_reaches_it_over_hbone(ilab: Lab) -> None:
    before = len(ilab.access_log("node1"))
    r = ilab.curl("edge/client", "http://gateway.edge.svc.cluster.local:8080/")
    assert r["peer"].split(":")[0] == ilab.pod("edge/client")["ip"]       # delivered by ztunnel, source kept
    inb = ilab.wait_for(lambda: access(ilab, "node1", before, route="inbound-hbone", **{"dst.workload": "gateway"}),
                        timeout=5, what="the gateway's inbound HBONE record")
    assert inb[-1]["src.identity"] == "spiffe://cluster.local/ns/edge/sa/client"


@pytest.mark.parametrize("ilab", ["ebpf"], indirect=True)       # the bind guard is an eBPF program
def test_the_pod_still_cannot_take_ztunnels_ports(ilab: Lab) -> None:
    assert ilab.status()["capture"] == "ebpf"
    code = ("import socket\ns = socket.socket()\ntry:\n    s.bind(('0.0.0.0', 15008)); print('bound')\n"
            "except OSError as e:\n    print(f'errno {e.errno}')\n")
    assert ilab.exec("edge/gateway", sys.executable, "-c", code).stdout.strip() == "errno 1"   # EPERM


def test_turning_the_annotation_off_restores_capture_and_on_again_bypasses(ilab: Lab) -> None:
    try:
        set_bypass(ilab, "false")
        ilab.wait_for(lambda: not inbound_note(ilab), timeout=10, what="the agent to re-apply capture")
        assert ilab.wait_for(lambda: plain_rc(ilab, "edge/gateway") != 0, timeout=10,
                             what="STRICT to refuse the legacy client")
        ilab.curl("edge/client", url(ilab, "edge/gateway"))                   # mesh clients, unchanged
    finally:
        set_bypass(ilab, "true")
    ilab.wait_for(lambda: inbound_note(ilab), timeout=10, what="the agent to bypass again")
    assert ilab.wait_for(lambda: plain_rc(ilab, "edge/gateway") == 0, timeout=10, what="plaintext to pass again")


# test_capture_holes.py's squatter (SO_REUSEPORT, as root), on ztunnel's HBONE port
SQUAT_HBONE = SQUAT.replace("15006", "15008")


def set_label(lab: Lab, value: str | None) -> None:
    def fn(cur: dict) -> list:
        key = ("Pod", "edge", "gateway")
        labels = cur[key]["metadata"].setdefault("labels", {})
        if value is None:
            labels.pop("ambit.io/dataplane-mode", None)
        else:
            labels["ambit.io/dataplane-mode"] = value
        return [key]
    LabStore(lab.dir / "store.json").mutate(fn)


def capture_state(lab: Lab) -> str:
    c = lab.pod("edge/gateway")["capture"]
    return c.get("state", "") if isinstance(c, dict) else str(c)


@pytest.mark.parametrize("ilab", ["ebpf"], indirect=True)       # the squatter guard is ambit_tc_in's
def test_a_listener_the_pod_holds_on_15008_gets_no_mesh_traffic_though_plaintext_passes(ilab: Lab) -> None:
    """The squat bind prevention cannot stop (the pod took 15008 while it was not enrolled): ztunnel
    cannot serve it, and mesh clients' HBONE must then be dropped, not handed to the pod's own
    listener; ingress mode lets only the pod's plaintext through."""
    assert ilab.status()["capture"] == "ebpf"
    squatter: subprocess.Popen[str] | None = None
    set_label(ilab, "none")
    try:
        ilab.wait_for(lambda: capture_state(ilab) != "captured", timeout=10, what="the gateway unenrolled")
        squatter = subprocess.Popen(ilab.exec_argv("edge/gateway", sys.executable, "-c", SQUAT_HBONE), env=ilab.env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert squatter.stdout is not None
        assert json.loads(squatter.stdout.readline()) == {"squatting": 15008}
    finally:
        set_label(ilab, None)
    try:
        ilab.wait_for(lambda: capture_state(ilab) == "capture-failed", timeout=15, what="ztunnel's hand-off to fail")
        assert ilab.curl_rc("edge/client", url(ilab, "edge/gateway"), timeout=2) != 0    # HBONE: dropped
        assert plain_rc(ilab, "edge/gateway") == 0                                       # plaintext: the app's
    finally:
        if squatter is not None:
            squatter.kill()
            out, _ = squatter.communicate(timeout=30)
            assert '"peer"' not in out, f"the pod's own listener on 15008 got a connection: {out}"
    ilab.wait_for(lambda: capture_state(ilab) == "captured", timeout=45, interval=0.5, what="captured again")
    ilab.wait_for(lambda: ilab.curl_rc("edge/client", url(ilab, "edge/gateway"), timeout=2) == 0, timeout=15,
                  interval=0.5, what="mesh traffic after the squatter left")
