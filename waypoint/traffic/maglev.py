"""Maglev, Envoy's `MAGLEV` load balancer (`consistentHash.maglev`; envoyproxy/envoy:source/
extensions/load_balancing_policies/maglev/maglev_lb.cc, after Google's Maglev paper §3.4).

A lookup table of `tableSize` entries (a prime, default 65537) is filled by letting each host
claim, in turn, the next free slot of its own permutation of the table: offset
`xxHash64(address, seed 0) % M`, skip `xxHash64(address, seed 1) % (M - 1) + 1`. Every host gets
M/N slots (±1), and when a host leaves, most slots of the others keep their owner (Maglev trades a
little more movement than a ring for a perfectly even spread and O(1) lookups). A request hashed
to h goes to `table[h % M]`.

Hosts are taken in sorted address order, so the table depends on the set of hosts only. `walk(h)`
yields the distinct hosts from slot `h % M` onwards: the balancer skips ejected or excluded hosts
by taking the next one (Envoy rebuilds the table over the healthy hosts instead; both move only
the keys of the hosts that left).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from waypoint.traffic.xxhash64 import xxh64

DEFAULT_TABLE_SIZE = 65537


class Maglev:
    def __init__(self, hosts: Sequence[str], table_size: int = 0) -> None:
        self.hosts = sorted(hosts)
        m = self.size = table_size or DEFAULT_TABLE_SIZE
        table = [-1] * m
        if self.hosts:
            perm = [(xxh64(h, 0) % m, xxh64(h, 1) % (m - 1) + 1 if m > 1 else 1) for h in self.hosts]
            nxt = [0] * len(self.hosts)
            filled = 0
            while filled < m:
                for i, (offset, skip) in enumerate(perm):
                    c = (offset + nxt[i] * skip) % m
                    while table[c] >= 0:
                        nxt[i] += 1
                        c = (offset + nxt[i] * skip) % m
                    table[c] = i
                    nxt[i] += 1
                    filled += 1
                    if filled == m:
                        break
        self._table = table

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
