"""The hand-off retry (agent/handoff.py) and the probe-port rule (ambit/probes.py): pure logic."""

from __future__ import annotations

from agent.handoff import STATE, HandoffRetry, reason_of
from ambit.backoff import Backoff
from ambit.probes import probe_ports


def test_backoff_doubles_up_to_the_cap_and_is_due_only_when_its_time_comes() -> None:
    r = HandoffRetry(Backoff(initial=0.5, maximum=4.0, jitter=0.0))
    delays = []
    for _ in range(6):
        a = r.failed("u1", now=100.0, reason="port 15006 in use")
        delays.append(a.next_at - 100.0)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert r.due(103.9) == [] and r.due(104.0) == ["u1"]
    st = r.status("u1", now=102.0)
    assert st == {"state": STATE, "reason": "port 15006 in use", "failures": 6, "retryIn": 2.0}
    assert r.succeeded("u1") and r.status("u1", 102.0) is None and r.due(1e9) == []
    assert not r.succeeded("u1")          # a pod that never failed: nothing to report


def test_a_success_resets_the_backoff() -> None:
    r = HandoffRetry(Backoff(initial=1.0, maximum=60.0, jitter=0.0))
    for _ in range(4):
        r.failed("u", 0.0, "x")
    r.succeeded("u")
    assert r.failed("u", 10.0, "x").next_at == 11.0


def test_reason_drops_the_link_preamble_only() -> None:
    assert reason_of("ztunnel refused add: port 15006 in use in the pod's netns (0.0.0.0:15006)") == \
        "port 15006 in use in the pod's netns (0.0.0.0:15006)"
    assert reason_of("cannot open /x: gone") == "cannot open /x: gone"


def test_probe_ports_come_from_every_probe_handler_and_resolve_named_ports() -> None:
    pod = {"spec": {"containers": [
        {"ports": [{"name": "health", "containerPort": 8081}, {"name": "http", "containerPort": 8080}],
         "livenessProbe": {"httpGet": {"path": "/", "port": "health"}},
         "readinessProbe": {"tcpSocket": {"port": 8080}},
         "startupProbe": {"exec": {"command": ["true"]}}},
        {"readinessProbe": {"grpc": {"port": "9090"}}, "livenessProbe": {"httpGet": {"port": "nosuch"}}},
    ]}}
    assert probe_ports(pod) == [8080, 8081, 9090]
    assert probe_ports({"spec": {"containers": [{"ports": [{"containerPort": 80}]}]}}) == []
    assert probe_ports({"spec": {"containers": [{"livenessProbe": {"tcpSocket": {"port": 70000}}}]}}) == []
