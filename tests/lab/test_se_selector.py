"""A ServiceEntry's `workloadSelector` in the lab: mesh pods given a host name of their own.

`echo.internal` selects the demo pods labelled se-test=on (echo-v1 on node1, echo-v2 on node2); the
`excluded` pod, which serves the same port name, carries se-test=off. The client only knows the
name: its DNS query is captured to ztunnel's DNS proxy, which answers the entry's auto-allocated
address; ztunnel balances the connection over the selected pods, over HBONE, on the pods' port
named like the entry's (8080 for the entry's 80). A pod relabelled out leaves the rotation. Real
eBPF capture, real curl, real ztunnels; the lab is left as found (labels and entry removed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from ambit.labstore import LabStore
from tests.lab.labctl import Lab

pytestmark = pytest.mark.lab

HOST = "echo.internal"
LABEL = "se-test"
PODS = ("echo-v1", "echo-v2", "excluded")


def entry() -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "echo-internal", "namespace": "demo"},
            "spec": {"hosts": [HOST], "location": "MESH_INTERNAL", "resolution": "STATIC",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                     "workloadSelector": {"labels": {LABEL: "on"}}}}


def label(lab: Lab, pod: str, value: str | None) -> None:
    store = LabStore(lab.dir / "store.json")
    store.patch_labels("Pod", "demo", pod, {LABEL: value} if value else {}, [] if value else [LABEL])


def answered_by(lab: Lab, n: int) -> list[str]:
    """The pods that answered `n` requests to the host by name (curl's own resolver, no --resolve)."""
    out = []
    for i in range(n):
        p = lab.exec("demo/client", "curl", "-sS", "--fail", "-m", "5", f"http://{HOST}/n{i}", timeout=35)
        out.append(json.loads(p.stdout.splitlines()[0])["pod"] if p.returncode == 0 else f"error {p.returncode}")
    return out


@pytest.fixture
def selected(lab: Lab) -> Iterator[None]:
    try:
        for pod, value in zip(PODS, ("on", "on", "off"), strict=True):
            label(lab, pod, value)
        lab.ambit("apply", "-f", "-", "--wait", input=yaml.safe_dump(entry()))
        yield
    finally:
        lab.ambit("delete", "-f", "-", "--ignore-not-found", "--wait", input=yaml.safe_dump(entry()), check=False)
        for pod in PODS:
            label(lab, pod, None)


def test_a_service_entry_selects_mesh_pods_by_label_reached_by_name_over_hbone(lab: Lab, selected: None) -> None:
    got = yaml.safe_load(lab.ambit("get", "serviceentry", "echo-internal", "-n", "demo", "-o", "yaml").stdout)
    vip = next(a["value"] for a in (got.get("status") or {}).get("addresses") or [] if a.get("host") == HOST)
    dig = lab.wait_for(lambda: (p := lab.exec("demo/client", "dig", "+time=2", "+tries=1", "+short", HOST)).returncode == 0
                       and p.stdout.split() == [vip], timeout=15, what="the DNS proxy to answer the entry's host")
    assert dig

    before = len(lab.access_log("node1"))
    seen = lab.wait_for(lambda: (s := answered_by(lab, 6)) and set(s) == {"echo-v1", "echo-v2"} and s,
                        timeout=15, what="both selected pods to answer the host")
    assert "excluded" not in seen
    recs = [r for r in lab.access_log("node1")[before:] if r["direction"] == "outbound" and r.get("dst.service") == HOST]
    assert recs and {r["route"] for r in recs} == {"hbone"}, recs
    assert {r["dst.workload"] for r in recs} >= {"echo-v1", "echo-v2"}

    label(lab, "echo-v2", "off")        # relabelled out: it leaves the host's rotation
    lab.wait_for(lambda: set(answered_by(lab, 4)) == {"echo-v1"}, timeout=15, what="echo-v2 to leave the host")
    assert set(answered_by(lab, 6)) == {"echo-v1"}
