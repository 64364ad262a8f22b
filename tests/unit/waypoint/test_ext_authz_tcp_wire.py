"""External authorization of a non-HTTP tunnel on the wire: the waypoint's own opaque path
(WaypointProxy.opaque, config built by hand) in the engine on loopback, the lab's ext_authz app as
the real gRPC authorizer (grpcio, ambit/api/ext_authz.proto; it allows a check without an HTTP
request by the source principal's suffix, as Istio's sample does), a real TCP server as the backend
and a raw socket as the client. The authorizer and the backend are ServiceEntry endpoints on
127.0.0.1, so the check goes through the same upstream selection and pools as an HTTP request's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest

from ambit.api import ext_authz_pb2_grpc as pb_grpc
from ambit.configclient import ConfigUpdate
from ambit.model import Authorization, ExtAuthzProvider, Match, MeshSettings, Rule, Service
from ambit.telemetryconfig import Provider, TracingConfig
from ambit.telemetryformat import ISTIO_TEXT_FORMAT, render_text
from ambitctl.lab.apps import ext_authz as app
from ambitctl.lab.otlp_receiver import Receiver
from tests.unit.waypoint.harness import Proxy, free_port, roundtrip
from tests.unit.waypoint.test_ext_authz_tracing import IDENT, TRACE_KEYS, MetadataAuthorizer, install
from tests.unit.waypoint.test_ext_authz_wire import entry
from tests.unit.waypoint.test_opaque import TcpEcho
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http.record import RequestRecord
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream
from waypoint.settings import load
from waypoint.telemetry.accesslog import request_values
from waypoint.telemetry.tracing_sdk import Tracing

pytestmark = pytest.mark.timeout(90)

FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
OTHER = "spiffe://cluster.local/ns/demo/sa/other"
DB_VIP = "240.240.0.30"
PAYLOAD = b"\x00\x01 not http, a line\n"


def custom(provider: str, *matches: Match) -> Authorization:
    return Authorization(name="ext", namespace="demo", action="CUSTOM", scope="waypoint", provider=provider,
                         target_refs=[{"kind": "Service", "group": "", "name": "db"}],
                         http_rules=[Rule(clauses=[list(matches)])] if matches else [Rule(clauses=[])])


def grpc_provider(service: str = "ext-authz-grpc", **kw: object) -> ExtAuthzProvider:
    return ExtAuthzProvider(name="authz-grpc", kind="grpc", service=f"{service}.demo.svc.cluster.local", port=9000,
                            **kw)  # type: ignore[arg-type]


@dataclass
class Mesh:
    proxy: Proxy
    waypoint: WaypointProxy
    grpc: MetadataAuthorizer
    source: list[str]           # the SPIFFE id the next tunnel comes from

    def configure(self, providers: list[ExtAuthzProvider], *policies: Authorization) -> None:
        cfg = self.waypoint.config
        mesh = MeshSettings(trust_domain="cluster.local", ext_authz=providers)
        cfg.apply(ConfigUpdate(MeshSettings.TYPE, "2", {}, frozenset(), {mesh.resource_name: mesh}))
        cfg.apply(ConfigUpdate(Authorization.TYPE, "2", {}, frozenset(), {p.resource_name: p for p in policies}))

    def send(self, source: str) -> tuple[bytes, RequestRecord]:
        """One tunnel from `source`: what came back, and its access-log record."""
        self.source[0] = source
        n = len(self.proxy.records)
        got = roundtrip(self.proxy.port, PAYLOAD)
        recs = self.proxy.wait_records(n + 1)
        return got, recs[n]


@pytest.fixture()
def mesh() -> Iterator[Mesh]:
    gservicer = MetadataAuthorizer()    # the lab's gRPC authorizer, also keeping each call's metadata
    gservicer.allow_principal_suffix = "/sa/frontend"
    gserver = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_AuthorizationServicer_to_server(gservicer, gserver)
    gport = gserver.add_insecure_port("127.0.0.1:0")
    gserver.start()
    echo = TcpEcho(banner=b"")
    services = [entry("db", DB_VIP, 5432, echo.port, "tcp", "TCP"),
                entry("ext-authz-grpc", "240.240.0.21", 9000, gport, "grpc", "GRPC"),
                entry("ext-authz-dead", "240.240.0.22", 9000, free_port(), "grpc", "GRPC")]
    cfg = WaypointConfig(Waypoint("demo", "waypoint"), "cluster.local")
    cfg.apply(ConfigUpdate(Service.TYPE, "1", {}, frozenset(), {s.resource_name: s for s in services}))
    wp = WaypointProxy(load(["--waypoint", "demo/waypoint", "--pod-name", "waypoint-0", "--node", "n1"]), cfg, None)
    down = Downstream(FRONTEND, "127.0.0.1", "demo", (), DB_VIP, 5432, "demo/db", "db.demo.svc.cluster.local")
    source = [FRONTEND]
    proxy = Proxy(wp.decide, upstream=wp.upstream, downstream=down, opaque_port=1,
                  settings=HttpSettings(detect_timeout=0.3))
    assert proxy.engine is not None
    wp.engine = proxy.engine        # the waypoint's checks go through this engine's upstreams and pools
    proxy.engine.opaque = lambda ds: wp.opaque(dataclasses.replace(ds, source_identity=source[0]))
    try:
        yield Mesh(proxy, wp, gservicer, source)
    finally:
        proxy.close()
        gserver.stop(None)
        echo.sock.close()


def test_a_grpc_provider_checks_the_tunnel_by_its_peers_and_lets_the_allowed_principal_through(mesh: Mesh) -> None:
    mesh.configure([grpc_provider()], custom("authz-grpc", Match(paths=["/api/*"])))    # paths: not for TCP
    got, rec = mesh.send(FRONTEND)
    assert got == PAYLOAD and rec.response_flags == ""
    [check] = mesh.grpc.checks
    assert check["tcp"] and check["method"] == "" and check["headers"] == {}
    assert check["source"] == {"principal": FRONTEND, "address": "127.0.0.1"}
    assert check["destination"] == {"principal": mesh.waypoint.identity, "address": DB_VIP, "port": 5432}
    got, rec = mesh.send(OTHER)
    assert got == b"" and rec.response_flags == "UAEX" and rec.upstream == ""
    assert "ext_authz authz-grpc (policy demo/ext) denied" in rec.detail
    counts = mesh.waypoint.ext_authz.counts
    assert counts[("authz-grpc", "allowed")] == 1 and counts[("authz-grpc", "denied")] == 1


def test_a_tunnels_check_is_not_traced_even_with_a_tracer(mesh: Mesh) -> None:
    """Envoy's network ext_authz filter calls its client with the null span (ext_authz.cc
    `callCheck`): no span, and no trace context for the authorizer, even with a tracer that samples
    every request; the check is made and allows as usual."""
    receiver = Receiver()
    cfg = TracingConfig((Provider("otel", "opentelemetry", "127.0.0.1", receiver.grpc_port, "", "grpc"),), 100.0)
    tracing = Tracing(lambda _service: cfg, IDENT, delay_ms=100)
    try:
        install(cast(Any, mesh), tracing)
        mesh.configure([grpc_provider()], custom("authz-grpc"))
        got, rec = mesh.send(FRONTEND)
        assert got == PAYLOAD and rec.response_flags == "" and len(mesh.grpc.checks) == 1
        [metadata] = mesh.grpc.metadata
        assert not TRACE_KEYS & set(metadata)
        tracing.shutdown()      # flushes: whatever was made is exported by now
        assert list(receiver.spans) == []
    finally:
        tracing.shutdown()
        receiver.close()


def test_an_unreachable_authorizer_refuses_the_tunnel_unless_fail_open(mesh: Mesh) -> None:
    mesh.configure([grpc_provider("ext-authz-dead")], custom("authz-grpc"))
    got, rec = mesh.send(FRONTEND)
    assert got == b"" and rec.response_flags == "UAEX" and "check failed" in rec.detail
    mesh.configure([grpc_provider("ext-authz-dead", fail_open=True)], custom("authz-grpc"))
    got, rec = mesh.send(FRONTEND)
    assert got == PAYLOAD and rec.response_flags == ""
    assert mesh.waypoint.ext_authz.counts[("authz-grpc", "error")] == 2


def test_the_tunnel_is_held_for_the_providers_timeout_not_the_connect_timeout(mesh: Mesh) -> None:
    """A check may take what its provider allows, even past the waypoint's connect timeout (the
    relay's deadline moves by the check's bound); past the provider's timeout it is an error."""
    assert mesh.proxy.engine is not None
    mesh.proxy.engine.settings = dataclasses.replace(mesh.proxy.engine.settings, connect_timeout=0.3)
    mesh.grpc.delay = 0.8
    mesh.configure([grpc_provider(timeout=5.0)], custom("authz-grpc"))
    got, rec = mesh.send(FRONTEND)
    assert got == PAYLOAD and rec.response_flags == "", rec.detail
    mesh.configure([grpc_provider(timeout=0.2)], custom("authz-grpc"))
    got, rec = mesh.send(FRONTEND)
    # the waypoint's timer and the authorizer's own deadline (grpc-timeout: DEADLINE_EXCEEDED) race
    assert got == b"" and rec.response_flags == "UAEX"
    assert "timed out" in rec.detail or "grpc-status 4" in rec.detail, rec.detail


