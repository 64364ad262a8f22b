"""An enrolled pod that runs uncaptured is repaired (docs/operations.md, "Uncaptured pods").

A pod already running when the agent enrols it, whose capture fails (here: node1's `ambit_pods`
BPF map is full), runs uncaptured: plaintext from a pod outside the mesh reaches its app, a STRICT
gap. With `--repair-pods delete` the agent deletes it once the bound has passed, with a Warning
Event on it naming the error, through a real HTTP API server (the emulator, in node1's netns where
the agent runs), so its controller re-creates it through the CNI plugin, which fails closed. With
`label` it labels it, and takes the label off once capture works again.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.capture import maps
from agent.capture.libbpf import RawMap
from agent.repair import LABEL
from ambit import netns
from ambitctl.lab import components
from ambitctl.lab.components import AGENT_ARGS_ENV
from ambitctl.lab.runtime import Pod, Runtime
from ambitctl.lab.topology import LabNames
from tests.lab.labctl import Lab, running_lab
from tests.lab.test_agent_faults import APP, plaintext
from tests.support.kube_emulator import KubeEmulator

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")]

SPEC = Path(__file__).parent / "specs" / "repair.yaml"
KUBE_PORT = 21000 + (os.getpid() + 7) % 20000
AFTER = 4.0


def running(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Iterator[Lab]:
    env = {AGENT_ARGS_ENV: f"--repair-pods {mode} --kube-api http://127.0.0.1:{KUBE_PORT} "
                           f"--repair-after {AFTER} --repair-min-attempts 2 --repair-interval 5"}
    kind = "rp" + mode[0]       # letters only: the lab's name is ambit-<kind><pid>
    with running_lab(tmp_path_factory.mktemp(kind), kind, SPEC, f"repair-lab-{mode}", env=env) as lab:
        yield lab


@pytest.fixture
def delete_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running(tmp_path_factory, "delete")


@pytest.fixture
def label_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running(tmp_path_factory, "label")


def agent_status(lab: Lab) -> dict:
    """mesh/web as node1's agent reports it ({} once it is gone from its view)."""
    try:
        doc = json.loads(components.agent_status_file(lab.dir, "node1").read_text())
    except (OSError, ValueError):
        return {}
    return doc["pods"].get("mesh/web") or {}


def fill(pods_map: RawMap) -> list[bytes]:
    """Fill the map with cookies no netns has, until the kernel refuses (E2BIG): the keys added."""
    added = []
    for i in range(1 << 16):
        key = maps.U64.pack((1 << 62) + i)
        try:
            pods_map.put(key, maps.pod_value("0.0.0.0", "0.0.0.0", 0))
        except OSError as e:
            assert e.errno in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM), e
            return added
        added.append(key)
    raise AssertionError("the map never filled")


def maps_keys(pods_map: RawMap) -> list[bytes]:
    """The keys fill() adds (cookies from 1 << 62: no netns has one)."""
    return [k for k in pods_map.keys() if maps.U64.unpack(k)[0] >= 1 << 62]


@dataclass
class Uncaptured:
    emu: KubeEmulator
    pod: Pod
    app: subprocess.Popen[str]
    pods_map: RawMap

    def events(self) -> list[dict]:
        return [e for (_, (_, plural), t, e) in self.emu._events if plural == "events" and t == "ADDED"]

    def heal(self) -> None:
        """Free the map: the agent's next retry captures the pod."""
        for k in maps_keys(self.pods_map):
            self.pods_map.delete(k)


