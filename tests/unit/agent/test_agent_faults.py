"""The agent under faults: a pod whose sandbox goes away mid-enrolment, and the like. What must hold:
nothing stays behind in ztunnel (its listeners would keep the pod's netns alive), and a pod that was
captured before is not left without ztunnel."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.__main__ import Agent
from agent.enrolment import LocalPod, PodRef
from tests.unit.agent.test_agent_cni import View
from tests.unit.agent.test_agent_handoff import FakeEngine, FakeLink


class FailingEngine(FakeEngine):
    """Capture fails for the pods in `broken` (the netns or cgroup vanished under it)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken: set[str] = set()

    def enrol(self, cap) -> None:  # noqa: ANN001
        if cap.uid in self.broken:
            raise ValueError(f"pod {cap.uid!r}: cgroup_path: {cap.cgroup_path} is not a cgroup directory")
        if cap.uid not in self.enrolled_uids:
            super().enrol(cap)
        else:
            self.captures.append(cap.uid)
            self.replaced.discard(cap.uid)


class RecordingLink(FakeLink):
    def __init__(self) -> None:
        super().__init__(refusals=0)
        self.serving: set[str] = set()

    def add(self, pod, netns_path: str) -> None:  # noqa: ANN001
        super().add(pod, netns_path)
        self.serving.add(pod.uid)

    def delete(self, uid: str, drain: float) -> None:
        self.serving.discard(uid)

    def ping(self) -> None:
        pass


def ref(tmp_path: Path, uid: str = "u1", ip: str = "10.0.0.5") -> PodRef:
    cg = tmp_path / f"cg-{uid}"
    cg.mkdir(exist_ok=True)
    return PodRef(uid=uid, name=f"pod-{uid}", namespace="mesh", ip=ip, service_account="sa",
                  netns=str(tmp_path / f"netns-{uid}"), cgroup=str(cg))


def agent(tmp_path: Path) -> tuple[Agent, FailingEngine, RecordingLink]:
    engine, link = FailingEngine(), RecordingLink()
    return Agent("node1", source=None, engine=engine, link=link, node_ip="10.0.0.1",
                 status_file=tmp_path / "status.json"), engine, link


def view(rev: str, *refs: PodRef) -> View:
    return View(rev, [LocalPod(r.key, enrolled=True, ref=r) for r in refs])


def test_a_pod_whose_capture_fails_after_the_hand_off_is_taken_back_from_ztunnel(tmp_path: Path) -> None:
    a, engine, link = agent(tmp_path)
    r = ref(tmp_path)
    engine.broken.add(r.uid)                      # its sandbox is being torn down
    a.reconcile(view("1", r))
    assert link.adds == ["u1"]
    assert "u1" in a.errors and engine.enrolled_uids == []
    assert link.serving == set(), "ztunnel still serves a pod the agent does not capture (netns held)"
    a.reconcile(view("2"))                        # the pod is gone: nothing left anywhere
    assert link.serving == set() and a.errors == {}


def test_a_captured_pod_whose_refresh_fails_keeps_ztunnel(tmp_path: Path) -> None:
    a, engine, link = agent(tmp_path)
    r = ref(tmp_path)
    a.reconcile(view("1", r))
    assert engine.enrolled_uids == ["u1"] and link.serving == {"u1"}
    engine.broken.add(r.uid)
    a.reconcile(view("2", PodRef(**{**r.__dict__, "annotations": (("ambit.io/exclude-outbound-ports", "5432"),)})))
    assert "u1" in a.errors
    assert link.serving == {"u1"}, "the pod is still captured: taking ztunnel away would cut it off"


class PinnedEngine(FailingEngine):
    """What a restarted agent finds: pods the previous one captured, and whether their netns lives."""

    def __init__(self, uids: list[str]) -> None:
        super().__init__()
        self.enrolled_uids = list(uids)

    def enrolled(self) -> set[str]:
        return set(self.enrolled_uids)


