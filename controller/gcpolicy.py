"""The cyclic garbage collector in the controller: freeze what each snapshot leaves behind, and
collect everything in full only every `--gc-full-interval` seconds.

Why: the controller holds a large heap that is rebuilt, not mutated, and has no reference
cycles: the source cache of Kubernetes objects (JSON-decoded dicts and lists) and, per snapshot,
a new translation, its encodings and the config server's snapshot; the previous ones are freed by
reference counting when they are replaced. At 10,000 pods that is about 345,000 tracked objects,
and each snapshot allocates about 165,000 that survive it. Python's collector promotes them to the
oldest generation, where more than a quarter of new survivors triggers a full collection: one or
two per snapshot, each walking the whole heap (about 250 ms at 10,000 pods), on whichever thread
allocated, while every other thread (the event loop serving the config streams and the CA) waits
for the GIL. Collecting the start-up heap once and freezing it, as the proxies do
(ambit.dataplane.gctune), is not enough here: the translation is replaced every snapshot, so it
is the new objects the full collections walk.

What this does (docs/performance.md, "The controller's garbage collector"):
- After each applied snapshot, `gc.freeze()`: everything alive then (the cache, the translation,
  what the server holds) moves to the permanent generation, which collections never walk. This
  frees nothing and keeps nothing: a frozen object is still freed by reference counting when
  the next snapshot replaces it (freezing is O(1), a list splice). On Python 3.11 it also resets
  the generation counts, so with a generation-2 threshold of 100 no full collection falls inside
  a snapshot (one snapshot at 10,000 pods runs about 27 generation-1 collections).
- What freezing could keep is cyclic garbage: an object alive at a freeze that later becomes
  unreachable inside a reference cycle (a finished stream's objects, say) is not collected while
  frozen. So every `full_interval` seconds, at the next snapshot, everything is unfrozen,
  collected in full and frozen again: cyclic garbage lives at most that long, and one full
  collection walks the whole heap once per interval instead of once or twice per snapshot. The
  first snapshot does the same (the start-up heap and the initial list, before serving).

The `gc` module and the clock are injected, so the decisions are unit-tested without touching the
test process's own collector.
"""

from __future__ import annotations

import gc as _gc
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ambit.dataplane.gctune import check_threshold, parse_threshold

log = logging.getLogger("ambit.controller")

# The generation-2 threshold raised from Python's 10 (measured: docs/performance.md).
THRESHOLD = "700,10,100"
FULL_INTERVAL = 300.0


class GCModule(Protocol):
    def freeze(self) -> None: ...
    def unfreeze(self) -> None: ...
    def get_freeze_count(self) -> int: ...
    def collect(self, generation: int = ...) -> int: ...
    def set_threshold(self, threshold0: int, threshold1: int = ..., threshold2: int = ..., /) -> None: ...


class SnapshotGC:
    """The controller's collector settings, applied at start (`start`) and after each applied
    snapshot (`on_applied`, a post-snapshot hook: it runs on the source thread, under the
    controller's flow lock)."""

    def __init__(self, freeze: bool = True, threshold: tuple[int, ...] | None = parse_threshold(THRESHOLD),
                 full_interval: float = FULL_INTERVAL, clock: Callable[[], float] = time.monotonic,
                 gc: GCModule = _gc):  # type: ignore[assignment]
        self.freeze = freeze
        self.threshold = threshold
        self.full_interval = full_interval
        self._clock = clock
        self._gc = gc
        self._last_full: float | None = None
        self.full_collections = 0       # the full collect-and-freeze passes (for tests and logs)

    def describe(self) -> str:
        freeze = f"each snapshot, full every {self.full_interval:g}s" if self.freeze else "off"
        threshold = ",".join(map(str, self.threshold)) if self.threshold else "Python's"
        return f"freeze={freeze} threshold={threshold}"

    def start(self) -> None:
        """At start-up: the thresholds (None keeps the interpreter's)."""
        if self.threshold is not None:
            self._gc.set_threshold(*self.threshold)

    def on_applied(self, _objects: Any = None, _translation: Any = None) -> None:
        """After a snapshot is applied: freeze what is alive, or, on the first snapshot and once
        `full_interval` has passed since the last, unfreeze, collect in full, and freeze again."""
        if not self.freeze:
            return
        now = self._clock()
        if self._last_full is not None and now - self._last_full < self.full_interval:
            self._gc.freeze()
            return
        started = time.perf_counter()
        self._gc.unfreeze()
        freed = self._gc.collect()
        self._gc.freeze()
        self._last_full = now
        self.full_collections += 1
        log.debug("full collection: %d objects freed, %d frozen, %.0f ms", freed, self._gc.get_freeze_count(),
                  (time.perf_counter() - started) * 1000)


def check_full_interval(value: float) -> str | None:
    return None if value > 0 else "must be > 0 (cyclic garbage would otherwise stay frozen for good)"


__all__ = ["FULL_INTERVAL", "THRESHOLD", "SnapshotGC", "check_full_interval", "check_threshold"]
