"""How a proxy binary starts: settings first (a bad one exits naming it), then logging, then the
event loop (uvloop where installed), shared by ztunnel and the waypoint."""

from __future__ import annotations

import asyncio
import logging
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
