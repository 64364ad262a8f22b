"""The debug API across controller replicas, the pure part (controller/debug/replicas.py): who the
other replicas are, how their answers merge, and how `ambit wait` judges each replica's
(ambitctl/applywait.py). The processes and sockets: tests/unit/controller/test_ha_debug.py."""

from __future__ import annotations

from typing import Any

from ambit.api import debug_pb2
from ambit.configclient.node import NodeInfo
from ambitctl import applywait
from ambitctl.commands import proxystatus, version
from controller.debug.replicas import Peer, PeerAnswer, merge, missing, peers_of, pick_config

NS = "ambit-system"


def svc(target: Any = "grpc", selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": "ambit-controller", "namespace": NS},
            "spec": {"selector": {"app": "ambit-controller"} if selector is None else selector,
                     "ports": [{"name": "http-metrics", "port": 15014, "targetPort": 15014},
                               {"name": "grpc", "port": 15012, "targetPort": target}]}}


def pod(name: str, ip: str = "10.0.0.1", *, ns: str = NS, app: str = "ambit-controller", ready: str = "True",
        phase: str = "Running", deleting: bool = False, port: int = 15012) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": ns, "labels": {"app": app}}
    if deleting:
        md["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"kind": "Pod", "metadata": md,
            "spec": {"containers": [{"name": "controller", "ports": [{"name": "grpc", "containerPort": port}]}]},
            "status": {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}}


def test_peers_are_the_ready_pods_the_controller_service_selects_less_this_one() -> None:
    objs = [svc(), pod("ctl-a", "10.0.0.1"), pod("ctl-b", "10.0.0.2", port=16000), pod("ctl-c", "fd00::3"),
            pod("unready", ready="False"), pod("pending", phase="Pending"), pod("going", deleting=True),
            pod("other-app", app="web"), pod("elsewhere", ns="default")]
    peers, over = peers_of(objs, NS, "ambit-controller", "ctl-a", 15012)
    assert peers == [Peer("ctl-b", "10.0.0.2:16000"), Peer("ctl-c", "[fd00::3]:15012")] and over == []
    # a numeric targetPort is taken as it is; no Service (or no selector): no peers
    assert peers_of([svc(15099), pod("ctl-b")], NS, "ambit-controller", "ctl-a", 1)[0] == [Peer("ctl-b", "10.0.0.1:15099")]
    assert peers_of([pod("ctl-b")], NS, "ambit-controller", "ctl-a", 15012) == ([], [])
    assert peers_of([svc(selector={}), pod("ctl-b")], NS, "ambit-controller", "ctl-a", 15012) == ([], [])


def test_peers_are_bounded_and_those_left_out_are_named() -> None:
    objs = [svc(), *(pod(f"ctl-{i:02d}", f"10.0.0.{i}") for i in range(20))]
    peers, over = peers_of(objs, NS, "ambit-controller", "me", 15012, max_peers=16)
    assert len(peers) == 16 and over == ["ctl-16", "ctl-17", "ctl-18", "ctl-19"]


def answer(replica: str, version: str, *proxies: tuple[str, str, bool], observed: dict | None = None,
           applied: bool = True) -> debug_pb2.ProxyStatusResponse:
    """A replica's own (local_only) answer, as DebugServicer.status_response builds it."""
    out = debug_pb2.ProxyStatusResponse(controller_version="0.1", config_version=version, replica=replica,
                                        snapshot_applied=applied)
    for (kind, ns, name), rv in (observed or {}).items():
        out.observed.add(ref=debug_pb2.ObjectRef(kind=kind, namespace=ns, name=name), present=rv is not None,
                         resource_version=rv or "")
    for node, state, connected in proxies:
        out.proxies.add(node=NodeInfo("ztunnel", node).to_proto(), connected=connected, state=state,
                        acked_version="v1", replica=replica)
    out.replicas.add(name=replica, answered=True, controller_version="0.1", config_version=version,
                     snapshot_applied=applied, observed=list(out.observed), proxies=len(out.proxies))
    return out


B, C = Peer("ctl-b", "10.0.0.2:15012"), Peer("ctl-c", "10.0.0.3:15012")


