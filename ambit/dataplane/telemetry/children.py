"""A bounded cache of prometheus_client label children, shared by ztunnel's TCP and the waypoint's
HTTP metrics.

`metric.labels(*values)` takes a lock and hashes every label value on each call; a proxy sees few
distinct label sets, so looking the children up once per label set and keeping them in an LRU makes
the hot path one dict lookup. The bound keeps a churn of pods from growing the cache without limit:
an evicted label set keeps its series (prometheus_client owns them) and is looked up afresh.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# A node sees few distinct (source, destination) pairs, so hits dominate.
CHILD_CACHE_SIZE = 4096


class ChildCache(Generic[K, V]):
    """LRU of `key -> make(key)`, at most `size` entries."""

    def __init__(self, make: Callable[[K], V], size: int = CHILD_CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError(f"ChildCache: size {size} must be at least 1")
        self.make = make
        self.size = size
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
            return v
        v = self._d[key] = self.make(key)
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return v

    def clear(self) -> None:
        """Forget every child (their family dropped some: ambit.dataplane.telemetry.families)."""
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)
