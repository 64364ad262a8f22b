"""Which of a Service's ready endpoints a client may reach under the Service's traffic
distribution (`Service.traffic_distribution`, from Kubernetes `trafficDistribution` or Istio's
`networking.istio.io/traffic-distribution` annotation: controller/translate/distribution.py).

As Istio's ztunnel (istio/ztunnel src/state.rs, load balancing mode FAILOVER, with the routing
preference Istio's control plane gives each value): an endpoint's rank is the number of leading
scopes it shares with the client, in order; only the endpoints of the highest rank present are
candidates, so traffic stays as close as the ready endpoints allow and spills over, a whole scope
at a time, when none is left closer. Ambit has one network, so Istio's leading NETWORK scope
matches every endpoint and is left out.

- PreferSameZone (and PreferClose): region, zone.
- PreferSameNode: region, zone, subzone, node.

A locality part the client or an endpoint does not know is "" and compares as a value: with no
topology labels anywhere every endpoint shares the region and zone, so PreferSameZone spreads
over all of them and PreferSameNode still prefers the client's node (Istio's ztunnel compares the
same way). Pure: the caller passes each endpoint's locality and node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# Service.traffic_distribution -> how many scopes of (region, zone, subzone, node) it ranks by
SCOPES = {"PreferSameZone": 2, "PreferSameNode": 4}


def place(locality: str, node: str) -> tuple[str, str, str, str]:
    """(region, zone, subzone, node) of a "region/zone/subzone" locality and a node name."""
    region, _, rest = locality.partition("/")
    zone, _, subzone = rest.partition("/")
    return region, zone, subzone, node


def rank(client: tuple[str, ...], endpoint: tuple[str, ...], scopes: int) -> int:
    """How many of the first `scopes` parts, in order, the endpoint shares with the client."""
    for i in range(scopes):
        if client[i] != endpoint[i]:
            return i
    return scopes


def closest(preference: str, client: tuple[str, str, str, str], candidates: Sequence[T],
            place_of: Callable[[T], tuple[str, str, str, str]]) -> list[T]:
    """The candidates of the highest rank (all of them when `preference` is none ztunnel ranks
    by), in their order. `client`: the client's `place`."""
    scopes = SCOPES.get(preference, 0)
    if not scopes or len(candidates) < 2:
        return list(candidates)
    ranks = [rank(client, place_of(c), scopes) for c in candidates]
    best = max(ranks)
    return [c for c, r in zip(candidates, ranks, strict=True) if r == best]