def test_deny_and_allow_policies_apply_after_an_allowing_check(mesh: Mesh) -> None:
    """The log line of a tunnel refused by L4 policy has the connection termination details Envoy's
    network RBAC filter sets (the matched DENY rule as Istio names it; `none` when no ALLOW policy
    matched), one refused by the authorizer none (Envoy's network ext_authz filter sets none)."""
    deny = Authorization(name="no-frontend", namespace="demo", action="DENY", scope="waypoint",
                         target_refs=[{"kind": "Service", "group": "", "name": "db"}],
                         http_rules=[Rule(clauses=[[Match(principals=["cluster.local/ns/demo/sa/nobody"])]]),
                                     Rule(clauses=[[Match(principals=["cluster.local/ns/demo/sa/frontend"])]])])
    mesh.configure([grpc_provider()], custom("authz-grpc"), deny)
    got, rec = mesh.send(FRONTEND)
    assert got == b"" and rec.response_flags == "RBAC" and len(mesh.grpc.checks) == 1   # checked, then denied
    assert rec.termination == "rbac_access_denied_matched_policy[ns[demo]-policy[no-frontend]-rule[1]]"
    assert json.loads(rec.line())["connection_termination_details"] == rec.termination
    text = render_text(ISTIO_TEXT_FORMAT, request_values(rec, None, None))     # Istio's default text format
    assert f" RBAC {rec.detail} {rec.termination} " in text
    got, rec = mesh.send(OTHER)
    assert got == b"" and rec.response_flags == "UAEX"      # the check comes first
    assert rec.termination == "" and "connection_termination_details" not in json.loads(rec.line())
    allow = dataclasses.replace(deny, name="only-nobody", action="ALLOW", http_rules=deny.http_rules[:1])
    mesh.configure([], allow)
    got, rec = mesh.send(FRONTEND)
    assert got == b"" and rec.response_flags == "RBAC"
    assert rec.termination == "rbac_access_denied_matched_policy[none]"


