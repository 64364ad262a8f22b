"""VirtualService `tcp` routes at a waypoint: which route (the pure `tcp_route`), and the real
waypoint sending a non-HTTP tunnel to the routed backend over a real socket, its record and TCP
metrics naming that backend. Before, the routes were accepted (warned) and every non-HTTP
connection went to the Service it dialled."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest

from ambit.configclient import ConfigUpdate
from ambit.model import Endpoint, RouteDestination, Service, ServicePort, TcpRoute, WaypointRoutes
from controller.translate import translate
from tests.unit.waypoint.harness import Proxy, by_header, roundtrip
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream
from waypoint.routing.tcp import tcp_route, tls_route
from waypoint.settings import load

from .test_opaque import TcpEcho
from .test_wiring import FRONTEND

pytestmark = pytest.mark.timeout(60)


def down(port: int = 5432, ip: str = "10.96.0.20", ns: str = "default", **labels: str) -> Downstream:
    return Downstream(source_namespace=ns, source_labels=tuple(labels.items()), destination_ip=ip,
                      destination_port=port, service="default/db")


def r(name: str, **kw: object) -> TcpRoute:
    return TcpRoute(source=name, **kw)  # type: ignore[arg-type]


def test_the_first_route_whose_match_holds_wins() -> None:
    routes = [r("port", port=3306), r("subnet", destination_subnets=["10.96.1.0/24"]),
              r("ns", source_namespace="batch"), r("labels", source_labels={"app": "reports", "tier": "x"}),
              r("rest")]
    assert tcp_route(routes, down()).source == "rest"
    assert tcp_route(routes, down(port=3306)).source == "port"
    assert tcp_route(routes, down(ip="10.96.1.7")).source == "subnet"
    assert tcp_route(routes, down(ns="batch")).source == "ns"
    assert tcp_route(routes, down(app="reports", tier="x", v="1")).source == "labels"
    assert tcp_route(routes, down(app="reports")).source == "rest"        # every label must match
    assert tcp_route(routes[:4], down()) is None                        # nothing matches: no route


def test_the_controller_carries_every_l4_match_attribute() -> None:
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default",
                                                                   "labels": {"ambit.io/use-waypoint": "waypoint"}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "db"}, "ports": [{"name": "tcp", "port": 5432}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "db", "namespace": "default"},
             "spec": {"hosts": ["db"], "tcp": [{"match": [{"port": 5432, "sourceNamespace": "batch",
                                                            "sourceLabels": {"app": "reports"},
                                                            "destinationSubnets": ["10.96.0.0/16"]}],
                                                "route": [{"destination": {"host": "db", "port": {"number": 5432}}}]}]}}]
    [wr] = [w for w in translate(objs).waypoint_routes if w.hostname == "db.default.svc.cluster.local"]
    [t] = wr.tcp
    assert (t.port, t.source_namespace, t.source_labels, t.destination_subnets) == (
        5432, "batch", {"app": "reports"}, ["10.96.0.0/16"])


def entry(name: str, vip: str, port: int, target: int) -> Service:
    return Service(name=name, namespace="default", hostname=name, vips=[vip],
                   ports=[ServicePort(port, target, "tcp", "TCP")], endpoints=[Endpoint("", "127.0.0.1")],
                   kind="ServiceEntry", location="MESH_EXTERNAL", resolution="STATIC", waypoint="default/waypoint")


def db_waypoint(primary: TcpEcho, replica: TcpEcho, **routes: list[TcpRoute]) -> tuple[WaypointProxy, Downstream]:
    """A real waypoint fronting ServiceEntry db.example (served by `primary`) with `routes`, and
    ro.example (served by `replica`); and a frontend's tunnel to db.example."""
    db, ro = entry("db.example", "240.240.0.9", 5432, primary.port), entry("ro.example", "240.240.0.10", 5432, replica.port)
    wr = WaypointRoutes(hostname="db.example", namespace="default", service="default/db.example",
                        waypoint="default/waypoint", **routes)  # type: ignore[arg-type]
    cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
    cfg.apply(ConfigUpdate(Service.TYPE, "1", {}, frozenset(), {s.resource_name: s for s in (db, ro)}))
    cfg.apply(ConfigUpdate(WaypointRoutes.TYPE, "1", {}, frozenset(), {wr.resource_name: wr}))
    waypoint = WaypointProxy(load(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "n"]), cfg,
                             None)
    tunnel, why = waypoint.downstream(FRONTEND, "10.0.2.5", "240.240.0.9:5432")
    assert tunnel is not None, why
    return waypoint, tunnel


