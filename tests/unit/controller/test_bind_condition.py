"""An ingress pod's listener binds as the pod condition ambit.io/ListenersBound: built from the
proxy's report (checked and bounded: it is the proxy's JSON, and the message is both what
`kubectl describe pod` shows and what the leader parses back), read back into the Gateway status,
and written by the replica the report reaches (controller/waypoints/podcondition.py) against the
API-server emulator: merged by type with the kubelet's conditions, only onto a watched pod of the
report's own Gateway, with the pod's uid as precondition."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from ambit.configclient.node import NodeInfo
from ambit.kube.client import make_api_client
from controller.waypoints import bindcondition as bc
from controller.waypoints.ingress_status import bind_failures
from controller.waypoints.podcondition import PodConditionWriter
from tests.support.kube_emulator import KubeEmulator

IN_USE = "bind 0.0.0.0:8080: [Errno 98] Address already in use (EADDRINUSE)"
READY = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}


def report(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"node": "n1", "ingress": list(entries)}


def unbound(port: int, *listeners: Any, error: Any = IN_USE) -> dict[str, Any]:
    return {"port": port, "protocol": "HTTP", "listeners": list(listeners), "bound": False, "error": error,
            "since": 1.0, "attempts": 3}


def test_a_failing_report_makes_a_readable_false_condition_that_reads_back_as_the_same_gateway_status() -> None:
    state = report({"port": 80, "listeners": ["http"], "bound": True}, unbound(8443, "https", "admin"),
                   unbound(8080, "web"))
    cond = bc.condition_of(state)
    assert cond == {"type": "ambit.io/ListenersBound", "status": "False", "reason": "PortUnavailable",
                    "message": f"port 8080 (web): {IN_USE}; port 8443 (admin,https): {IN_USE}"}
    # what the leader makes of the pod's condition is what it made of the report itself
    assert bind_failures([("gw-a", {"ingress": bc.failures(cond)})]) == bind_failures([("gw-a", state)])


def test_all_bound_is_true_and_a_report_that_is_not_an_ingress_calls_for_no_condition() -> None:
    ok = bc.condition_of(report({"port": 80, "listeners": ["http"], "bound": True}))
    assert ok is not None and (ok["status"], ok["reason"]) == ("True", "Bound")
    assert bc.failures(ok) == []
    assert bc.condition_of({"certs": {}}) is None           # a mesh waypoint, or a ztunnel
    assert bc.condition_of({"ingress": "junk"}) is None


def test_hostile_report_content_is_checked_and_bounded_and_cannot_forge_entries() -> None:
    forged = "x; port 1 (evil): forged\nline2\x1b[31m"
    state = report(unbound(True, "a"), unbound(0, "a"), unbound(70000, "a"), unbound("80", "a"),   # type: ignore[arg-type]
                   unbound(81, "UPPER", "../x", "a;b", 5, "x" * 300),             # no valid listener: dropped
                   unbound(82, "ok", error=forged), unbound(83, "big", error="e" * 10_000))
    cond = bc.condition_of(state)
    assert cond is not None
    got = bc.failures(cond)
    assert [(e["port"], e["listeners"]) for e in got] == [(82, ["ok"]), (83, ["big"])]
    assert got[0]["error"] == "x, port 1 (evil): forged line2 [31m"
    assert len(got[1]["error"]) == bc.MAX_ERROR
    assert cond["message"].isprintable()


def test_many_ports_and_listeners_stay_within_the_bounds() -> None:
    names = [f"listener-{i}-{'n' * 200}" for i in range(100)]
    cond = bc.condition_of(report(*[unbound(1000 + i, names[i], error="e" * 1000) for i in range(100)]))
    assert cond is not None and len(cond["message"]) <= bc.MAX_MESSAGE
    got = bc.failures(cond)
    assert 0 < len(got) <= bc.MAX_ENTRIES
    assert cond["message"].endswith("more port(s)")       # what was left out is counted, not silently gone
    assert [e["port"] for e in got] == sorted(e["port"] for e in got)


def test_conditions_that_are_not_false_or_not_ours_say_nothing() -> None:
    assert bc.failures(None) == []
    assert bc.failures({"type": bc.CONDITION_TYPE, "status": "Unknown", "message": "port 1 (a): x"}) == []
    assert bc.failures({"type": bc.CONDITION_TYPE, "status": "False", "message": "garbled; port 99999 (a): x"}) == []
    assert bc.failures({"type": bc.CONDITION_TYPE, "status": "False", "message": 7}) == []


def test_transition_time_moves_only_when_the_status_does() -> None:
    old = {"type": bc.CONDITION_TYPE, "status": "False", "reason": "PortUnavailable", "message": "a",
           "lastTransitionTime": "T0"}
    new = {"type": bc.CONDITION_TYPE, "status": "False", "reason": "PortUnavailable", "message": "b"}
    assert bc.with_times(old, new, "T1")["lastTransitionTime"] == "T0"
    assert bc.with_times(old, {**new, "status": "True"}, "T1")["lastTransitionTime"] == "T1"
    assert bc.with_times(None, new, "T1")["lastTransitionTime"] == "T1"


# -- the writer, against the API-server emulator ---------------------------------------------------

@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    e = KubeEmulator().start()
    e.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})
    try:
        yield e
    finally:
        e.stop()


def pod(emu: KubeEmulator, name: str, gateway: str | None = "gw") -> dict[str, Any]:
    labels = {"gateway.networking.k8s.io/gateway-name": gateway} if gateway else {"app": "x"}
    return emu.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "web",
                                                                      "labels": labels},
                       "status": {"phase": "Running", "conditions": [dict(READY)]}})


def snapshot(emu: KubeEmulator, *names: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Pod", **emu.get("v1", "Pod", n, "web")} for n in names]   # type: ignore[dict-item]


def conds(emu: KubeEmulator, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (emu.get("v1", "Pod", name, "web") or {}).get("status", {}).get("conditions", [])}


def patches(emu: KubeEmulator) -> list[str]:
    return [p for m, p, _ in emu.requests if m == "PATCH"]


def test_the_writer_writes_a_changed_condition_once_onto_the_reporting_pod_next_to_the_kubelets(
        emu: KubeEmulator) -> None:
    pod(emu, "gw-a")
    w = PodConditionWriter(make_api_client(emu.url))
    w.observe(snapshot(emu, "gw-a"))
    node = NodeInfo("waypoint", "gw-a", "web/gw", "i1")
    w.offer(node, report(unbound(8080, "web")))
    w.flush()
    c = conds(emu, "gw-a")
    assert c["Ready"] == READY
    assert (c[bc.CONDITION_TYPE]["status"], c[bc.CONDITION_TYPE]["message"]) == ("False", f"port 8080 (web): {IN_USE}")
    w.offer(node, report(unbound(8080, "web")))            # the watch has not shown it yet: not written again
    w.flush()
    assert patches(emu) == ["/api/v1/namespaces/web/pods/gw-a/status"]
    w.observe(snapshot(emu, "gw-a"))                       # the watch shows it: the leader reads it
    assert bind_failures(w.of_gateway("web/gw"))["web"][8080].startswith("port 8080 cannot be bound on 1 of 1")
    w.wake.clear()
    w.offer(node, report({**unbound(8080, "web"), "attempts": 9, "since": 7.0}))    # another retry, same failure
    assert not w.wake.is_set()                             # the pod says so already: nothing queued
    w.flush()
    assert len(patches(emu)) == 1
    w.offer(node, report({"port": 8080, "listeners": ["web"], "bound": True}))
    w.flush()
    assert conds(emu, "gw-a")[bc.CONDITION_TYPE]["status"] == "True"
    w.observe(snapshot(emu, "gw-a"))
    assert bind_failures(w.of_gateway("web/gw")) == {}


def test_a_report_writes_no_pod_but_a_watched_one_of_its_own_gateway(emu: KubeEmulator,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    pod(emu, "other-gw-pod", gateway="other")
    pod(emu, "plain", gateway=None)
    w = PodConditionWriter(make_api_client(emu.url))
    w.observe(snapshot(emu, "other-gw-pod", "plain"))
    with caplog.at_level(logging.WARNING):
        for name in ("other-gw-pod", "plain", "absent", "absent"):
            w.offer(NodeInfo("waypoint", name, "web/gw", "i1"), report(unbound(8080, "web")))
            w.flush()
    assert patches(emu) == []
    assert bc.CONDITION_TYPE not in conds(emu, "other-gw-pod")
    warned = [r.getMessage() for r in caplog.records if "is watched to write it onto" in r.getMessage()]
    assert len(warned) == 3 and "ingress pod web/absent of Gateway web/gw" in warned[2]
    # what has nowhere to go counts from memory (an unwatched pod), a watched pod's from its condition only
    held = [("absent", report(unbound(8080, "web"))), ("other-gw-pod", report(unbound(8081, "web")))]
    assert set(bind_failures(w.unreported(held, "web/gw"))["web"]) == {8080, 8081}
    w.observe(snapshot(emu, "other-gw-pod", "plain") + [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "absent", "namespace": "web", "labels": {
            "gateway.networking.k8s.io/gateway-name": "gw"}}}])
    assert set(bind_failures(w.unreported(held, "web/gw"))["web"]) == {8081}


def test_a_pod_re_created_under_the_same_name_is_not_written(emu: KubeEmulator) -> None:
    """The uid is the precondition: a condition meant for the pod that was watched never lands on
    its successor (which reports for itself)."""
    pod(emu, "gw-a")
    w = PodConditionWriter(make_api_client(emu.url))
    w.observe(snapshot(emu, "gw-a"))
    emu.delete("v1", "Pod", "gw-a", "web")
    pod(emu, "gw-a")
    w.offer(NodeInfo("waypoint", "gw-a", "web/gw", "i1"), report(unbound(8080, "web")))
    w.flush()
    assert bc.CONDITION_TYPE not in conds(emu, "gw-a")
