"""The proxies' latest status reports, kept in memory by the controller (sans-IO: the clock is
injected). A report lives `ttl` seconds after its arrival: a proxy that stops reporting vanishes
from the reports rather than showing a stale certificate state forever; proxy-status still lists
it from the config stream, with no report age.

An ingress gateway's reports carry its ports' bind outcomes, which the controller writes into its
Gateway's status (controller.waypoints.ingress_status.bind_failures). In the lab (one controller)
the status is computed from this store: `on_change` is called when a report's `watched(state)`
differs from that proxy's previous one, or a report with a non-empty one expires, so the status is
rewritten without waiting for the next snapshot. In a cluster every report goes to `on_report`,
which writes it onto the reporting pod where the leader reads it, whichever replica holds the
report (controller/waypoints/podcondition.py). Neither may block (the caller is the gRPC handler):
they wake a thread that does the writing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ambit.configclient.node import NodeInfo

# How deep a proxy's JSON (a status report, a tap event) may nest. A report is a few levels deep;
# one nested some hundreds of levels parsed, and then every `ambit proxy-status` failed to encode
# it (RecursionError) for as long as the proxy kept reporting; one nested deeper failed to parse
# with a RecursionError, which is no ValueError, out of the handler as an internal error.
MAX_DEPTH = 32


def nested_deeper(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Is the parsed JSON `value` nested more than `limit` levels (a scalar is none)? Iterative:
    it must not recurse itself."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def load_json(raw: bytes | str, limit: int = MAX_DEPTH) -> Any:
    """A proxy's JSON document, or ValueError saying why not (not JSON, nested too deep)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValueError(f"nested more than {limit} levels deep") from None
    if nested_deeper(value, limit):
        raise ValueError(f"nested more than {limit} levels deep")
    return value


def ingress_binds(state: dict[str, Any]) -> tuple[Any, ...]:
    """What of an ingress gateway's report the Gateway's status depends on: its unbound ports,
    their listeners and errors (not the attempt counts, which change at every retry)."""
    entries = state.get("ingress")
    if not isinstance(entries, list):
        return ()
    return tuple(sorted(repr((e.get("port"), e.get("listeners"), e.get("error"))) for e in entries
                        if isinstance(e, dict) and e.get("bound") is False))


@dataclass(frozen=True)
class Report:
    node: NodeInfo
    version: str           # the proxy's build version
    state: dict[str, Any]  # certs, counters, clusters: whatever the proxy's reporter collects
    received: float


class ReportStore:
    def __init__(self, ttl: float = 120.0, clock: Callable[[], float] = time.time, max_reports: int = 10_000,
                 on_change: Callable[[], None] | None = None,
                 watched: Callable[[dict[str, Any]], tuple[Any, ...]] = ingress_binds,
                 on_report: Callable[[NodeInfo, dict[str, Any]], None] | None = None):
        self.ttl, self._clock, self.max_reports = ttl, clock, max_reports
        self._by_key: dict[str, Report] = {}
        self.on_change, self.watched, self.on_report = on_change, watched, on_report

    def put(self, node: NodeInfo, version: str, state: dict[str, Any]) -> None:
        """Keep the newest report of `node` (keyed like the config stream, NodeInfo.key)."""
        self._expire()
        if node.key not in self._by_key and len(self._by_key) >= self.max_reports:
            raise OverflowError(f"{self.max_reports} proxies already report; refusing {node.key}")
        old = self._by_key.get(node.key)
        self._by_key[node.key] = Report(node, version, state, self._clock())
        if self.on_change is not None and self.watched(state) != (self.watched(old.state) if old else ()):
            self.on_change()
        if self.on_report is not None:
            self.on_report(node, state)

    def of_waypoint(self, ref: str) -> list[tuple[str, dict[str, Any]]]:
        """(pod name, state) of each waypoint/ingress pod of Gateway `ref` (namespace/name) that reports."""
        return [(r.node.name, r.state) for r in self.all() if r.node.kind == "waypoint" and r.node.waypoint == ref]

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
            gone = self._by_key.pop(k, None)     # None: an on_change that read the store expired it
            if gone is not None and self.on_change is not None and self.watched(gone.state):
                self.on_change()
