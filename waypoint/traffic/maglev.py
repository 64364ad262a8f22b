"""Maglev, Envoy's `MAGLEV` load balancer (`consistentHash.maglev`; envoyproxy/envoy:source/
extensions/load_balancing_policies/maglev/maglev_lb.cc, after Google's Maglev paper §3.4).

A lookup table of `tableSize` entries (a prime, default 65537) is filled by letting each host
claim, in turn, the next free slot of its own permutation of the table: offset
`xxHash64(address, seed 0) % M`, skip `xxHash64(address, seed 1) % (M - 1) + 1`. Every host gets
M/N slots (±1), and when a host leaves, most slots of the others keep their owner (Maglev trades a
little more movement than a ring for a perfectly even spread and O(1) lookups). A request hashed
to h goes to `table[h % M]`.

With weights that differ (ServiceEntry endpoints' `weight`), a host claims a slot only in the
rounds its weight reaches: one of weight w claims in w of every `max weight` rounds, so its share
of the table follows its weight (Envoy's `target_weight_`; integer weights here, where Envoy
normalizes them to doubles).

Hosts are taken in sorted address order, so the table depends on the set of hosts only. `walk(h)`
yields the distinct hosts from slot `h % M` onwards: the balancer skips ejected or excluded hosts
by taking the next one (Envoy rebuilds the table over the healthy hosts instead; both move only
the keys of the hosts that left).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ambit.hashtable import maglev_size
from waypoint.traffic.xxhash64 import xxh64


class Maglev:
    def __init__(self, hosts: Sequence[str], table_size: int = 0, weights: Sequence[int] | None = None) -> None:
        self.size = maglev_size(table_size)
        if weights is not None and len(set(weights)) > 1:
            pairs = sorted(zip(hosts, weights, strict=True))
            self.hosts, ws = [h for h, _ in pairs], [w for _, w in pairs]
        else:
            self.hosts, ws = sorted(hosts), [1] * len(hosts)
        self._table = _fill(self.hosts, ws, self.size)

    def owner(self, slot: int) -> str:
        return self.hosts[self._table[slot]]

    def walk(self, h: int) -> Iterator[str]:
        """The distinct hosts in table order from slot `h % M` (the first is the pick)."""
        if not self.hosts:
            return
        seen: set[str] = set()
        start = h % self.size
        for k in range(self.size):
            owner = self.hosts[self._table[(start + k) % self.size]]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.hosts):
                    return

    def pick(self, h: int) -> str | None:
        return next(self.walk(h), None)


def _fill(hosts: Sequence[str], weights: Sequence[int], m: int) -> list[int]:
    """The table for `hosts` (sorted) of `weights`: in round r a host of weight w claims its next
    free slot unless r * w < its target, which grows by the largest weight at each claim (equal
    weights: every host claims in every round)."""
    table = [-1] * m
    if not hosts:
        return table
    perm = [(xxh64(h, 0) % m, xxh64(h, 1) % (m - 1) + 1 if m > 1 else 1) for h in hosts]
    nxt = [0] * len(hosts)
    target = [0] * len(hosts)
    top = max(weights)
    filled = 0
    rnd = 0
    while filled < m:
        rnd += 1
        for i, (offset, skip) in enumerate(perm):
            if rnd * weights[i] < target[i]:
                continue
            target[i] += top
            c = (offset + nxt[i] * skip) % m
            while table[c] >= 0:
                nxt[i] += 1
                c = (offset + nxt[i] * skip) % m
            table[c] = i
            nxt[i] += 1
            filled += 1
            if filled == m:
                break
    return table
