"""A proxy's shutdown after SIGTERM, as named steps that each get their own time (ztunnel and the
waypoint both stop this way).

Why: the process must exit whatever one step waits for (a controller that went away first, a
stream that never ends, a task that lost its cancellation, gh-86296), or a rollout waits for the
kubelet's SIGKILL with every pod it replaces, and a restart in place leaves the node's pods
without a ztunnel for the whole grace period. A step that overruns is named in the log, cancelled
and left behind, not waited for: `asyncio.wait_for` waits until the step has unwound, so a step
that ignores its cancellation held it, and the shutdown, for ever. What is still running once
the steps are done is cancelled again when the loop ends, within its own bound
(ambit/dataplane/process.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# Each step but a drain gets this long.
STEP_TIMEOUT = 3.0

# (name for the log, the step or None when the process has no such part, its time in seconds)
Step = tuple[str, Callable[[], Awaitable[Any]] | None, float]


async def run_steps(steps: Sequence[Step], log: logging.Logger) -> list[str]:
    """Run the steps in order, each within its own time; returns the names of those left behind.

    A step that fails is logged and the next one runs. A step that overruns is logged by name,
    cancelled, and not waited for."""
    left = []
    for name, step, timeout in steps:
        if step is None:
            continue
        task = asyncio.ensure_future(step())
        try:
            await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            task.add_done_callback(_forget)
            log.warning("shutdown: %s did not finish within %.1f s; exiting without it", name, timeout)
            left.append(name)
        elif not task.cancelled() and task.exception() is not None:
            log.error("shutdown: %s failed", name, exc_info=task.exception())
    return left


def _forget(task: asyncio.Future[Any]) -> None:
    """A step left behind may still fail: it was logged already; no 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()
