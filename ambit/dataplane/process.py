"""How a proxy binary starts: settings first (a bad one exits naming it), then logging, then the
event loop (uvloop where installed), shared by ztunnel and the waypoint."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ambit import rlimits

S = TypeVar("S")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"    # every proxy's log lines
NOFILE_PER_CONNECTION = 2     # a downstream connection and the upstream one it is proxied to
NOFILE_SPARE = 1024           # pools, listeners, the process's own files


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
    needed = NOFILE_PER_CONNECTION * int(getattr(settings, "max_connections", 0) or 0) + NOFILE_SPARE
    if rlimits.short_of(needed) is not None:
        logging.getLogger("ambit.process").warning(
            "%s: the descriptor limit is %d, below the %d that --max-connections may need: accept() fails "
            "with EMFILE before the bound; raise the container's nofile limit", prog, soft, needed)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(amain(settings))


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
