"""Spans to an OTLP/gRPC collector over grpclib: the SDK's `SpanExporter` without grpcio's C core.

OpenTelemetry's own OTLP/gRPC exporter runs on grpcio, which costs the waypoint about 19 MB of
RSS (its C core's text, heap and threads) for one unary call a second; every other gRPC client in
Ambit is already grpclib's (ambit/configclient/rpc.py). This keeps what the SDK's exporter does
and changes only the transport:

- the request is an `ExportTraceServiceRequest` of opentelemetry-proto, written by
  `otlp_wire.Encoder` (what the SDK's `encode_spans` means, without its per-attribute message
  objects: §57 of docs/performance.md), sent as
  `opentelemetry.proto.collector.trace.v1.TraceService/Export`;
- transient failures are retried as the SDK's exporter retries them: the same retryable codes,
  backoff 2^n s with ±20 % jitter, at most 6 tries, never past the export's timeout
  (`export_retry.attempts`, shared with the HTTP exporters);
- plaintext, as the SDK's exporter was configured here (`insecure=True`), for Istio's
  `opentelemetry` provider has no TLS settings of its own.

The SDK calls `export` from its batch processor's thread; the calls run on a small event loop of
the exporter's own, in a thread of its own, so a busy or stopped proxy loop never holds spans up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ambit.configclient import rpc
from ambit.dataplane.telemetry.otlp_logs import Serialized
from waypoint.telemetry import export_retry
from waypoint.telemetry.otlp_wire import Encoder

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger("ambit.waypoint.tracing")

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# The SDK's OTLP/gRPC exporter's retryable codes.
RETRYABLE = frozenset({"CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "OUT_OF_RANGE",
                       "UNAVAILABLE", "DATA_LOSS"})


class GrpclibSpanExporter(SpanExporter):
    """OTLP/gRPC span export to `endpoint` (`host:port`) with a per-export `timeout` in seconds."""

    def __init__(self, endpoint: str, timeout: float = 10.0, rand: random.Random | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        rpc.parse_target(endpoint)           # a malformed endpoint fails when configured, not per batch
        self.endpoint, self.timeout = endpoint, timeout
        self.metadata = tuple(headers)      # the provider's initialMetadata, on every export call
        self._rand = rand or random.Random()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._channel: Any = None
        self._stopping = threading.Event()
        self._failures = export_retry.FailureLog(endpoint)
        self._encoder = Encoder()       # export calls never overlap: the batch processor holds its export lock

    # ----- SpanExporter --------------------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopping.is_set():
            return SpanExportResult.FAILURE
        request = Serialized(self._encoder.request(spans))
        failure = export_retry.attempts(lambda deadline: self._try(request, deadline), self.timeout, self._rand,
                                        self._stopping)
        self._failures.report(failure, len(spans))
        return SpanExportResult.SUCCESS if failure is None else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._stopping.set()
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._reset(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True                          # nothing is buffered here: the batch processor holds spans

    # ----- the loop ------------------------------------------------------------------------------

    def _try(self, request: Serialized, deadline: float) -> export_retry.Failure | None:
        try:
            self._run(self._send(request, max(0.001, deadline - time.monotonic())), deadline - time.monotonic() + 1)
        except Exception as e:  # noqa: BLE001 - a failed export drops its batch, never the proxy
            f = rpc.failure(e)
            code, why = f if f is not None else ("UNKNOWN", f"{type(e).__name__}: {e}")
            if code == "UNAVAILABLE":
                self._run(self._reset())    # a fresh connection for the next try, as the SDK's does
            return export_retry.Failure(f"{code}: {why}", code in RETRYABLE)
        return None

    async def _send(self, request: Serialized, timeout: float) -> None:
        from grpclib.client import UnaryUnaryMethod
        if self._channel is None:
            self._channel = rpc.channel(self.endpoint)
        method = UnaryUnaryMethod(self._channel, EXPORT, Serialized, pb.ExportTraceServiceResponse)
        await method(request, timeout=timeout, metadata=self.metadata or None)

    async def _reset(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop()).result(timeout)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-grpc", daemon=True)
                self._thread.start()
            return self._loop
