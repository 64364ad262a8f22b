"""Access-log formats: Istio's default text format, JSON (Istio's default JSON keys, or a provider's
`logFormat.labels`), and user text formats made of Envoy command operators (`%RESPONSE_CODE%`).

Both proxies describe one log record as a mapping from Envoy operator (`START_TIME`,
`REQ(:METHOD)`, `RESPONSE_CODE`, ...) to value; `render` fills a format from it. An operator the
record has no value for renders as "-", as Envoy does; an operator Ambit does not know is refused
when the mesh config is loaded (`check_format`), not printed as garbage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

# Istio's default (meshConfig.accessLogFormat unset) Envoy text format, as in istio/istio
# pilot/pkg/model/telemetry_logging.go (EnvoyTextLogFormat).
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% '
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    '%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% '
    '%REQUESTED_SERVER_NAME% %ROUTE_NAME%'
)

# Istio's default JSON format (accessLogEncoding: JSON): key -> operator.
ISTIO_JSON_LABELS: dict[str, str] = {
    "start_time": "%START_TIME%", "route_name": "%ROUTE_NAME%", "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%", "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%", "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%", "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%", "request_id": "%REQ(X-REQUEST-ID)%", "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%", "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%", "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%", "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}

# The operators the proxies fill (others in ISTIO_TEXT_FORMAT render "-": Ambit has no value).
OPERATORS = frozenset({
    "START_TIME", "REQ(:METHOD)", "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)", "REQ(:PATH)", "PROTOCOL", "RESPONSE_CODE",
    "RESPONSE_FLAGS", "RESPONSE_CODE_DETAILS", "CONNECTION_TERMINATION_DETAILS", "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "BYTES_RECEIVED", "BYTES_SENT", "DURATION", "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)", "REQ(X-FORWARDED-FOR)",
    "REQ(USER-AGENT)", "REQ(X-REQUEST-ID)", "REQ(:AUTHORITY)", "UPSTREAM_HOST", "UPSTREAM_CLUSTER_RAW",
    "UPSTREAM_CLUSTER", "UPSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_PEER_URI_SAN", "UPSTREAM_PEER_URI_SAN", "REQUESTED_SERVER_NAME", "ROUTE_NAME", "GRPC_STATUS",
    # ambit's own (Istio's ztunnel and waypoint fields): the peers it resolved
    "SOURCE_WORKLOAD", "SOURCE_NAMESPACE", "DESTINATION_WORKLOAD", "DESTINATION_NAMESPACE", "DESTINATION_SERVICE",
    "CONNECTION_DIRECTION",
})

_OP = re.compile(r"%([A-Z_]+(?:\([^)%]*\))?(?::\d+)?)%")


@lru_cache(maxsize=256)
def operators(fmt: str) -> tuple[str, ...]:
    return tuple(m.group(1) for m in _OP.finditer(fmt))


def _base(op: str) -> str:
    return re.sub(r":\d+$", "", op) if not op.startswith(("REQ(", "RESP(")) else re.sub(r"\):\d+$", ")", op)


def check_format(fmt: str) -> str:
    """"" when every operator in `fmt` is one Ambit fills, else the reason."""
    bad = sorted({op for op in operators(fmt) if _base(op) not in OPERATORS})
    if bad:
        return (f"command operator{'s' if len(bad) > 1 else ''} {', '.join('%' + b + '%' for b in bad)} "
                f"not supported by Ambit (supported: {', '.join(sorted(OPERATORS))})")
    return ""


def _value(values: Mapping[str, Any], op: str) -> Any:
    v = values.get(_base(op))
    return None if v is None or v == "" else v


@lru_cache(maxsize=64)
def _pieces(fmt: str) -> tuple[tuple[str, str], ...]:
    """`fmt` split once into (literal, operator base) pairs (the operator "" after the last literal):
    rendering is then a join, with no regex per record."""
    out, pos = [], 0
    for m in _OP.finditer(fmt):
        out.append((fmt[pos:m.start()], _base(m.group(1))))
        pos = m.end()
    out.append((fmt[pos:], ""))
    return tuple(out)


def render_text(fmt: str, values: Mapping[str, Any]) -> str:
    parts = []
    for lit, op in _pieces(fmt):
        parts.append(lit)
        if op:
            v = values.get(op)
            parts.append("-" if v is None or v == "" else str(v))
    return "".join(parts)


def render_labels(labels: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, Any]:
    """Each label's format rendered; a label that is one operator keeps its type (numbers stay
    numbers, as Envoy's typed JSON), a missing value is None (Envoy: "-" for text)."""
    out: dict[str, Any] = {}
    for key, fmt in labels.items():
        ops = operators(fmt)
        if len(ops) == 1 and fmt == f"%{ops[0]}%":
            out[key] = _value(values, ops[0])
        else:
            out[key] = render_text(fmt, values)
    return out


def render_json(labels: Mapping[str, str], values: Mapping[str, Any]) -> str:
    """One JSON object of `render_labels` (a missing value is null)."""
    return json.dumps(render_labels(labels, values))


def render(log_format: str, labels: Mapping[str, str], values: Mapping[str, Any]) -> str:
    """`log_format`: "json" (labels, or Istio's default JSON keys), "" or "text" (Istio's default
    text format), or a text format string of command operators."""
    if log_format == "json":
        return render_json(labels or ISTIO_JSON_LABELS, values)
    return render_text(ISTIO_TEXT_FORMAT if log_format in ("", "text") else log_format, values)
