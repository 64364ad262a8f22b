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

from ambit.dataplane.accesslog_time import iso_time


@dataclass(slots=True)
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
            "time": iso_time(self.start),
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
        if "" in d.values():    # a scan in C; the filtering copy only for a line that has an empty field
            d = {k: v for k, v in d.items() if v != ""}
        return json.dumps(d)


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

    def emit_line(self, line: str) -> None:
        """A line as is (a Telemetry provider's format), batched like `emit`'s."""
        self._pending.append(line + "\n")
        if len(self._pending) >= self.MAX_PENDING:
            self.flush()
        elif len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()


# --- the Telemetry API (ambit.telemetry) applied per connection ------------------------------------


def conn_attrs(rec: ConnRecord) -> dict[str, Any]:
    """The CEL attributes a connection has (no request or response: those comparisons are false)."""
    return {"connection.mtls": rec.route in ("hbone", "inbound-hbone")}


def _spiffe(identity: str) -> str:
    return identity if not identity or identity.startswith("spiffe://") else f"spiffe://{identity}"


def conn_values(rec: ConnRecord) -> dict[str, Any]:
    """Envoy command operators for a connection (a TCP proxy's view: bytes, addresses, peers)."""
    return {
        "START_TIME": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.start)) + f".{int(rec.start % 1 * 1000):03d}Z",
        "BYTES_RECEIVED": rec.bytes_sent, "BYTES_SENT": rec.bytes_recv,
        "DURATION": round((time.time() - rec.start) * 1000),
        "DOWNSTREAM_REMOTE_ADDRESS": rec.src_addr, "DOWNSTREAM_LOCAL_ADDRESS": rec.dst_addr,
        "UPSTREAM_HOST": rec.dst_addr, "ROUTE_NAME": rec.route, "CONNECTION_TERMINATION_DETAILS": rec.error,
        "RESPONSE_FLAGS": rec.extra.get("response_flags", ""),
        "DOWNSTREAM_PEER_URI_SAN": _spiffe(rec.src_identity), "UPSTREAM_PEER_URI_SAN": _spiffe(rec.dst_identity),
        "UPSTREAM_CLUSTER": rec.dst_service, "UPSTREAM_CLUSTER_RAW": rec.dst_service,
        "SOURCE_WORKLOAD": rec.src_workload, "SOURCE_NAMESPACE": rec.src_namespace,
        "DESTINATION_WORKLOAD": rec.dst_workload, "DESTINATION_NAMESPACE": rec.dst_namespace,
        "DESTINATION_SERVICE": rec.dst_service, "CONNECTION_DIRECTION": rec.direction,
        "start_unix": rec.start,        # ambit.telemetrylog.START: the record's start for an OTLP provider
    }


class PolicySink:
    """An AccessLogSink that applies the Telemetry API: `config_for(rec)` is the connection's
    workload's AccessLogConfig on its side (outbound: the source workload, CLIENT; inbound: the
    destination workload, SERVER), None for the default (logged, built-in line)."""

    def __init__(self, stream: StreamSink, config_for: Any, writer: Any = None, otel: Any = None) -> None:
        from ambit.telemetrylog import AccessLogWriter
        self.stream = stream
        self.config_for = config_for
        self.writer = writer or AccessLogWriter(stream.emit_line, otel=otel)

    def emit(self, rec: ConnRecord) -> None:
        self.writer.write(self.config_for(rec), conn_attrs(rec), lambda: conn_values(rec),
                          lambda: "access " + rec.line())

    def flush(self) -> None:
        self.stream.flush()
