"""A real `WaypointProxy` in front of `web.demo` whose endpoints are loopback addresses in given
localities, for the locality tests on the wire: the waypoint's own pod (`waypoint-0` on node1) runs
in `own` and each address is a mesh pod (node-N) in its locality. The HBONE hop to the pods is
replaced by a plain connection to the pod's address: which endpoint a request goes to is what
these tests are about, not the tunnel."""

from __future__ import annotations

import random
from collections.abc import Mapping

from ambit.configclient import ConfigUpdate
from ambit.model import Endpoint, Service, ServicePort, Workload
from tests.unit.waypoint.harness import Proxy
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http.plug import connect_tcp
from waypoint.request import Downstream
from waypoint.settings import load

HOST = "web.demo.svc.cluster.local"
VIP = "10.96.0.20"


def apply(cfg: WaypointConfig, t: str, items: Mapping[str, object]) -> None:
    cfg.apply(ConfigUpdate(t, "1", {}, frozenset(), dict(items)))


def zoned_config(where: Mapping[str, str], own: str, port: int, ready: frozenset[str] | None = None,
                 distribution: str = "") -> WaypointConfig:
    """The config: the pods at `where` (address -> locality), the waypoint's pod in `own`, and the
    Service `web.demo` (port 80 -> `port`) with an endpoint per pod (ready unless `ready` leaves
    it out) and `trafficDistribution` `distribution`."""
    cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
    pods = [Workload(uid=f"uid-{i}", name=f"web-{i}", namespace="demo", ips=[ip], node=f"node-{i}",
                     service_account="web", identity="spiffe://cluster.local/ns/demo/sa/web", locality=loc)
            for i, (ip, loc) in enumerate(where.items())]
    me = Workload(uid="uid-wp", name="waypoint-0", namespace="default", ips=["10.0.3.1"], node="node1",
                  service_account="waypoint", identity="", locality=own)
    apply(cfg, Workload.TYPE, {w.uid: w for w in [*pods, me]})
    svc = Service(name="web", namespace="demo", hostname=HOST, vips=[VIP], ports=[ServicePort(80, port, "http", "HTTP")],
                  endpoints=[Endpoint(w.uid, w.ips[0], ready=ready is None or w.ips[0] in ready) for w in pods],
                  waypoint="default/waypoint", traffic_distribution=distribution)
    apply(cfg, Service.TYPE, {svc.resource_name: svc})
    return cfg


def loopback_waypoint(cfg: WaypointConfig, rng: random.Random | None = None) -> Proxy:
    """The waypoint of `cfg` behind the engine on loopback: every request is a tunnel from
    10.0.2.5 to web.demo's VIP port 80."""
    s = load(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "node1"])
    w = WaypointProxy(s, cfg, None, rng=rng)
    w._connector = lambda pick, source_ip, hops=0, keepalive=None: lambda: connect_tcp(  # type: ignore[method-assign]
        pick.ip, pick.port, 5, keepalive=keepalive)
    return Proxy(w.decide, upstream=w.upstream,
                 downstream=Downstream(source_ip="10.0.2.5", destination_ip=VIP, destination_port=80,
                                       service="demo/web", hostname=HOST))
