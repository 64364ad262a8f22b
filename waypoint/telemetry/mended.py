"""`ambit_waypoint_heads_mended_total{protocol}`: heads the codecs' last guard wrote without a CR,
LF or NUL that reached them (waypoint/http/injection.py). Always 0 unless a bug or an unchecked
source of header text put one there; the guard's log says so once a minute, this says how often,
so that an alert on any value above 0 needs no log pipeline. Read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class MendedCollector(Collector):
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts        # waypoint.http.injection.MENDED: protocol -> heads mended

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily("ambit_waypoint_heads_mended", "Heads written without the CR, LF or NUL the "
                                "codecs' last guard found in them (a bug if not 0)", labels=["protocol"])
        for protocol, n in sorted(self.counts.items()):
            c.add_metric([protocol], n)
        yield c
