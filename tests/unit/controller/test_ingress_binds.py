"""An ingress listener whose port the pods cannot bind, sans-IO: the status the controller writes
from the pods' reports (controller.waypoints.ingress_status.bind_failures / gateway_status), the
report store's change signal (controller.debug.reports), and the ingress's own record of its
binds (waypoint.ingress_binds). The end-to-end path, real processes and a held port:
tests/unit/waypoint/test_ingress_bind_status.py."""

from __future__ import annotations

import errno
from typing import Any

from ambit.configclient.node import NodeInfo
from controller.debug.reports import ReportStore
from controller.translate.ingress import ListenerStatus
from controller.waypoints import ingress_status
from waypoint.ingress_binds import BindState, describe

GW = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
      "metadata": {"name": "gw", "namespace": "web", "generation": 3},
      "spec": {"gatewayClassName": "ambit", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"},
                                                          {"name": "admin", "port": 8080, "protocol": "HTTP"},
                                                          {"name": "extra", "port": 8080, "protocol": "HTTP"}]}}
SVC = {"kind": "Service", "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
LISTENERS = [ListenerStatus("http"), ListenerStatus("admin"), ListenerStatus("extra")]
IN_USE = "bind 0.0.0.0:8080: [Errno 98] Address already in use (EADDRINUSE)"


def _conds(entry: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in entry["conditions"]}


def _listener(st: dict[str, Any], name: str) -> dict[str, tuple[str, str, str]]:
    return _conds(next(ln for ln in st["listeners"] if ln["name"] == name))


def report(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"node": "n1", "ingress": list(entries)}


def test_an_unbindable_port_makes_its_listeners_not_accepted_and_the_gateway_not_programmed() -> None:
    unbound = ingress_status.bind_failures([
        ("gw-a", report({"port": 80, "protocol": "HTTP", "listeners": ["http"], "bound": True},
                        {"port": 8080, "protocol": "HTTP", "listeners": ["admin", "extra"], "bound": False,
                         "error": IN_USE, "attempts": 4})),
        ("gw-b", report({"port": 80, "protocol": "HTTP", "listeners": ["http"], "bound": True},
                        {"port": 8080, "protocol": "HTTP", "listeners": ["admin", "extra"], "bound": True}))])
    assert set(unbound) == {"admin", "extra"}
    st = ingress_status.gateway_status(GW, SVC, LISTENERS, unbound)
    for name in ("admin", "extra"):
        c = _listener(st, name)
        assert c["Accepted"][:2] == ("False", "PortUnavailable")
        assert c["Programmed"][:2] == ("False", "PortUnavailable")
        msg = c["Accepted"][2]
        assert "port 8080" in msg and "1 of 2 ingress pod(s)" in msg and "pod gw-a" in msg
        assert "Address already in use" in msg and "gw-b" not in msg
    assert _listener(st, "http")["Accepted"][:2] == ("True", "Accepted")
    assert _listener(st, "http")["Programmed"][:2] == ("True", "Programmed")
    gw = _conds(st)
    assert gw["Programmed"][:2] == ("False", "Pending") and "admin" in gw["Programmed"][2]
    assert all(c["observedGeneration"] == 3 for ln in st["listeners"] for c in ln["conditions"])


def test_once_every_pod_binds_the_status_recovers() -> None:
    healed = ingress_status.bind_failures([
        ("gw-a", report({"port": 8080, "protocol": "HTTP", "listeners": ["admin", "extra"], "bound": True}))])
    assert healed == {}
    st = ingress_status.gateway_status(GW, SVC, LISTENERS, healed)
    assert all(_listener(st, n)["Programmed"][:2] == ("True", "Programmed") for n in ("http", "admin", "extra"))
    assert _conds(st)["Programmed"][:2] == ("True", "Programmed")


def test_without_an_address_the_gateway_still_waits_for_it() -> None:
    st = ingress_status.gateway_status(GW, None, LISTENERS, {"admin": {8080: "port 8080 cannot be bound"}})
    assert _conds(st)["Programmed"][:2] == ("False", "AddressNotAssigned")
    assert _listener(st, "admin")["Accepted"][:2] == ("False", "PortUnavailable")


def test_malformed_reports_are_skipped_and_many_pods_are_counted_not_listed() -> None:
    bad = [("p0", {"ingress": "nope"}), ("p1", {"ingress": [1, {"port": "80", "bound": False, "listeners": ["x"]},
                                                              {"port": 81, "bound": False, "listeners": [7]}]}),
           ("p2", [])]
    assert ingress_status.bind_failures(bad) == {}
    many = [(f"gw-{i}", report({"port": 443, "listeners": ["https"], "bound": False, "error": "x" * 1000}))
            for i in range(5)]
    msg = ingress_status.bind_failures(many)["https"][443]
    assert "5 of 5 ingress pod(s)" in msg and "and 2 more" in msg and "gw-4" not in msg
    assert len(msg) < 5 * ingress_status.MAX_ERROR


def test_an_ingress_report_whose_listeners_are_no_list_is_skipped() -> None:
    """`listeners` is the proxy's JSON: a number there raised TypeError out of the pod condition
    (the Report call, as an internal error) and out of the Gateway status rewrite of every Gateway
    the replica writes; a string or an object was read as its characters or keys."""
    from controller.waypoints.bindcondition import condition_of
    for listeners in (5, "http", {"http": 1}, None, True):
        state = {"ingress": [{"port": 80, "bound": False, "listeners": listeners, "error": "EADDRINUSE"},
                             {"port": 81, "bound": False, "listeners": ["web"], "error": "EACCES"}]}
        failures = ingress_status.bind_failures([("p-0", state)])
        assert list(failures) == ["web"], listeners
        cond = condition_of(state)
        assert cond is not None and cond["message"] == "port 81 (web): EACCES", listeners


def test_a_report_about_a_port_the_listener_no_longer_has_is_ignored() -> None:
    """The Gateway moved listener admin from 8080 to 8081; a report from before the change (the pod
    has not applied it yet) says nothing of 8081."""
    moved = {**GW, "spec": {"listeners": [{"name": "http", "port": 80}, {"name": "admin", "port": 8081},
                                          {"name": "extra", "port": 8080}]}}
    binds = ingress_status.bind_failures([("gw-a", report(
        {"port": 8080, "listeners": ["admin", "extra"], "bound": False, "error": IN_USE}))])
    st = ingress_status.gateway_status(moved, SVC, LISTENERS, binds)
    assert _listener(st, "admin")["Accepted"][:2] == ("True", "Accepted")
    assert _listener(st, "extra")["Accepted"][:2] == ("False", "PortUnavailable")


def test_report_store_signals_when_the_binds_change_not_at_every_retry() -> None:
    now = [0.0]
    signals: list[int] = []
    store = ReportStore(ttl=60, clock=lambda: now[0], on_change=lambda: signals.append(1))
    node = NodeInfo("waypoint", "gw-a", "web/gw", "i1")
    failing = {"port": 8080, "listeners": ["admin"], "bound": False, "error": IN_USE, "attempts": 1}
    store.put(node, "v", report({"port": 80, "listeners": ["http"], "bound": True}))
    assert signals == []
    store.put(node, "v", report(failing))
    assert len(signals) == 1
    store.put(node, "v", report({**failing, "attempts": 2}))         # another retry, same failure
    assert len(signals) == 1
    assert store.of_waypoint("web/gw") == [("gw-a", report({**failing, "attempts": 2}))]
    assert store.of_waypoint("web/other") == []
    now[0] = 61.0                                                   # the pod went: its report expires
    assert store.all() == [] and len(signals) == 2


def test_on_report_sees_every_report_not_only_changes() -> None:
    """In a cluster every report goes to the pod condition writer (controller/waypoints/podcondition.py),
    which compares it with what the pod says: a repeat of the previous report must reach it too (the
    pod may say otherwise now, written by another replica or a previous container)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    store = ReportStore(ttl=60, clock=lambda: 0.0, on_report=lambda node, state: seen.append((node.key, state)))
    node = NodeInfo("waypoint", "gw-a", "web/gw", "i1")
    failing = {"port": 8080, "listeners": ["admin"], "bound": False, "error": IN_USE, "attempts": 1}
    store.put(node, "v", report(failing))
    store.put(node, "v", report(failing))
    assert seen == [("waypoint/web/gw@gw-a", report(failing))] * 2


def test_bind_state_records_failures_retries_and_success() -> None:
    b = BindState(clock=lambda: 100.0)
    why = describe("0.0.0.0", 80, OSError(errno.EACCES, "Permission denied"))
    assert why == "bind 0.0.0.0:80: [Errno 13] Permission denied (EACCES)"
    assert b.failed_bind(80, "HTTP", ["http"], why) is True
    assert b.failed_bind(80, "HTTP", ["http"], why) is False        # same failure: nothing new to report
    assert b.ok(443, "HTTPS", ["https"]) is False
    assert b.unbound() == 1 and b.failures_total == {80: 2}
    assert b.report() == [{"port": 80, "protocol": "HTTP", "listeners": ["http"], "bound": False, "error": why,
                           "since": 100.0, "attempts": 2},
                          {"port": 443, "protocol": "HTTPS", "listeners": ["https"], "bound": True}]
    assert b.ok(80, "HTTP", ["http"]) is True and b.unbound() == 0
    assert b.failures_total == {80: 2}                              # a counter: it stays
