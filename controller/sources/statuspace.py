"""When to write each object's status: the pure pacing of the Kubernetes source's status writer.

Status writes are one object at a time on one thread, and three things must hold under API faults:

* **Latest wins.** An object queued again before its write replaces the pending entry, so a burst of
  changes is one write, never a backlog of stale ones.
* **A failed write is retried** (429, 5xx, a dropped connection), after a jittered backoff of its
  own, instead of being dropped: the condition would otherwise stay wrong until the object next
  changed.
* **No hot loop when two writers disagree.** Writing a status changes the object, which the watch
  shows; if another writer (a second controller without leader election, another version during a
  rollout) sets it back, each reacts to the other for ever, as fast as the API server answers.
  `burst` quick rewrites of one object are free; past that each further rewrite within `quiet`
  seconds of the last waits an exponential backoff (`rewrite`), and the object is reported as
  contested once. Other objects are not held back.

Keys are whatever the caller uses to name an object; items are opaque. The clock is the caller's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ambit.backoff import Backoff

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class _Track:
    failures: int = 0           # consecutive failed writes
    streak: int = 0             # successful writes each within `quiet` of the one before
    last_write: float | None = None
    not_before: float = 0.0     # no write of this key before then
    contested: bool = False     # reported as rewritten over and over


@dataclass
class StatusPace(Generic[K, V]):
    retry: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0))
    rewrite: Backoff = field(default_factory=lambda: Backoff(1.0, 300.0))
    burst: int = 3
    quiet: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    _pending: dict[K, V] = field(default_factory=dict)
    _tracks: dict[K, _Track] = field(default_factory=dict)

    def put(self, key: K, item: V) -> None:
        """Queue `item` as the status write of `key` (replacing one still pending)."""
        self._pending[key] = item

    def due(self) -> float | None:
        """The earliest time a pending write may go (None: nothing pending)."""
        return min((self._track(k).not_before for k in self._pending), default=None)

    def take(self, now: float) -> tuple[K, V] | None:
        """The next write that may go at `now`, removed from the pending set; None if none is due."""
        if len(self._tracks) > 1024 + 2 * len(self._pending):     # objects long written, or deleted
            self._tracks = {k: tr for k, tr in self._tracks.items()
                            if k in self._pending or tr.failures or tr.not_before > now
                            or (tr.last_write is not None and now - tr.last_write < self.quiet)}
        ready = [k for k in self._pending if self._track(k).not_before <= now]
        if not ready:
            return None
        key = min(ready, key=lambda k: self._track(k).not_before)
        return key, self._pending.pop(key)

    def done(self, key: K, item: V, ok: bool, now: float) -> bool:
        """Record how the write of `key` went. A failure queues `item` again after the retry
        backoff (unless a newer one is pending). True when this success makes the key contested
        (the caller reports it, once)."""
        tr = self._track(key)
        if not ok:
            tr.failures += 1
            tr.not_before = now + self.retry.delay(tr.failures, self.rng.random())
            self._pending.setdefault(key, item)
            return False
        tr.failures = 0
        quick = tr.last_write is not None and now - tr.last_write < self.quiet
        tr.streak = tr.streak + 1 if quick else 1
        tr.last_write = now
        if tr.streak <= self.burst:
            tr.contested = False
            return False
        tr.not_before = now + self.rewrite.delay(tr.streak - self.burst, self.rng.random())
        newly = not tr.contested
        tr.contested = True
        return newly

    def deferred(self, now: float) -> set[K]:
        """Pending keys held back (by a retry or rewrite backoff) at `now`."""
        return {k for k in self._pending if self._track(k).not_before > now}

    def pending(self) -> set[K]:
        """The keys with a write waiting (due or held back)."""
        return set(self._pending)

    def drop_pending(self) -> None:
        """Drop every pending write, keeping each key's failure count (its next failure backs off
        further): the caller is about to compute them all again from a newer state."""
        self._pending.clear()

    def forget(self, key: K) -> None:
        self._pending.pop(key, None)
        self._tracks.pop(key, None)

    def _track(self, key: K) -> _Track:
        return self._tracks.setdefault(key, _Track())
