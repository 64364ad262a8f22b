"""The server's per-subscriber state machine: deltas, ACK/NACK and resubscription (sans-IO)."""

from __future__ import annotations

import pytest

from ambit.configclient import NodeInfo, encode
from ambit.model import Service, Workload
from controller.configserver import Subscription
from controller.configserver.snapshot import Snapshot

from .helpers import service, workload

ZT = NodeInfo("ztunnel", "node-a")


def snap(gen: int, workloads, services=(), version: str | None = None) -> Snapshot:
    return Snapshot.build({Workload.TYPE: list(workloads), Service.TYPE: list(services)}, version or f"v{gen}", gen)


def step(sub: Subscription, s: Snapshot):
    return sub.next_response(lambda t: s.view(sub.node, t), s.version, s.generation)


def test_first_response_is_full_state_and_ack_makes_it_known():
    sub = Subscription(ZT)
    sub.subscribe(Workload.TYPE, {})
    s1 = snap(1, [workload("a", "node-a"), workload("b", "node-b")])
    p = step(sub, s1)
    assert p is not None and p.type_url == Workload.TYPE
    assert [e.name for e in p.resources] == ["a", "b"] and p.removed == ()
    assert step(sub, s1) is None, "only one response may be in flight"
    assert sub.on_ack(p.nonce) is p
    assert step(sub, s1) is None, "nothing changed since the ACK"
    st = sub.status(lambda t: s1.view(ZT, t)).types[0]
    assert st.acked_version == "v1" and st.in_sync and st.resources == 2


def test_delta_carries_only_changed_and_removed():
    sub = Subscription(ZT)
    sub.subscribe(Workload.TYPE, {})
    a, b, c = workload("a", "node-a"), workload("b", "node-b"), workload("c", "node-b")
    s1 = snap(1, [a, b])
    sub.on_ack(step(sub, s1).nonce)
    b2 = workload("b", "node-b", ip="10.9.9.9")
    p = step(sub, snap(2, [a, b2, c]))
    assert [e.name for e in p.resources] == ["b", "c"] and p.removed == ()
    sub.on_ack(p.nonce)
    p = step(sub, snap(3, [b2, c]))
    assert p.resources == () and p.removed == ("a",)


def test_subscribe_with_initial_versions_sends_only_differences():
    a, b = workload("a", "node-a"), workload("b", "node-b")
    gone = workload("gone", "node-b")
    sub = Subscription(ZT)
    # The client holds a (current), an old b, and a pod deleted while it was away.
    sub.subscribe(Workload.TYPE, {"a": encode(a).version, "b": "stale", "gone": encode(gone).version})
    p = step(sub, snap(5, [a, b]))
    assert [e.name for e in p.resources] == ["b"]
    assert p.removed == ("gone",)


def test_subscription_is_answered_even_when_the_client_is_up_to_date():
    a = workload("a", "node-a")
    sub = Subscription(ZT)
    sub.subscribe(Workload.TYPE, {"a": encode(a).version})
    p = step(sub, snap(1, [a]))
    assert p is not None and p.resources == () and p.removed == ()


def test_nack_keeps_the_old_state_and_is_not_resent_until_the_next_update():
    sub = Subscription(ZT)
    sub.subscribe(Workload.TYPE, {})
    a = workload("a", "node-a")
    s1 = snap(1, [a])
    sub.on_ack(step(sub, s1).nonce)
    s2 = snap(2, [a, workload("bad", "node-a")])
    p = step(sub, s2)
    nack = sub.on_nack(p.nonce, "cannot apply bad", now=123.0)
    assert nack.version == "v2" and nack.message == "cannot apply bad"
    assert step(sub, s2) is None, "the rejected state must not be resent in a loop"
    st = sub.status(lambda t: s2.view(ZT, t)).types[0]
    assert st.acked_version == "v1" and not st.in_sync and st.last_nack == nack
    # The next update is tried again, computed against what the client really holds (only a).
    p = step(sub, snap(3, [a, workload("bad", "node-a"), workload("c", "node-a")]))
    assert [e.name for e in p.resources] == ["bad", "c"]


def test_a_nack_is_superseded_even_when_the_config_returns_to_what_the_client_holds():
    """The bad object deleted: the content is the client's again, and nothing used to be sent, so
    the client kept reporting its rejection (ztunnel-config's 'last rejection') until it
    reconnected. An empty response with the new version lets it apply, clear it and ACK."""
    sub = Subscription(ZT)
    sub.subscribe(Workload.TYPE, {})
    a = workload("a", "node-a")
    sub.on_ack(step(sub, snap(1, [a])).nonce)
    sub.on_nack(step(sub, snap(2, [a, workload("bad", "node-a")])).nonce, "cannot apply bad", now=1.0)
    s3 = snap(3, [a])
    p = step(sub, s3)
    assert p is not None and (p.system_version, p.resources, p.removed) == ("v3", (), ())
    sub.on_ack(p.nonce)
    assert step(sub, snap(4, [a])) is None, "once ACKed, an unchanged update sends nothing again"
    st = sub.status(lambda t: s3.view(ZT, t)).types[0]
    assert st.acked_version == "v4" and st.in_sync