def test_merge_labels_each_proxy_with_its_replica_and_names_a_silent_one() -> None:
    own = answer("ctl-a", "v2", ("n1", "SYNCED", True), ("n2", "DISCONNECTED", False))
    got = merge(own, [PeerAnswer(B, answer("ctl-b", "v2", ("n2", "STALE", True), ("n3", "SYNCED", True))),
                      PeerAnswer(C, None, "DEADLINE_EXCEEDED", "Deadline Exceeded")], skipped=["ctl-d"])
    # n2 moved from a to b: listed once, where it is connected
    assert [(p.node.name, p.state, p.replica) for p in got.proxies] == [
        ("n1", "SYNCED", "ctl-a"), ("n2", "STALE", "ctl-b"), ("n3", "SYNCED", "ctl-b")]
    assert [(r.name, r.address, r.answered) for r in got.replicas] == [
        ("ctl-a", "", True), ("ctl-b", "10.0.0.2:15012", True), ("ctl-c", "10.0.0.3:15012", False),
        ("ctl-d", "", False)]
    assert missing(got) == [
        "controller replica ctl-c (10.0.0.3:15012) did not answer: DEADLINE_EXCEEDED: Deadline Exceeded",
        "controller replica ctl-d did not answer: not asked: more than 16 other replicas"]
    assert got.config_version == "v2" and got.replica == "ctl-a"       # the asked replica's own, as before


def test_merge_bounds_the_answer_and_skips_an_answer_from_itself() -> None:
    own = answer("ctl-a", "v2", ("n1", "SYNCED", True))
    big = answer("ctl-b", "v2", *((f"n{i}", "SYNCED", True) for i in range(100)))
    got = merge(own, [PeerAnswer(B, big)], max_bytes=own.ByteSize() + 100)
    assert [p.node.name for p in got.proxies] == ["n1"]
    assert not got.replicas[1].answered and "would take the merged answer past" in got.replicas[1].error
    same = merge(own, [PeerAnswer(Peer("ctl-a", "10.0.0.1:15012"), answer("ctl-a", "v2", ("n1", "SYNCED", True)))])
    assert len(same.proxies) == 1 and len(same.replicas) == 1


def test_wait_judges_each_replica_by_its_own_snapshot_and_version() -> None:
    route = ("HTTPRoute", "shop", "r")
    want = {route: "12"}
    a = answer("ctl-a", "v2", ("n1", "SYNCED", True), observed={route: "12"})
    # b has not seen the write yet: its proxy is SYNCED, but to b's older version
    merged = merge(a, [PeerAnswer(B, answer("ctl-b", "v1", ("n2", "SYNCED", True), observed={route: "11"}))])
    p = applywait.progress([merged], want)
    assert p.pending == ["controller replica ctl-b has HTTPRoute shop/r at resourceVersion 11, not yet 12"]
    # b has it, but its proxy has not ACKed b's version
    merged = merge(a, [PeerAnswer(B, answer("ctl-b", "v3", ("n2", "STALE", True), observed={route: "12"}))])
    p = applywait.progress([merged], want)
    assert p.pending == ["ztunnel/n2 on controller replica ctl-b is STALE (ACKed v1, current v3)"]
    # both replicas serve it (each its own version), every proxy holds its replica's
    merged = merge(a, [PeerAnswer(B, answer("ctl-b", "v3", ("n2", "SYNCED", True), observed={route: "12"}))])
    p = applywait.progress([merged], want)
    assert p.done and p.proxies == 2 and p.replicas == 2 and p.version == "v2, v3"
    assert applywait.report(p, 0.5, 30)[0] == ("in force after 0.50s: 2 proxies on 2 controller replicas in sync "
                                               "at config versions v2, v3")


