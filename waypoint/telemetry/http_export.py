"""Spans to a collector over plain HTTP/1.1: OTLP/HTTP (protobuf) and Zipkin's v2 JSON API.

The OpenTelemetry SDK's exporters for these encode each span with ~17–45 µs of Python under the
GIL (§59 of docs/performance.md), and Zipkin's pulls in `requests` (12 MB of RSS). These keep
what the SDK's exporters do and change the encoding and the client:

- the body is written by `otlp_wire.Encoder` (OTLP) or `zipkin_json.Encoder` (Zipkin), each
  checked against the SDK's own encoder by the unit tests;
- one `POST` per batch on a kept-alive `http.client` connection from the batch processor's thread
  (the SDK calls `export` there, and nothing else uses the connection); a connection the collector
  closed while idle is redialled at once, as the SDK's transport does;
- a transient failure (no connection, 429, 502, 503, 504) is tried again on `export_retry`'s
  schedule, honouring `Retry-After`, never past the export's timeout. The SDK's Zipkin exporter
  never retries and logs a traceback per failed batch; this logs a failure once until it changes;
- plain `http://` only: Istio's `zipkin` and `opentelemetry` providers carry a service and a port,
  no TLS settings.
"""

from __future__ import annotations

import http.client
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from waypoint.telemetry import export_retry, otlp_wire, zipkin_json

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger("ambit.waypoint.tracing")

_RESPONSE_LIMIT = 64 * 1024     # more than this in a collector's answer is not read: the connection is dropped


class HttpSpanExporter(SpanExporter):
    """POSTs each batch to `endpoint` (`http://host:port/path`) with a per-export `timeout` in
    seconds; subclasses say the body's format."""

    KIND = ""
    CONTENT_TYPE = ""

    def __init__(self, endpoint: str, timeout: float = 10.0, rand: random.Random | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        u = urllib.parse.urlsplit(endpoint)
        try:
            port = u.port or 80
        except ValueError as e:
            raise ValueError(f"{self.KIND} endpoint {endpoint!r}: {e}") from None
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"{self.KIND} endpoint {endpoint!r}: not an http://host[:port]/path URL")
        self.endpoint, self.timeout = endpoint, timeout
        self._host, self._port = u.hostname, port
        self._target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        # the provider's headers (an API key ...) replace ours of the same name, as Envoy's
        # OVERWRITE_IF_EXISTS_OR_ADD does, but never the body's Content-Type
        self._headers = {"User-Agent": "ambit-waypoint", **dict(headers), "Content-Type": self.CONTENT_TYPE}
        self._rand = rand or random.Random()
        self._conn: http.client.HTTPConnection | None = None
        self._stopping = threading.Event()
        self._failures = export_retry.FailureLog(endpoint)
        self._encode: Callable[[Iterable[ReadableSpan]], bytes] = self._encoder()

    def _encoder(self) -> Callable[[Iterable[ReadableSpan]], bytes]:
        raise NotImplementedError

    # ----- SpanExporter --------------------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopping.is_set():
            return SpanExportResult.FAILURE
        body = self._encode(spans)
        failure = export_retry.attempts(lambda deadline: self._post(body, deadline), self.timeout, self._rand,
                                        self._stopping)
        self._failures.report(failure, len(spans))
        return SpanExportResult.SUCCESS if failure is None else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._stopping.set()
        self._close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True                          # nothing is buffered here: the batch processor holds spans

    # ----- the connection ------------------------------------------------------------------------

    def _post(self, body: bytes, deadline: float) -> export_retry.Failure | None:
        """One POST: None when the collector took it (2xx). A kept-alive connection that fails
        before any answer (the collector closed it while it was idle) is redialled once, at once;
        a timeout is not. No answer, 429, 502, 503 and 504 are transient."""
        reused = self._conn is not None
        try:
            return self._request(body, deadline - time.monotonic())
        except (OSError, http.client.HTTPException) as e:
            self._close()
            if reused and not isinstance(e, TimeoutError) and not self._stopping.is_set():
                try:
                    return self._request(body, deadline - time.monotonic())
                except (OSError, http.client.HTTPException) as e2:
                    self._close()
                    e = e2
            return export_retry.Failure(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, True)

    def _request(self, body: bytes, timeout: float) -> export_retry.Failure | None:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=max(0.001, timeout))
        else:
            self._conn.timeout = max(0.001, timeout)
            if self._conn.sock is not None:
                self._conn.sock.settimeout(self._conn.timeout)
        self._conn.request("POST", self._target, body, self._headers)
        resp = self._conn.getresponse()
        resp.read(_RESPONSE_LIMIT)
        if not resp.isclosed() or resp.will_close:
            self._close()
        if 200 <= resp.status < 300:
            return None
        return export_retry.Failure(f"HTTP {resp.status} {resp.reason}".rstrip(),
                                    resp.status in export_retry.RETRYABLE_HTTP,
                                    export_retry.retry_after(resp.getheader("Retry-After"), time.time()))

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class OtlpHttpSpanExporter(HttpSpanExporter):
    """OTLP/HTTP, binary protobuf (`application/x-protobuf`), as the SDK's OTLP/HTTP exporter sends."""

    KIND = "OTLP/HTTP"
    CONTENT_TYPE = "application/x-protobuf"

    def _encoder(self) -> Callable[[Iterable[ReadableSpan]], bytes]:
        return otlp_wire.Encoder().request


class ZipkinSpanExporter(HttpSpanExporter):
    """Zipkin's v2 JSON API (`POST /api/v2/spans`)."""

    KIND = "Zipkin"
    CONTENT_TYPE = "application/json"

    def _encoder(self) -> Callable[[Iterable[ReadableSpan]], bytes]:
        return zipkin_json.Encoder().request
