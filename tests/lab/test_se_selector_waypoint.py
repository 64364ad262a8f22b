"""A ServiceEntry `workloadSelector` bound to a waypoint, in the waypoint lab (specs/waypoint.yaml):
namespace `default` uses the waypoint "waypoint" (node2), so the entry `myapp.internal`, selecting
the pod labelled version=v3 (myapp-v3, node2), is served by it. The client resolves the name
through ztunnel's DNS proxy, its ztunnel tunnels to the waypoint, which applies the
AuthorizationPolicy that targets the entry and sends the request on, over HBONE, to the selected
pod only (myapp-v1 and v2 answer the same port and are not selected).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.labctl import Lab, running_lab
from tests.lab.test_waypoint import GATEWAY, SPEC, apply, delete, status_of, waypoints

pytestmark = pytest.mark.lab

HOST = "myapp.internal"
ENTRY: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
    "metadata": {"name": "myapp-internal", "namespace": "default"},
    "spec": {"hosts": [HOST], "location": "MESH_INTERNAL", "resolution": "STATIC",
             "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}],
             "workloadSelector": {"labels": {"app": "myapp", "version": "v3"}}}}
DENY = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "myapp-internal-deny", "namespace": "default"},
        "spec": {"targetRefs": [{"group": "networking.istio.io", "kind": "ServiceEntry", "name": "myapp-internal"}],
                 "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/denied"]}}]}]}}


@pytest.fixture(scope="module")
def selab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    with running_lab(tmp_path_factory.mktemp("sewp"), "sewp", SPEC, "se-selector-waypoint-lab") as lab:
        tmp = tmp_path_factory.mktemp("sewpcfg")
        apply(lab, [GATEWAY], tmp, "gateway")
        lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=30, what="waypoint ready")
        yield lab, tmp


def test_a_selector_entry_bound_to_a_waypoint_reaches_only_its_pods_under_its_policy(selab: tuple[Lab, Path]) -> None:
    lab, tmp = selab
    f = apply(lab, [ENTRY, DENY], tmp, "entry")
    try:
        code, body = lab.wait_for(lambda: (r := status_of(lab, "default/frontend", f"http://{HOST}/ok"))[0] == 200
                                  and r, timeout=15, what="the entry's host through the waypoint")
        pods = {json.loads(body)["pod"]}
        for i in range(5):
            code, body = status_of(lab, "default/frontend", f"http://{HOST}/n{i}")
            assert code == 200, body
            pods.add(json.loads(body)["pod"])
        assert pods == {"myapp-v3"}, "only the selected pod"
        code, body = status_of(lab, "default/frontend", f"http://{HOST}/denied")
        assert code == 403, (code, body)
        # the client's ztunnel sent every connection to the host to the waypoint's pod, over HBONE
        wp_pods = {w["pod"] for w in waypoints(lab)}
        recs = [r for r in lab.access_log("node1") if r["direction"] == "outbound" and r.get("dst.service") == HOST]
        assert recs and {(r["route"], r.get("dst.workload")) for r in recs} <= {("hbone", p) for p in wp_pods}, recs[-1:]
    finally:
        delete(lab, f)