def test_wait_does_not_succeed_while_a_replica_is_silent() -> None:
    route = ("HTTPRoute", "shop", "r")
    a = answer("ctl-a", "v2", ("n1", "SYNCED", True), observed={route: "12"})
    p = applywait.progress([merge(a, [PeerAnswer(B, None, "UNAVAILABLE", "connection refused")])], {route: "12"})
    assert not p.done and p.pending == [
        "controller replica ctl-b (10.0.0.2:15012) did not answer: UNAVAILABLE: connection refused "
        "(its proxies are not known)"]
    # a NACK on b fails at once, naming b's version
    nack = answer("ctl-b", "v3", ("n2", "NACK", True), observed={route: "12"})
    nack.proxies[0].nack = "weight 7"
    p = applywait.progress([merge(a, [PeerAnswer(B, nack)])], {route: "12"})
    assert p.failed == ["ztunnel/n2 on controller replica ctl-b rejected config version v3 (it keeps its last "
                        "good config): weight 7"]


def test_proxy_status_table_shows_each_replica_and_a_partial_answer() -> None:
    got = merge(answer("ctl-a", "v2", ("n1", "SYNCED", True)),
                [PeerAnswer(B, answer("ctl-b", "v3", ("n2", "SYNCED", True))), PeerAnswer(C, None, "UNAVAILABLE", "x")])
    rows = proxystatus.rows_of(got)
    assert [(r["name"], r["replica"], r["current_version"]) for r in rows] == [("n1", "ctl-a", "v2"),
                                                                              ("n2", "ctl-b", "v3")]
    text = proxystatus.format_rows(rows, got.controller_version, got.config_version, proxystatus.replicas_of(got))
    lines = text.splitlines()
    assert lines[:3] == ["controller replica ctl-a: 0.1, config version v2",
                         "controller replica ctl-b: 0.1, config version v3",
                         "PARTIAL: controller replica ctl-c (10.0.0.3:15012) did not answer: UNAVAILABLE: x; "
                         "its proxies are not listed"]
    assert lines[4].split() == ["NAME", "KIND", "NODE", "STATE", "ACKED", "CURRENT", "VERSION", "CERTS", "REPLICA"]


def test_proxy_config_of_a_proxy_connected_elsewhere() -> None:
    doc = debug_pb2.JsonDocument(json=b'{"node": "ztunnel/n2", "replica": "ctl-b"}')
    nf = PeerAnswer(C, None, "NOT_FOUND", "no connected proxy")
    assert pick_config("n2", "ctl-a", [PeerAnswer(B, doc), nf], "ztunnel/n1").doc == doc.json
    out = pick_config("n9", "ctl-a", [PeerAnswer(B, None, "NOT_FOUND", "-"), nf], "ztunnel/n1")
    assert (out.code, out.message) == ("NOT_FOUND", "no connected proxy 'n9' on any controller replica "
                                                    "(ctl-a, ctl-b, ctl-c); connected to ctl-a: ztunnel/n1")
    out = pick_config("n9", "ctl-a", [PeerAnswer(B, None, "UNAVAILABLE", "refused"), nf], "")
    assert out.code == "UNAVAILABLE" and "replica ctl-b (10.0.0.2:15012) did not answer: UNAVAILABLE: refused" \
        in out.message and "it may be connected there" in out.message
    out = pick_config("n2", "ctl-a", [PeerAnswer(B, doc), PeerAnswer(C, doc)], "")
    assert out.code == "FAILED_PRECONDITION" and "ctl-b, ctl-c" in out.message


def test_version_judges_each_proxy_against_its_own_replica() -> None:
    """Mid-rollout the replicas run different versions: a proxy is compatible with the replica it
    is connected to, whatever the replica asked runs."""
    old, new = answer("ctl-a", "v2", ("n1", "SYNCED", True)), answer("ctl-b", "v2", ("n2", "SYNCED", True))
    old.controller_version = old.replicas[0].controller_version = "0.1.0"
    new.replicas[0].controller_version = "0.3.0"
    old.proxies[0].proxy_version, new.proxies[0].proxy_version = "0.1.0", "0.3.0"
    doc = version.collect(merge(old, [PeerAnswer(B, new)]))
    assert doc["server"]["proxies"]["ztunnel/n2"]["compatibility"] == "compatible"
    assert doc["server"]["proxies"]["ztunnel/n2"]["why"].startswith("vs controller replica ctl-b: ")
    assert sorted(doc["server"]["replicas"]) == ["ctl-a", "ctl-b"]
    text = version.format_versions(doc)
    assert "controller replica ctl-b version: 0.3.0 (" in text and "controller version:" not in text
