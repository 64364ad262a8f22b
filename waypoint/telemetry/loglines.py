"""Access-log lines onto the process log, batched: one write per event-loop iteration.

The waypoint's access lines go to the `ambit.waypoint.access` logger, so they sit in the process
log (stderr) as `<asctime> INFO ambit.waypoint.access: <json>`, which the lab, the dashboard and
log queries read. Through `logging` each line costs a caller lookup (a stack walk), a LogRecord, a
formatting pass, a lock and a write+flush syscall: about a tenth of a proxied request's CPU. When
the process log is what `ambit.dataplane.process.run` set up (one stream handler on the root with
LOG_FORMAT), `LogLines` writes the very same line itself, queued and flushed at the end of the loop
iteration (as ztunnel's access log, docs/performance.md change 3); otherwise (tests, another
handler configured) it hands each line to the logger as before. Lines are flushed at exit too.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import time
from typing import TextIO

from ambit.dataplane.process import LOG_FORMAT


@functools.lru_cache(maxsize=4)
def _asctime_second(sec: int) -> str:
    """logging.Formatter's default asctime up to the comma (local time), once per second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))


def prefix(logger: logging.Logger, t: float) -> str:
    """What LOG_FORMAT puts before an INFO message of `logger` logged at time `t`."""
    return f"{_asctime_second(int(t))},{int((t - int(t)) * 1000):03d} INFO {logger.name}: "


def direct_stream(logger: logging.Logger, root: logging.Logger = logging.root) -> TextIO | None:
    """The stream `logger`'s INFO lines end up on when that is one plain LOG_FORMAT stream handler
    on the root (what the proxy binaries set up), else None (then only `logging` knows)."""
    node: logging.Logger | None = logger
    while node is not None and node is not root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    if node is None or len(root.handlers) != 1 or root.filters:
        return None
    h = root.handlers[0]
    if type(h) is not logging.StreamHandler or h.filters or h.formatter is None:
        return None
    fmt = h.formatter
    if fmt._fmt != LOG_FORMAT or fmt.datefmt is not None or type(fmt) is not logging.Formatter:
        return None
    return h.stream


class LogLines:
    """A line sink for `RequestLog`: `sink(line)` logs `line` at INFO on `logger`."""

    MAX_PENDING = 256       # a bound, also should a scheduled flush never run (its loop closed)

    def __init__(self, logger: logging.Logger, root: logging.Logger = logging.root) -> None:
        self.logger = logger
        self.stream = direct_stream(logger, root)
        self._pending: list[str] = []
        if self.stream is not None:
            atexit.register(self.flush)

    def __call__(self, line: str) -> None:
        if self.stream is None:
            self.logger.info("%s", line)
            return
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self._pending.append(f"{prefix(self.logger, time.time())}{line}\n")
        n = len(self._pending)
        if n >= self.MAX_PENDING:
            self.flush()
        elif n == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:    # no loop: write now
                self.flush()

    def flush(self) -> None:
        if not self._pending or self.stream is None:
            return
        lines = "".join(self._pending)
        self._pending.clear()
        try:
            self.stream.write(lines)
            self.stream.flush()
        except (OSError, ValueError):   # the log is gone (closed at exit): nothing to report it to
            pass
