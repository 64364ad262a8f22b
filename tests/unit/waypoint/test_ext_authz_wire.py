"""External authorization (AuthorizationPolicy CUSTOM) on the wire: the waypoint's own `decide` and
`upstream` (WaypointProxy, config built by hand) in the engine on loopback, a real HTTP authorizer
and a real gRPC authorizer (the lab's ext_authz app: a ThreadingHTTPServer and a grpcio server on
ambit/api/ext_authz.proto), a real backend, and curl as the client over HTTP/1.1 and HTTP/2. The
authorizers and the backend are ServiceEntry endpoints on 127.0.0.1, which the waypoint dials
itself, so the check goes through the same upstream selection and pools as any request.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest

from ambit.api import ext_authz_pb2_grpc as pb_grpc
from ambit.configclient import ConfigUpdate
from ambit.model import (
    Authorization,
    Endpoint,
    ExtAuthzBody,
    ExtAuthzProvider,
    HeaderMatch,
    HttpMatch,
    HttpRoute,
    IngressGateway,
    IngressListener,
    Match,
    MeshSettings,
    RouteDestination,
    Rule,
    Service,
    ServicePort,
    StringMatch,
    WaypointRoutes,
)
from ambitctl.lab.apps import ext_authz as app
from tests.unit.waypoint.harness import Origin, Proxy, free_port
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream
from waypoint.settings import load

pytestmark = pytest.mark.timeout(90)

FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND_VIP = "240.240.0.10"
PROTOCOLS = ["--http1.1", "--http2-prior-knowledge"]


def entry(name: str, vip: str, port: int, target: int, pname: str = "http", protocol: str = "HTTP",
          waypoint: str = "demo/waypoint") -> Service:
    return Service(name=name, namespace="demo", hostname=f"{name}.demo.svc.cluster.local", vips=[vip],
                   ports=[ServicePort(port, target, pname, protocol)], endpoints=[Endpoint("", "127.0.0.1")],
                   kind="ServiceEntry", location="MESH_EXTERNAL", resolution="STATIC", waypoint=waypoint)


def custom(provider: str, paths: list[str] | None = None, name: str = "ext") -> Authorization:
    rules = [Rule(clauses=[[Match(paths=paths)]])] if paths else [Rule(clauses=[])]
    return Authorization(name=name, namespace="demo", action="CUSTOM", scope="waypoint", provider=provider,
                         target_refs=[{"kind": "Service", "group": "", "name": "backend"}], http_rules=rules)


@dataclass
class Mesh:
    proxy: Proxy
    waypoint: WaypointProxy
    http: app.HttpAuthorizer
    grpc: app.GrpcAuthorizer
    origin: Origin
    dead_port: int

    def configure(self, providers: list[ExtAuthzProvider], *policies: Authorization) -> None:
        cfg = self.waypoint.config
        mesh = MeshSettings(trust_domain="cluster.local", ext_authz=providers)
        cfg.apply(ConfigUpdate(MeshSettings.TYPE, "2", {}, frozenset(), {mesh.resource_name: mesh}))
        cfg.apply(ConfigUpdate(Authorization.TYPE, "2", {}, frozenset(), {p.resource_name: p for p in policies}))

    def curl(self, version: str, path: str, *headers: str, data: str | None = None) -> tuple[int, dict[str, str], bytes]:
        cmd = ["curl", "-sS", version, "-m", "10", "-D", "-", f"http://127.0.0.1:{self.proxy.port}{path}"]
        for h in headers:
            cmd += ["-H", h]
        if data is not None:
            cmd += ["--data-binary", data]
        r = subprocess.run(cmd, capture_output=True, timeout=20)
        assert r.returncode == 0, r.stderr
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return int(lines[0].split()[1]), hdrs, body


def http_provider(port: int, **kw: object) -> ExtAuthzProvider:
    kw.setdefault("include_request_headers", ["x-ext-authz*"])   # the HTTP check sends no other header
    return ExtAuthzProvider(name="authz-http", kind="http", service="ext-authz.demo.svc.cluster.local", port=port,
                            **kw)  # type: ignore[arg-type]


def grpc_provider(**kw: object) -> ExtAuthzProvider:
    return ExtAuthzProvider(name="authz-grpc", kind="grpc", service="demo/ext-authz-grpc.demo.svc.cluster.local",
                            port=9000, **kw)  # type: ignore[arg-type]


@contextmanager
def serving(servicer: app.GrpcAuthorizer | None = None) -> Iterator[Mesh]:
    """The waypoint, both authorizers (`servicer`: the gRPC one, e.g. a subclass that keeps more),
    a backend and a dead port, as ServiceEntries on 127.0.0.1; all closed at the end."""
    http = app.serve_http(0, "127.0.0.1")
    gservicer = servicer or app.GrpcAuthorizer()
    gserver = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_AuthorizationServicer_to_server(gservicer, gserver)
    gport = gserver.add_insecure_port("127.0.0.1:0")
    gserver.start()
    origin = Origin()
    dead = free_port()
    # the gRPC authorizer's port is named "http": the waypoint must speak HTTP/2 to it anyway
    services = [entry("backend", BACKEND_VIP, 80, origin.port),
                entry("ext-authz", "240.240.0.20", 8000, http.server_address[1]),
                entry("ext-authz-grpc", "240.240.0.21", 9000, gport),
                entry("ext-authz-dead", "240.240.0.22", 8000, dead)]
    cfg = WaypointConfig(Waypoint("demo", "waypoint"), "cluster.local")
    cfg.apply(ConfigUpdate(Service.TYPE, "1", {}, frozenset(), {s.resource_name: s for s in services}))
    wp = WaypointProxy(load(["--waypoint", "demo/waypoint", "--pod-name", "waypoint-0", "--node", "n1"]), cfg, None)
    down = Downstream(FRONTEND, "127.0.0.1", "demo", (), BACKEND_VIP, 80, "demo/backend",
                      "backend.demo.svc.cluster.local")
    proxy = Proxy(wp.decide, upstream=wp.upstream, downstream=down, settings=HttpSettings())
    try:
        yield Mesh(proxy, wp, http, gservicer, origin, dead)
    finally:
        proxy.close()
        http.shutdown()
        http.server_close()
        gserver.stop(None)
        origin.close()


@pytest.fixture()
def mesh() -> Iterator[Mesh]:
    with serving() as m:
        yield m


def upstream_headers(body: bytes) -> dict[str, str]:
    return {k: v for k, v in json.loads(body)["headers"]}


@pytest.mark.parametrize("version", PROTOCOLS)
def test_http_provider_allows_with_its_upstream_header_and_denies_with_its_status_body_and_headers(
        mesh: Mesh, version: str) -> None:
    mesh.configure([http_provider(8000, headers_to_upstream_on_allow=["x-ext-authz-check-result"],
                                  include_request_headers=["X-Ext-Authz"])], custom("authz-http"))
    status, _, body = mesh.curl(version, "/api/items?q=1", "x-ext-authz: allow", "x-other: 1")
    assert status == 200, body
    got = upstream_headers(body)
    assert got["x-ext-authz-check-result"] == "allowed"
    assert "x-ext-authz-check-received" not in got          # not in headersToUpstreamOnAllow
    status, hdrs, body = mesh.curl(version, "/api/items", "x-ext-authz: nope")
    assert (status, body) == (403, b"denied by ext_authz")
    assert hdrs["x-ext-authz-check-result"] == "denied"      # headersToDownstreamOnDeny empty: all of them
    # what the authorizer got: the original method and path, Host, the included header, no other
    check = mesh.http.checks[0]
    assert (check["method"], check["path"]) == ("GET", "/api/items?q=1")
    assert check["headers"]["x-ext-authz"] == "allow" and "x-other" not in check["headers"]
    assert check["headers"]["content-length"] == "0"
    assert mesh.origin.requests == 1
    [denied] = mesh.proxy.find(lambda r: r.status == 403)
    assert denied.response_flags == "UAEX"
    metrics = mesh.waypoint.ext_authz.counts
    assert metrics[("authz-http", "allowed")] == 1 and metrics[("authz-http", "denied")] == 1


@pytest.mark.parametrize("version", PROTOCOLS)
def test_grpc_provider_over_http2_allows_with_its_header_edits_and_denies_with_its_denied_response(
        mesh: Mesh, version: str) -> None:
    mesh.configure([grpc_provider()], custom("authz-grpc"))
    status, hdrs, body = mesh.curl(version, "/g?x=1", "x-ext-authz: allow")
    assert status == 200, body
    assert upstream_headers(body)["x-ext-authz-check-result"] == "allowed"      # ok_response.headers
    assert hdrs["x-ext-authz-check-result"] == "allowed"                         # response_headers_to_add
    status, hdrs, body = mesh.curl(version, "/g", "x-ext-authz: no")
    assert (status, body, hdrs["x-ext-authz-check-result"]) == (403, b"denied by ext_authz", "denied")
    c = mesh.grpc.checks[0]
    assert (c["method"], c["path"], c["host"]) == ("GET", "/g?x=1", f"127.0.0.1:{mesh.proxy.port}")
    assert c["headers"][":path"] == "/g?x=1" and c["headers"]["x-ext-authz"] == "allow"
    assert c["source"] == {"principal": FRONTEND, "address": "127.0.0.1"}
    assert c["destination"]["address"] == BACKEND_VIP and c["destination"]["port"] == 80
    assert c["destination"]["principal"] == mesh.waypoint.identity
    assert c["id"] and c["protocol"] == ("HTTP/2" if "http2" in version else "HTTP/1.1")


def test_only_requests_a_custom_rule_matches_are_checked(mesh: Mesh) -> None:
    mesh.configure([http_provider(8000)], custom("authz-http", paths=["/admin/*"]))
    status, _, _ = mesh.curl("--http1.1", "/public")
    assert status == 200 and mesh.http.checks == []
    status, _, body = mesh.curl("--http1.1", "/admin/x")
    assert (status, body) == (403, b"denied by ext_authz") and len(mesh.http.checks) == 1


def test_deny_and_allow_policies_apply_after_an_allowing_check(mesh: Mesh) -> None:
    deny = Authorization(name="no-post", namespace="demo", action="DENY", scope="waypoint",
                         target_refs=[{"kind": "Service", "group": "", "name": "backend"}],
                         http_rules=[Rule(clauses=[[Match(methods=["POST"])]])])
    mesh.configure([http_provider(8000)], custom("authz-http"), deny)
    assert mesh.curl("--http1.1", "/x", "x-ext-authz: allow")[0] == 200
    status, _, body = mesh.curl("--http1.1", "/x", "x-ext-authz: allow", data="hi")
    assert (status, body) == (403, b"RBAC: access denied") and len(mesh.http.checks) == 2
    status, _, body = mesh.curl("--http1.1", "/x", "x-ext-authz: no", data="hi")
    assert (status, body) == (403, b"denied by ext_authz")      # the check comes first


@pytest.mark.parametrize("version", PROTOCOLS)
def test_an_unreachable_authorizer_answers_status_on_error_or_lets_through_with_fail_open(
        mesh: Mesh, version: str) -> None:
    dead = ExtAuthzProvider(name="authz-http", kind="http", service="ext-authz-dead.demo.svc.cluster.local",
                            port=8000, status_on_error=503)
    mesh.configure([dead], custom("authz-http"))
    status, _, body = mesh.curl(version, "/x", "x-ext-authz: allow")
    assert (status, body) == (503, b"")
    [rec] = mesh.proxy.find(lambda r: r.status == 503)
    assert rec.response_flags == "UAEX"
    mesh.configure([ExtAuthzProvider(name="authz-http", kind="http", service="ext-authz-dead.demo.svc.cluster.local",
                                     port=8000, fail_open=True)], custom("authz-http"))
    assert mesh.curl(version, "/x")[0] == 200
    assert mesh.waypoint.ext_authz.counts[("authz-http", "error")] == 2


def test_an_authorizer_5xx_and_a_failed_grpc_call_are_errors_not_denials(mesh: Mesh) -> None:
    mesh.configure([http_provider(8000)], custom("authz-http"))
    assert mesh.curl("--http1.1", "/x", "x-ext-authz: error")[:3:2] == (403, b"")   # statusOnError, no body
    mesh.configure([grpc_provider(status_on_error=500)], custom("authz-grpc"))
    assert mesh.curl("--http1.1", "/x", "x-ext-authz: error")[0] == 500
    mesh.configure([grpc_provider(fail_open=True)], custom("authz-grpc"))
    assert mesh.curl("--http1.1", "/x", "x-ext-authz: error")[0] == 200


def test_a_check_past_the_providers_timeout_is_an_error(mesh: Mesh) -> None:
    mesh.configure([http_provider(8000, timeout=0.2, status_on_error=504)], custom("authz-http"))
    assert mesh.curl("--http1.1", "/x", "x-ext-authz: allow", "x-ext-authz-delay: 1")[0] == 504


def test_an_unknown_authorizer_service_is_an_error(mesh: Mesh) -> None:
    mesh.configure([ExtAuthzProvider(name="authz-http", kind="http", service="nowhere.demo.svc.cluster.local",
                                     port=8000)], custom("authz-http"))
    assert mesh.curl("--http1.1", "/x", "x-ext-authz: allow")[0] == 403
    assert mesh.origin.requests == 0


def test_a_policy_naming_an_unknown_provider_denies_what_it_matches(mesh: Mesh) -> None:
    mesh.configure([http_provider(8000)], custom("nope", paths=["/admin"]))
    status, _, body = mesh.curl("--http1.1", "/admin", "x-ext-authz: allow")
    assert (status, body) == (403, b"RBAC: access denied") and mesh.http.checks == []
    assert mesh.curl("--http1.1", "/other")[0] == 200


def test_two_providers_for_one_service_deny_what_either_policy_matches(mesh: Mesh) -> None:
    mesh.configure([http_provider(8000), grpc_provider()], custom("authz-http", ["/a"], "one"),
                   custom("authz-grpc", ["/b"], "two"))
    assert mesh.curl("--http1.1", "/a", "x-ext-authz: allow")[0] == 403
    assert mesh.curl("--http1.1", "/b", "x-ext-authz: allow")[0] == 403
    assert mesh.curl("--http1.1", "/c")[0] == 200
    assert mesh.http.checks == [] and mesh.grpc.checks == []


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_the_body_is_buffered_and_sent_with_the_check_and_a_longer_one_is_refused_413(mesh: Mesh, kind: str) -> None:
    body = ExtAuthzBody(max_request_bytes=16)
    p = http_provider(8000, include_body=body) if kind == "http" else grpc_provider(include_body=body)
    mesh.configure([p], custom(p.name))
    status, _, out = mesh.curl("--http1.1", "/x", "x-ext-authz: allow", data="hello body")
    assert status == 200, out
    assert json.loads(out)["body_len"] == len("hello body")         # the upstream still gets the body
    checks = mesh.http.checks if kind == "http" else mesh.grpc.checks
    assert checks[0]["body"] == "hello body"
    assert mesh.curl("--http1.1", "/x", "x-ext-authz: allow", data="x" * 100)[0] == 413
    assert len(checks) == 1


def test_partial_body_sends_the_first_max_request_bytes(mesh: Mesh) -> None:
    p = grpc_provider(include_body=ExtAuthzBody(max_request_bytes=8, allow_partial_message=True, pack_as_bytes=True))
    mesh.configure([p], custom(p.name))
    status, _, out = mesh.curl("--http2-prior-knowledge", "/x", "x-ext-authz: allow", data="0123456789abcdef")
    assert status == 200, out
    assert json.loads(out)["body_len"] == 16
    c = mesh.grpc.checks[0]
    assert bytes.fromhex(c["raw_body"]) == b"01234567" and c["headers"]["x-envoy-auth-partial-body"] == "true"


def test_a_grpc_client_is_denied_with_a_grpc_status(mesh: Mesh) -> None:
    mesh.configure([grpc_provider()], custom("authz-grpc"))
    with grpc.insecure_channel(f"127.0.0.1:{mesh.proxy.port}") as ch:
        call = ch.unary_unary("/svc/M", request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            call(b"", timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == "denied by ext_authz"



EDGE = Authorization(name="edge", namespace="demo", action="CUSTOM", scope="waypoint", provider="authz-http",
                     target_refs=[{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "igw"}],
                     http_rules=[Rule(clauses=[])])


def ingress(http: app.HttpAuthorizer, backends: list[Service], routes: WaypointRoutes, origin: Origin) -> Mesh:
    """An ingress gateway `demo/igw` (its HTTP listener on 8080 serving `routes`) in front of the
    `backends` and the HTTP authorizer, none of which has a waypoint (the gateway dials them)."""
    from waypoint.ingress_listen import IngressListeners
    services = [*backends, entry("ext-authz", "240.240.0.20", 8000, http.server_address[1], waypoint="")]
    gw = IngressGateway("igw", "demo", listeners=[IngressListener("http", 8080, "HTTP", "", hosts=[routes])])
    cfg = WaypointConfig(Waypoint("demo", "igw"), "cluster.local")
    cfg.apply(ConfigUpdate(Service.TYPE, "1", {}, frozenset(), {s.resource_name: s for s in services}))
    cfg.apply(ConfigUpdate(IngressGateway.TYPE, "1", {}, frozenset(), {gw.resource_name: gw}))
    wp = WaypointProxy(load(["--waypoint", "demo/igw", "--pod-name", "igw-0", "--node", "n1",
                             "--gateway-class", "ambit"]), cfg, None)
    wp.ingress = IngressListeners("127.0.0.1", lambda plug, down: None, lambda *a: None)     # unopened
    down = Downstream(source_ip="127.0.0.1", destination_port=8080, edge="http")
    return Mesh(Proxy(wp.decide, upstream=wp.upstream, downstream=down), wp, http, app.GrpcAuthorizer(), origin, 0)


def test_an_ingress_gateway_checks_before_routing_and_keeps_the_route_it_chose() -> None:
    """An ingress gateway (a route on `x-ext-authz-check-result`) with a CUSTOM policy bound to the
    Gateway: the route is the one chosen before the check, although the check added the header
    another route matches on (Istio configures no clear_route_cache)."""
    http = app.serve_http(0, "127.0.0.1")
    plain, allowed = Origin(), Origin()
    on_header = HttpMatch(headers=[HeaderMatch("x-ext-authz-check-result", StringMatch("exact", "allowed"))])
    routes = WaypointRoutes("*", http=[
        HttpRoute(source="HTTPRoute/demo/r", matches=[on_header],
                  destinations=[RouteDestination("allowed.demo.svc.cluster.local", "demo/allowed", port=80)]),
        HttpRoute(source="HTTPRoute/demo/r",
                  destinations=[RouteDestination("plain.demo.svc.cluster.local", "demo/plain", port=80)])])
    mesh = ingress(http, [entry("plain", "240.240.1.1", 80, plain.port, waypoint=""),
                          entry("allowed", "240.240.1.2", 80, allowed.port, waypoint="")], routes, plain)
    try:
        mesh.configure([http_provider(8000, headers_to_upstream_on_allow=["x-ext-authz-check-result"])], EDGE)
        status, _, body = mesh.curl("--http1.1", "/edge", "x-ext-authz: allow")
        assert status == 200, body
        assert upstream_headers(body)["x-ext-authz-check-result"] == "allowed"
        [rec] = mesh.proxy.find(lambda r: r.service == "demo/plain")
        assert rec.status == 200
        assert mesh.curl("--http1.1", "/edge")[:3:2] == (403, b"denied by ext_authz")
    finally:
        mesh.proxy.close()
        http.shutdown()
        http.server_close()
        plain.close()
        allowed.close()


def test_a_request_without_a_route_is_not_checked() -> None:
    """Envoy's ext_authz skips a request that has no route (getPerRouteFlags): the ingress
    gateway's 404 comes without a call to the authorizer."""
    http = app.serve_http(0, "127.0.0.1")
    routes = WaypointRoutes("a.example.com", http=[HttpRoute(destinations=[RouteDestination("x", "demo/x", port=80)])])
    mesh = ingress(http, [], routes, Origin())
    try:
        mesh.configure([http_provider(8000)], EDGE)
        assert mesh.curl("--http1.1", "/", "host: other.example.com")[0] == 404
        assert http.checks == []
        assert mesh.curl("--http1.1", "/", "host: a.example.com")[:3:2] == (403, b"denied by ext_authz")
        assert len(http.checks) == 1
    finally:
        mesh.proxy.close()
        http.shutdown()
        http.server_close()
        mesh.origin.close()
