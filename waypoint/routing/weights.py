"""Weighted choice among a route's destinations.

A destination gets weight / (sum of weights) of the requests (Istio virtual_service.proto
`HTTPRouteDestination.weight`; Gateway API `BackendRef.Weight`); the sum need not be 100. A weight
of 0 gets nothing while another destination has weight; a single destination gets everything
whatever its weight (Istio route.go: weight-0 destinations are dropped when there are others).
The draw is one integer in [0, total) from the injected random source, walked over the
destinations in order, as Envoy's weighted clusters do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")


class RandomSource(Protocol):
    """What the router needs of `random.Random`."""

    def randrange(self, stop: int) -> int: ...


def choose(items: Sequence[T], weights: Sequence[int], rand: RandomSource) -> T | None:
    """The chosen item; None when there are several and every weight is 0."""
    if len(items) == 1:
        return items[0]
    total = sum(w for w in weights if w > 0)
    if total <= 0:
        return None
    draw = rand.randrange(total)
    for item, w in zip(items, weights, strict=True):
        if w <= 0:
            continue
        if draw < w:
            return item
        draw -= w
    return None  # pragma: no cover - unreachable: draw < total