def test_stale_nonces_are_ignored():
    sub = Subscription(ZT)
    sub.subscribe(Workload.TYPE, {})
    p = step(sub, snap(1, [workload("a", "node-a")]))
    assert sub.on_ack("999") is None
    assert sub.on_nack("998", "x", 1.0) is None
    assert sub.waiting_for_answer
    assert sub.on_ack(p.nonce) is p


def test_types_go_out_in_dependency_order_one_at_a_time():
    sub = Subscription(ZT)
    sub.subscribe(Service.TYPE, {})   # subscribed first, but Services depend on Workloads
    sub.subscribe(Workload.TYPE, {})
    a = workload("a", "node-a")
    s1 = snap(1, [a], [service("svc", endpoints=[a])])
    first = step(sub, s1)
    assert first.type_url == Workload.TYPE
    sub.on_ack(first.nonce)
    second = step(sub, s1)
    assert second.type_url == Service.TYPE


def test_unchanged_update_advances_the_acked_version():
    a = workload("a", "node-a")
    sub = Subscription(NodeInfo("agent", "node-a"))
    sub.subscribe(Workload.TYPE, {})
    sub.on_ack(step(sub, snap(1, [a])).nonce)
    s2 = snap(2, [a, workload("remote", "node-b")])  # outside the agent's scope
    assert step(sub, s2) is None
    assert sub.status(lambda t: s2.view(sub.node, t)).types[0].acked_version == "v2"


def test_snapshot_rejects_bad_input_naming_the_entry():
    with pytest.raises(ValueError, match=r"\[0\]: is a Service .*not ambit.io/Workload"):
        Snapshot.build({Workload.TYPE: [service("s")]}, "v1", 1)
    with pytest.raises(ValueError, match="'a' appears more than once"):
        Snapshot.build({Workload.TYPE: [workload("a", "n"), workload("a", "n")]}, "v1", 1)
    with pytest.raises(ValueError, match="version must be a non-empty string"):
        Snapshot.build({}, "", 1)


def test_a_nack_message_is_made_printable_and_bounded():
    """A client's NACK text goes to the controller's log and `ambit proxy-status` as it came: a
    newline forged log lines, and a 4 MB message was held per subscriber."""
    sub = Subscription(ZT)
    sub.subscribe(Workload.TYPE, {})
    p = step(sub, snap(1, [workload("a", "node-a")]))
    nack = sub.on_nack(p.nonce, "bad\nWARNING ambit.ca issued certificate: node=evil" + "x" * 1_000_000, now=1.0)
    assert nack.message.startswith("bad\\nWARNING ambit.ca issued")
    assert "\n" not in nack.message and len(nack.message) <= 4096


def test_a_claim_is_kept_compactly_and_removes_at_most_max_gone_names_outside_the_view():
    """The server's copy of a subscribe's initial versions (Claim): the claimed version of each
    name in the view still saves resending it, the names outside it are removed, but no more than
    MAX_GONE of them per subscribe (the claim is the client's word, up to 4 MiB of it)."""
    from controller.configserver.subscription import Claim

    a, b = workload("a", "node-a"), workload("b", "node-b")
    s = snap(5, [a, b])
    claimed = {"a": encode(a).version, "b": "stale", **{f"gone{i}": "v" for i in range(30)}}
    claim = Claim(claimed, s.view(ZT, Workload.TYPE), max_gone=20)
    assert claim.dropped == 10 and len(claim) == 22
    sub = Subscription(ZT)
    sub.subscribe(Workload.TYPE, claim)
    p = step(sub, s)
    assert [e.name for e in p.resources] == ["b"]               # a is held, b is stale
    assert len(p.removed) == 20 and all(n.startswith("gone") for n in p.removed)
    st = sub.status(lambda t: s.view(ZT, t)).types[0]
    assert not st.in_sync and st.resources == 22
    sub.on_ack(p.nonce)
    assert sub.status(lambda t: s.view(ZT, t)).types[0].in_sync
    # a claim of the view exactly is in sync
    assert Claim({"a": encode(a).version, "b": encode(b).version}, s.view(ZT, Workload.TYPE)) == \
        {"a": encode(a).version, "b": encode(b).version}
