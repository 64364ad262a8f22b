"""One way to stop a background task: cancel it and wait until it has unwound (its `finally`
blocks ran), so `stop()` returns with nothing of it left running."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel(task: asyncio.Task[Any] | None, again_after: float | None = None) -> None:
    """Cancel `task` and wait for it. Its own CancelledError is absorbed; the caller's is not: a
    caller cancelled while it waits here (a `finally` that cancels a helper, under a `stop()`)
    must still stop, or the loop it runs keeps going with nobody to end it.

    `again_after`: cancel it again every so many seconds while it has not ended, for a task that
    runs a library which may take a cancellation for its own and swallow it (grpclib cancels a
    reader to wake it on a lost connection; the config client's stop() once waited 60 s on a
    task still reading). Only for tasks whose unwinding is quick: a second cancellation would cut
    a slow `finally` short."""
    if task is None:
        return
    me = asyncio.current_task()
    # Cancellations of the caller already pending are not ours to judge: a library may cancel a
    # task to wake it and never take it back (grpclib does on a lost connection). Only one that
    # arrives while we wait here is the caller's own.
    before = me.cancelling() if me is not None else 0
    task.cancel()
    try:
        if again_after is not None:
            while not (await asyncio.wait({task}, timeout=again_after))[0]:
                task.cancel()
        await task
    except asyncio.CancelledError:
        if me is not None and me.cancelling() > before:
            raise


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set, at most `timeout` seconds: True if it was set.

    Not `asyncio.wait_for(event.wait(), timeout)` in a loop a task runs until it is cancelled:
    on Python 3.11, when the event is set in the same loop iteration as the task is cancelled,
    wait_for returns the result and the cancellation is lost (gh-86296), so the loop goes on and
    whoever awaits the cancelled task waits for ever. A status reporter woken as it was stopped
    held an ingress gateway's exit that way.

    Nor `asyncio.timeout`: on 3.11 it turns its own expiry into a CancelledError whenever the task
    was cancelled before and the cancellation was never taken back (`Task.cancelling()` above 0),
    which grpclib leaves behind each time a call hits its deadline or loses its connection (it
    cancels the task to wake it, then raises its own error). The status reporter's loop then
    ended at its next tick, and the proxy never reported again. `asyncio.wait` judges neither:
    a cancellation of this task, even one arriving as the event is set, is raised."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)
