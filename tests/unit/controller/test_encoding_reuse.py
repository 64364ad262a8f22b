"""The controller reuses the last snapshot's encodings of resources whose state did not change
(controller/encodings.py). Under random sequences of changes, reuse must give exactly what
encoding every resource again gives: the same bodies and resource versions, the same content
version, the same deltas to subscribers; it must tell apart values that are equal but encode
differently; and it holds only the current snapshot's encodings (no timing: bench/ctrlscale.py
measures)."""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import controller.encodings as encodings
from ambit.configclient.codec import Encoded, encode
from ambit.configclient.node import NodeInfo
from ambit.model import Authorization, Resource, Workload
from bench.ctrlscale import _NoSource, churn, cluster
from controller.app import Controller, content_version, encode_all
from controller.configserver import ConfigServer, Subscription
from controller.configserver.snapshot import Snapshot
from controller.encodings import Encodings
from controller.sources.cache import LastGoodCache
from controller.translate import translate
from tests.unit.configstream.helpers import workload

Obj = dict[str, Any]
NODES = [NodeInfo("ztunnel", "node-0"), NodeInfo("agent", "node-0"), NodeInfo("agent", "node-1")]


def edit(objs: list[Obj], rng: random.Random) -> list[Obj]:
    """One random change of the cluster's source objects, as a watch would deliver it."""
    objs = copy.deepcopy(objs)
    op = rng.random()
    if op < 0.4:
        return churn(objs, rng.randrange(1, 6), rng)
    pick = [o for o in objs if o["kind"] == rng.choice(["Namespace", "Service", "AuthorizationPolicy",
                                                       "VirtualService"])]
    o = rng.choice(pick)
    if o["kind"] == "Namespace":            # a waypoint on or off: every pod of it changes
        labels = o["metadata"]["labels"]
        if labels.pop("ambit.io/use-waypoint", None) is None:
            labels["ambit.io/use-waypoint"] = "waypoint"
    elif o["kind"] == "Service":            # another protocol for its port
        port = o["spec"]["ports"][0]
        port["name"] = "tcp" if port["name"] == "http" else "http"
    elif o["kind"] == "AuthorizationPolicy":
        if rng.random() < 0.5:
            objs.remove(o)
        else:                               # rules with HTTP attributes: kept verbatim
            o["spec"]["rules"][0]["to"] = [{"operation": {"methods": ["GET"], "ports": ["8080"]}}]
    else:
        o["spec"]["http"][0]["timeout"] = rng.choice(["5s", "7s", "1.5s"])
    return objs


def flip_types(by_type: Mapping[str, Sequence[Resource]], rng: random.Random, n: int) -> None:
    """Give `n` resources a field value equal to the one they had but of another type (True -> 1,
    1 -> 1.0, 2.0 -> 2): dataclass equality calls the state unchanged, the encoding differs."""
    rs = [r for rs in by_type.values() for r in rs]
    for r in rng.sample(rs, min(n, len(rs))):
        fields = [(f.name, v) for f in dataclasses.fields(r) if type(v := getattr(r, f.name)) in (bool, int, float)
                  and (type(v) is not float or v.is_integer())]
        if not fields:
            continue
        name, v = rng.choice(fields)
        other = int(v) if type(v) in (bool, float) else float(v)
        assert other == v and encode(r) != encode(dataclasses.replace(r, **{name: other}))
        setattr(r, name, other)


def validated(objs: list[Obj]) -> list[Obj]:
    cache = LastGoodCache()
    cache.replace(objs, owns=lambda _k: True)
    return cache.objects()


def deltas(subs: list[Subscription], snap: Snapshot) -> list[tuple[str, tuple[Encoded, ...], tuple[str, ...]]]:
    """What each subscriber, in step with the last snapshot, is sent of `snap` (ACKing each)."""
    out = []
    for sub in subs:
        while p := sub.next_response(lambda t, sub=sub: snap.view(sub.node, t), snap.version, snap.generation):
            out.append((p.type_url, p.resources, p.removed))
            sub.on_ack(p.nonce)
    return out


def subscribers(by_type: Mapping[str, Sequence[Resource]]) -> list[Subscription]:
    subs = []
    for node in NODES:
        sub = Subscription(node)
        for t in by_type:
            sub.subscribe(t, {})
        subs.append(sub)
    return subs