def test_an_http_provider_never_checks_a_tunnel_and_refuses_it(mesh: Mesh) -> None:
    """Ambit's difference from Istio (which ignores the policy on TCP and lets the tunnel through):
    an envoyExtAuthzHttp provider cannot check a connection, so what its policy matches is refused."""
    http = ExtAuthzProvider(name="authz-http", kind="http", service="ext-authz-grpc.demo.svc.cluster.local", port=9000)
    mesh.configure([http], custom("authz-http"))
    got, rec = mesh.send(FRONTEND)
    assert got == b"" and rec.response_flags == "RBAC" and "envoyExtAuthzHttp" in rec.detail
    assert rec.termination == "rbac_access_denied_matched_policy[istio-ext-authz-authz-http-ns[demo]-policy[ext]-rule[0]]"
    assert mesh.grpc.checks == []
    mesh.configure([http], custom("authz-undefined"))       # no such provider: Istio's deny rule for it
    got, rec = mesh.send(FRONTEND)
    assert got == b"" and rec.response_flags == "RBAC" and rec.termination == (
        "rbac_access_denied_matched_policy[istio-ext-authz-authz-undefined-ns[demo]-policy[ext]-rule[0]"
        "-deny-due-to-bad-CUSTOM-action]")
    mesh.configure([http], custom("authz-http", Match(ports=[6379])))      # a rule for another port
    assert mesh.send(FRONTEND)[0] == PAYLOAD


