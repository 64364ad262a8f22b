"""The lab's Prometheus: its config (checked by Debian's promtool when installed), the file_sd
targets with Kubernetes-like labels, and the metrics bridge's fixed path -> socket mapping."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ambitctl.lab import prometheus
from ambitctl.lab.metricsbridge import socket_for
from ambitctl.lab.state import LabState


def lab_state(tmp: Path) -> LabState:
    spec = {"nodes": [{"name": "node1"}, {"name": "node2"}]}
    st = LabState(name="t", lab_dir=str(tmp), spec=spec, prometheus={"port": 9999, "bridge_port": 9998})
    st.waypoints = [{"namespace": "default", "name": "waypoint", "pod": "waypoint-0", "node": "node2"},
                    {"namespace": "shop", "name": "gone", "pod": "gone-0", "node": "node1", "removing": True}]
    return st


def test_targets_carry_kubernetes_like_labels_and_follow_the_waypoints(tmp_path: Path) -> None:
    st = lab_state(tmp_path)
    prometheus.write_targets(tmp_path, st)
    read = {j: json.loads((prometheus.targets_dir(tmp_path) / f"{j}.json").read_text()) for j in prometheus.JOBS}
    assert [g["labels"]["pod"] for g in read["ztunnel"]] == ["ztunnel-node1", "ztunnel-node2"]
    [wp] = read["waypoint"]                             # the one being removed is no target
    assert wp == {"targets": ["127.0.0.1:9998"], "labels": {
        "__metrics_path__": "/waypoint/default/waypoint", "instance": "default/waypoint-0", "namespace": "default",
        "pod": "waypoint-0", "node": "node2", "component": "waypoint", "app": "waypoint", "gateway": "waypoint"}}
    assert read["controller"][0]["labels"]["namespace"] == "ambit-system"
    st.waypoints = []
    prometheus.write_targets(tmp_path, st)
    assert json.loads((prometheus.targets_dir(tmp_path) / "waypoint.json").read_text()) == []
    assert prometheus.url(st) == "http://127.0.0.1:9999"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian's prometheus package is not installed")
def test_the_config_passes_promtool(tmp_path: Path) -> None:
    prometheus.targets_dir(tmp_path).mkdir(parents=True)
    prometheus.write_targets(tmp_path, lab_state(tmp_path))
    prometheus.config_file(tmp_path).write_text(prometheus.config(tmp_path))
    p = subprocess.run(["promtool", "check", "config", str(prometheus.config_file(tmp_path))],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_bridge_reaches_only_the_components_sockets(tmp_path: Path) -> None:
    assert socket_for(tmp_path, "/controller") == tmp_path / "controller.metrics.sock"
    assert socket_for(tmp_path, "/ztunnel/node1") == tmp_path / "node1" / "metrics.sock"
    assert socket_for(tmp_path, "/waypoint/default/waypoint?x=1") == tmp_path / "waypoints" / "default.waypoint.metrics.sock"
    for bad in ("/", "/ztunnel/../../etc", "/ztunnel/..", "/waypoint/a", "/waypoint/a/b/c", "/ztunnel/Node1", "/agent/node1"):
        assert socket_for(tmp_path, bad) is None, bad
