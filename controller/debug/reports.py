"""The proxies' latest status reports, kept in memory by the controller (sans-IO: the clock is
injected). A report lives `ttl` seconds after its arrival: a proxy that stops reporting vanishes
from the reports rather than showing a stale certificate state forever; proxy-status still lists
it from the config stream, with no report age."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ambit.configclient.node import NodeInfo


@dataclass(frozen=True)
class Report:
    node: NodeInfo
    version: str           # the proxy's build version
    state: dict[str, Any]  # certs, counters, clusters: whatever the proxy's reporter collects
    received: float


class ReportStore:
    def __init__(self, ttl: float = 120.0, clock: Callable[[], float] = time.time, max_reports: int = 10_000):
        self.ttl, self._clock, self.max_reports = ttl, clock, max_reports
        self._by_key: dict[str, Report] = {}

    def put(self, node: NodeInfo, version: str, state: dict[str, Any]) -> None:
        """Keep the newest report of `node` (keyed like the config stream, NodeInfo.key)."""
        self._expire()
        if node.key not in self._by_key and len(self._by_key) >= self.max_reports:
            raise OverflowError(f"{self.max_reports} proxies already report; refusing {node.key}")
        self._by_key[node.key] = Report(node, version, state, self._clock())

    def get(self, key: str) -> Report | None:
        self._expire()
        return self._by_key.get(key)

    def all(self) -> list[Report]:
        self._expire()
        return list(self._by_key.values())

    def age(self, r: Report) -> float:
        return max(0.0, self._clock() - r.received)

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl
        for k in [k for k, r in self._by_key.items() if r.received < cutoff]:
            del self._by_key[k]