def restarted(tmp_path: Path, uids: list[str]) -> tuple[Agent, PinnedEngine, list[float]]:
    now = [50.0]
    engine = PinnedEngine(uids)
    a = Agent("node1", source=None, engine=engine, link=RecordingLink(), node_ip="10.0.0.1",
              status_file=tmp_path / "status.json")
    a.clock = lambda: now[0]
    a.adopt()
    return a, engine, now


def test_a_restarted_agent_keeps_a_pod_captured_at_sandbox_creation_until_a_view_shows_it(tmp_path: Path) -> None:
    # The previous agent captured u1 at its CNI ADD; its app has not started, so no view shows it.
    a, engine, now = restarted(tmp_path, ["u1"])
    a.reconcile(view("1"))
    assert engine.enrolled_uids == ["u1"], "the pod's capture was removed: its app would start unprotected"
    now[0] += 5
    r = ref(tmp_path)
    a.reconcile(view("2", r))                    # it runs: the source's record takes over
    assert engine.enrolled_uids == ["u1"] and a.applied["u1"] == r
    a.reconcile(view("3"))                       # and the source says it is gone
    assert engine.enrolled_uids == []


def test_a_restarted_agent_drops_adopted_pods_whose_sandbox_is_gone_or_the_source_refuses(tmp_path: Path) -> None:
    a, engine, now = restarted(tmp_path, ["gone", "slow", "out"])
    engine.dead.add("gone")                      # deleted while the agent was down
    a.reconcile(view("1"))
    assert engine.enrolled_uids == ["slow", "out"]
    now[0] += 3600                               # the API server is slow to show them: still captured
    a.reconcile(view("2"))
    assert engine.enrolled_uids == ["slow", "out"]
    a.reconcile(View("3", [LocalPod("mesh/out", enrolled=False, uid="out")]))   # no longer ambient
    assert engine.enrolled_uids == ["slow"]
    engine.dead.add("slow")                      # its sandbox went (the DEL went to the old agent)
    a.reconcile(view("4"))
    assert engine.enrolled_uids == []


class DyingSource:
    """Gives one view, then fails (the API client cannot be built, the sandbox lookup raises...)."""

    def __init__(self, r: PodRef) -> None:
        self.r = r

    def views(self, stop):  # noqa: ANN001, ANN201
        yield view("1", self.r)
        raise OSError("sandbox lookup: permission denied")


def test_an_agent_whose_pod_source_dies_stops_instead_of_running_blind(tmp_path: Path) -> None:
    engine, link = PinnedEngine(["u1"]), RecordingLink()      # captured by an earlier agent
    a = Agent("node1", source=DyingSource(ref(tmp_path)), engine=engine, link=link, node_ip="10.0.0.1",
              status_file=tmp_path / "status.json")
    stop = threading.Event()
    bound = threading.Timer(30, stop.set)       # only bounds the old behaviour (looping for ever)
    bound.start()
    try:
        with pytest.raises(RuntimeError, match="pod source failed: sandbox lookup"):
            a.run(stop, heartbeat=0.05)
    finally:
        bound.cancel()
        stop.set()
    assert engine.enrolled_uids == ["u1"], "capture stays in place for the restart"


def test_a_sandbox_re_created_at_the_same_path_with_the_same_ip_is_captured_again(tmp_path: Path) -> None:
    """Same uid, netns path and IP: the same ref, so no plan sees a change; but capture and
    ztunnel's listeners are in the old netns. The agent notices (netns cookie) and enrols again,
    on the next view and on a heartbeat with no view."""
    a, engine, link = agent(tmp_path)
    r = ref(tmp_path)
    a.reconcile(view("1", r))
    assert link.adds == ["u1"] and engine.captures == ["u1"]
    engine.replaced.add("u1")
    a.reconcile(view("2", r))
    assert link.adds == ["u1", "u1"] and engine.captures == ["u1", "u1"]
    a.reconcile(view("3", r))                   # captured in the new one now: nothing more
    assert engine.captures == ["u1", "u1"]
    engine.replaced.add("u1")                   # again, with no view change: the heartbeat sees it
    a._step(view("3", r), None, threading.Event())
    assert link.adds == ["u1"] * 3 and engine.captures == ["u1"] * 3 and a.applied["u1"] == r
