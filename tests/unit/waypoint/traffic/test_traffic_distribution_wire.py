"""A Service's `trafficDistribution: PreferClose` on the wire: a real `WaypointProxy` (its decide,
its clusters, its upstream) behind the engine on loopback, driven by one curl fetching 400 URLs
over one connection. The Service has four endpoints in the waypoint's zone, of which only
127.0.0.1 is ready (127.0.0.3-5 run but are not ready), and one ready endpoint in another zone
(127.0.0.2). The endpoints are mesh pods; the HBONE hop to them is replaced by a plain connection
to the pod's address (`_connector`): which endpoint each request goes to is what this is about.

As Istio configures Envoy (the unready endpoints sent as unhealthy hosts, failover forced without
outlier detection): the zone keeps 1.4 x 1/4 = 35% of the requests, the other zone gets 65%, the
unready pods none. Before, the field was read by no component: half the requests each way."""

from __future__ import annotations

import random
import subprocess
from collections import Counter
from collections.abc import Iterator

import pytest

from ambit.configclient import ConfigUpdate
from ambit.model import Endpoint, Service, ServicePort, Workload
from tests.unit.waypoint.harness import Proxy, address_origins
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http.plug import connect_tcp
from waypoint.request import Downstream
from waypoint.settings import load

HOST = "web.demo.svc.cluster.local"
VIP = "10.96.0.20"
ZONE, OTHER = "r1/z1/", "r1/z2/"
WHERE = {"127.0.0.1": ZONE, "127.0.0.2": OTHER, "127.0.0.3": ZONE, "127.0.0.4": ZONE, "127.0.0.5": ZONE}
READY = {"127.0.0.1", "127.0.0.2"}
N = 400


@pytest.fixture()
def pods() -> Iterator[tuple[int, Counter[str]]]:
    with address_origins(list(WHERE)) as (port, hits):
        yield port, hits


def _waypoint(port: int) -> Proxy:
    s = load(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "node1"])
    cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
    pods = [Workload(uid=f"uid-{i}", name=f"web-{i}", namespace="demo", ips=[ip], node=f"node-{i}",
                     service_account="web", identity="spiffe://cluster.local/ns/demo/sa/web", locality=loc)
            for i, (ip, loc) in enumerate(WHERE.items())]
    pods.append(Workload(uid="uid-wp", name="waypoint-0", namespace="default", ips=["10.0.3.1"], node="node1",
                         service_account="waypoint", identity="", locality=ZONE))
    cfg.apply(ConfigUpdate(Workload.TYPE, "1", {}, frozenset(), {w.uid: w for w in pods}))
    svc = Service(name="web", namespace="demo", hostname=HOST, vips=[VIP], ports=[ServicePort(80, port, "http", "HTTP")],
                  endpoints=[Endpoint(w.uid, w.ips[0], ready=w.ips[0] in READY) for w in pods[:-1]],
                  waypoint="default/waypoint", traffic_distribution="PreferSameZone")
    cfg.apply(ConfigUpdate(Service.TYPE, "1", {}, frozenset(), {svc.resource_name: svc}))
    w = WaypointProxy(s, cfg, None, rng=random.Random(3))
    w._connector = lambda pick, source_ip: lambda: connect_tcp(pick.ip, pick.port, 5)  # type: ignore[method-assign]
    return Proxy(w.decide, upstream=w.upstream,
                 downstream=Downstream(source_ip="10.0.2.5", destination_ip=VIP, destination_port=80,
                                       service="demo/web", hostname=HOST))


def test_a_zone_with_one_ready_pod_of_four_keeps_35_percent_and_unready_pods_get_nothing(
        pods: tuple[int, Counter[str]]) -> None:
    port, hits = pods
    p = _waypoint(port)
    try:
        r = subprocess.run(["curl", "-sS", "-m", "30", "-w", "\\n%{http_code}\\n", f"http://127.0.0.1:{p.port}/[1-{N}]"],
                           capture_output=True, text=True, timeout=60)
    finally:
        p.close()
    lines = r.stdout.split()
    assert lines.count("200") == N, (r.stdout[-500:], r.stderr)
    assert set(hits) <= READY and sum(hits.values()) == N         # never an unready pod
    assert 0.27 < hits["127.0.0.1"] / N < 0.43, hits                # 35% in the zone, not all nor half
