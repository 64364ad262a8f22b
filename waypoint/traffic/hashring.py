"""Ring hash (ketama), Envoy's `RING_HASH` load balancer and Istio's default for `consistentHash`
(envoyproxy/envoy:source/extensions/load_balancing_policies/ring_hash/ring_hash_lb.cc).

Each host puts `ceil(minimumRingSize / hosts)` points on a 64-bit ring, point i of host A at
`xxHash64("A_i")` (A is the host's `ip:port`, Envoy's `address()->asString()` when
`use_hostname_for_hashing` is off); the ring is sorted by hash. A request hashed to h goes to the
first point at or after h, wrapping to the first point. Because a host's points do not depend on
the other hosts, removing one host moves only the keys that were on its points (~1/N of them), and
adding one moves ~1/(N+1) to it.

`walk(h)` yields the distinct hosts met going round the ring from h: the first is the pick; the
balancer skips ejected or excluded hosts by taking the next one, which is exactly what a ring
rebuilt without them would answer (their points gone, the next point wins), without the rebuild.
With weights that differ (ServiceEntry endpoints' `weight`), the ring is scaled so that the
lightest host gets a whole number of points, at least `minimumRingSize` times its share (at most
ambit.hashtable's MAX_RING_SIZE in all, where Envoy allows 8 M), and each host gets points in
proportion to its weight, counted as running sums so that fractions even out (Envoy's `Ring`
constructor). Equal weights build the unweighted ring.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from ambit.hashtable import MAX_RING_SIZE, RING_DEFAULT
from waypoint.traffic.xxhash64 import xxh64


class RingHash:
    def __init__(self, hosts: Sequence[str], min_size: int = 0, weights: Sequence[int] | None = None) -> None:
        self.hosts = list(hosts)
        size = min(max(min_size or RING_DEFAULT, 1), MAX_RING_SIZE)
        if weights is not None and len(set(weights)) > 1:
            ring = sorted(_weighted_points(self.hosts, weights, size))
        else:
            per_host = math.ceil(size / len(self.hosts)) if self.hosts else 0
            ring = sorted((xxh64(f"{h}_{i}"), h) for h in self.hosts for i in range(per_host))
        self._hashes = [p[0] for p in ring]
        self._owners = [p[1] for p in ring]

    def __len__(self) -> int:
        return len(self._hashes)

    def walk(self, h: int) -> Iterator[str]:
        """The distinct hosts in ring order from hash `h` (the first is the pick)."""
        n = len(self._hashes)
        if not n:
            return
        start = bisect.bisect_left(self._hashes, h)
        seen: set[str] = set()
        for k in range(n):
            owner = self._owners[(start + k) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.hosts):
                    return

    def pick(self, h: int) -> str | None:
        return next(self.walk(h), None)


def _weighted_points(hosts: Sequence[str], weights: Sequence[int], min_size: int) -> list[tuple[int, str]]:
    """Each host's points, `scale * normalized weight` of them as a running sum (Envoy's)."""
    total = sum(weights)
    shares = [w / total for w in weights]
    lightest = min(shares)
    scale = min(math.ceil(lightest * min_size) / lightest, float(MAX_RING_SIZE))
    out: list[tuple[int, str]] = []
    current = target = 0.0
    for h, share in zip(hosts, shares, strict=True):
        target += scale * share
        i = 0
        while current < target:
            out.append((xxh64(f"{h}_{i}"), h))
            i += 1
            current += 1
    return out
