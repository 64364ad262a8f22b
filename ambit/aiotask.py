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
    me = asyncio.current_task()
    # Cancellations of the caller already pending are not ours to judge: a library may cancel a
    # task to wake it and never take it back (grpclib does on a lost connection). Only one that
    # arrives while we wait here is the caller's own.
    before = me.cancelling() if me is not None else 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if me is not None and me.cancelling() > before:
            raise
