"""The cluster path of the e2e driver (`KubeDriver`, real kubectl) against the API-server emulator.

The emulator holds what `ambit install --dry-run` renders and vagrant/manifests/demo-apps.yaml, with
the pods scheduled and their status written as the kubelet would. Everything the scenarios do
through kubectl runs here for real: waiting for the rollout and the pods, pod IPs and nodes,
labelling a namespace, and reading each node's ztunnel access log (`kubectl logs`). What needs a
kubelet is left to the Vagrant cluster: `kubectl exec` (curl in a pod) is an SPDY/WebSocket stream
the emulator does not serve, so `http_get`/`captured` run only there.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.driver import KubeDriver, access_log, outbound_from
from tests.support.kube_emulator import KubeEmulator

REPO = Path(__file__).resolve().parents[3]
NODES = ("ambit-cp", "ambit-w1", "ambit-w2")
NS = "ambit-system"


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@functools.cache
def rendered() -> str:
    """`ambit install --dry-run`, once per run (seconds of start-up on a busy machine)."""
    return subprocess.run([sys.executable, "-m", "ambitctl.cli", "install", "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True).stdout


def ready(pod: dict, node: str, ip: str) -> dict:
    pod["spec"]["nodeName"] = node
    pod["status"] = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                     "conditions": [{"type": "Ready", "status": "True"}]}
    return pod


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[KubeEmulator, KubeDriver]]:
    assert shutil.which("kubectl"), "kubectl is not installed: scripts/setup.sh (make setup) installs it"
    emu = KubeEmulator(apply_selectors=True).start()   # kubectl get -l / --field-selector
    try:
        ds = None
        for d in docs(rendered()):
            if d["kind"] in ("Namespace", "DaemonSet", "Deployment", "ServiceAccount", "Service"):
                emu.create(d)
            if d["kind"] == "DaemonSet":
                ds = d
        assert ds is not None
        # The rollout done, as the controllers would report it.
        emu.apply({**emu.get("apps/v1", "DaemonSet", "ambit-node", NS), "status": {
            "observedGeneration": 1, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
            "updatedNumberScheduled": 3, "numberReady": 3, "numberAvailable": 3}})
        emu.apply({**emu.get("apps/v1", "Deployment", "ambit-controller", NS), "status": {
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
            "availableReplicas": 1}})
        # One node pod per node, from the DaemonSet's own template (its labels are what logs() selects).
        tmpl = ds["spec"]["template"]
        for i, node in enumerate(NODES):
            emu.create(ready({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"ambit-node-{i}", "namespace": NS, "labels": tmpl["metadata"]["labels"]},
                "spec": json.loads(json.dumps(tmpl["spec"]))}, node, f"192.168.56.{10 + i}"))
        for i, d in enumerate(docs((REPO / "vagrant" / "manifests" / "demo-apps.yaml").read_text())):
            if d["kind"] == "Pod":
                d = ready(d, d["spec"]["nodeSelector"]["kubernetes.io/hostname"], f"10.42.0.{10 + i}")
            emu.create(d)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emu",
            "clusters": [{"name": "emu", "cluster": {"server": emu.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u"}}]}))
        monkeypatch.setenv("HOME", str(tmp_path))          # kubectl's discovery cache
        yield emu, KubeDriver(str(kubeconfig))
    finally:
        emu.stop()


def test_wait_mesh_ready_waits_for_every_demo_pod_then_returns(cluster: tuple[KubeEmulator, KubeDriver]) -> None:
    emu, d = cluster
    pod = emu.get("v1", "Pod", "client", "legacy")
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    emu.apply(pod)
    with pytest.raises(AssertionError, match="kubectl wait -n legacy"):
        d.wait_mesh_ready(timeout=2)
    pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    emu.apply(pod)
    d.wait_mesh_ready(timeout=30)


def test_wait_mesh_ready_waits_for_the_node_daemonset_rollout(cluster: tuple[KubeEmulator, KubeDriver]) -> None:
    emu, d = cluster
    ds = emu.get("apps/v1", "DaemonSet", "ambit-node", NS)
    ds["status"]["numberAvailable"] = 2
    emu.apply(ds)
    with pytest.raises(AssertionError, match="daemonset/ambit-node"):
        d.wait_mesh_ready(timeout=2)


def test_pod_ip_and_node_come_from_the_cluster(cluster: tuple[KubeEmulator, KubeDriver]) -> None:
    emu, d = cluster
    for ns, name, node in (("demo", "client", "ambit-w1"), ("demo", "echo-v2", "ambit-w2"),
                           ("legacy", "client", "ambit-w2")):
        assert d.node_of(f"{ns}/{name}") == node
        assert d.pod_ip(f"{ns}/{name}") == emu.get("v1", "Pod", name, ns)["status"]["podIP"]
    with pytest.raises(AssertionError, match="not found"):
        d.pod_ip("demo/nope")


def test_labelling_a_namespace_sets_and_removes_the_label(cluster: tuple[KubeEmulator, KubeDriver]) -> None:
    emu, d = cluster
    d.label_namespace("legacy", "ambit.io/dataplane-mode=ambient")
    assert emu.get("v1", "Namespace", "legacy", "")["metadata"]["labels"] == {"ambit.io/dataplane-mode": "ambient"}
    d.label_namespace("legacy", "ambit.io/dataplane-mode-")
    assert not emu.get("v1", "Namespace", "legacy", "")["metadata"].get("labels")


def test_scenarios_read_the_access_log_of_the_clients_node(cluster: tuple[KubeEmulator, KubeDriver]) -> None:
    emu, d = cluster
    mine = {"direction": "outbound", "src.namespace": "demo", "src.workload": "client", "dst.addr": "10.42.0.10:8080"}
    other = {**mine, "src.workload": "optout"}
    emu.write_log(NS, "ambit-node-1", "ztunnel", "ztunnel ready\n" + "".join(
        f"2026-01-01T00:00:00Z access {json.dumps(r)}\n" for r in (mine, other)))
    emu.write_log(NS, "ambit-node-1", "agent", f"access {json.dumps(other)}\n")      # not ztunnel's
    emu.write_log(NS, "ambit-node-2", "ztunnel", f"access {json.dumps(mine)}\n")     # another node
    assert access_log(d, "ambit-w1") == [mine, other]
    assert outbound_from(d, "demo/client") == [mine]
    assert outbound_from(d, "demo/client", since=1) == []
    assert access_log(d, "ambit-cp") == []


def test_logs_needs_exactly_one_node_pod_on_the_node(cluster: tuple[KubeEmulator, KubeDriver]) -> None:
    emu, d = cluster
    emu.delete("v1", "Pod", "ambit-node-2", NS)
    with pytest.raises(AssertionError, match="expected one ambit-node pod on ambit-w2"):
        d.logs("ztunnel", "ambit-w2")
