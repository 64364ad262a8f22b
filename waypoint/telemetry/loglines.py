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

import functools
import logging
import time
from typing import TextIO

from ambit.dataplane.process import LOG_FORMAT
from ambit.dataplane.telemetry.accesslog import StreamSink


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

    def __init__(self, logger: logging.Logger, root: logging.Logger = logging.root) -> None:
        self.logger = logger
        stream = direct_stream(logger, root)
        self.stream = stream
        # ztunnel's batching writer: one write+flush per loop iteration, at most 256 queued, at exit
        self._batch = StreamSink(stream) if stream is not None else None

    def __call__(self, line: str) -> None:
        if self._batch is None:
            self.logger.info("%s", line)
        elif self.logger.isEnabledFor(logging.INFO):
            self._batch.emit_line(f"{prefix(self.logger, time.time())}{line}")

    def flush(self) -> None:
        if self._batch is not None:
            self._batch.flush()