def test_a_non_http_tunnel_goes_to_the_routed_backend() -> None:
    primary, replica = TcpEcho(b"220 primary\r\n"), TcpEcho(b"220 replica\r\n")
    waypoint, tunnel = db_waypoint(primary, replica, tcp=[r(
        "VirtualService/default/reports", source_labels={"app": "reports"},
        destinations=[RouteDestination("ro.example", "default/ro.example", weight=100)])])
    p = Proxy(by_header({"default": 1}), opaque_port=1, settings=HttpSettings(detect_timeout=0.3))
    try:
        assert p.engine is not None
        payload = b"\x00\x01select 1"
        # a client the route does not match: the Service it dialled
        p.engine.opaque = lambda _: waypoint.opaque(tunnel)
        assert roundtrip(p.port, payload) == b"220 primary\r\n" + payload
        # a client with the route's labels: the replica, and its record names the replica
        reports = dataclasses.replace(tunnel, source_labels=(("app", "reports"),))
        p.engine.opaque = lambda _: waypoint.opaque(reports)
        assert roundtrip(p.port, payload) == b"220 replica\r\n" + payload
        recs = p.find(lambda rec: rec.protocol == "TCP" and rec.service == "default/ro.example")
        assert recs and recs[0].route == "VirtualService/default/reports"
        labels = waypoint.telemetry.tcp_labels(recs[0])
        assert (labels.destination_service_name, labels.destination_service) == ("ro.example", "ro.example")
    finally:
        p.close()
        primary.sock.close()
        replica.sock.close()


# -- tls routes: by the server name of the tunnel's ClientHello ------------------------------------

def test_tls_routes_match_the_server_name_then_the_l4_match() -> None:
    routes = [r("api", sni_hosts=["api.example.com"], port=443), r("wild", sni_hosts=["*.example.com"]),
              r("any", sni_hosts=["*"], source_namespace="batch")]
    sni = lambda name, **kw: dataclasses.replace(down(port=443, **kw), sni=name)  # noqa: E731
    assert tls_route(routes, sni("api.example.com")).source == "api"
    assert tls_route(routes, sni("db.example.com")).source == "wild"
    assert tls_route(routes, sni("a.b.example.com")).source == "wild"      # any depth, as Envoy's server_names
    assert tls_route(routes, sni("example.com")) is None                   # the bare domain is not under *.
    assert tls_route(routes, sni("other.test", ns="batch")).source == "any"
    assert tls_route(routes, sni("other.test")) is None
    assert tls_route(routes, down(port=443)) is None                       # no server name: no tls route


def test_the_controller_carries_tls_routes_bound_to_the_mesh_only() -> None:
    objs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.30", "selector": {"app": "edge"}, "ports": [{"name": "tls", "port": 443}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "edge", "namespace": "default"},
             "spec": {"hosts": ["edge", "*.example.com"], "tls": [      # SNIs within the hosts (istiod)
                 {"match": [{"sniHosts": ["a.example.com"], "port": 443}, {"sniHosts": ["b.example.com"],
                                                                          "gateways": ["ingress"]}],
                  "route": [{"destination": {"host": "edge", "port": {"number": 443}}}]}]}}]
    [wr] = [w for w in translate(objs).waypoint_routes if w.hostname == "edge.default.svc.cluster.local"]
    assert [(t.sni_hosts, t.port) for t in wr.tls] == [(["a.example.com"], 443)] and wr.tcp == []


def client_hello(name: str) -> bytes:
    """The ClientHello a real TLS client (Python's ssl, OpenSSL) sends for `name`."""
    import ssl
    ctx = ssl.create_default_context()
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_a_tls_tunnel_goes_by_its_server_name_even_when_its_hello_arrives_in_pieces() -> None:
    primary, other = TcpEcho(b"220 primary\r\n"), TcpEcho(b"220 other\r\n")
    waypoint, tunnel = db_waypoint(primary, other, tls=[r(
        "VirtualService/default/by-sni", sni_hosts=["*.reports.example"],
        destinations=[RouteDestination("ro.example", "default/ro.example", weight=100)])])
    seen: list[Downstream] = []

    def opaque(d: Downstream) -> object:
        seen.append(d)
        return waypoint.opaque(dataclasses.replace(tunnel, sni=d.sni))
    p = Proxy(by_header({"default": 1}), opaque_port=1, settings=HttpSettings(detect_timeout=1.0))
    try:
        assert p.engine is not None
        p.engine.opaque = opaque
        for name, banner in (("q1.reports.example", b"220 other\r\n"), ("db.example", b"220 primary\r\n")):
            hello = client_hello(name)
            assert len(hello) > 200
            with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
                for i in range(0, len(hello), 100):    # the hello in 100-byte writes, one record cut up
                    s.sendall(hello[i:i + 100])
                    time.sleep(0.01)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
            assert got == banner + hello, name      # the backend gets every byte, the hello untouched
        assert [d.sni for d in seen] == ["q1.reports.example", "db.example"]
    finally:
        p.close()
        primary.sock.close()
        other.sock.close()
