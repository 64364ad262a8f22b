"""VirtualService `retries.retryRemoteLocalities` on the wire: a real `WaypointProxy` (its decide,
its clusters with locality failover, its upstream) behind the engine on loopback, a Service with
two endpoints in the waypoint's own zone (127.0.0.1-2, answering 503) and one in another region
(127.0.0.3, answering 200), driven by curl. The endpoints are mesh pods; the HBONE hop to them is
replaced by a plain connection to the pod's address (`_connector`): the tunnel is not what this is
about, which endpoint each try goes to is.

As Istio configures Envoy (the retry priority previous_priorities, update_frequency 2), the third
try leaves the locality the first two failed in; without the field every try stays local, since
the local endpoints are healthy (not ejected). Before, the field was accepted, warned about and
ignored: the third try stayed local."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator

import pytest

from ambit.configclient import ConfigUpdate
from ambit.model import (
    Endpoint,
    HttpRoute,
    Retry,
    RouteDestination,
    Service,
    ServicePort,
    TrafficPolicy,
    WaypointRoutes,
    Workload,
)
from tests.unit.waypoint.harness import Proxy, address_origins
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http.plug import connect_tcp
from waypoint.request import Downstream
from waypoint.settings import load

HOST = "web.demo.svc.cluster.local"
VIP = "10.96.0.20"
LOCAL, REMOTE = "r1/z1/", "r2/z1/"
WHERE = {"127.0.0.1": LOCAL, "127.0.0.2": LOCAL, "127.0.0.3": REMOTE}


@pytest.fixture()
def origins() -> Iterator[tuple[int, Counter[str]]]:
    """503 from the waypoint's own zone, 200 elsewhere; each answer names the address it came from."""
    with address_origins(list(WHERE), lambda ip: 503 if WHERE[ip] == LOCAL else 200) as (port, hits):
        yield port, hits


def _apply(cfg: WaypointConfig, t: str, items: dict[str, object]) -> None:
    cfg.apply(ConfigUpdate(t, "1", {}, frozenset(), items))


def _waypoint(port: int, remote_localities: bool) -> Proxy:
    """The waypoint (in LOCAL) for the Service, its route retrying 503 twice, locality failover on
    (outlier detection, which no endpoint reaches here: 5 consecutive 5xx)."""
    s = load(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "node1"])
    cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
    pods = [Workload(uid=f"uid-{i}", name=f"web-{i}", namespace="demo", ips=[ip], node=f"node-{i}",
                     service_account="web", identity="spiffe://cluster.local/ns/demo/sa/web", locality=loc)
            for i, (ip, loc) in enumerate(WHERE.items())]
    pods.append(Workload(uid="uid-wp", name="waypoint-0", namespace="default", ips=["10.0.3.1"], node="node1",
                         service_account="waypoint", identity="", locality=LOCAL))
    _apply(cfg, Workload.TYPE, {w.uid: w for w in pods})
    svc = Service(name="web", namespace="demo", hostname=HOST, vips=[VIP], ports=[ServicePort(80, port, "http", "HTTP")],
                  endpoints=[Endpoint(w.uid, w.ips[0]) for w in pods[:3]], waypoint="default/waypoint")
    _apply(cfg, Service.TYPE, {svc.resource_name: svc})
    route = HttpRoute(source="VirtualService/demo/web", destinations=[RouteDestination(HOST, service="demo/web", port=80)],
                      retries=Retry(attempts=2, retry_on=["503"], backoff=0.001, remote_localities=remote_localities))
    wr = WaypointRoutes(hostname=HOST, namespace="demo", service="demo/web", waypoint="default/waypoint",
                        http=[route], policy=TrafficPolicy(outlier_detection=True))
    _apply(cfg, WaypointRoutes.TYPE, {wr.resource_name: wr})
    w = WaypointProxy(s, cfg, None)
    w._connector = lambda pick, source_ip: lambda: connect_tcp(pick.ip, pick.port, 5)  # type: ignore[method-assign]
    return Proxy(w.decide, upstream=w.upstream,
                 downstream=Downstream(source_ip="10.0.2.5", destination_ip=VIP, destination_port=80,
                                       service="demo/web", hostname=HOST))


def _curl(proxy: Proxy) -> tuple[int, str]:
    r = subprocess.run(["curl", "-sS", "-m", "10", "-o", "-", "-w", " %{http_code}", f"http://127.0.0.1:{proxy.port}/"],
                       capture_output=True, text=True, timeout=20)
    body, _, code = r.stdout.rpartition(" ")
    assert code.isdigit(), (r.stdout, r.stderr)
    return int(code), body


def test_the_third_try_goes_to_the_other_locality_after_two_local_failures_only_with_the_field(
        origins: tuple[int, Counter[str]]) -> None:
    port, hits = origins
    p = _waypoint(port, remote_localities=True)
    try:
        for n in range(1, 3):
            assert _curl(p) == (200, "127.0.0.3")
            # the first two tries in the waypoint's zone (both endpoints: previous hosts), the
            # third in the other region
            assert hits == {"127.0.0.1": n, "127.0.0.2": n, "127.0.0.3": n}
    finally:
        p.close()
    hits.clear()
    p = _waypoint(port, remote_localities=False)
    try:        # without it every try stays in the local locality, which is healthy (not ejected)
        code, body = _curl(p)
        assert code == 503 and body in ("127.0.0.1", "127.0.0.2")     # the retries exhausted
        assert hits["127.0.0.3"] == 0 and hits["127.0.0.1"] + hits["127.0.0.2"] == 3
    finally:
        p.close()
