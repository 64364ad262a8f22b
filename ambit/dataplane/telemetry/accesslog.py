"""One JSON line per connection, written when it closes.

JSON lines are what log pipelines ingest without parsers; field names follow ztunnel's so existing
queries carry over (src.workload, dst.addr, bytes_sent, ...).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ambit.access")


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


_pending: list[str] = []
_MAX_PENDING = 256          # a bound, also should a scheduled flush never run (its loop closed)


def emit(rec: ConnRecord) -> None:
    """Queue the record's line; it is written (and flushed) at the end of this loop iteration.

    One write+flush per loop iteration instead of one per connection: under load many connections
    close in the same iteration, and each flush is a write() syscall. Idle, the line still goes out
    at once (the end of the current iteration).
    """
    _pending.append("access " + rec.line() + "\n")
    n = len(_pending)
    if n >= _MAX_PENDING:
        flush()
    elif n == 1:
        try:
            asyncio.get_running_loop().call_soon(flush)
        except RuntimeError:    # no loop: write now
            flush()


def flush() -> None:
    if not _pending:
        return
    lines = "".join(_pending)
    _pending.clear()
    sys.stdout.write(lines)
    sys.stdout.flush()


atexit.register(flush)
