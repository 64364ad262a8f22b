"""A waypoint cluster's TCP keepalive: MeshConfig's `tcpKeepalive` first, each value its
DestinationRule's `tcpKeepalive` sets overriding it (Istio's applyTCPKeepalive,
pilot/pkg/networking/core/cluster.go); the upstream targets (pool keys) carry it, and a change of
the mesh's applies to new connections without rebuilding the clusters (their state stays)."""

from __future__ import annotations

from ambit.configclient import ConfigUpdate
from ambit.dataplane.keepalive import effective, options
from ambit.model import MeshSettings, Subset, TcpKeepalive, TrafficPolicy, WaypointRoutes
from controller.app import mesh_tcp_keepalive
from controller.translate.routes import flatten_policy
from tests.unit.waypoint.test_wiring import FRONTEND, SVC, proxy
from waypoint.app import WaypointProxy
from waypoint.request import Forward, RequestHead

MESH = mesh_tcp_keepalive({"time": "600s", "interval": "20s", "probes": 5})


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


def _proxy(mesh: MeshSettings) -> WaypointProxy:
    """Waypoint default/waypoint before myapp (test_wiring's config): its DestinationRule sets
    `interval` only, subset v2 a whole connectionPool of its own."""
    dr = {"connectionPool": {"tcp": {"tcpKeepalive": {"interval": "7s"}}}}
    routes = WaypointRoutes(SVC.hostname, namespace="default", service="default/myapp", policy=flatten_policy(dr),
                            subsets=[Subset("v2", {"version": "v2"}, flatten_policy({"connectionPool": {"tcp": {}}}))])
    p = proxy(routes=(routes,))
    p.config.apply(ConfigUpdate(MeshSettings.TYPE, "2", {}, frozenset(), {"mesh": mesh}))
    return p


def test_each_upstream_target_carries_its_clusters_keepalive_and_a_mesh_change_keeps_cluster_state() -> None:
    p = _proxy(MeshSettings("cluster.local", tcp_keepalive=MESH))
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert down is not None
    head = RequestHead("GET", "/", "myapp")
    fwd = Forward(service="default/myapp", port=80)
    target = p.upstream(fwd, head, down)
    assert target is not None and target.key.endswith(" keepalive 600/7/5"), target.key
    v2 = p.upstream(Forward(service="default/myapp", port=80, subset="v2"), head, down)
    assert v2 is not None and v2.key.endswith(" keepalive 600/20/5"), "the subset's pool replaces the host's"
    cluster = p.cluster("default/myapp", 80)
    cluster.panics = 3                          # some state the cluster keeps across updates
    p.config.apply(ConfigUpdate(MeshSettings.TYPE, "3", {}, frozenset(), {"mesh": MeshSettings("cluster.local")}))
    again = p.upstream(fwd, head, down)
    assert again is not None and again.key.endswith(" keepalive os/7/os"), again.key
    assert p.cluster("default/myapp", 80) is cluster and cluster.panics == 3
