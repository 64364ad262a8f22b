"""The lab's container runtime hands out no address that a pod already has, as a node's IPAM."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambit.labstore import LabStore
from ambitctl.lab import paths
from ambitctl.lab.runtime import Pod, Runtime


def test_a_pod_is_refused_an_ip_another_pod_has(tmp_path: Path) -> None:
    store = LabStore(paths.store_path(tmp_path))
    store.apply([{"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "waypoint-0", "namespace": "default", "uid": "u1"},
                  "spec": {"nodeName": "node2"},
                  "status": {"phase": "Running", "podIP": "10.210.2.200", "podIPs": [{"ip": "10.210.2.200"}]}}])
    rt = Runtime(tmp_path, "ambit-x", {"node2": {"name": "node2", "underlay_ip": "192.168.0.2"}})
    ghost = Pod(name="ghost", namespace="default", node="node2", ip="10.210.2.200", service_account="denied")
    # Before any sandbox is made (no netns, no cgroup): refused with both pods named.
    with pytest.raises(RuntimeError, match=r"pod default/ghost: IP 10.210.2.200 is in use by pod default/waypoint-0"):
        rt.create(ghost)
    assert [o["metadata"]["name"] for o in store.list("Pod")] == ["waypoint-0"]
