"""Repairs of uncaptured pods against a real HTTP API server (tests/support/kube_emulator.py), through
the official client: the pod is labelled or deleted, an Event on it says why, and the agent asks for
nothing its RBAC does not grant (`rbac_rules`, which the manifests are rendered from)."""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.__main__ import Agent
from agent.repair import LABEL, Repair, RepairSettings
from agent.repair_kube import CALLS, KubeRepairer, rbac_rules
from ambit.kube.client import make_api_client
from tests.support.kube_emulator import KubeEmulator
from tests.unit.agent.test_agent_capture_retry import FaultyEngine
from tests.unit.agent.test_agent_faults import RecordingLink, ref, view


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator(groups=()) as k:
        k.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh"}})
        yield k


def add_pod(kube: KubeEmulator, name: str, owned: bool = True, node: str = "node1") -> dict:
    md: dict = {"name": name, "namespace": "mesh", "labels": {"app": name}}
    if owned:
        rs = kube.apply({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web", "namespace": "mesh"}})
        md["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                                  "uid": rs["metadata"]["uid"], "controller": True}]
    return kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": {"nodeName": node},
                        "status": {"phase": "Running", "podIP": "10.0.0.5"}})


def events(kube: KubeEmulator, uid: str) -> list[dict]:
    return [e for (_, (g, plural), t, e) in kube._events if plural == "events" and t == "ADDED"
            and e["involvedObject"]["uid"] == uid]


def repairer(kube: KubeEmulator) -> KubeRepairer:
    return KubeRepairer(make_api_client(kube.url), "node1")


WHY = "capture has failed 7 times over 61s: OSError: [Errno 7] Argument list too long: ambit_pods"


def test_label_marks_the_pod_and_records_a_warning_event_naming_the_error(kube: KubeEmulator) -> None:
    p = add_pod(kube, "web-1")
    uid = p["metadata"]["uid"]
    assert repairer(kube).carry_out(Repair(uid, "mesh", "web-1", "label", WHY)) == ("label", WHY)
    got = kube.get("v1", "Pod", "web-1", "mesh")
    assert got["metadata"]["labels"] == {"app": "web-1", LABEL: "true"}
    [e] = events(kube, uid)
    assert (e["type"], e["reason"], e["involvedObject"]["kind"]) == ("Warning", "UncapturedPodLabelled", "Pod")
    assert "node1" in e["message"] and "ambit_pods" in e["message"], e["message"]
    # once captured, the label goes (a Normal event says so)
    assert repairer(kube).carry_out(Repair(uid, "mesh", "web-1", "unlabel", "capture is in place"))[0] == "unlabel"
    assert LABEL not in kube.get("v1", "Pod", "web-1", "mesh")["metadata"]["labels"]
    assert [e["type"] for e in events(kube, uid)] == ["Warning", "Normal"]


def test_delete_removes_a_controlled_pod_and_labels_a_bare_one(kube: KubeEmulator) -> None:
    owned, bare = add_pod(kube, "web-1"), add_pod(kube, "lonely", owned=False)
    r = repairer(kube)
    assert r.carry_out(Repair(owned["metadata"]["uid"], "mesh", "web-1", "delete", WHY))[0] == "delete"
    assert kube.get("v1", "Pod", "web-1", "mesh") is None
    assert events(kube, owned["metadata"]["uid"])[0]["reason"] == "UncapturedPodDeleted"
    action, why = r.carry_out(Repair(bare["metadata"]["uid"], "mesh", "lonely", "delete", WHY))
    assert action == "label" and "not owned by a controller" in why
    assert kube.get("v1", "Pod", "lonely", "mesh")["metadata"]["labels"][LABEL] == "true"


def test_a_pod_re_created_under_the_same_name_is_not_deleted(kube: KubeEmulator) -> None:
    old = add_pod(kube, "db-0")
    kube.delete("v1", "Pod", "db-0", "mesh")
    new = add_pod(kube, "db-0")                        # a StatefulSet's pod comes back with a new uid
    assert repairer(kube).carry_out(Repair(old["metadata"]["uid"], "mesh", "db-0", "delete", WHY))[0] == ""
    assert kube.get("v1", "Pod", "db-0", "mesh")["metadata"]["uid"] == new["metadata"]["uid"]


@pytest.mark.parametrize("mode", ["label", "delete"])
def test_each_mode_asks_only_what_its_rbac_rules_grant(kube: KubeEmulator, mode: str) -> None:
    """The requests the code makes, read off the wire, are exactly the rules it is installed with."""
    owned, bare = add_pod(kube, "web-1"), add_pod(kube, "lonely", owned=False)
    kube.requests.clear()
    r = repairer(kube)
    for p in (owned, bare):
        r.carry_out(Repair(p["metadata"]["uid"], "mesh", p["metadata"]["name"], mode, WHY))
    r.carry_out(Repair(bare["metadata"]["uid"], "mesh", "lonely", "unlabel", "captured"))
    by_method = {("GET", False): "get", ("PATCH", True): "patch", ("DELETE", False): "delete", ("POST", False): "create"}
    used: dict[str, set[str]] = {}
    for method, path, _ in kube.requests:
        parts = path.strip("/").split("/")
        resource = parts[4] + ("/status" if parts[-1] == "status" else "")
        used.setdefault(resource, set()).add(by_method[(method, parts[-1] == "status")])
    assert [{"apiGroups": [""], "resources": [k], "verbs": sorted(v)} for k, v in sorted(used.items())] \
        == rbac_rules(mode)
    assert rbac_rules("off") == []
    assert {c.resource for c in CALLS.values()} == {"pods", "pods/status", "events"}


# -- the agent: a running pod whose capture keeps failing ------------------------------------------

def test_the_agent_deletes_a_pod_it_cannot_capture_after_the_bound_and_counts_it(kube: KubeEmulator,
                                                                                  tmp_path: Path) -> None:
    p = add_pod(kube, "pod-u1")
    now = [100.0]
    engine, link = FaultyEngine(), RecordingLink()
    a = Agent("node1", source=None, engine=engine, link=link, node_ip="10.0.0.1", status_file=tmp_path / "s.json",
              repair=RepairSettings(mode="delete", after=60.0, min_attempts=3), repairer=repairer(kube))
    a.clock = lambda: now[0]
    r = replace(ref(tmp_path, "u1"), uid=p["metadata"]["uid"])
    engine.faults[r.uid] = OSError(errno.E2BIG, "Argument list too long: ambit_pods")    # a full BPF map
    v = view("1", r)
    a.reconcile(v)
    for _ in range(8):                                 # retried with backoff for a minute
        now[0] += 10.0
        a._step(v, None, threading.Event())
        while not a.repairs.empty():
            a.carry_out_repair(a.repairs.get())
        if kube.get("v1", "Pod", "pod-u1", "mesh") is None:
            break
    assert kube.get("v1", "Pod", "pod-u1", "mesh") is None, "the uncaptured pod was not deleted"
    assert now[0] - 100.0 >= 60.0, "deleted inside the bound"
    [e] = events(kube, r.uid)
    assert e["reason"] == "UncapturedPodDeleted" and "Argument list too long" in e["message"]
    assert json.loads((tmp_path / "s.json").read_text())["repairs"] == {"delete/success": 1}
    assert a.metrics.repairs.labels("delete", "success")._value.get() == 1
    assert a.metrics.uncaptured._value.get() == 1


def test_the_agent_with_repair_off_only_retries(kube: KubeEmulator, tmp_path: Path) -> None:
    p = add_pod(kube, "pod-u1")
    now = [100.0]
    engine = FaultyEngine()
    a = Agent("node1", source=None, engine=engine, link=RecordingLink(), node_ip="10.0.0.1")
    a.clock = lambda: now[0]
    r = replace(ref(tmp_path, "u1"), uid=p["metadata"]["uid"])
    engine.faults[r.uid] = OSError(errno.E2BIG, "Argument list too long")
    a.reconcile(view("1", r))
    now[0] += 3600
    a._step(view("1", r), None, threading.Event())
    assert a.repairs.empty() and kube.get("v1", "Pod", "pod-u1", "mesh") is not None
    assert a.metrics.uncaptured._value.get() == 1


def test_an_agent_told_to_repair_without_api_credentials_does_not_start(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A repair that could never happen would leave the STRICT gap open while the flag says closed."""
    from agent.__main__ import make_repairer
    from agent.settings import load
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    args = load(["--node", "n", "--zds-socket", "z", "--ztunnel-cgroup", "c", "--node-ip", "10.0.0.1",
                 "--repair-pods", "label"], {})
    with pytest.raises(SystemExit, match="--repair-pods label: cannot reach the Kubernetes API"):
        make_repairer(args)
    off = load(["--node", "n", "--zds-socket", "z", "--ztunnel-cgroup", "c", "--node-ip", "10.0.0.1"], {})
    assert off.repair_pods == "off" and make_repairer(off) is None
    with pytest.raises(ValueError, match="--kube-api is only used by"):
        load(["--node", "n", "--zds-socket", "z", "--ztunnel-cgroup", "c", "--node-ip", "10.0.0.1",
              "--kube-api", "http://x"], {})
