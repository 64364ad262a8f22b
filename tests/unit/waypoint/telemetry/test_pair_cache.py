"""The span-attribute cache both encoders share (waypoint/telemetry/pair_cache.py)."""

from __future__ import annotations

from typing import Any

from waypoint.telemetry.pair_cache import PairCache


def counting() -> tuple[list[tuple[str, Any]], Any]:
    calls: list[tuple[str, Any]] = []

    def encode(k: str, v: Any) -> str | None:
        calls.append((k, v))
        return None if v is None else f"{k}={v!r}"
    return calls, encode


def test_a_pair_is_encoded_once_and_equal_values_of_other_types_are_not_shared() -> None:
    cache: PairCache[str] = PairCache(8)
    calls, encode = counting()
    assert cache.pieces([("a", 1), ("a", True), ("a", "1")], encode) == ["a=1", "a=True", "a='1'"]
    assert cache.pieces([("a", True), ("a", 1)], encode) == ["a=True", "a=1"]
    assert len(calls) == 3
    cache.pieces([("f", 0.0), ("f", -0.0), ("f", 0.0)], encode)           # floats: never cached
    cache.pieces([("l", (1, 2)), ("l", (1, 2))], encode)                   # sequences: never cached
    assert len(calls) == 3 + 3 + 2


def test_a_left_out_pair_is_not_cached_and_generations_bound_the_size() -> None:
    cache: PairCache[str] = PairCache(4)
    calls, encode = counting()
    assert cache.pieces([("x", None), ("x", None)], encode) == [] and len(calls) == 2
    for i in range(100):
        cache.pieces([("id", f"{i}"), ("route", "r1")], encode)
    assert len(cache) <= 8
    assert [k for k, _ in calls].count("route") == 1    # the pair that repeats moved back each time: never re-encoded
