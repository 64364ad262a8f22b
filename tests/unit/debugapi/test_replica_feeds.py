"""Tap, Metrics and Status across controller replicas, the pure part (controller/debug/tapmerge.py,
scrapemerge.py, statusmerge.py) and how the CLI shows them. The processes and sockets:
tests/unit/controller/test_ha_debug.py."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from ambit.api import config_pb2
from ambitctl.commands import mesh, tap
from controller.debug.replicas import Peer, PeerAnswer
from controller.debug.scrapemerge import merge_metrics, own_metrics
from controller.debug.statusmerge import label_own, merge_status
from controller.debug.tapmerge import TapMerge

B, C = Peer("ctl-b", "10.0.0.2:15012"), Peer("ctl-c", "10.0.0.3:15012")


def flow(n: int, source: str = "ztunnel/node-b") -> dict[str, Any]:
    return {"type": "flow", "source": source, "n": n}


# -- Tap ---------------------------------------------------------------------------------------------

def test_a_peers_flows_are_labelled_with_it_and_its_first_line_joins_the_merged_one() -> None:
    woken: list[int] = []
    m = TapMerge([(B.name, B.address), (C.name, C.address)], wake=lambda: woken.append(1))
    assert not m.started() and m.silent() == ["ctl-b", "ctl-c"]
    m.event("ctl-b", {"type": "status", "source": "controller", "dropped": 0, "feeds": ["ztunnel/node-b"]})
    m.ended("ctl-c", "UNAVAILABLE: connection refused")
    assert m.started() and m.silent() == []
    feeds, by = m.feeds(["ztunnel/node-a"], "ctl-a")
    assert feeds == ["ztunnel/node-a", "ztunnel/node-b"]
    assert by == {"ctl-a": ["ztunnel/node-a"], "ctl-b": ["ztunnel/node-b"]}
    m.event("ctl-b", flow(1))
    [notice, ev] = m.take()
    assert ev == {**flow(1), "replica": "ctl-b"}
    assert notice["type"] == "error" and notice["replica"] == "ctl-c"
    assert "stopped (10.0.0.3:15012): UNAVAILABLE: connection refused" in notice["error"]
    assert "the tap goes on from the other replicas" in notice["error"]
    assert m.open() == ["ctl-b"] and woken


def test_a_peer_is_said_to_end_once_and_sends_nothing_after() -> None:
    m = TapMerge([(B.name, B.address)])
    m.ended("ctl-b", "")
    m.ended("ctl-b", "CANCELLED: again")
    m.event("ctl-b", flow(1))
    [notice] = m.take()
    assert "it closed the tap" in notice["error"] and m.take() == []


def test_a_slow_reader_drops_a_peers_events_counted_never_queues_without_bound() -> None:
    m = TapMerge([(B.name, B.address), (C.name, C.address)], queue_size=3)
    for i in range(10):
        m.event("ctl-b", flow(i))
    m.event("ctl-c", flow(99, "ztunnel/node-c"))           # a chatty peer does not crowd out another
    m.event("ctl-b", {"type": "status", "source": "controller", "dropped": 5})   # what b itself dropped
    assert m.dropped() == 7 + 5
    got = m.take()
    assert [e["n"] for e in got] == [0, 1, 2, 99]
    m.event("ctl-b", {"type": "status", "dropped": 4})       # a count never goes back
    assert m.dropped() == 12


def test_peers_over_the_bound_are_named_and_a_peers_own_warning_is_labelled() -> None:
    m = TapMerge([(B.name, B.address)], skipped=["ctl-x", "ctl-y"])
    m.event("ctl-b", {"type": "error", "error": "not yet tapping (no answer in 5s): ztunnel/node-b"})
    over, warning = m.take()
    assert over["replica"] == "" and "ctl-x, ctl-y not tapped" in over["error"]
    assert warning == {"type": "error", "replica": "ctl-b", "error": "not yet tapping (no answer in 5s): ztunnel/node-b"}


def test_a_replica_that_appears_during_a_tap_joins_it_and_is_said_once_it_taps() -> None:
    """A rolling update replaces every replica: the tap follows them instead of thinning out."""
    m = TapMerge([(B.name, B.address)])
    m.event("ctl-b", {"type": "status", "feeds": ["ztunnel/node-b"]})
    assert m.join("ctl-b", B.address, 10.0) is False           # still open: nothing to do
    assert m.join("ctl-c", C.address, 10.0) is True
    assert m.started() and m.silent() == []                      # a late joiner holds nothing up
    assert m.take() == []                                        # said once it taps, not before
    m.event("ctl-c", {"type": "status", "feeds": ["ztunnel/node-c"]})
    m.event("ctl-c", flow(7, "ztunnel/node-c"))
    [notice, ev] = m.take()
    assert notice == {"type": "error", "replica": "ctl-c",
                      "error": "joined (10.0.0.3:15012): tapping ztunnel/node-c"}
    assert ev["replica"] == "ctl-c" and m.join("ctl-c", C.address, 11.0) is False


def test_a_replica_that_comes_back_is_tapped_again_after_a_backoff_and_a_dead_one_is_named_once() -> None:
    m = TapMerge([(B.name, B.address)])
    m.event("ctl-b", {"type": "status", "feeds": ["ztunnel/node-b"]})
    m.event("ctl-b", flow(0))                                   # sent before it went, not taken yet
    m.ended("ctl-b", "UNAVAILABLE: gone", now=100.0)
    assert m.join("ctl-b", B.address, 102.0) is True            # back before the reader took it
    m.ended("ctl-b", "UNAVAILABLE: gone again", now=102.0)
    stopped, kept = m.take()
    assert kept["n"] == 0                                       # reopening loses nothing queued
    m = TapMerge([(B.name, B.address)])
    m.event("ctl-b", {"type": "status", "feeds": ["ztunnel/node-b"]})
    m.ended("ctl-b", "UNAVAILABLE: gone", now=100.0)
    [stopped] = m.take()
    assert "stopped (10.0.0.2:15012): UNAVAILABLE: gone" in stopped["error"]
    assert m.join("ctl-b", B.address, 100.5) is False           # too soon
    assert m.join("ctl-b", B.address, 102.0) is True            # its container restarted in place
    m.ended("ctl-b", "UNAVAILABLE: still gone", now=102.1)      # not back yet: nothing more is said
    assert m.take() == []
    assert m.join("ctl-b", B.address, 104.0) is False           # the backoff doubled (4 s)
    assert m.join("ctl-b", B.address, 106.2) is True
    m.event("ctl-b", {"type": "status", "feeds": ["ztunnel/node-b"]})
    m.event("ctl-b", flow(1))
    [back, ev] = m.take()
    assert back["error"] == "tapped again (10.0.0.2:15012): tapping ztunnel/node-b" and ev["n"] == 1
    m.ended("ctl-b", "UNAVAILABLE: down again", now=200.0)      # it had come back: said again
    assert "stopped" in m.take()[0]["error"]
    assert m.join("ctl-b", "10.0.0.9:15012", 200.1) is True     # at another address: at once


def test_replicas_that_ended_and_are_gone_are_forgotten_their_drops_still_counted() -> None:
    m = TapMerge([(B.name, B.address), (C.name, C.address)], queue_size=1)
    m.event("ctl-b", flow(1))
    m.event("ctl-b", flow(2))                                    # dropped here
    m.ended("ctl-b", "CANCELLED", now=1.0)
    m.forget({"ctl-c"})
    assert "ctl-b" in m.parts                                    # an event is still to be taken
    m.take()
    m.forget({"ctl-c"})
    assert list(m.parts) == ["ctl-c"] and m.dropped() == 1
    m.forget(set())                                              # c is open: kept
    assert list(m.parts) == ["ctl-c"]


def test_the_cli_names_a_stopped_replica_and_keeps_tapping() -> None:
    """`ambit tap`'s loop: a replica's end is a warning, not the end of the tap."""
    import asyncio

    from ambit.tapfilter import Filter
    events = [{"type": "status", "source": "controller", "dropped": 0, "feeds": ["ztunnel/node-a", "ztunnel/node-b"],
               "replicas": {"ctl-a": ["ztunnel/node-a"], "ctl-b": ["ztunnel/node-b"]}},
              {"type": "error", "replica": "ctl-b", "error": "stopped (10.0.0.2:15012): UNAVAILABLE: gone"},
              {**flow(1, "ztunnel/node-a"), "dst": {}, "src": {}}]

    async def producer(q: asyncio.Queue[Any]) -> None:
        for ev in events:
            await q.put((tap._producer(ev, "ctl-a"), ev))
        await asyncio.sleep(30)
    out: list[Any] = []
    warnings: list[str] = []
    ready: list[Any] = []
    n = asyncio.run(tap.stream({"controller": producer}, Filter(), out.append, warnings.append, max_events=1,
                               on_ready=ready.append))
    assert n == 1 and out[0]["replica"] == "ctl-a"
    assert warnings == ["controller replica ctl-b: stopped (10.0.0.2:15012): UNAVAILABLE: gone"]


# -- Metrics -----------------------------------------------------------------------------------------

def test_metrics_of_every_replica_each_proxy_labelled_a_silent_replica_named() -> None:
    own = own_metrics({"ztunnel/node-a": "a 1\n"}, ["ztunnel/node-z"], "ctl-a")
    theirs = own_metrics({"ztunnel/node-b": "b 1", "ztunnel/node-a": "a 2\n"}, [], "ctl-b")
    out = merge_metrics(own, [PeerAnswer(B, theirs), PeerAnswer(C, None, "UNAVAILABLE", "refused")], ["ctl-x"])
    assert dict(out.metrics) == {"ztunnel/node-a": "a 1\na 2\n", "ztunnel/node-b": "b 1"}
    assert dict(out.replica) == {"ztunnel/node-a": "ctl-a,ctl-b", "ztunnel/node-b": "ctl-b"}
    assert list(out.missing) == ["ztunnel/node-z"]
    assert [(r.name, r.answered, r.address, r.proxies) for r in out.replicas] == [
        ("ctl-a", True, "", 1), ("ctl-b", True, B.address, 2), ("ctl-c", False, C.address, 0), ("ctl-x", False, "", 0)]
    assert out.replicas[2].error == "UNAVAILABLE: refused"


def test_a_peer_answer_past_the_merged_bound_is_left_out_and_named() -> None:
    own = own_metrics({}, [], "ctl-a")
    big = own_metrics({"ztunnel/node-b": "x" * 1000}, [], "ctl-b")
    out = merge_metrics(own, [PeerAnswer(B, big)], max_bytes=500)
    assert dict(out.metrics) == {} and not out.replicas[1].answered and "past 500 bytes" in out.replicas[1].error


# -- Status ------------------------------------------------------------------------------------------

def status(version: str, *subs: tuple[str, bool], errors: tuple[tuple[str, str], ...] = ()) -> Any:
    resp = config_pb2.StatusResponse(version=version)
    for name, connected in subs:
        s = resp.subscribers.add(connected=connected)
        s.node.kind, s.node.name = "ztunnel", name
        s.connected_since.CopyFrom(Timestamp(seconds=1000))
        s.types.add(type_url="type.ambit.io/Workload", acked_version=version, in_sync=True, resources=2)
    for ref, reason in errors:
        resp.config_errors.add(ref=ref, reason=reason)
    return resp


def test_status_lists_every_replicas_subscribers_and_each_rejection_once() -> None:
    own = label_own(status("v1", ("node-a", True), ("node-m", False),
                           errors=(("VirtualService/shop/bad", "no host"),)), "ctl-a")
    b = label_own(status("v7", ("node-b", True), ("node-m", True),
                         errors=(("VirtualService/shop/bad", "no host"), ("Gateway/shop/new", "no listener"))), "ctl-b")
    out = merge_status(own, [PeerAnswer(B, b), PeerAnswer(C, None, "UNAVAILABLE", "refused")])
    rows = {(s.node.name, s.replica, s.connected) for s in out.subscribers}
    assert rows == {("node-a", "ctl-a", True), ("node-b", "ctl-b", True), ("node-m", "ctl-b", True)}  # moved: once
    assert [(e.ref, list(e.replicas)) for e in out.config_errors] == [
        ("VirtualService/shop/bad", []), ("Gateway/shop/new", ["ctl-b"])]
    assert [(r.name, r.answered, r.version, r.subscribers) for r in out.replicas] == [
        ("ctl-a", True, "v1", 2), ("ctl-b", True, "v7", 2), ("ctl-c", False, "", 0)]

    text = mesh.format_status(out, "10.0.0.1:15012", now=1060)
    assert "controller replica ctl-b (10.0.0.2:15012): config version v7, 2 components" in text
    assert "PARTIAL: controller replica ctl-c (10.0.0.3:15012) did not answer: UNAVAILABLE: refused" in text
    header = next(ln for ln in text.splitlines() if ln.startswith("COMPONENT"))
    assert header.split()[-1] == "REPLICA"
    assert next(ln for ln in text.splitlines() if ln.startswith("ztunnel/node-b")).split()[-1] == "ctl-b"
    assert "Gateway/shop/new: no listener (by controller replicas ctl-b only)" in text
    assert text.count("VirtualService/shop/bad") == 1


def test_status_of_one_replica_reads_as_before() -> None:
    out = label_own(status("v1", ("node-a", True)), "")
    text = mesh.format_status(out, "127.0.0.1:15012", now=1060)
    assert "REPLICA" not in text and "controller replica" not in text
    assert text.splitlines()[0] == "controller 127.0.0.1:15012: config version v1"

