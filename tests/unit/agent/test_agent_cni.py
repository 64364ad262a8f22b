"""The agent's side of the CNI plugin: a pod enrolled at sandbox creation stays enrolled while the
pod source has not caught up, the source takes over once it shows the pod, and a refused hand-off
fails the ADD (and leaves nothing captured)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.__main__ import Agent
from agent.enrolment import LocalPod, capture_annotations
from tests.unit.agent.test_agent_handoff import FakeEngine, FakeLink


@dataclass
class View:
    revision: str
    pods: list[LocalPod]

    def local_pods(self, node: str) -> list[LocalPod]:
        return self.pods


def request(tmp_path: Path) -> dict:
    cg = tmp_path / "cg"
    cg.mkdir(exist_ok=True)
    netns = tmp_path / "netns"
    netns.touch()
    return {"uid": "u1", "name": "web", "namespace": "mesh", "ip": "10.0.0.7", "serviceAccount": "web",
            "netns": str(netns), "cgroup": str(cg), "labels": {"app": "web"},
            "annotations": {"ambit.io/exclude-outbound-ports": "5432"}, "probePorts": [8081]}


def agent(tmp_path: Path, refusals: int = 0) -> tuple[Agent, FakeEngine, list[float]]:
    now = [10.0]
    engine = FakeEngine()
    a = Agent("node1", source=None, engine=engine, link=FakeLink(refusals), node_ip="10.0.0.1",
              status_file=tmp_path / "status.json")
    a.clock = lambda: now[0]
    return a, engine, now


def test_a_cni_pod_outlives_views_that_do_not_show_it_until_the_view_takes_over(tmp_path: Path) -> None:
    a, engine, now = agent(tmp_path)
    assert a.cni_add(request(tmp_path)) is None
    assert engine.enrolled_uids == ["u1"]
    ref = a.applied["u1"]
    assert ref.annotations == capture_annotations({"ambit.io/exclude-outbound-ports": "5432"})
    a.reconcile(View("1", []))                      # the source has not seen the pod Running yet
    assert engine.enrolled_uids == ["u1"] and "u1" in a.cni
    a.reconcile(View("2", [LocalPod("mesh/web", enrolled=True, ref=ref)]))
    assert engine.enrolled_uids == ["u1"] and "u1" not in a.cni     # the source's record now
    a.reconcile(View("3", []))                      # and the source says it is gone
    assert engine.enrolled_uids == []


def test_a_cni_pod_stays_captured_while_its_sandbox_lives_however_slow_the_source(tmp_path: Path) -> None:
    """The API server may take minutes to show a pod's IP while its app runs: dropping capture
    after a grace would let the app run uncaptured (a STRICT bypass). Only the sandbox going ends it."""
    a, engine, now = agent(tmp_path)
    assert a.cni_add(request(tmp_path)) is None
    now[0] += 3600
    a.reconcile(View("1", []))
    assert engine.enrolled_uids == ["u1"], "the pod's app runs uncaptured"
    engine.dead.add("u1")                           # its netns is gone (and its DEL was missed)
    a.reconcile(View("2", []))
    assert engine.enrolled_uids == [] and a.cni == {}


def test_a_cni_pod_is_dropped_once_the_source_says_not_to_capture_it_or_that_it_is_gone(tmp_path: Path) -> None:
    a, engine, _ = agent(tmp_path)
    a.cni_add(request(tmp_path))
    a.reconcile(View("1", [LocalPod("mesh/web", enrolled=False, uid="u1")]))   # its namespace left ambient
    assert engine.enrolled_uids == []
    a.cni_add(request(tmp_path))
    a.reconcile(View("2", [LocalPod("mesh/web", enrolled=True, uid="u1")]))    # known, no IP yet: kept
    assert engine.enrolled_uids == ["u1"]
    a.reconcile(View("3", []))                                                 # deleted from the API
    assert engine.enrolled_uids == []


def test_del_unenrols_and_check_reports(tmp_path: Path) -> None:
    a, engine, _ = agent(tmp_path)
    assert a.cni_check("u1") == "pod u1 is not captured on this node"
    a.cni_add(request(tmp_path))
    assert a.cni_check("u1") is None
    a.cni_del("", "mesh/web")                       # a runtime that passed no K8S_POD_UID
    assert engine.enrolled_uids == [] and a.cni_check("u1") is not None


def test_a_refused_hand_off_fails_the_add_and_leaves_nothing_captured(tmp_path: Path) -> None:
    a, engine, _ = agent(tmp_path, refusals=1)
    why = a.cni_add(request(tmp_path))
    assert why is not None and "port 15006 in use" in why
    assert engine.enrolled_uids == [] and a.applied == {} and a.cni == {}


def test_an_incomplete_or_host_netns_request_is_refused(tmp_path: Path) -> None:
    a, engine, _ = agent(tmp_path)
    assert "lacks" in (a.cni_add({**request(tmp_path), "ip": ""}) or "")
    assert "node's own network namespace" in (a.cni_add({**request(tmp_path), "netns": "/proc/self/ns/net"}) or "")
    assert engine.enrolled_uids == []
