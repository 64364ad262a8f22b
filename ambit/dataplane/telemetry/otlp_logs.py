"""Access-log records to an OTLP/gRPC collector: Istio's `envoyOtelAls` provider, for ztunnel's
connections and the waypoint's requests.

What Envoy's OpenTelemetry access logger does when Istio configures it (pilot/pkg/model
telemetry_logging.go `buildOpenTelemetryAccessLogConfig`), and so what this does:
- one `LogRecord` per logged request or connection: `time_unix_nano` its start, `body` the
  provider's text format rendered (Istio's default text format unless `logFormat.text`), and
  `attributes` its `logFormat.labels` rendered, typed (numbers stay numbers); no built-in labels
  (Istio sets `disable_builtin_labels`). Ambit names the records' instrumentation scope after
  the provider's `logName` (default `otel_envoy_accesslog`, Istio's), which Envoy leaves unset;
- records are buffered per collector and sent as one `ExportLogsServiceRequest` every second
  (Envoy's `buffer_flush_interval`) or once `BATCH` are waiting;
- a batch that fails is dropped and counted, not retried: Envoy's gRPC access loggers do not
  retry either, and a proxy must not hold an hour of logs for a collector that is down;
- bounded: at most `MAX_QUEUED` records wait per collector; past it a record is dropped and
  counted (`ambit_access_log_otlp_records_total{result="dropped"}`).

The proxy's event loop pays for rendering the record and one append; encoding and sending run on
a loop of this module's own, in a thread, as the waypoint's span exporter does, so a slow
collector never holds a request up. `LogBatch` and `encode` are pure; `OtlpLogs` is the edge.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ambit.configclient import rpc
from ambit.telemetryconfig import Provider
from ambit.telemetrylog import LogRecord

log = logging.getLogger("ambit.telemetry.otlp_logs")

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
FLUSH_INTERVAL = 1.0        # seconds (Envoy's buffer_flush_interval default)
BATCH = 512                 # records per export (the OpenTelemetry SDK's default batch)
MAX_QUEUED = 4096           # records waiting per collector
TIMEOUT = 10.0              # seconds per export
SCOPE = "otel_envoy_accesslog"


class LogBatch:
    """Records waiting for one collector (pure: the caller's clock). `add` is False when the
    queue is full (the record is dropped: the caller counts it)."""

    def __init__(self, clock: Callable[[], float], interval: float = FLUSH_INTERVAL, batch: int = BATCH,
                 limit: int = MAX_QUEUED) -> None:
        self.clock, self.interval, self.batch, self.limit = clock, interval, batch, limit
        self.queue: deque[LogRecord] = deque()
        self.last = clock()

    def add(self, rec: LogRecord) -> bool:
        if len(self.queue) >= self.limit:
            return False
        self.queue.append(rec)
        return True

    def due(self) -> bool:
        """A batch is ready: `batch` records wait, or some wait and the interval has passed."""
        return len(self.queue) >= self.batch or (bool(self.queue) and self.clock() - self.last >= self.interval)

    def take(self) -> list[LogRecord]:
        self.last = self.clock()
        n = min(self.batch, len(self.queue))
        return [self.queue.popleft() for _ in range(n)]


def _any_value(v: Any, out: Any) -> None:
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int):
        out.int_value = v
    elif isinstance(v, float):
        out.double_value = v
    else:
        out.string_value = str(v)


def encode(records: Iterable[LogRecord], scope: str = SCOPE) -> bytes:
    """One ExportLogsServiceRequest (opentelemetry-proto) of `records`, in protobuf's wire format.
    An attribute without a value (an operator the record has no value for) is left out."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    sl.scope.name = scope
    for r in records:
        lr = sl.log_records.add()
        lr.time_unix_nano = lr.observed_time_unix_nano = int(r.start * 1e9)
        lr.body.string_value = r.body
        for k, v in r.attributes:
            if v is None:
                continue
            kv = lr.attributes.add()
            kv.key = k
            _any_value(v, kv.value)
    return req.SerializeToString()


class Serialized:
    """A request already in protobuf's wire format, for grpclib's codec (which asks the request
    type for an instance and calls its `SerializeToString`)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf message method grpclib calls
        return self.data


def endpoint(p: Provider) -> str:
    """A provider's collector as `host:port` (its `service` may carry the port already); the
    waypoint's span exporters build their URLs on it."""
    return p.service if (":" in p.service or not p.port) else f"{p.service}:{p.port}"


class OtlpLogs:
    """`submit(provider, record)` from the proxy's loop; one batch per (collector, log name),
    exported by a thread of this object's own (started with the first record)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._batches: dict[tuple[str, str], tuple[str, LogBatch]] = {}   # (endpoint, scope) -> (provider, batch)
        self.counts: dict[tuple[str, str], int] = {}                      # (provider, result) -> records
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._channels: dict[str, Any] = {}
        self._said: set[tuple[str, str]] = set()
        self._stopped = False

    def count(self, provider: str, result: str, n: int = 1) -> None:
        """Under `_lock`."""
        key = (provider, result)
        self.counts[key] = self.counts.get(key, 0) + n

    def counted(self) -> list[tuple[tuple[str, str], int]]:
        with self._lock:
            return sorted(self.counts.items())

    def submit(self, p: Provider, rec: LogRecord) -> None:
        key = (endpoint(p), p.log_name or SCOPE)
        with self._lock:
            got = self._batches.get(key)
            if got is None:
                got = self._batches[key] = (p.name, LogBatch(self.clock))
            ok = got[1].add(rec)
            self.count(p.name, "queued" if ok else "dropped")
            if not ok:
                return
            full = len(got[1].queue) >= got[1].batch
        if self._loop is None and not self._stopped:
            self._start()
        if full and self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- the export thread -------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._loop is not None:
                return
            self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, name="otlp-logs", daemon=True).start()

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        self._wake = asyncio.Event()
        loop.run_until_complete(self._flusher())

    async def _flusher(self) -> None:
        assert self._wake is not None
        while not self._stopped:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL / 4)
            except TimeoutError:
                pass
            self._wake.clear()
            await self._flush(force=False)
        await self._flush(force=True)
        for ch in self._channels.values():
            ch.close()

    async def _flush(self, force: bool) -> None:
        with self._lock:
            ready = [(key, name, batch.take()) for key, (name, batch) in self._batches.items()
                     if batch.queue and (force or batch.due())]
        for (target, scope), name, records in ready:
            await self._send(target, scope, name, records)

    async def _send(self, target: str, scope: str, name: str, records: list[LogRecord]) -> None:
        from grpclib.client import UnaryUnaryMethod
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
        try:
            ch = self._channels.get(target)
            if ch is None:
                ch = self._channels[target] = rpc.channel(target)
            method = UnaryUnaryMethod(ch, EXPORT, Serialized, ExportLogsServiceResponse)
            await method(Serialized(encode(records, scope)), timeout=TIMEOUT)
        except Exception as e:  # noqa: BLE001 - a failed export drops its batch, never the proxy
            f = rpc.failure(e)
            code, why = f if f is not None else ("UNKNOWN", f"{type(e).__name__}: {e}")
            with self._lock:
                self.count(name, "failed", len(records))
            if (name, code) not in self._said:     # once per provider and code: a collector down is one line
                self._said.add((name, code))
                log.warning("access log provider %s (%s): export of %d records failed, dropped: %s: %s",
                            name, target, len(records), code, why)
            if code == "UNAVAILABLE":
                ch = self._channels.pop(target, None)
                if ch is not None:
                    ch.close()
            return
        with self._lock:
            self.count(name, "exported", len(records))

    def close(self, timeout: float = 5.0) -> None:
        """Send what waits (within `timeout`), then stop the thread."""
        self._stopped = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)
            deadline = time.monotonic() + timeout
            while loop.is_running() and time.monotonic() < deadline:
                time.sleep(0.01)


class OtlpLogCollector:
    """`ambit_access_log_otlp_records_total{provider, result}` for a proxy's registry: records
    queued, dropped (the queue was full), exported and failed (their batch was refused or lost).
    `logs()`: the proxy's OtlpLogs, None until a provider of this kind was first used (no family)."""

    def __init__(self, logs: Callable[[], OtlpLogs | None]) -> None:
        self.logs = logs

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily
        logs = self.logs()
        if logs is None:
            return
        c = CounterMetricFamily("ambit_access_log_otlp_records", "access-log records of envoyOtelAls providers, "
                                "by provider and result (queued, dropped: the queue was full, exported, failed)",
                                labels=["provider", "result"])
        for (provider, result), n in logs.counted():
            c.add_metric([provider, result], n)
        yield c

