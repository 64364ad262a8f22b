"""The clock that sans-IO cores are given instead of reading time themselves, so tests can drive
rotation, backoff and timeouts without waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

# A monotonic seconds source (time.monotonic in production): what rate limiters and timeouts need.
Monotonic = Callable[[], float]


class Clock(Protocol):
    def now(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock seconds (certificate validity is wall-clock) and asyncio's sleep."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