@contextmanager
def uncaptured_pod(lab: Lab) -> Iterator[Uncaptured]:
    """mesh/web, owned by a ReplicaSet in the API server, running on node1 while its `ambit_pods` map
    is full: the agent enrols it from the watch and fails. Everything is undone on exit."""
    names = LabNames(lab.name)
    with netns.entered(names.node_netns("node1")):
        emu = KubeEmulator(port=KUBE_PORT, groups=())
    rt = Runtime.for_lab(lab.dir)
    net = rt.nodes["node1"]["pod_cidr"].rsplit(".", 1)[0]
    pods_map = RawMap.open_pinned(names.bpf_pin_base / "node1" / "maps" / "ambit_pods", maps.U64.size, maps.POD.size)
    u = None
    with emu:
        rs = emu.create({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web", "namespace": "mesh"}})
        obj = emu.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "web", "namespace": "mesh", "labels": {"app": "web"}, "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": rs["metadata"]["uid"],
                 "controller": True}]}, "spec": {"nodeName": "node1"}, "status": {"phase": "Running"}})
        pod = Pod(name="web", namespace="mesh", node="node1", ip=f"{net}.240", uid=obj["metadata"]["uid"])
        try:
            fill(pods_map)
            rt.create(pod, cni=False)           # the watch path: the pod ran before the agent saw it
            app = rt.start(pod, [sys.executable, "-c", APP], stdout=subprocess.PIPE, text=True)
            u = Uncaptured(emu, pod, app, pods_map)
            lab.wait_for(lambda: agent_status(lab).get("state") == "error", 30, 0.2,
                         "the capture failure in the agent's status")
            assert agent_status(lab)["captured"] is False
            assert "Argument list too long" in agent_status(lab)["reason"], agent_status(lab)
            yield u
        finally:
            for k in maps_keys(pods_map):       # what fill() added
                pods_map.delete(k)
            pods_map.close()
            if u is not None and u.app.poll() is None:
                u.app.kill()
                u.app.wait()
            rt.remove(pod, cni=False)


def test_a_running_pod_whose_capture_fails_serves_plaintext_until_it_is_deleted(delete_lab: Lab) -> None:
    lab = delete_lab
    with uncaptured_pod(lab) as u:
        # The gap: a pod outside the mesh reaches the app in plaintext.
        token = f"RP-{uuid.uuid4().hex[:12]}"
        plaintext(lab.pod("legacy/outsider")["netns"], u.pod.ip, token)
        out, _ = u.app.communicate(timeout=30)
        assert token in out, "the uncaptured pod did not take plaintext: the gap did not reproduce"
        # The repair: deleted (its uid the precondition), with a Warning Event naming the error.
        lab.wait_for(lambda: u.emu.get("v1", "Pod", "web", "mesh") is None, 60, 0.2, "the uncaptured pod deleted")
        lab.wait_for(u.events, 10, 0.1, "the Event on the pod")     # recorded once the pod is deleted
        [e] = u.events()
        assert (e["reason"], e["type"], e["involvedObject"]["uid"]) == ("UncapturedPodDeleted", "Warning", u.pod.uid)
        assert "node1" in e["message"] and "Argument list too long" in e["message"], e
        assert any(m == "DELETE" and p.endswith("/namespaces/mesh/pods/web") for m, p, _ in u.emu.requests)
        assert agent_status(lab).get("state") in ("error", None), "capture never worked meanwhile"


def test_label_marks_an_uncaptured_pod_and_unmarks_it_once_captured(label_lab: Lab) -> None:
    lab = label_lab
    with uncaptured_pod(lab) as u:
        def label() -> str | None:
            return ((u.emu.get("v1", "Pod", "web", "mesh") or {}).get("metadata", {}).get("labels") or {}).get(LABEL)
        lab.wait_for(lambda: label() == "true", 60, 0.2, f"{LABEL}=true on the uncaptured pod")
        lab.wait_for(u.events, 10, 0.1, "the Event on the pod")
        [e] = u.events()
        assert (e["reason"], e["type"]) == ("UncapturedPodLabelled", "Warning") and "ambit_pods" in e["message"], e
        assert u.emu.get("v1", "Pod", "web", "mesh") is not None, "label mode deletes nothing"
        u.heal()                                    # capture works again: the agent's next retry takes it
        lab.wait_for(lambda: agent_status(lab).get("state") == "captured", 60, 0.2, "the pod captured")
        lab.wait_for(lambda: label() is None, 30, 0.2, "the label removed")
        # The Normal Event is recorded after the label's removal: wait for it rather than read once.
        lab.wait_for(lambda: len(u.events()) >= 2, 10, 0.1, "the PodCaptured Event")
        assert [(e["reason"], e["type"]) for e in u.events()] == [("UncapturedPodLabelled", "Warning"),
                                                                   ("PodCaptured", "Normal")]
