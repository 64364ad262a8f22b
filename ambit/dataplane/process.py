"""How a proxy binary starts: settings first (a bad one exits naming it), then logging, then the
event loop (uvloop where installed), shared by ztunnel and the waypoint; and how it ends: within a
bound, whatever is still running then."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ambit import rlimits

S = TypeVar("S")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"    # every proxy's log lines
NOFILE_PER_CONNECTION = 2     # a downstream connection and the upstream one it is proxied to
NOFILE_SPARE = 1024           # pools, listeners, the process's own files
EXIT_GRACE = 2.0              # seconds for what still runs when the main coroutine has returned


def run(prog: str, load: Callable[[Sequence[str] | None], S], amain: Callable[[S], Awaitable[Any]],
        argv: Sequence[str] | None = None) -> None:
    try:
        settings = load(argv)
    except ValueError as e:
        raise SystemExit(f"{prog}: {e}") from None
    logging.basicConfig(level=getattr(settings, "log_level", "INFO"),
                        format=LOG_FORMAT)
    # Before any listener: a container's soft limit of 1,024 would cap the connection bounds (ambit/rlimits.py).
    soft, _ = rlimits.raise_nofile()
    needed, bound = nofile_needed(settings)
    if rlimits.short_of(needed) is not None:
        logging.getLogger("ambit.process").warning(
            "%s: the descriptor limit is %d, below the %d that %s may need: accept() fails "
            "with EMFILE before the bound; raise the container's nofile limit", prog, soft, needed, bound)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    run_bounded(amain(settings))


def nofile_needed(settings: Any) -> tuple[int, str]:
    """The descriptors the process's own connection bounds may need, and the flags that set them.
    Settings that bound their connections otherwise than by `--max-connections` (the waypoint's)
    say so with a `nofile_needed` property. ztunnel has no `--max-connections`, so it never warned:
    under a hard limit of a few thousand, one pod's 16,384-connection bounds end in EMFILE unannounced
    (found with the full-size soak, whose tunnels need one descriptor each: docs/performance.md)."""
    own = getattr(settings, "nofile_needed", None)
    if own is not None:
        count, bound = own
        return int(count) + NOFILE_SPARE, str(bound)
    return NOFILE_PER_CONNECTION * int(getattr(settings, "max_connections", 0) or 0) + NOFILE_SPARE, "--max-connections"


def run_bounded(main: Awaitable[Any]) -> None:
    """`asyncio.run(main)`, but its end is bounded: asyncio.run cancels what still runs once `main`
    returns and then waits for all of it, for ever, and so does the interpreter's exit for the
    default executor's threads. A task that ignores its cancellation (a shutdown step left behind,
    ambit/dataplane/shutdown.py) kept the process alive after its shutdown had finished. Whatever
    has not ended `EXIT_GRACE` seconds after it was cancelled is named in the log, and the process
    exits without it (`os._exit`, after flushing the log: the exit code is 1 if `main` raised)."""
    loop = asyncio.new_event_loop()         # uvloop's, once `uvloop.install()` made it the policy
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    except BaseException:
        _end(loop, failed=True)
        raise
    _end(loop, failed=False)


def _end(loop: asyncio.AbstractEventLoop, failed: bool) -> None:
    stuck = _wind_down(loop, EXIT_GRACE)
    asyncio.set_event_loop(None)
    if not stuck:
        loop.close()
        return
    logging.getLogger("ambit.process").warning(
        "exit: %s did not end within %.1f s of being cancelled; exiting without them", ", ".join(stuck), EXIT_GRACE)
    if failed:
        traceback.print_exc()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(1 if failed else 0)


def _wind_down(loop: asyncio.AbstractEventLoop, grace: float) -> list[str]:
    """What `asyncio.run` does once its coroutine has returned (cancel every task and collect their
    failures, close async generators, shut the default executor down), each part within `grace`.
    Returns what did not end."""
    stuck = []
    tasks = asyncio.all_tasks(loop)
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=grace))
    for t in tasks:
        if not t.done():
            stuck.append(f"task {t.get_name()} ({getattr(t.get_coro(), '__qualname__', '?')})")
        elif not t.cancelled() and t.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception as the process ended",
                                         "exception": t.exception(), "task": t})
    for what, ending in (("async generators", loop.shutdown_asyncgens),
                         ("the default executor's threads", loop.shutdown_default_executor)):
        done, _ = loop.run_until_complete(asyncio.wait({loop.create_task(ending())}, timeout=grace))
        if not done:
            stuck.append(what)
    return stuck


async def serve_until_stopped(settings: Any, proxy: Any, registry: Any = None) -> Any:
    """Start-up is done, and what exists now (modules, config, certificates) lives as long as the
    process: freeze it out of the collector's sight and tune the collector (`--gc-*`, the proxy's
    `gc_stats` for its admin), start trimming the heap, then wait for SIGTERM or SIGINT. Returns the
    trimmer, for `memory.stop_trimming` once the proxy has drained.

    The event-loop watchdog (ambit/dataplane/watchdog.py) starts here, after the freeze's full
    collection and every synchronous start-up step, so none of them can look like a stall; its
    families go on `registry`. It stops at SIGTERM: the drain that follows is bounded by
    `--termination-drain` and the pod's grace, and the loop is closed after it."""
    from ambit.dataplane import gctune, memory, watchdog
    proxy.gc_stats = gctune.tune(settings.gc_freeze, gctune.parse_threshold(settings.gc_threshold))
    trimmer = memory.start_trimming(settings.memory_trim_interval)
    dog = watchdog.start(settings.watchdog_kill_after)
    if registry is not None:
        registry.register(dog)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        dog.stop()
    return trimmer
