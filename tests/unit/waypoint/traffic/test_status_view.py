"""`ambit waypoint status`'s clusters view, from a real cluster dump."""

from __future__ import annotations

import random

from ambit.model import TrafficPolicy
from ambitctl.commands.waypoint import _table, cluster_rows
from waypoint.http.attempt import RESPONSE, Outcome
from waypoint.traffic.cluster import Cluster, ClusterKey


def test_one_row_per_cluster_with_ejected_endpoints() -> None:
    now = [0.0]
    c = Cluster(ClusterKey("demo/web", 80), TrafficPolicy(lb="ROUND_ROBIN", outlier_detection=True,
                                                         consecutive_5xx_errors=1, base_ejection_time=2.0,
                                                         interval=0.5, max_ejection_percent=50),
                lambda: now[0], random.Random(0), "web.demo.svc.cluster.local")
    c.choose(["10.0.0.1:80", "10.0.0.2:80"])
    c.attempt_started("10.0.0.2:80")
    c.attempt_result("10.0.0.1:80", Outcome(RESPONSE, 503))
    plain = Cluster(ClusterKey("demo/api", 80), TrafficPolicy(), lambda: now[0], random.Random(0), "api.demo.svc.cluster.local")
    plain.choose(["10.0.0.3:80"])
    rows = cluster_rows([c.dump(), plain.dump()])  # type: ignore[list-item]
    assert rows[1] == ["outbound|80||web.demo.svc.cluster.local", "ROUND_ROBIN", "1/2", "1", "1",
                       "10.0.0.1:80 (2s, x1)"]          # back at the sweep at 2 s (every 0.5 s)
    assert rows[2] == ["outbound|80||api.demo.svc.cluster.local", "LEAST_REQUEST", "1/1", "0", "-", "-"]
    assert _table(rows).splitlines()[0].split() == ["CLUSTER", "LB", "HEALTHY", "ACTIVE", "EJECTIONS", "EJECTED"]
