"""One way to stop a background task: cancel it and wait until it has unwound (its `finally`
blocks ran), so `stop()` returns with nothing of it left running."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait for it. Its own CancelledError is absorbed; the caller's is not: a
    caller cancelled while it waits here (a `finally` that cancels a helper, under a `stop()`)
    must still stop, or the loop it runs keeps going with nobody to end it."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise
