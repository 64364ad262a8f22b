"""ztunnel applies a Workload delta by re-indexing what it touches, not the whole mesh: the view
and any rejection must be exactly what indexing the full state gives, on random churn that
includes shared IPs, IP conflicts between mesh workloads and malformed workloads (sans-IO)."""

from __future__ import annotations

import random

import pytest

import ztunnel.meshstate as meshstate
from ambit.configclient.codec import encode
from ambit.configclient.state import TypeState
from ambit.model import Workload, spiffe_id
from ztunnel.meshstate import ConfigRejected, MeshState, index_workloads


def random_workload(rng: random.Random, uid: str, clean: bool = False) -> Workload:
    if clean:                                       # valid, on an IP of its own
        return Workload(uid=uid, name=f"pod-{uid}", namespace="a", ips=[f"10.9.{int(uid[1:])}.1"], node="n",
                        service_account="sa", identity=spiffe_id("cluster.local", "a", "sa"))
    ip = rng.choice([f"10.0.0.{rng.randrange(60)}", f"10.0.1.{rng.randrange(200)}", f"fd00::{rng.randrange(9)}"])
    ips = [ip] if rng.random() < 0.9 else rng.choice([[], ["not-an-ip"], [ip, f"10.0.2.{rng.randrange(9)}"]])
    protocol = "HBONE" if rng.random() < 0.7 else rng.choice(["TCP", "TCP", "UDP"])
    identity = spiffe_id("cluster.local", "ns", "sa") if rng.random() < 0.95 else "spiffe://bad id"
    return Workload(uid=uid, name=f"pod-{uid}", namespace=rng.choice(["a", "b"]), ips=ips, node="n",
                    service_account="sa", identity=identity, protocol=protocol)


def outcome(state: dict[str, Workload]) -> tuple[object, ...]:
    try:
        by_uid, by_ip, claims = index_workloads(state)
    except ConfigRejected as e:
        return ("rejected", str(e))
    return ("ok", by_uid, by_ip, claims)


@pytest.mark.parametrize("seed", range(10))
def test_a_workload_delta_indexes_as_the_full_state_does(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    full_indexes: list[int] = []
    real = meshstate.index_workloads
    monkeypatch.setattr(meshstate, "index_workloads", lambda s: full_indexes.append(len(s)) or real(s))
    ms, ts = MeshState(), TypeState(Workload.TYPE)
    held = {f"w{i}": random_workload(rng, f"w{i}", clean=True) for i in range(60)}
    for _step in range(80):
        changed = {}
        for _ in range(rng.randrange(1, 6)):
            uid = f"w{rng.randrange(80)}"
            changed[uid] = random_workload(rng, uid)
        removed = {n for n in rng.sample(sorted(held), rng.randrange(0, 3)) if n not in changed}
        staged = ts.stage(f"v{_step}", [encode(w) for w in changed.values()] if _step else
                          [encode(w) for w in held.values()], sorted(removed) if _step else [])
        want = outcome(dict(staged.update.state))   # type: ignore[arg-type]
        before = ms.view
        try:
            ms.apply(staged.update)
        except ConfigRejected as e:
            assert want == ("rejected", str(e))
            assert ms.view is before, "a rejected update changes nothing"
            continue
        ts.commit(staged)
        assert want[0] == "ok", want
        assert (ms.view.workloads, ms.view.workloads_by_ip, ms.view.workload_ips) == want[1:]
    deltas = 79
    assert len(full_indexes) < deltas // 2, f"{len(full_indexes)} of {deltas} small deltas re-indexed everything"


def test_a_delta_that_is_not_over_the_view_is_indexed_in_full() -> None:
    ms = MeshState()
    ws = {f"w{i}": Workload(uid=f"w{i}", name=f"p{i}", namespace="a", ips=[f"10.0.0.{i}"], node="n",
                            service_account="sa", identity=spiffe_id("cluster.local", "a", "sa")) for i in range(20)}
    ts = TypeState(Workload.TYPE)
    first = ts.stage("v1", [encode(w) for w in ws.values()], [])
    ms.apply(first.update)
    ts.commit(first)
    other = TypeState(Workload.TYPE)                # a state the view was not built from (a cache, say)
    staged = other.stage("v2", [encode(ws["w1"])], [])
    ms.apply(staged.update)
    assert set(ms.view.workloads) == {"w1"} and set(ms.view.workloads_by_ip) == {"10.0.0.1"}
