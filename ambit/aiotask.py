"""One way to stop a background task: cancel it and wait until it has unwound (its `finally`
blocks ran), so `stop()` returns with nothing of it left running."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel(task: asyncio.Task[Any] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