def test_an_ingress_gateways_tcp_listener_checks_its_connections_too() -> None:
    """The same check on an ingress gateway's TCP listener (its opaque path): a CUSTOM policy bound
    to the Gateway holds each connection for the gRPC authorizer, which refuses a client without a
    principal and is told the address and port the client connected to; with the authorizer gone
    and failOpen the connection reaches the routed backend."""
    import asyncio

    from ambit.model import IngressGateway, IngressListener, RouteDestination, TcpRoute, WaypointRoutes
    from waypoint.http.opaque import OpaqueRelay
    from waypoint.ingress_listen import IngressListeners

    gserver, gport, gservicer = app.serve_grpc(0, "127.0.0.1", allow_principal_suffix="/sa/frontend")
    echo = TcpEcho(banner=b"")
    port = free_port()
    services = [entry("db", DB_VIP, 5432, echo.port, "tcp", "TCP", waypoint=""),
                entry("ext-authz-grpc", "240.240.0.21", 9000, gport, "grpc", "GRPC", waypoint=""),
                entry("ext-authz-dead", "240.240.0.22", 9000, free_port(), "grpc", "GRPC", waypoint="")]
    route = TcpRoute(source="TCPRoute/demo/db", destinations=[
        RouteDestination("db.demo.svc.cluster.local", "demo/db", port=5432)])
    gw = IngressGateway("igw", "demo", listeners=[IngressListener("tcp", port, "TCP", "",
                                                                  hosts=[WaypointRoutes("*", tcp=[route])])])
    cfg = WaypointConfig(Waypoint("demo", "igw"), "cluster.local")
    cfg.apply(ConfigUpdate(Service.TYPE, "1", {}, frozenset(), {s.resource_name: s for s in services}))
    cfg.apply(ConfigUpdate(IngressGateway.TYPE, "1", {}, frozenset(), {gw.resource_name: gw}))
    wp = WaypointProxy(load(["--waypoint", "demo/igw", "--pod-name", "igw-0", "--node", "n1",
                             "--gateway-class", "ambit"]), cfg, None)
    proxy = Proxy(wp.decide, upstream=wp.upstream, opaque_port=1)
    engine = proxy.engine
    assert engine is not None
    wp.engine, engine.opaque = engine, wp.opaque
    wp.ingress = IngressListeners("127.0.0.1", engine.serve,
                                  lambda t, down, early: OpaqueRelay(engine, down, t, early, False))
    asyncio.run_coroutine_threadsafe(wp.ingress.update(cfg.view.ingress), proxy.loop).result(10)
    edge = Authorization(name="edge", namespace="demo", action="CUSTOM", scope="waypoint", provider="authz-grpc",
                         target_refs=[{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "igw"}],
                         http_rules=[Rule(clauses=[])])
    mesh = Mesh(proxy, wp, gservicer, [""])
    try:
        mesh.configure([grpc_provider()], edge)
        assert roundtrip(port, PAYLOAD) == b""
        [check] = gservicer.checks
        assert check["tcp"] and check["source"]["principal"] == "" and check["destination"]["port"] == port
        # the destination is the address the client connected to (Envoy's network ext_authz: the
        # connection's local address), not left empty
        assert check["destination"]["address"] == "127.0.0.1"
        assert check["destination"]["principal"] == wp.identity
        mesh.configure([grpc_provider("ext-authz-dead", fail_open=True)], edge)
        assert roundtrip(port, PAYLOAD) == PAYLOAD
        assert wp.ext_authz.counts[("authz-grpc", "denied")] == 1 and wp.ext_authz.counts[("authz-grpc", "error")] == 1
    finally:
        asyncio.run_coroutine_threadsafe(wp.ingress.close(), proxy.loop).result(10)
        proxy.close()
        gserver.stop(None)
        echo.sock.close()
