"""Load balancers: which of a cluster's usable endpoints a request goes to
(DestinationRule `loadBalancer`; istio/istio:pilot/pkg/networking/core/cluster_traffic_policy.go
`applyLoadBalancer`; Envoy's load balancers, envoyproxy/envoy:source/extensions/
load_balancing_policies/).

The cluster hands each balancer the endpoints it may use (ready, in the subset, not ejected unless
in panic, not excluded unless nothing else is left), so balancers only choose:

- `ROUND_ROBIN`: in turn, from a random start (Envoy seeds each load balancer at random so that
  proxies updated together do not move in lock step).
- `LEAST_REQUEST` (Istio's default when `loadBalancer` is unset; `LEAST_CONN` is its deprecated
  alias, mapped by the controller): power of two choices, Envoy's default `choice_count` 2: draw
  two endpoints at random (with replacement) and take the one with fewer active requests, the
  first drawn on a tie (least_request_lb.cc `unweightedHostPick`).
- `RANDOM`: uniformly at random (by weight when the endpoints' weights differ).
- `CONSISTENT_HASH`: `HashBalancer`, over a ring hash (default) or Maglev table.

With endpoint weights (a ServiceEntry's `endpoints[].weight`) that differ, or slow start
(warmup.py) and some endpoint still warming, ROUND_ROBIN and LEAST_REQUEST become weighted, as
Envoy's EDF scheduler does: weight = the endpoint's weight times its slow-start factor, divided by
(active requests + 1) for LEAST_REQUEST (Envoy's `active_request_bias` 1.0). RANDOM draws by the
endpoint weights (where Envoy's random balancer ignores them: Ambit honours what it accepts, as
Istio's ztunnel draws by weight); the hash tables give each host a share that follows its weight
(hashring.py, maglev.py). `SmoothWeighted` (ambit/dataplane/smoothweighted.py) spreads picks in
proportion to the weights (nginx's smooth weighted round robin: deterministic like EDF).

Pure: the random source is injected. A draw among n endpoints is `int(rng.random() * n)`: uniform
to within n / 2**53, and two C calls where `randrange` runs two Python functions (~110 bytecodes
per request, docs/performance.md §65). One usable endpoint is returned without a draw.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from ambit.dataplane.smoothweighted import SmoothWeighted
from waypoint.traffic.hashring import RingHash
from waypoint.traffic.maglev import Maglev

ROUND_ROBIN = "ROUND_ROBIN"
LEAST_REQUEST = "LEAST_REQUEST"
RANDOM = "RANDOM"
CONSISTENT_HASH = "CONSISTENT_HASH"
DEFAULT = LEAST_REQUEST             # Istio's defaultLBAlgorithm
CHOICE_COUNT = 2                    # Envoy's least_request choice_count default


class Balancer:
    """A simple (non-hash) load balancer."""

    name = ""

    def pick(self, hosts: Sequence[str], active: Mapping[str, int],
             weights: Sequence[float] | None = None) -> str:
        raise NotImplementedError


class RoundRobin(Balancer):
    name = ROUND_ROBIN

    def __init__(self, rng: random.Random) -> None:
        self._next = rng.getrandbits(32)
        self._weighted = SmoothWeighted()

    def pick(self, hosts: Sequence[str], active: Mapping[str, int],
             weights: Sequence[float] | None = None) -> str:
        if weights is not None:
            return self._weighted.pick(hosts, weights)
        i = self._next
        self._next = i + 1
        return hosts[i % len(hosts)]


class LeastRequest(Balancer):
    name = LEAST_REQUEST

    def __init__(self, rng: random.Random, choice_count: int = CHOICE_COUNT) -> None:
        self.rng = rng
        self.choice_count = choice_count
        self._weighted = SmoothWeighted()

    def pick(self, hosts: Sequence[str], active: Mapping[str, int],
             weights: Sequence[float] | None = None) -> str:
        if weights is not None:
            return self._weighted.pick(hosts, [w / (active.get(h, 0) + 1) for h, w in zip(hosts, weights, strict=True)])
        n = len(hosts)
        if n == 1:
            return hosts[0]
        draw = self.rng.random
        best = hosts[int(draw() * n)]
        for _ in range(self.choice_count - 1):
            h = hosts[int(draw() * n)]
            if active.get(h, 0) < active.get(best, 0):
                best = h
        return best


class Random(Balancer):
    name = RANDOM

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, hosts: Sequence[str], active: Mapping[str, int],
             weights: Sequence[float] | None = None) -> str:
        n = len(hosts)
        if n == 1:
            return hosts[0]
        if weights is None:
            return hosts[int(self.rng.random() * n)]
        x = self.rng.random() * sum(weights)        # by weight: one draw, then the cumulative sums
        for h, w in zip(hosts, weights, strict=True):
            x -= w
            if x < 0:
                return h
        return hosts[-1]


def simple_balancer(lb: str, rng: random.Random) -> Balancer:
    """The balancer for `TrafficPolicy.lb` (anything but CONSISTENT_HASH). Unset, and PASSTHROUGH
    (which has no meaning behind a waypoint, where the destination is always a Service's
    endpoint), get Istio's default, LEAST_REQUEST."""
    if lb == ROUND_ROBIN:
        return RoundRobin(rng)
    if lb == RANDOM:
        return Random(rng)
    return LeastRequest(rng)


class HashBalancer:
    """Consistent hash over a ring hash or Maglev table built from the cluster's endpoints (all
    ready ones, ejected included: see `pick`). Tables are cached per endpoint set, so a set that
    comes back (an endpoint flapping) does not rebuild."""

    name = CONSISTENT_HASH

    def __init__(self, kind: str = "RING_HASH", size: int = 0, cache: int = 4) -> None:
        self.kind = "MAGLEV" if kind == "MAGLEV" else "RING_HASH"
        self.size = size
        self._tables: OrderedDict[tuple[str, ...], RingHash | Maglev] = OrderedDict()
        self._cache = cache

    def table(self, hosts: Sequence[str], weights: Sequence[int] | None = None) -> RingHash | Maglev:
        """The table of `hosts` (with `weights[i]` the weight of `hosts[i]`; None: all equal)."""
        if weights is None:
            key: tuple = tuple(sorted(hosts))
            names, ws = key, None
        else:
            key = tuple(sorted(zip(hosts, weights, strict=True)))
            names, ws = tuple(h for h, _ in key), tuple(w for _, w in key)
        t = self._tables.get(key)
        if t is None:
            t = Maglev(names, self.size, ws) if self.kind == "MAGLEV" else RingHash(names, self.size, ws)
            self._tables[key] = t
            while len(self._tables) > self._cache:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return t

    def pick(self, all_hosts: Sequence[str], usable: Sequence[str], h: int,
             weights: Sequence[int] | None = None) -> str:
        """The host for hash `h`: the first usable host in table order from `h`. Hosts not usable
        (ejected, excluded) are passed over, which moves only their keys. `weights`: those of
        `all_hosts`, when they differ (a host's share of the table follows its weight)."""
        ok = set(usable)
        for host in self.table(all_hosts, weights).walk(h):
            if host in ok:
                return host
        return usable[0]