@pytest.mark.parametrize("seed", range(8))
def test_reuse_under_random_changes_is_the_long_way(seed: int) -> None:
    rng = random.Random(seed)
    objs = cluster(rng.choice([100, 200, 400]), seed=seed)
    cache = Encodings()
    reused = 0
    subs_reused: list[Subscription] = []
    subs_long: list[Subscription] = []
    for gen in range(1, 13):
        if gen > 1:
            objs = edit(objs, rng)
        by_type = translate(validated(objs)).by_type()
        if rng.random() < 0.5:
            flip_types(by_type, rng, rng.randrange(1, 6))
        got = cache.encode_all(by_type)
        long = encode_all(by_type)
        for rs in by_type.values():
            for r in rs:
                assert got[id(r)] == long[id(r)], f"{r.TYPE} {r.resource_name}: reused a stale encoding"
        version = content_version(by_type, got)
        assert version == content_version(by_type)
        if gen == 1:
            subs_reused, subs_long = subscribers(by_type), subscribers(by_type)
        assert deltas(subs_reused, Snapshot.build(by_type, version, gen, got)) == \
            deltas(subs_long, Snapshot.build(by_type, version, gen))
        # What is held is this snapshot's encodings, nothing older.
        assert len(cache) == len(long) and set(cache.held()) == set(long.values())
        reused += cache.reused
    assert reused > 0


def test_equal_values_of_another_type_are_encoded_again() -> None:
    """An AuthorizationPolicy's L7 rules are kept verbatim: `true`, `1` and `1.0` there are equal
    Python values, and three different bodies."""
    cache = Encodings()
    bodies = set()
    for value in (True, 1, 1.0, True, -0.0, 0.0):
        a = Authorization("p", "ns", "ALLOW", has_l7=True, l7_rules=[{"when": [{"key": "x", "n": value}]}])
        got = cache.encode_all({Authorization.TYPE: [a]})[id(a)]
        assert got == encode(a)
        bodies.add(got.body)
    assert len(bodies) == 5


def test_an_object_edited_after_it_was_encoded_is_encoded_again() -> None:
    cache = Encodings()
    w = workload("u", "node-0")
    cache.encode_all({Workload.TYPE: [w]})
    w.ips.append("10.0.0.2")
    assert cache.encode_all({Workload.TYPE: [w]})[id(w)] == encode(w)


class RecordingServer(ConfigServer):
    """A ConfigServer that keeps what each update handed it."""

    def __init__(self) -> None:
        super().__init__(registry=CollectorRegistry())
        self.updates: list[tuple[Mapping[str, Sequence[Resource]], str, Mapping[int, Encoded]]] = []

    def update(self, resources_by_type: Mapping[str, Sequence[Resource]], version: str,
               encoded: Mapping[int, Encoded] | None = None, source: Any = None) -> None:
        self.updates.append((resources_by_type, version, dict(encoded or {})))
        super().update(resources_by_type, version, encoded, source)


def test_the_controller_encodes_only_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = cluster(400)
    server = RecordingServer()
    ctl = Controller(_NoSource(), server)
    ctl.on_snapshot(validated(objs))
    made: list[Resource] = []
    monkeypatch.setattr(encodings, "encode", lambda r: made.append(r) or encode(r))
    ctl.on_snapshot(validated(churn(objs, 3, random.Random(1))))
    by_type, version, encoded = server.updates[-1]
    total = sum(map(len, by_type.values()))
    assert 0 < len(made) < total // 10, f"{len(made)} of {total} resources encoded again after 3 pods churned"
    assert version == content_version(by_type) == ctl.version
    assert encoded == encode_all(by_type)
    # Back to a small cluster: the encodings of the big one are not kept.
    ctl.on_snapshot(validated(cluster(20)))
    assert len(ctl._encodings) == sum(map(len, server.updates[-1][0].values()))


def test_only_the_very_objects_named_unchanged_skip_the_pickle() -> None:
    """`unchanged` names objects of the last call (the Workloads the translation memo handed out
    again): those are taken by their held key; an equal new object, or one not named, is pickled."""
    cache = Encodings()
    a, b = workload("a", "node-0"), workload("b", "node-0")
    cache.encode_all({Workload.TYPE: [a, b]})
    b2 = workload("b", "node-1")
    got = cache.encode_all({Workload.TYPE: [a, b2]}, unchanged={id(a), id(b2)})
    assert cache.unpickled == 1 and got[id(a)] == encode(a) and got[id(b2)] == encode(b2)
    got = cache.encode_all({Workload.TYPE: [a, b2]})
    assert cache.unpickled == 0 and cache.reused == 2
