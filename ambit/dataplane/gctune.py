"""The cyclic garbage collector on a proxy's hot path: freezing the start-up heap, the thresholds,
and what the collections cost.

Why: a proxy allocates container objects on every connection and chunk (records, frames,
callbacks), so generation-0 collections run many times a second. Each full (generation-2)
collection walks every tracked object, and right after start-up that is ~200,000 of them: the
module namespaces, classes and functions of grpc, cryptography, protobuf and our own code, none of
which ever becomes garbage. A full collection then costs milliseconds, inside some request's
latency. `gc.freeze()` after start-up moves those objects to the permanent generation, so the
collector never walks them again; collections then cost what the live connections cost.

The parsing and the statistics are pure (the `gc` module is injected), so they are unit-tested
without disturbing the test process's own collector.
"""

from __future__ import annotations

import gc as _gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class GCModule(Protocol):
    def freeze(self) -> None: ...
    def get_freeze_count(self) -> int: ...
    def set_threshold(self, threshold0: int, threshold1: int = ..., threshold2: int = ..., /) -> None: ...
    def get_threshold(self) -> tuple[int, int, int]: ...
    def collect(self, generation: int = ...) -> int: ...
    @property
    def callbacks(self) -> list[Callable[[str, dict[str, Any]], None]]: ...


def _parse(text: str) -> tuple[tuple[int, ...] | None, str | None]:
    """(thresholds, None), or (None, the reason they are refused)."""
    text = text.strip()
    if not text:
        return None, None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 3:
        return None, "at most 3 thresholds (generation 0, 1, 2)"
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        return None, "thresholds must be integers, e.g. 700,10,10"
    if any(v < 0 for v in values):
        return None, "thresholds must not be negative"
    if values[0] == 0:
        return None, ("a generation-0 threshold of 0 disables the collector; reference cycles "
                      "(e.g. of exceptions) would then never be freed")
    return values, None


def parse_threshold(text: str) -> tuple[int, ...] | None:
    """'' -> None (keep the interpreter's); 'N' or 'N,N' or 'N,N,N' -> gen0[,gen1[,gen2]].

    Raises ValueError naming the value and what is wrong: the flag is never half-applied."""
    values, reason = _parse(text)
    if reason:
        raise ValueError(f"{text!r}: {reason}")
    return values


def check_threshold(text: str) -> str | None:
    """For the settings' `check=` (which names the flag and value itself): None, or the reason."""
    return _parse(text)[1]


@dataclass
class GCStats:
    """Collections and their pause times per generation, fed by a `gc.callbacks` hook.

    `clock` is injected (perf_counter in production). The longest pause is the number that matters
    for a latency tail; the total is what the collector costs in CPU."""

    clock: Callable[[], float] = time.perf_counter
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    total_s: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    max_s: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    _started: float | None = None

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self.clock()
            return
        if self._started is None:
            return
        took = self.clock() - self._started
        self._started = None
        g = int(info.get("generation", 0))
        if 0 <= g < 3:
            self.collections[g] += 1
            self.total_s[g] += took
            self.max_s[g] = max(self.max_s[g], took)

    def report(self) -> dict[str, Any]:
        return {"collections": list(self.collections),
                "total_ms": [round(t * 1000, 3) for t in self.total_s],
                "max_ms": [round(t * 1000, 3) for t in self.max_s]}


def tune(freeze: bool, threshold: tuple[int, ...] | None, gc: GCModule = _gc) -> GCStats:  # type: ignore[assignment]
    """Apply the settings once start-up is done, and start counting collections.

    Freezing collects first, so that start-up garbage is freed instead of made immortal."""
    if threshold is not None:
        gc.set_threshold(*threshold)
    if freeze:
        gc.collect()
        gc.freeze()
    stats = GCStats()
    gc.callbacks.append(stats.callback)
    return stats
