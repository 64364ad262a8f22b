"""One JSON line per connection, written when it closes.

JSON lines are what log pipelines ingest without parsers; field names follow ztunnel's so existing
queries carry over (src.workload, dst.addr, bytes_sent, ...).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO


@dataclass
class ConnRecord:
    direction: str                  # outbound | inbound
    src_addr: str
    dst_addr: str
    src_workload: str = ""
    src_namespace: str = ""
    src_identity: str = ""
    dst_workload: str = ""
    dst_namespace: str = ""
    dst_identity: str = ""
    dst_service: str = ""
    route: str = ""                 # passthrough | hbone | inbound-plaintext | inbound-hbone
    start: float = field(default_factory=time.time)
    bytes_sent: int = 0             # towards the destination
    bytes_recv: int = 0             # back from the destination
    error: str = ""
    policy: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        d = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.start)) + f".{int(self.start % 1 * 1e6):06d}Z",
            "direction": self.direction, "route": self.route,
            "src.addr": self.src_addr, "src.workload": self.src_workload, "src.namespace": self.src_namespace,
            "src.identity": self.src_identity,
            "dst.addr": self.dst_addr, "dst.workload": self.dst_workload, "dst.namespace": self.dst_namespace,
            "dst.identity": self.dst_identity, "dst.service": self.dst_service,
            "bytes_sent": self.bytes_sent, "bytes_recv": self.bytes_recv,
            "duration_ms": round((time.time() - self.start) * 1000, 3),
        }
        if self.error:
            d["error"] = self.error
        if self.policy:
            d["policy"] = self.policy
        d.update(self.extra)
        return json.dumps({k: v for k, v in d.items() if v != ""})


class AccessLogSink(Protocol):
    """Where finished connection records go. Proxies are given one (tests pass a list-backed sink)."""

    def emit(self, rec: ConnRecord) -> None: ...


class StreamSink:
    """Writes `access <json>` lines to a text stream (stdout in production, where the node's log
    collector reads it), batched per event-loop iteration.

    One write+flush per loop iteration instead of one per connection: under load many connections
    close in the same iteration, and each flush is a write() syscall. Idle, the line still goes out
    at once (the end of the current iteration).
    """

    MAX_PENDING = 256       # a bound, also should a scheduled flush never run (its loop closed)

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._pending: list[str] = []
        atexit.register(self.flush)

    def emit(self, rec: ConnRecord) -> None:
        self._pending.append("access " + rec.line() + "\n")
        n = len(self._pending)
        if n >= self.MAX_PENDING:
            self.flush()
        elif n == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:    # no loop: write now
                self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        lines = "".join(self._pending)
        self._pending.clear()
        stream = self._stream or sys.stdout     # late-bound: pytest's capture swaps sys.stdout
        stream.write(lines)
        stream.flush()
