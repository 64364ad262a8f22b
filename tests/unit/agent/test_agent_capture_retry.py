"""Faults at the capture engine boundary (netlink, iptables, a full BPF map, EPERM): each is one
pod's problem. The agent keeps reconciling the other pods, logs and counts the failure naming the
pod, shows it in its status file, and retries that pod with bounded backoff until it works."""

from __future__ import annotations

import errno
import json
import logging
import threading
from pathlib import Path

import pytest

from agent.__main__ import Agent
from tests.unit.agent.test_agent_faults import FailingEngine, RecordingLink, ref, view


class FaultyEngine(FailingEngine):
    """Raises the given error for the pods in `faults` (enrol, unenrol or the netns checks)."""

    def __init__(self) -> None:
        super().__init__()
        self.faults: dict[str, OSError] = {}
        self.calls: list[tuple[str, str]] = []

    def _fault(self, op: str, uid: str) -> None:
        self.calls.append((op, uid))
        if uid in self.faults:
            raise self.faults[uid]

    def enrol(self, cap) -> None:  # noqa: ANN001
        self._fault("enrol", cap.uid)
        super().enrol(cap)

    def unenrol(self, uid: str) -> None:
        self._fault("unenrol", uid)
        super().unenrol(uid)

    def sandbox_replaced(self, uid: str) -> bool:
        self._fault("replaced", uid)
        return super().sandbox_replaced(uid)

    def replaced_sandboxes(self, uids) -> set[str]:  # noqa: ANN001
        for uid in sorted(uids):
            self._fault("replaced", uid)
        return super().replaced_sandboxes(uids)


def agent(tmp_path: Path) -> tuple[Agent, FaultyEngine, RecordingLink, list[float]]:
    now = [100.0]
    engine, link = FaultyEngine(), RecordingLink()
    a = Agent("node1", source=None, engine=engine, link=link, node_ip="10.0.0.1",
              status_file=tmp_path / "status.json")
    a.clock = lambda: now[0]
    return a, engine, link, now


def status(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "status.json").read_text())


def heartbeat(a: Agent, last) -> None:  # noqa: ANN001
    a._step(last, None, threading.Event())


def test_an_unenrol_error_neither_ends_the_agent_nor_stops_the_other_pods(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    a, engine, link, now = agent(tmp_path)
    r1, r2, r3 = ref(tmp_path, "u1", "10.0.0.5"), ref(tmp_path, "u2", "10.0.0.6"), ref(tmp_path, "u3", "10.0.0.7")
    a.reconcile(view("1", r1, r2))
    engine.faults["u1"] = PermissionError(errno.EPERM, "Operation not permitted")
    with caplog.at_level(logging.ERROR, logger="ambit.agent"):
        a._step(view("1", r1, r2), view("2", r3), threading.Event())   # u1, u2 deleted; u3 new
    assert engine.enrolled_uids == ["u1", "u3"], "u2 must go and u3 must come whatever u1 does"
    assert "u1" in a.applied and link.serving == {"u1", "u3"}, "u1 is still captured: ztunnel keeps serving it"
    assert "cannot unenrol mesh/pod-u1: PermissionError" in caplog.text
    doc = status(tmp_path)
    assert doc["pods"]["mesh/pod-u1"]["state"] == "unenrol-failed"
    assert "Operation not permitted" in doc["pods"]["mesh/pod-u1"]["reason"]
    assert doc["captureFailures"] == {"enrol": 0, "unenrol": 1}

    heartbeat(a, view("2", r3))                 # not due yet: no new attempt
    assert engine.calls.count(("unenrol", "u1")) == 1
    del engine.faults["u1"]
    now[0] += 0.5
    heartbeat(a, view("2", r3))                 # due: retried without waiting for a new view
    assert engine.enrolled_uids == ["u3"] and "u1" not in a.applied and link.serving == {"u3"}
    assert "mesh/pod-u1" not in status(tmp_path)["pods"]


def test_an_enrol_error_is_retried_with_backoff_until_the_pod_is_captured(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    a, engine, link, now = agent(tmp_path)
    r1, r2 = ref(tmp_path, "u1", "10.0.0.5"), ref(tmp_path, "u2", "10.0.0.6")
    engine.faults["u1"] = OSError(errno.E2BIG, "bpf_map_update_elem(ambit_pods): Argument list too long")
    with caplog.at_level(logging.ERROR, logger="ambit.agent"):
        a.reconcile(view("1", r1, r2))
    assert engine.enrolled_uids == ["u2"]
    assert "cannot enrol mesh/pod-u1:" in caplog.text and "ambit_pods" in caplog.text
    pod = status(tmp_path)["pods"]["mesh/pod-u1"]
    assert pod["state"] == "error" and pod["captured"] is False and pod["failures"] == 1 and pod["retryIn"] == 0.5

    attempts = []
    for step in (0.25, 0.25, 0.5, 0.5, 1.0):    # 0.5 s, then 1 s, then 2 s between attempts
        now[0] += step
        heartbeat(a, view("1", r1, r2))
        attempts.append(engine.calls.count(("enrol", "u1")))
    assert attempts == [1, 2, 2, 3, 3]
    a.reconcile(view("2", r1, r2))              # a new view with the same pod waits for its backoff too
    assert engine.calls.count(("enrol", "u1")) == 3
    assert status(tmp_path)["captureFailures"]["enrol"] == 3

    del engine.faults["u1"]
    now[0] += 2.0
    heartbeat(a, view("2", r1, r2))
    assert engine.enrolled_uids == ["u2", "u1"] and link.serving == {"u1", "u2"}
    assert status(tmp_path)["pods"]["mesh/pod-u1"] == {"state": "captured", "uid": "u1"}


def test_a_failing_netns_check_does_not_end_the_heartbeat(tmp_path: Path) -> None:
    a, engine, link, now = agent(tmp_path)
    r1, r2 = ref(tmp_path, "u1", "10.0.0.5"), ref(tmp_path, "u2", "10.0.0.6")
    a.reconcile(view("1", r1, r2))
    engine.faults["u1"] = OSError(errno.EIO, "cannot read ambit_meta")
    engine.replaced.add("u2")
    heartbeat(a, view("1", r1, r2))             # the agent lives on, and looks again next time
    del engine.faults["u1"]
    heartbeat(a, view("1", r1, r2))
    assert engine.captures == ["u1", "u2", "u2"], "u2's re-created sandbox is captured again"
