"""A Service's `trafficDistribution: PreferClose` (the model's PreferSameZone) on the wire: a real `WaypointProxy` (its decide,
its clusters, its upstream) behind the engine on loopback (zoned.py), driven by one curl fetching
400 URLs over one connection. The Service has four endpoints in the waypoint's zone, of which
only 127.0.0.1 is ready (127.0.0.3-5 run but are not ready), and one ready endpoint in another
zone (127.0.0.2).

As Istio configures Envoy (the unready endpoints sent as unhealthy hosts, failover forced without
outlier detection): the zone keeps 1.4 x 1/4 = 35% of the requests, the other zone gets 65%, the
unready pods none. Before, the field was read by no component: half the requests each way."""

from __future__ import annotations

import random
import subprocess
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.unit.waypoint.harness import address_origins
from tests.unit.waypoint.traffic.zoned import loopback_waypoint, zoned_config

ZONE, OTHER = "r1/z1/", "r1/z2/"
WHERE = {"127.0.0.1": ZONE, "127.0.0.2": OTHER, "127.0.0.3": ZONE, "127.0.0.4": ZONE, "127.0.0.5": ZONE}
READY = frozenset({"127.0.0.1", "127.0.0.2"})
N = 400


@pytest.fixture()
def pods() -> Iterator[tuple[int, Counter[str]]]:
    with address_origins(list(WHERE)) as (port, hits):
        yield port, hits


def test_a_zone_with_one_ready_pod_of_four_keeps_35_percent_and_unready_pods_get_nothing(
        pods: tuple[int, Counter[str]]) -> None:
    port, hits = pods
    p = loopback_waypoint(zoned_config(WHERE, ZONE, port, READY, "PreferSameZone"), random.Random(3))
    try:
        r = subprocess.run(["curl", "-sS", "-m", "30", "-w", "\\n%{http_code}\\n", f"http://127.0.0.1:{p.port}/[1-{N}]"],
                           capture_output=True, text=True, timeout=60)
    finally:
        p.close()
    lines = r.stdout.split()
    assert lines.count("200") == N, (r.stdout[-500:], r.stderr)
    assert set(hits) <= READY and sum(hits.values()) == N         # never an unready pod
    assert 0.27 < hits["127.0.0.1"] / N < 0.43, hits                # 35% in the zone, not all nor half
