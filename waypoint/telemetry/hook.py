"""The one object the waypoint hands its HTTP engine: `Engine(..., access_log=t.access_log,
stats=t.stats)`.

A finished `RequestRecord` names the downstream's address and identity and the upstream's address;
`lookup(ip)` (the waypoint's view of the config stream: pod IP → Workload) turns those into the
source and destination workloads that the metrics' and the log's labels are made of. Both callbacks
run once per request on the event loop, so they stay cheap: two dict lookups and a cached child.
"""

from __future__ import annotations

from collections.abc import Callable

from ambit.model import Workload
from waypoint.http.record import RequestRecord
from waypoint.telemetry.accesslog import RequestLog
from waypoint.telemetry.metrics import HttpMetrics

Lookup = Callable[[str], "Workload | None"]


def address_ip(address: str) -> str:
    """The IP of "ip:port", "[v6]:port" or a bare IP ("" stays "")."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


class Telemetry:
    def __init__(self, metrics: HttpMetrics | None, log: RequestLog | None, lookup: Lookup) -> None:
        self.metrics = metrics
        self.log = log
        self.lookup = lookup

    def peers(self, rec: RequestRecord) -> tuple[Workload | None, Workload | None]:
        src_ip, dst_ip = rec.downstream.source_ip, address_ip(rec.upstream)
        return (self.lookup(src_ip) if src_ip else None), (self.lookup(dst_ip) if dst_ip else None)

    def stats(self, rec: RequestRecord) -> None:
        if self.metrics is not None:
            self.metrics.observe(rec, *self.peers(rec))

    def access_log(self, rec: RequestRecord) -> None:
        if self.log is not None:
            self.log.emit(rec, *self.peers(rec))
