"""A waypoint cluster's TCP keepalive: MeshConfig's `tcpKeepalive` first, each value its
DestinationRule's `tcpKeepalive` sets overriding it (Istio's applyTCPKeepalive,
pilot/pkg/networking/core/cluster.go), and a change of the mesh's taken by kept clusters without
losing their state."""

from __future__ import annotations

import random

from ambit.dataplane.keepalive import effective, options
from ambit.model import Endpoint, Service, ServicePort, TcpKeepalive, TrafficPolicy, WaypointRoutes
from controller.app import mesh_tcp_keepalive
from controller.translate.routes import flatten_policy
from waypoint.traffic.cluster import Clusters

MESH = mesh_tcp_keepalive({"time": "600s", "interval": "20s", "probes": 5})
SVC = Service(name="web", namespace="demo", hostname="web.demo.svc.cluster.local",
              ports=[ServicePort(80, 8080, "http", "HTTP")], endpoints=[Endpoint("u1", "10.0.0.1")])


def rule(**ka: object) -> TrafficPolicy:
    return flatten_policy({"connectionPool": {"tcp": {"tcpKeepalive": ka}}})


def test_the_rules_values_override_the_meshs_one_by_one() -> None:
    assert MESH == TcpKeepalive(time=600, interval=20, probes=5)
    assert effective(MESH, rule(time="9s").tcp_keepalive) == TcpKeepalive(time=9, interval=20, probes=5)
    assert effective(MESH, rule().tcp_keepalive) == MESH, "an empty rule keeps the mesh's values"
    assert effective(None, rule(probes=2).tcp_keepalive) == TcpKeepalive(probes=2)
    assert effective(MESH, None) == MESH
    assert effective(None, None) is None


def test_the_socket_options_are_so_keepalive_and_only_the_values_set() -> None:
    import socket
    assert options(TcpKeepalive()) == [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    assert options(TcpKeepalive(time=30, probes=3)) == [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1), (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)]


def test_a_cluster_takes_the_meshs_keepalive_under_its_rules_and_a_mesh_change_keeps_its_state() -> None:
    clusters = Clusters(lambda: 0.0, random.Random(1))
    routes = {"demo/web": WaypointRoutes(SVC.hostname, policy=rule(interval="7s"))}
    services = {"demo/web": SVC, "demo/api": Service(name="api", namespace="demo", hostname="api.demo",
                                                     ports=[ServicePort(80, 80)])}
    clusters.update(routes, services, None, MESH)
    web, api = clusters.get("demo/web", 80), clusters.get("demo/api", 80)
    assert web.keepalive == TcpKeepalive(time=600, interval=7, probes=5)
    assert api.keepalive == MESH, "a Service without a DestinationRule gets the mesh's"
    web.panics = 3                                  # some state the cluster keeps
    clusters.update(routes, services, None, None)   # the mesh's setting removed
    assert clusters.get("demo/web", 80) is web and web.panics == 3
    assert web.keepalive == TcpKeepalive(interval=7) and api.keepalive is None
    assert web.dump()["tcp_keepalive"] == {"time": 0, "interval": 7, "probes": 0}
