"""Deltas under churn converge: a client that applies every response it ACKs holds exactly what a
fresh full subscription would get, whatever it NACKed, skipped or reconnected through, and every
delta is the one computed the long way (the server shares one delta per held state: sans-IO)."""

from __future__ import annotations

import random

import pytest

from ambit.configclient import NodeInfo
from ambit.configclient.codec import Encoded
from ambit.model import Service, Workload
from controller.configserver import Subscription
from controller.configserver.snapshot import Snapshot
from controller.configserver.subscription import Planned

from .helpers import service, workload

NODES = ["node-a", "node-b", "node-c"]
TYPES = (Workload.TYPE, Service.TYPE)


def random_snapshot(rng: random.Random, pods: dict[str, Workload], gen: int) -> Snapshot:
    """Churn `pods` (add, delete, move, re-address some) and build the next snapshot from it."""
    for _ in range(rng.randrange(1, 8)):
        op = rng.random()
        if op < 0.4 or not pods:
            uid = f"p{gen}-{rng.randrange(10**6)}"
            pods[uid] = workload(uid, rng.choice(NODES), ip=f"10.0.{rng.randrange(256)}.{rng.randrange(256)}")
        elif op < 0.7:
            del pods[rng.choice(sorted(pods))]
        else:
            uid = rng.choice(sorted(pods))
            pods[uid] = workload(uid, rng.choice(NODES), ip=f"10.1.{rng.randrange(256)}.{rng.randrange(256)}")
    ws = sorted(pods.values(), key=lambda w: w.uid)
    svcs = [service(f"s{i}", endpoints=[w for w in ws if sum(map(ord, w.uid)) % 4 == i]) for i in range(rng.randrange(1, 4))]
    return Snapshot.build({Workload.TYPE: ws, Service.TYPE: svcs}, f"v{gen}", gen)


class Client:
    """What a client holds: name -> version per type, changed only by a response it applies."""

    def __init__(self, node: NodeInfo):
        self.node = node
        self.held: dict[str, dict[str, str]] = {t: {} for t in TYPES}
        self.sub = self.connect()

    def connect(self) -> Subscription:
        sub = Subscription(self.node)
        for t in TYPES:
            sub.subscribe(t, dict(self.held[t]))
        return sub

    def expect(self, snap: Snapshot, p: Planned) -> None:
        """The delta must be the long way's: every name whose version differs, every name gone."""
        view: dict[str, Encoded] = snap.view(self.node, p.type_url)
        held = self.held[p.type_url]
        assert p.resources == tuple(e for n, e in sorted(view.items()) if held.get(n) != e.version)
        assert p.removed == tuple(sorted(n for n in held if n not in view))

    def apply(self, p: Planned) -> None:
        held = self.held[p.type_url]
        for e in p.resources:
            held[e.name] = e.version
        for n in p.removed:
            held.pop(n, None)

    def step(self, snap: Snapshot, rng: random.Random, behaviour: str) -> None:
        for _ in range(10):
            p = self.sub.next_response(lambda t: snap.view(self.node, t), snap.version, snap.generation)
            if p is None:
                return
            self.expect(snap, p)
            if behaviour == "nack" and rng.random() < 0.5:
                self.sub.on_nack(p.nonce, "cannot apply", 0.0)
                continue
            if behaviour == "drop" and rng.random() < 0.3:
                self.sub = self.connect()           # the response is lost with the stream
                return
            self.apply(p)
            self.sub.on_ack(p.nonce)


@pytest.mark.parametrize("seed", range(8))
def test_deltas_under_churn_converge_to_a_fresh_full_subscription(seed: int) -> None:
    rng = random.Random(seed)
    clients = [Client(NodeInfo("ztunnel", n)) for n in NODES] + [Client(NodeInfo("agent", n)) for n in NODES]
    pods: dict[str, Workload] = {}
    snap = random_snapshot(rng, pods, 1)
    for gen in range(2, 40):
        for c in clients:
            c.step(snap, rng, rng.choice(["ack", "ack", "nack", "drop", "lag"]) if gen % 3 else "ack")
        snap = random_snapshot(rng, pods, gen)
    for c in clients:                               # the churn stops: everyone catches up
        for _ in range(4):
            c.step(snap, rng, "ack")
        fresh = Client(c.node)
        fresh.step(snap, rng, "ack")
        assert c.held == fresh.held == {t: {n: e.version for n, e in snap.view(c.node, t).items()} for t in TYPES}
        assert all(ts.in_sync for ts in c.sub.status(lambda t, c=c: snap.view(c.node, t)).types)


def test_ztunnels_that_hold_the_same_view_share_its_delta() -> None:
    a, b = workload("a", "node-a"), workload("b", "node-b")
    s1 = Snapshot.build({Workload.TYPE: [a]}, "v1", 1)
    s2 = Snapshot.build({Workload.TYPE: [a, b]}, "v2", 2)
    subs = [Subscription(NodeInfo("ztunnel", n)) for n in NODES]
    for sub in subs:
        sub.subscribe(Workload.TYPE, {})
    planned = []
    for s in (s1, s2):
        for sub in subs:
            p = sub.next_response(lambda t, s=s, sub=sub: s.view(sub.node, t), s.version, s.generation)
            assert p is not None
            sub.on_ack(p.nonce)
            planned.append(p)
    assert [e.name for e in planned[-1].resources] == ["b"]
    assert planned[-1].resources is planned[-2].resources is planned[-3].resources, "one delta, not one each"
    assert len({id(sub.types[Workload.TYPE].known) for sub in subs}) == 1, "one held-state dict, not one each"


@pytest.mark.parametrize("seed", range(4))
def test_each_agent_gets_the_workloads_of_its_node_from_the_shared_index(seed: int) -> None:
    rng = random.Random(seed)
    pods: dict[str, Workload] = {}
    snap = random_snapshot(rng, pods, 1)
    for gen in range(2, 6):
        snap = random_snapshot(rng, pods, gen)
    for n in [*NODES, "node-without-pods"]:
        view = snap.view(NodeInfo("agent", n), Workload.TYPE)
        assert list(view) == [w.uid for w in snap.resources[Workload.TYPE] if w.node == n]
        assert snap.view(NodeInfo("agent", n), Service.TYPE).keys() == {s.resource_name for s in snap.resources[Service.TYPE]}
