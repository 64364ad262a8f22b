"""Writes one finished record's access-log lines as the Telemetry API says (shared by ztunnel, per
connection, and the waypoint, per request).

Given the resolved `AccessLogConfig` of the record's workload and side: nothing when disabled or
when the filter does not select it; the proxy's built-in line when no provider applies (the
default: access logs on); else one line per provider, in the provider's format (Istio's default
text, JSON labels, or a text format), to its file (`/dev/stdout`: the proxy's own log stream).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TextIO

from ambit.telemetryconfig import AccessLogConfig, Provider
from ambit.telemetryfilter import FilterError, Predicate, compile_filter
from ambit.telemetryformat import ISTIO_TEXT_FORMAT, render, render_labels, render_text

log = logging.getLogger("ambit.telemetry.accesslog")
LineSink = Callable[[str], None]
STDOUT = ("", "/dev/stdout", "/dev/stderr")
OTEL = "envoyOtelAls"
START = "start_unix"        # in a record's values: its start, epoch seconds (no operator: lower case)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One access-log record for an OTLP provider (ambit.dataplane.telemetry.otlp_logs)."""

    start: float                # epoch seconds
    body: str
    attributes: tuple[tuple[str, Any], ...] = ()


OtelSink = Callable[[Provider, LogRecord], None]


def otel_record(p: Provider, values: Mapping[str, Any]) -> LogRecord:
    """What an envoyOtelAls provider sends for one record, as Istio configures Envoy: the body is
    its text format (Istio's default text format unless `logFormat.text`), the attributes its
    `logFormat.labels`, typed."""
    fmt = p.log_format if p.log_format not in ("", "text", "json") else ISTIO_TEXT_FORMAT
    attrs = tuple(render_labels(dict(p.labels), values).items()) if p.labels else ()
    start = values.get(START)
    return LogRecord(float(start) if isinstance(start, int | float) else time.time(), render_text(fmt, values), attrs)


@lru_cache(maxsize=256)
def _predicate(expr: str) -> Predicate | None:
    try:
        return compile_filter(expr)
    except FilterError as e:      # the controller refuses these at apply; an older controller may not
        log.warning("access-log filter %r not applied (every record is logged): %s", expr, e)
        return None


def selected(cfg: AccessLogConfig, attrs: Mapping[str, Any]) -> bool:
    """Whether a record with `attrs` (CEL attributes: response.code, ...) is logged under `cfg`."""
    if cfg.disabled:
        return False
    if not cfg.filter:
        return True
    pred = _predicate(cfg.filter)
    return pred is None or pred(attrs)


class AccessLogWriter:
    """`write(cfg, attrs, values, builtin)`; `stdout` takes lines for the proxy's own stream,
    other provider paths are opened (append) once and kept."""

    def __init__(self, stdout: LineSink, opener: Callable[[str], TextIO] | None = None,
                 otel: OtelSink | None = None) -> None:
        self.stdout = stdout
        self.otel = otel
        self._unsent: set[str] = set()
        self._opener = opener or (lambda path: open(path, "a", buffering=1))  # noqa: SIM115 - kept open
        self._files: dict[str, TextIO] = {}
        self.written = 0

    def _file(self, path: str) -> LineSink:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = self._opener(path)
        return lambda line: f.write(line + "\n")

    def write(self, cfg: AccessLogConfig | None, attrs: Mapping[str, Any],
              values: Callable[[], Mapping[str, Any]], builtin: Callable[[], str]) -> int:
        """Lines written for one record (0: disabled or filtered out)."""
        if cfg is None:
            cfg = AccessLogConfig()
        if not selected(cfg, attrs):
            return 0
        if not cfg.providers:
            self.stdout(builtin())
            self.written += 1
            return 1
        vals = values()
        n = 0
        for p in cfg.providers:
            if p.kind == OTEL:
                if self.otel is None:
                    if p.name not in self._unsent:       # a proxy built without an exporter: said once
                        self._unsent.add(p.name)
                        log.warning("access log provider %s (envoyOtelAls): this proxy has no OTLP log exporter; "
                                    "its records are not sent", p.name)
                    continue
                self.otel(p, otel_record(p, vals))
                n += 1
                continue
            line = render(p.log_format, dict(p.labels), vals)
            try:
                (self.stdout if p.path in STDOUT else self._file(p.path))(line)
                n += 1
            except OSError as e:
                log.warning("access log provider %s (%s): %s", p.name, p.path, e)
        self.written += n
        return n

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
