"""A cache keyed by objects' identity that never keeps those objects alive.

The data plane labels every connection and request from config objects (Workloads, a tunnel's
Downstream) that the config stream replaces rather than mutates, so "the same object" is "the
same config" and `id(obj)` is the cheapest key there is. Holding the object in the entry (so its id
cannot be reused while cached) kept every replaced or deleted pod's Workload alive until the
cache filled: thousands of dead objects on a node or waypoint whose pods churn.

Here an entry lists the objects whose ids its key holds, and each such object carries a weak
reference whose callback drops the entries it is part of. CPython runs that callback when the
object is freed, before its memory (and so its id) can go to another object, so a cached entry
always describes live objects and a hit needs no identity check: the hit path is one dict lookup
(`get`, the dict's own bound method).

Bounded by `limit` insertions between clears, which also bounds the bookkeeping (an object's
list of keys can name entries already dropped with another object).
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class IdCache(Generic[V]):
    """`get(key)` → the cached value or None; `put(key, value, *objects)` where `objects` are
    the objects whose `id()` the key holds (None skipped: its id is never reused)."""

    __slots__ = ("get", "_entries", "_watch", "_limit", "_puts")

    def __init__(self, limit: int) -> None:
        self._entries: dict[Hashable, V] = {}
        self.get = self._entries.get        # the hit path: the dict's own lookup, no Python frame
        # id(object) -> (weak reference with the drop callback, keys of the entries it is part of)
        self._watch: dict[int, tuple[weakref.ref[object], list[Hashable]]] = {}
        self._limit = limit
        self._puts = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Hashable, value: V, *objects: object) -> None:
        if self._puts >= self._limit:
            self.clear()
        self._puts += 1
        self._entries[key] = value
        watch = self._watch
        for o in objects:
            if o is None:
                continue
            oid = id(o)
            w = watch.get(oid)
            if w is None:
                w = watch[oid] = (weakref.ref(o, lambda ref, oid=oid: self._gone(oid, ref)), [])
            w[1].append(key)

    def _gone(self, oid: int, ref: weakref.ref[object]) -> None:
        """An object is being freed: drop every entry whose key holds its id."""
        w = self._watch.get(oid)
        if w is None or w[0] is not ref:       # cleared since, or the id is a later object's
            return
        # pop, not del: the last reference may go in another thread (a span exporter's record)
        # while the loop's thread clears the cache
        self._watch.pop(oid, None)
        pop = self._entries.pop
        for key in w[1]:
            pop(key, None)

    def clear(self) -> None:
        """Forget everything (the weak references go too, so no callback runs for them)."""
        self._entries.clear()       # the same dict: `get` stays bound to it
        self._watch.clear()
        self._puts = 0
