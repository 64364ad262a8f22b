"""How a proxy binary starts: settings first (a bad one exits naming it), then logging, then the
event loop (uvloop where installed), shared by ztunnel and the waypoint."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

S = TypeVar("S")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"    # every proxy's log lines


def run(prog: str, load: Callable[[Sequence[str] | None], S], amain: Callable[[S], Awaitable[Any]],
        argv: Sequence[str] | None = None) -> None:
    try:
        settings = load(argv)
    except ValueError as e:
        raise SystemExit(f"{prog}: {e}") from None
    logging.basicConfig(level=getattr(settings, "log_level", "INFO"),
                        format=LOG_FORMAT)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(amain(settings))


async def serve_until_stopped(settings: Any, proxy: Any) -> Any:
    """Start-up is done, and what exists now (modules, config, certificates) lives as long as the
    process: freeze it out of the collector's sight and tune the collector (`--gc-*`, the proxy's
    `gc_stats` for its admin), start trimming the heap, then wait for SIGTERM or SIGINT. Returns the
    trimmer, for `memory.stop_trimming` once the proxy has drained."""
    from ambit.dataplane import gctune, memory
    proxy.gc_stats = gctune.tune(settings.gc_freeze, gctune.parse_threshold(settings.gc_threshold))
    trimmer = memory.start_trimming(settings.memory_trim_interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    return trimmer
