"""Writes one finished record's access-log lines as the Telemetry API says (shared by ztunnel, per
connection, and the waypoint, per request).

Given the resolved `AccessLogConfig` of the record's workload and side: nothing when disabled or
when the filter does not select it; the proxy's built-in line when no provider applies (the
default: access logs on); else one line per provider, in the provider's format (Istio's default
text, JSON labels, or a text format), to its file (`/dev/stdout`: the proxy's own log stream).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, TextIO

from ambit.telemetryconfig import AccessLogConfig
from ambit.telemetryfilter import FilterError, Predicate, compile_filter
from ambit.telemetryformat import render

log = logging.getLogger("ambit.telemetry.accesslog")
LineSink = Callable[[str], None]
STDOUT = ("", "/dev/stdout", "/dev/stderr")


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

    def __init__(self, stdout: LineSink, opener: Callable[[str], TextIO] | None = None) -> None:
        self.stdout = stdout
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
