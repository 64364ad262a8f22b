"""ztunnel's side of `ambit tap`: each finished connection's access-log record, as a tap event.

`TapSink` sits in front of the access-log sink: every record still goes to the log, and, only when
someone taps (`hub.active`), is also mapped by `conn_event` (pure; tests/unit/ztunnel/test_tap.py)
and handed to the hub's bounded queues. The admin endpoint serves the hub at `GET /tap`.
"""

from __future__ import annotations

import time
from typing import Any

from ambit.dataplane.accesslog_time import iso_time
from ambit.dataplane.tap import TapHub
from ambit.dataplane.telemetry.accesslog import AccessLogSink, ConnRecord

# The HTTP statuses ztunnel's admission answers with (admission.py): 401 identity, 403 policy.
DENIED_PREFIXES = ("401 ", "403 ")


def verdict(rec: ConnRecord) -> str:
    """allowed | denied (identity or policy refused it) | error (refused or failed otherwise)."""
    if not rec.error:
        return "allowed"
    if rec.policy or rec.error.startswith(DENIED_PREFIXES):
        return "denied"
    return "error"


def conn_event(rec: ConnRecord, now: float) -> dict[str, Any]:
    """The tap event of one connection (L4): who to whom, bytes, duration and the verdict."""
    ev: dict[str, Any] = {
        "type": "flow", "layer": "L4", "time": iso_time(rec.start), "direction": rec.direction,
        "route": rec.route,
        # ztunnel's records name workloads by pod (Workload.name): both keys carry it.
        "src": {"addr": rec.src_addr, "workload": rec.src_workload, "pod": rec.src_workload,
                "namespace": rec.src_namespace, "identity": rec.src_identity},
        "dst": {"addr": rec.dst_addr, "workload": rec.dst_workload, "pod": rec.dst_workload,
                "namespace": rec.dst_namespace, "identity": rec.dst_identity, "service": rec.dst_service},
        "bytes_sent": rec.bytes_sent, "bytes_recv": rec.bytes_recv,
        "latency_ms": round((now - rec.start) * 1000, 3),
        "verdict": verdict(rec), "policy": rec.policy,
    }
    if rec.error:
        ev["error"] = rec.error
    return ev


class TapSink:
    """An AccessLogSink that logs as before and feeds the tap hub."""

    def __init__(self, inner: AccessLogSink, hub: TapHub, clock: Any = time.time) -> None:
        self.inner = inner
        self.hub = hub
        self.clock = clock

    def emit(self, rec: ConnRecord) -> None:
        self.inner.emit(rec)
        if self.hub.subscribers:
            now = self.clock()
            self.hub.publish(lambda: conn_event(rec, now))
