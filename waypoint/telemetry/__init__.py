"""The waypoint's HTTP telemetry: Istio's standard request metrics (`reporter="waypoint"`) and one
access-log line per request.

The engine hands each finished `RequestRecord` to its `stats` and `access_log` callbacks; the
waypoint resolves the source and destination workloads (from the config stream) and calls
`HttpMetrics.observe(record, src, dst)` and `RequestLog.emit(record, src, dst)`; `Telemetry`
(hook.py) does that resolving from a pod-IP lookup and gives the engine its two callbacks. Label values are
pure functions of those inputs (peers.py), so tests need no sockets.
"""

from waypoint.telemetry.accesslog import RequestLog, request_line
from waypoint.telemetry.hook import Telemetry, address_ip
from waypoint.telemetry.metrics import DURATION_BUCKETS, HTTP_LABELS, SIZE_BUCKETS, HttpMetrics
from waypoint.telemetry.peers import Peer, canonical_revision, canonical_service, peer, workload_name

__all__ = ["Telemetry", "address_ip", "RequestLog", "request_line", "DURATION_BUCKETS", "HTTP_LABELS", "SIZE_BUCKETS", "HttpMetrics",
           "Peer", "canonical_revision", "canonical_service", "peer", "workload_name"]
