"""The agent's /healthz/ready (agent/health.py), asked over real HTTP as the kubelet's httpGet probe
asks it: not ready before this process's first reconcile (whatever status file a previous run left),
ready once that reconcile handed the pods to ztunnel, 503 again once the agent is stopping; the
metrics are still served on the same port."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import health
from agent.__main__ import Agent
from agent.enrolment import LocalPod
from agent.metrics import AgentMetrics
from agent.ztunnel_link import ZtunnelError
from tests.unit.agent.test_agent_cni import View
from tests.unit.agent.test_agent_faults import ref
from tests.unit.agent.test_agent_handoff import FakeEngine, FakeLink
from tests.unit.waypoint.harness import free_port


def get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET with curl, an HTTP client of its own as the kubelet's probe is."""
    out = subprocess.run(["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, check=True).stdout
    body, _, code = out.rpartition(b"\n")
    return int(code), body


class LostLink(FakeLink):
    """ztunnel goes away during the hand-off: the reconcile is cut short (the agent reconnects)."""

    def add(self, pod, netns_path: str) -> None:  # noqa: ANN001
        raise ZtunnelError("zds: connection reset by peer")


@pytest.fixture
def served() -> Iterator[tuple[Agent, threading.Event, int, FakeEngine]]:
    engine, stop, port = FakeEngine(), threading.Event(), free_port()
    a = Agent("node1", source=None, engine=engine, link=FakeLink(refusals=0), node_ip="10.0.0.1",
              metrics=AgentMetrics())
    s = health.serve(a.metrics, health.readiness(lambda: a.reported, stop), port, "127.0.0.1")
    yield a, stop, port, engine
    s.close()


def test_ready_only_after_the_first_reconcile_and_not_once_stopping(
        served: tuple[Agent, threading.Event, int, FakeEngine], tmp_path: Path) -> None:
    a, stop, port, engine = served
    status, body = get(port, health.READY_PATH)
    assert status == 503, "ready before the agent reconciled anything"
    assert "first reconcile" in json.loads(body)["reason"]
    r = ref(tmp_path)
    a.reconcile(View("1", [LocalPod(r.key, enrolled=True, ref=r)]))
    assert engine.enrolled_uids == ["u1"]
    assert get(port, health.READY_PATH) == (200, b'{"ready": true}\n')
    stop.set()                                  # SIGTERM
    status, body = get(port, health.READY_PATH)
    assert status == 503 and json.loads(body) == {"ready": False, "reason": "stopping"}


def test_the_metrics_are_served_beside_the_readiness(served: tuple[Agent, threading.Event, int, FakeEngine]) -> None:
    a, _, port, _ = served
    a.metrics.uncaptured.set(2)
    status, body = get(port, "/metrics")
    assert status == 200 and b"ambit_agent_uncaptured_pods 2.0" in body


def test_a_status_file_left_by_a_previous_run_does_not_make_a_new_agent_ready(tmp_path: Path) -> None:
    """A container restart keeps the pod's emptyDir: the old run's status file is there (the exec
    probe had to check its writer stamp for that); the endpoint answers from the new process's
    memory, and a first reconcile cut short by a lost ztunnel does not count."""
    status_file = tmp_path / "agent-status.json"
    Agent("node1", source=None, engine=FakeEngine(), link=FakeLink(refusals=0), node_ip="10.0.0.1",
          status_file=status_file).write_status()       # the previous run
    assert status_file.stat().st_size > 0
    stop, port = threading.Event(), free_port()
    a = Agent("node1", source=None, engine=FakeEngine(), link=LostLink(refusals=0), node_ip="10.0.0.1",
              status_file=status_file)
    s = health.serve(a.metrics, health.readiness(lambda: a.reported, stop), port, "127.0.0.1")
    try:
        assert get(port, health.READY_PATH)[0] == 503
        r = ref(tmp_path)
        with pytest.raises(ZtunnelError):
            a.reconcile(View("1", [LocalPod(r.key, enrolled=True, ref=r)]))
        assert get(port, health.READY_PATH)[0] == 503, "ready although ztunnel never got the node's pods"
    finally:
        s.close()


def test_a_port_that_cannot_be_bound_fails_the_start() -> None:
    """The probe's port must be served: an agent that cannot listen on it says so at start rather
    than running unprobeable (as prometheus_client's server raised before)."""
    port = free_port()
    first = health.serve(AgentMetrics(), lambda: None, port, "127.0.0.1")
    try:
        with pytest.raises(OSError):
            health.serve(AgentMetrics(), lambda: None, port, "127.0.0.1")
    finally:
        first.close()
