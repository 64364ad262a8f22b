"""The agent keeps a pod captured (fail closed) when ztunnel cannot serve it, says so in its status,
and retries the hand-off with backoff until ztunnel serves the pod."""

from __future__ import annotations

import json
from pathlib import Path

from agent.__main__ import Agent
from agent.enrolment import PodRef
from agent.ztunnel_link import ZtunnelRefused


class FakeLink:
    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.adds: list[str] = []

    def connected(self) -> bool:
        return True

    def add(self, pod, netns_path: str) -> None:  # noqa: ANN001
        self.adds.append(pod.uid)
        if self.refusals:
            self.refusals -= 1
            raise ZtunnelRefused("ztunnel refused add: port 15006 in use in the pod's netns (0.0.0.0:15006)")

    def delete(self, uid: str, drain: float) -> None:
        pass


class FakeEngine:
    def __init__(self) -> None:
        self.enrolled_uids: list[str] = []
        self.captures: list[str] = []       # every enrol, refreshes included
        self.replaced: set[str] = set()     # pods whose netns path now names a new netns
        self.dead: set[str] = set()         # pods whose captured netns is gone

    def enrol(self, cap) -> None:  # noqa: ANN001
        self.captures.append(cap.uid)
        self.replaced.discard(cap.uid)
        self.enrolled_uids.append(cap.uid)

    def sandbox_replaced(self, uid: str) -> bool:
        return uid in self.replaced

    def replaced_sandboxes(self, uids) -> set[str]:  # noqa: ANN001
        return {uid for uid in uids if self.sandbox_replaced(uid)}

    def sandbox_alive(self, uid: str) -> bool:
        return uid not in self.dead

    def unenrol(self, uid: str) -> None:
        self.enrolled_uids.remove(uid)

    def stats(self) -> dict[str, int]:
        return {}


def ref(tmp_path: Path) -> PodRef:
    cg = tmp_path / "cg"
    cg.mkdir(exist_ok=True)
    return PodRef(uid="u1", name="server", namespace="mesh", ip="10.0.0.5", service_account="sa",
                  netns=str(tmp_path / "netns"), cgroup=str(cg), probe_ports=(8081,))


def test_refused_hand_off_keeps_capture_reports_it_and_is_retried_with_backoff(tmp_path: Path) -> None:
    now = [100.0]
    link, engine = FakeLink(refusals=3), FakeEngine()
    status = tmp_path / "status.json"
    agent = Agent("node1", source=None, engine=engine, link=link, node_ip="10.0.0.1", status_file=status)
    agent.clock = lambda: now[0]
    r = ref(tmp_path)
    agent.refs = {r.uid: r}
    agent.enrol(r)
    agent.write_status()

    assert engine.enrolled_uids == ["u1"], "capture is in place although ztunnel refused: fail closed"
    pod = json.loads(status.read_text())["pods"]["mesh/server"]
    assert pod["state"] == "capture-failed" and pod["reason"].startswith("port 15006 in use")

    agent.retry_handoffs()                       # not due yet: no new attempt
    assert link.adds == ["u1"]
    for expect_failures, wait in ((2, 0.5), (3, 1.0)):
        now[0] += wait
        agent.retry_handoffs()
        assert json.loads(status.read_text())["pods"]["mesh/server"]["failures"] == expect_failures
    now[0] += 2.0
    agent.retry_handoffs()                       # the squatter is gone: ztunnel accepts
    assert link.adds == ["u1"] * 4
    assert json.loads(status.read_text())["pods"]["mesh/server"] == {"state": "captured", "uid": "u1"}
    now[0] += 100
    agent.retry_handoffs()
    assert len(link.adds) == 4, "a served pod is not handed over again"


def test_unenrol_forgets_a_failing_hand_off(tmp_path: Path) -> None:
    agent = Agent("node1", source=None, engine=FakeEngine(), link=FakeLink(refusals=99), node_ip="10.0.0.1")
    r = ref(tmp_path)
    agent.enrol(r)
    assert agent.handoff.pending
    agent.unenrol(r.uid)
    assert not agent.handoff.pending
