"""Telemetry `metrics[].overrides`: which of Istio's standard metrics a proxy reports, and with which
labels. Pure data and pure functions; the resolver (ambit.telemetry) builds a `MetricsConfig` per
proxy side after Istio's precedence, the proxies apply it to each series they count.

Istio's semantics (telemetry.istio.io/v1 `MetricsOverrides`), kept here:
- `match.metric` names one standard metric, or `ALL_METRICS` (the default when unset);
  `match.mode` CLIENT, SERVER or CLIENT_AND_SERVER (the default). Ambit's reporters map to modes
  as the resolver says: ztunnel's reporter="source" is CLIENT, reporter="destination" SERVER, the
  waypoint's reporter="waypoint" SERVER.
- `disabled: true` stops the metric's series being reported; `disabled: false` at a narrower level
  turns it back on. Unset inherits.
- `tagOverrides`: `REMOVE` drops the label from the series; `UPSERT` sets it (an existing label or
  a new one) to the value of an expression. Overrides of one label at a narrower level, or later
  in the list, replace earlier ones, as Istio merges them per metric.
- Expressions are Ambit's CEL subset (ambit.telemetryfilter.compile_value); others are refused
  at apply time. An attribute the record lacks (a TCP connection has no `response.code`) gives
  "unknown", as Istio's stats plugin reports an expression that fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ambit.telemetryfilter import Attrs, Value, compile_value

ALL_METRICS = "ALL_METRICS"
# Istio's MetricSelector.IstioMetric -> the Prometheus family Ambit exports it as.
FAMILIES: dict[str, str] = {
    "REQUEST_COUNT": "istio_requests_total",
    "REQUEST_DURATION": "istio_request_duration_milliseconds",
    "REQUEST_SIZE": "istio_request_bytes",
    "RESPONSE_SIZE": "istio_response_bytes",
    "TCP_OPENED_CONNECTIONS": "istio_tcp_connections_opened_total",
    "TCP_CLOSED_CONNECTIONS": "istio_tcp_connections_closed_total",
    "TCP_SENT_BYTES": "istio_tcp_sent_bytes_total",
    "TCP_RECEIVED_BYTES": "istio_tcp_received_bytes_total",
    "GRPC_REQUEST_MESSAGES": "istio_request_messages_total",
    "GRPC_RESPONSE_MESSAGES": "istio_response_messages_total",
}
REMOVED = "\x00"            # a label value meaning "drop this label" (never a real value)
UNKNOWN = "unknown"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class TagOverride:
    name: str
    operation: str          # UPSERT | REMOVE
    value: str = ""         # the expression (UPSERT)


@dataclass(frozen=True)
class MetricsConfig:
    """The metrics part of the Telemetry API for one proxy side: the standard metrics it does not
    report, and the label overrides of those it does (metric -> overrides, in label-name order)."""

    disabled: frozenset[str] = frozenset()
    tags: tuple[tuple[str, tuple[TagOverride, ...]], ...] = ()

    def enabled(self, metric: str) -> bool:
        return metric not in self.disabled

    def tags_for(self, metric: str) -> tuple[TagOverride, ...]:
        for m, t in self.tags:
            if m == metric:
                return t
        return ()


DEFAULT = MetricsConfig()


@dataclass
class MetricsMerge:
    """Accumulates overrides, broadest level first (the resolver feeds them in precedence order)."""

    disabled: dict[str, bool] = field(default_factory=dict)
    tags: dict[str, dict[str, TagOverride]] = field(default_factory=dict)

    def add(self, override: Mapping[str, Any], side: str) -> None:
        match = override.get("match") or {}
        mode = match.get("mode") or "CLIENT_AND_SERVER"
        if mode not in ("CLIENT_AND_SERVER", side) or match.get("customMetric"):
            return          # customMetric is refused at apply time; never reaches a proxy's series
        metric = match.get("metric") or ALL_METRICS
        metrics = list(FAMILIES) if metric == ALL_METRICS else [metric]
        for m in metrics:
            if override.get("disabled") is not None:
                self.disabled[m] = bool(override["disabled"])
            for name, spec in (override.get("tagOverrides") or {}).items():
                spec = spec or {}
                self.tags.setdefault(m, {})[name] = TagOverride(
                    name, spec.get("operation") or "UPSERT", str(spec.get("value") or ""))

    def result(self) -> MetricsConfig:
        return MetricsConfig(
            disabled=frozenset(m for m, d in self.disabled.items() if d),
            tags=tuple((m, tuple(t[n] for n in sorted(t))) for m, t in sorted(self.tags.items()) if t))


def resolve(overrides: Iterable[Mapping[str, Any]], side: str) -> MetricsConfig:
    """Overrides in precedence order (broadest first) -> the config for `side` (CLIENT | SERVER)."""
    merge = MetricsMerge()
    for o in overrides:
        merge.add(o, side)
    return merge.result()


@lru_cache(maxsize=256)
def _compiled(expr: str) -> Value:
    return compile_value(expr)


def relabel(names: tuple[str, ...], values: tuple[str, ...], overrides: tuple[TagOverride, ...],
            attrs: Attrs) -> tuple[tuple[str, ...], str]:
    """The standard labels' values after `overrides`, and the added labels encoded as one string
    (`encode_extra`). A removed standard label's value is REMOVED, for `prune` to drop."""
    if not overrides:
        return values, ""
    out = list(values)
    extra: list[tuple[str, str]] = []
    index = {n: i for i, n in enumerate(names)}
    for o in overrides:
        if o.operation == "REMOVE":
            v = REMOVED
        else:
            got = _compiled(o.value)(attrs)
            v = UNKNOWN if got is None else got
        i = index.get(o.name)
        if i is not None:
            out[i] = v
        elif v != REMOVED:
            extra.append((o.name, v))
    return tuple(out), encode_extra(extra)


def encode_extra(pairs: Iterable[tuple[str, str]]) -> str:
    return "\x1f".join(f"{n}\x1e{v}" for n, v in sorted(pairs))


def prune(labels: Mapping[str, str], extra_label: str) -> dict[str, str]:
    """A sample's labels as exported: removed labels dropped, added ones (encoded under
    `extra_label`) expanded."""
    out = {k: v for k, v in labels.items() if v != REMOVED and k != extra_label}
    enc = labels.get(extra_label, "")
    if enc:
        for pair in enc.split("\x1f"):
            n, _, v = pair.partition("\x1e")
            out[n] = v
    return out
