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
All hosts have weight 1 (the waypoint has no per-endpoint weights).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from waypoint.traffic.xxhash64 import xxh64

DEFAULT_MIN_RING_SIZE = 1024        # Envoy's minimum_ring_size default (Istio's minimumRingSize)
MAX_RING_SIZE = 8 * 1024 * 1024     # Envoy's maximum_ring_size default


class RingHash:
    def __init__(self, hosts: Sequence[str], min_size: int = 0) -> None:
        self.hosts = list(hosts)
        size = min(max(min_size or DEFAULT_MIN_RING_SIZE, 1), MAX_RING_SIZE)
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
