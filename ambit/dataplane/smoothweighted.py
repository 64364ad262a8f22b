"""Smooth weighted round robin (nginx's), shared by ztunnel (a ServiceEntry's weighted endpoints)
and the waypoint's balancers (endpoint weights, slow start).

Each pick adds every host's weight to its credit, takes the host with the most credit (the first
on a tie) and charges it the total. Over any window the picks follow the weights, interleaved
(weights 3 and 1 give A A B A, not A A A B), deterministic like Envoy's EDF scheduler; weights may
change between picks (least request divides them by active requests).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


class SmoothWeighted:
    """The credits of one set of hosts (one balancer, or one ztunnel route key)."""

    def __init__(self) -> None:
        self._credit: dict[Hashable, float] = {}

    def pick(self, hosts: Sequence[str], weights: Sequence[float]) -> str:
        return hosts[self.pick_index(hosts, weights)]

    def pick_index(self, hosts: Sequence[Hashable], weights: Sequence[float]) -> int:
        """The index in `hosts` (distinct keys: addresses, or indices) of the pick."""
        total = 0.0
        best = 0
        best_credit = float("-inf")
        credit = self._credit
        for i, (h, w) in enumerate(zip(hosts, weights, strict=True)):
            c = credit.get(h, 0.0) + w
            credit[h] = c
            total += w
            if c > best_credit:
                best, best_credit = i, c
        credit[hosts[best]] -= total
        if len(credit) > 2 * len(hosts) + 8:       # forget hosts that left
            keep = set(hosts)
            self._credit = {h: c for h, c in credit.items() if h in keep}
        return best
