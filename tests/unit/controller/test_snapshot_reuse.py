"""Work the controller does not repeat per snapshot: objects the last-good cache validated are not
validated again, and encodings are made once. Each shortcut must give exactly what the long way
gives, on random snapshots (no timing here: bench/ctrlscale.py measures)."""

from __future__ import annotations

import copy
import dataclasses
import random
from typing import Any

import pytest

import controller.validation as validation
from ambit.configclient.codec import encode
from bench.ctrlscale import churn, cluster
from controller.app import content_version, encode_all
from controller.sources.cache import LastGoodCache
from controller.translate import Translation, translate
from controller.validation import Validated
from controller.waypoints.advisories import advisories

Obj = dict[str, Any]


def spoil(objs: list[Obj], rng: random.Random) -> list[Obj]:
    """`objs` with some objects given nulls (valid: pruned) and some made invalid (rejected)."""
    out = []
    for o in objs:
        o = copy.deepcopy(o)
        roll = rng.random()
        if roll < 0.05:
            o["metadata"]["labels"] = None                  # valid: a null is pruned
        elif roll < 0.08:
            o.setdefault("spec", {})["nonsense"] = None     # valid: a null is pruned
        elif roll < 0.10:
            o["metadata"]["name"] = "Not_A_Name"            # invalid: rejected by the cache
        elif roll < 0.12 and o["kind"] == "Service":
            o["spec"]["ports"] = [{"port": "eighty"}]       # invalid
        out.append(o)
    return out


def summary(tr: Translation) -> tuple[Any, ...]:
    by_type = tr.by_type()
    return ({t: [encode(r) for r in rs] for t, rs in by_type.items()}, tr.errors, tr.parents.notices,
            tr.ingress.warnings)


def cached(objs: list[Obj]) -> list[Obj]:
    cache = LastGoodCache()
    cache.replace(objs, owns=lambda _k: True)
    return cache.objects()


@pytest.mark.parametrize("seed", range(6))
def test_a_cached_snapshot_translates_as_validating_it_again_would(seed: int) -> None:
    rng = random.Random(seed)
    objs = spoil(churn(cluster(rng.choice([100, 200, 400]), seed=seed), 5, rng), rng)
    snap = cached(objs)
    assert isinstance(snap, Validated)
    plain = list(snap)                                  # the same objects, validated the long way
    assert summary(translate(snap)) == summary(translate(plain))
    tr = translate(plain)
    assert advisories(snap, translation=tr) == advisories(plain, translation=tr)


def test_a_snapshot_from_the_cache_is_not_validated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    snap = cached(cluster(200))
    pruned: list[Any] = []
    real = validation.without_nulls
    monkeypatch.setattr(validation, "without_nulls", lambda o: pruned.append(o) or real(o))
    tr = translate(snap)
    advisories(snap, translation=tr)
    assert pruned == [], f"{len(pruned)} objects the cache had validated were validated again"
    assert len(tr.workloads) == 200 and tr.errors == []


def test_a_validated_snapshot_cannot_be_edited() -> None:
    snap = cached(cluster(100))
    n = len(snap)
    for edit in (lambda s: s.append({"kind": "Pod"}), lambda s: s.extend([{}]), lambda s: s.insert(0, {}),
                 lambda s: s.__setitem__(0, {}), lambda s: s.__delitem__(0), lambda s: s.pop(),
                 lambda s: s.sort(key=str), lambda s: s.clear()):
        with pytest.raises(TypeError):
            edit(snap)
    with pytest.raises(TypeError):
        snap += [{"kind": "Pod"}]
    assert len(snap) == n
    assert not isinstance(snap + [{}], Validated), "a new list is no longer known to be valid"


def test_a_cache_with_another_validator_hands_out_a_plain_list() -> None:
    cache = LastGoodCache(validate=lambda _o: [])
    cache.replace(cluster(100), owns=lambda _k: True)
    assert not isinstance(cache.objects(), Validated)


@pytest.mark.parametrize("seed", range(4))
def test_to_dict_is_dataclasses_asdict(seed: int) -> None:
    rng = random.Random(seed)
    tr = translate(spoil(cluster(rng.choice([100, 300]), seed=seed), rng))
    resources = tr.resources() + [r for rs in tr.by_type().values() for r in rs]
    assert len(resources) > 100
    for r in resources:
        assert r.to_dict() == dataclasses.asdict(r)
        assert type(r).from_dict(r.to_dict()) == r


def test_the_content_version_from_shared_encodings_is_the_same() -> None:
    by_type = translate(cluster(200)).by_type()
    assert content_version(by_type, encode_all(by_type)) == content_version(by_type)


def test_ambit_analyze_validates_each_object_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from ambitctl.analyze import analyze

    objs = spoil(cluster(200), random.Random(7))
    pruned: list[Any] = []
    real = validation.without_nulls
    monkeypatch.setattr(validation, "without_nulls", lambda o: pruned.append(o) or real(o))
    found = analyze(objs, complete=True)
    assert len(pruned) == len(objs), f"{len(pruned)} validations for {len(objs)} objects"
    assert any(f.code == "AMB0001" for f in found), "the invalid objects are still reported"
