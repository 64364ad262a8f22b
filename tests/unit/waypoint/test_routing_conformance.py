"""Gateway API mesh (GAMMA) conformance, the routing half, as pure tests.

Each case is one of the upstream Go tests in ../shared/upstream/gateway-api-conformance-mesh/
(kubernetes-sigs/gateway-api conformance/tests/mesh/*.go): its YAML goes through the REAL
controller translation, and what the Go test sends and expects back is checked against `route()`.
What needs sockets (the echo server's report of the request it saw) is checked on the decision:
the backend chosen, the rewritten path, the headers the backend would receive, the redirect.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.unit.waypoint.support import (
    CONFORMANCE,
    HEADER_MODIFIER_CASES,
    MESH_NS,
    backend,
    conformance_services,
    decide,
    load_yaml,
    namespace,
    req,
    split,
    table_of,
    to,
    upstream_headers,
)
from waypoint.request import Downstream, Forward, LocalReply
from waypoint.routing.redirect import split_authority

V1, V2 = f"{MESH_NS}/echo-v1", f"{MESH_NS}/echo-v2"


def table(name: str):
    return table_of(conformance_services() + load_yaml(CONFORMANCE / f"{name}.yaml"))


# -- MeshHTTPRouteMatching ------------------------------------------------------------------------

@pytest.mark.parametrize("path,headers,want", [
    ("/", {}, V1), ("/example", {}, V1), ("/", {"Version": "one"}, V1),
    ("/v2", {}, V2), ("/v2/example", {}, V2), ("/", {"Version": "two"}, V2), ("/v2/", {}, V2),
    ("/v2example", {}, V1),            # PathPrefix is segment-wise
    ("/foo/v2/example", {}, V1),
])
def test_mesh_httproute_matching(path: str, headers: dict[str, str], want: str) -> None:
    assert backend(decide(table("httproute-matching"), req(path, headers=headers), to("echo"))) == want


# -- MeshHTTPRouteQueryParamMatching --------------------------------------------------------------

@pytest.mark.parametrize("path,headers,want", [
    ("/?animal=whale", {}, V1), ("/?animal=dolphin", {}, V2),
    ("/?animal=whale&otherparam=irrelevant", {}, V1), ("/?animal=dolphin&color=yellow", {}, V2),
    ("/?color=blue", {}, "404"), ("/?animal=dog", {}, "404"), ("/?animal=whaledolphin", {}, "404"), ("/", {}, "404"),
    ("/path1?animal=whale", {}, V1), ("/?animal=whale", {"version": "one"}, V2),
    ("/path3?animal=shark", {}, V1), ("/path4?animal=kraken", {"version": "three"}, V1),
    ("/?animal=shark", {}, "404"), ("/path4?animal=kraken", {}, "404"),
    ("/path5?animal=hydra", {}, V1),   # a path match outranks a query match
])
def test_mesh_httproute_query_param_matching(path: str, headers: dict[str, str], want: str) -> None:
    d = decide(table("httproute-query-param-matching"), req(path, headers=headers), to("echo"))
    assert backend(d) == want
    if want == "404":
        assert isinstance(d, LocalReply) and d.flags == "NR"


# -- MeshHTTPRouteRequestHeaderModifier -----------------------------------------------------------

@pytest.mark.parametrize("path,sent,expected,absent", HEADER_MODIFIER_CASES)
def test_mesh_httproute_request_header_modifier(path: str, sent: dict[str, str], expected: dict[str, str],
                                                absent: list[str]) -> None:
    d = decide(table("httproute-request-header-modifier"), req(path, headers=sent), to("echo"))
    assert backend(d) == V1
    seen = upstream_headers(d, sent)
    for k, v in expected.items():
        assert seen.get(k) == v, (k, seen)
    for k in absent:
        assert k not in seen


# -- MeshHTTPRouteRewritePath ---------------------------------------------------------------------

@pytest.mark.parametrize("path,sent,want_path,expected", [
    ("/prefix/one/two", {}, "/one/two", {}),
    ("/strip-prefix/three", {}, "/three", {}),
    ("/strip-prefix", {}, "/", {}),
    ("/full/one/two", {}, "/one", {}),
    ("/full/rewrite-path-and-modify-headers/test",
     {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1", "X-Header-Set": "set-val"},
     "/test", {"x-header-add": "header-val-1", "x-header-add-append": "append-val-1,header-val-2",
               "x-header-set": "set-overwrites-values"}),
    ("/prefix/rewrite-path-and-modify-headers/one",
     {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1", "X-Header-Set": "set-val"},
     "/prefix/one", {"x-header-add": "header-val-1", "x-header-add-append": "append-val-1,header-val-2",
                     "x-header-set": "set-overwrites-values"}),
])
def test_mesh_httproute_rewrite_path(path: str, sent: dict[str, str], want_path: str, expected: dict[str, str]) -> None:
    d = decide(table("httproute-rewrite-path"), req(path, headers=sent), to("echo"))
    assert isinstance(d, Forward) and d.service == V1 and d.port == 80
    assert d.path == want_path
    seen = upstream_headers(d, sent)
    assert {k: seen.get(k) for k in expected} == expected
    if sent:
        assert "x-header-remove" not in seen


# -- redirects ------------------------------------------------------------------------------------

def _redirect(name: str, path: str) -> tuple[int, str]:
    d = decide(table(name), req(path, authority="echo"), to("echo"))
    assert isinstance(d, LocalReply), d
    return d.status, dict(d.headers)["location"]


@pytest.mark.parametrize("name,path,status,scheme,host,port,want_path", [
    # MeshHTTPRouteRedirectHostAndStatus
    ("httproute-redirect-host-and-status", "/hostname-redirect", 302, "http", "example.org", None, "/hostname-redirect"),
    ("httproute-redirect-host-and-status", "/host-and-status", 301, "http", "example.org", None, "/host-and-status"),
    # MeshHTTPRouteRedirectPath
    ("httproute-redirect-path", "/original-prefix/lemon", 302, "http", "echo", None, "/replacement-prefix/lemon"),
    ("httproute-redirect-path", "/full/path/original", 302, "http", "echo", None, "/full-path-replacement"),
    ("httproute-redirect-path", "/path-and-host", 302, "http", "example.org", None, "/replacement-prefix"),
    ("httproute-redirect-path", "/path-and-status", 301, "http", "echo", None, "/replacement-prefix"),
    ("httproute-redirect-path", "/full-path-and-host", 302, "http", "example.org", None, "/replacement-full"),
    ("httproute-redirect-path", "/full-path-and-status", 301, "http", "echo", None, "/replacement-full"),
    # MeshHTTPRouteRedirectPort
    ("httproute-redirect-port", "/port", 302, "http", "echo", 8083, "/port"),
    ("httproute-redirect-port", "/port-and-host", 302, "http", "example.org", 8083, "/port-and-host"),
    ("httproute-redirect-port", "/port-and-status", 301, "http", "echo", 8083, "/port-and-status"),
    ("httproute-redirect-port", "/port-and-host-and-status", 302, "http", "example.org", 8083,
     "/port-and-host-and-status"),
    # MeshHTTPRouteSchemeRedirect: https without a port means 443, left out of the Location
    ("httproute-redirect-scheme", "/scheme", 302, "https", "echo", None, "/scheme"),
    ("httproute-redirect-scheme", "/scheme-and-host", 302, "https", "example.org", None, "/scheme-and-host"),
    ("httproute-redirect-scheme", "/scheme-and-status", 301, "https", "echo", None, "/scheme-and-status"),
    ("httproute-redirect-scheme", "/scheme-and-host-and-status", 302, "https", "example.org", None,
     "/scheme-and-host-and-status"),
    # MeshHTTPRoute303Redirect / 307 / 308
    ("httproute-303-redirect", "/redirect", 303, "http", "echo", None, "/redirect"),
    ("httproute-307-redirect", "/temporary", 307, "http", "echo", None, "/temporary"),
    ("httproute-308-redirect", "/permanent", 308, "http", "echo", None, "/permanent"),
])
def test_mesh_httproute_redirects(name: str, path: str, status: int, scheme: str, host: str, port: int | None,
                                  want_path: str) -> None:
    got_status, loc = _redirect(name, path)
    u = urlsplit(loc)
    assert (got_status, u.scheme, u.hostname, u.port, u.path) == (status, scheme, host, port, want_path)


def test_a_redirect_without_a_port_keeps_a_non_default_service_port() -> None:
    """Gateway API: with no port and no scheme the redirect uses the listener's port; for a mesh
    route that is the Service port the request came in on (8080 here, so it is written)."""
    t = table("httproute-redirect-host-and-status")
    objs = load_yaml(CONFORMANCE / "httproute-redirect-host-and-status.yaml")
    objs[0]["spec"]["parentRefs"][0]["port"] = 8080
    t = table_of(conformance_services() + objs)
    d = decide(t, req("/hostname-redirect", authority="echo:8080"), to("echo", port=8080))
    assert isinstance(d, LocalReply) and dict(d.headers)["location"] == "http://example.org:8080/hostname-redirect"


@pytest.mark.parametrize("authority", ["echo:\xb2", "echo:1\xb3", "echo:+80", "echo: 80"])
def test_a_request_port_that_is_no_ascii_number_is_no_port(authority: str) -> None:
    """str.isdigit() is True for "²" and int() then raises (the redirect became a 500); int() alone
    would take "+80" and " 80". None of them is a port (RFC 3986: port = *DIGIT)."""
    assert split_authority(authority) == ("echo", None)


# -- MeshHTTPRouteWeight --------------------------------------------------------------------------

def test_mesh_httproute_weight_70_30() -> None:
    """The upstream test sends 500 requests and accepts ±5 points. Here 20,000 draws from a seeded
    source: the standard deviation of the v1 share is sqrt(.7*.3/20000) ≈ 0.32 points, so ±1.5
    points is more than 4.5 sigma wide and still four times tighter than upstream's tolerance."""
    n = 20_000
    counts = split(table("httproute-weight"), req("/"), to("echo"), n)
    assert set(counts) == {V1, V2}
    assert counts[V1] / n == pytest.approx(0.70, abs=0.015)


# -- MeshPorts, MeshSplit -------------------------------------------------------------------------

def test_mesh_ports() -> None:
    t = table("mesh-ports")
    d = decide(t, req("/", authority="echo-v1"), to("echo-v1", port=80))
    assert isinstance(d, Forward) and d.service == V1 and d.response_headers.set == (("x-header-set", "v1"),)
    # the route names port 80 only: on 8080 the Service gets its default route, without the header
    d = decide(t, req("/", authority="echo-v1:8080"), to("echo-v1", port=8080))
    assert isinstance(d, Forward) and d.service == V1 and d.route == "default" and d.response_headers.set == ()
    for port in (80, 8080):   # no port in the parentRef: every port
        d = decide(t, req("/", authority="echo-v2"), to("echo-v2", port=port))
        assert isinstance(d, Forward) and d.service == V2 and d.response_headers.set == (("x-header-set", "v2"),)


@pytest.mark.parametrize("path,want", [("/v1", V1), ("/v2", V2), ("/v3", "404")])
def test_mesh_split(path: str, want: str) -> None:
    assert backend(decide(table("mesh-split"), req(path), to("echo"))) == want


# -- GRPCRoute: MeshGRPCRouteRequestHeaderModifier, MeshGRPCRouteWeight ------------------------------

def grpc_req(headers: dict[str, str]):
    return req("/grpc.testing.TestService/Echo", authority="echo:7070", method="POST",
               headers={"content-type": "application/grpc", **headers}, grpc=True)


@pytest.mark.parametrize("case,sent,want,expected,absent", [
    ("set", {"some-other-header": "this-header-should-be-set", "x-header-set": "this-value-should-be-overwritten"},
     V1, {"some-other-header": "this-header-should-be-set", "x-header-set": "set-overwrites-values"}, []),
    ("add", {"x-header-add": "this-value-should-be-appended"},
     V1, {"x-header-add": "this-value-should-be-appended,add-appends-values"}, []),
    ("remove", {"x-header-remove": "this-should-be-removed"}, V1, {}, ["x-header-remove"]),
    ("multi", {"x-header-set-2": "set-header-2", "x-header-add-2": "add-header-2", "x-header-remove-2": "gone"},
     V2, {"x-header-set-1": "header-set-1", "x-header-set-2": "header-set-2", "x-header-add-1": "header-add-1",
          "x-header-add-2": "add-header-2,header-add-2"}, ["x-header-remove-1", "x-header-remove-2"]),
])
def test_mesh_grpcroute_request_header_modifier(case: str, sent: dict[str, str], want: str,
                                                expected: dict[str, str], absent: list[str]) -> None:
    sent = {"x-test-case": case, **sent}
    d = decide(table("grpcroute-request-header-modifier"), grpc_req(sent), to("echo", port=7070))
    assert backend(d) == want and isinstance(d, Forward) and d.port == 7070
    seen = upstream_headers(d, sent)
    assert seen["x-test-case"] == case
    assert {k: seen.get(k) for k in expected} == expected
    assert not set(absent) & set(seen)


def test_mesh_grpcroute_a_request_matching_no_rule_is_unimplemented() -> None:
    d = decide(table("grpcroute-request-header-modifier"), grpc_req({"x-test-case": "nope"}), to("echo", port=7070))
    assert isinstance(d, LocalReply) and (d.status, d.flags, d.grpc_status) == (404, "NR", 12)


def test_mesh_grpcroute_weight_70_30_0() -> None:
    """Same tolerance argument as the HTTPRoute weight test; weight 0 (echo-v3) gets nothing."""
    n = 20_000
    counts = split(table("grpcroute-weight"), grpc_req({}), to("echo", port=7070), n)
    assert set(counts) == {V1, V2}
    assert counts[V1] / n == pytest.approx(0.70, abs=0.015)


# -- MeshBasic, MeshHTTPRouteSimpleSameNamespace, MeshHTTPRouteNamedRule ----------------------------

def test_mesh_basic_without_routes_reaches_the_service() -> None:
    d = decide(table_of(conformance_services()), req("/"), to("echo"))
    assert isinstance(d, Forward) and (d.service, d.port, d.route) == (f"{MESH_NS}/echo", 80, "default")


def test_mesh_httproute_simple_same_namespace() -> None:
    d = decide(table("httproute-simple-same-namespace"), req("/"), to("echo"))
    assert isinstance(d, Forward) and (d.service, d.port) == (V1, 8080)


@pytest.mark.parametrize("path,want,name", [
    ("/named", V1, f"HTTPRoute/{MESH_NS}/mesh-http-named-rules#named-rule"),
    ("/unnamed", V2, None),
])
def test_mesh_httproute_named_rule(path: str, want: str, name: str | None) -> None:
    d = decide(table("httproute-named-rule"), req(path), to("echo"))
    assert isinstance(d, Forward) and d.service == want and d.path is None
    if name:
        assert d.route == name


# -- backend-level RequestHeaderModifier (httproute-request-header-modifier-backend.yaml) ------------

@pytest.mark.parametrize("path,sent,expected,absent", [
    ("/set", {"X-Header-Set": "some-other-value"}, {"x-header-set": "set-overwrites-values"}, []),
    ("/add", {"X-Header-Add": "some-other-value"}, {"x-header-add": "some-other-value,add-appends-values"}, []),
    ("/remove", {"X-Header-Remove": "val"}, {}, ["x-header-remove"]),
    ("/case-insensitivity", {"x-header-set": "o", "x-header-add": "original-val-add", "x-header-remove": "r"},
     {"x-header-set": "header-set", "x-header-add": "original-val-add,header-add"}, ["x-header-remove"]),
])
def test_mesh_backend_request_header_modifier(path: str, sent: dict[str, str], expected: dict[str, str],
                                              absent: list[str]) -> None:
    d = decide(table("httproute-request-header-modifier-backend"), req(path, headers=sent), to("echo"))
    seen = upstream_headers(d, sent)
    assert {k: seen.get(k) for k in expected} == expected and not set(absent) & set(seen)


# -- MeshFrontend, MeshFrontendHostname: the destination decides, not Host ---------------------------

def test_mesh_frontend() -> None:
    t = table("mesh-frontend")
    d = decide(t, req("/", authority="echo-v2"), to("echo-v2"))
    assert isinstance(d, Forward) and d.service == V2 and d.response_headers.set == (("x-header-set", "set"),)
    # addressed to a pod of echo-v2, not to the Service: no Service route, on to that address
    pod = Downstream(destination_ip="10.244.2.7", destination_port=8080)
    d = decide(t, req("/", authority="10.244.2.7:8080"), pod)
    assert isinstance(d, Forward) and (d.service, d.route, d.response_headers.set) == ("", "passthrough", ())


def test_mesh_frontend_hostname() -> None:
    t = table("mesh-frontend")
    d = decide(t, req("/", authority="echo-v1"), to("echo-v2"))      # sent to echo-v2 with Host: echo-v1
    assert isinstance(d, Forward) and d.service == V2 and d.response_headers.set == (("x-header-set", "set"),)
    d = decide(t, req("/", authority="echo-v2"), to("echo-v1"))      # sent to echo-v1 with Host: echo-v2
    assert isinstance(d, Forward) and d.service == V1 and d.response_headers.set == ()


# -- MeshConsumerRoute -------------------------------------------------------------------------------

def test_mesh_consumer_route_applies_only_to_its_namespace() -> None:
    consumer_ns = f"{MESH_NS}-consumer"
    t = table_of(conformance_services() + [namespace(consumer_ns)] + load_yaml(CONFORMANCE / "mesh-consumer-route.yaml"))
    head = req("/", authority=f"echo-v1.{MESH_NS}")
    d = decide(t, head, to("echo-v1", source_namespace=consumer_ns))
    assert isinstance(d, Forward) and d.service == V1 and d.response_headers.set == (("x-header-set", "set"),)
    d = decide(t, head, to("echo-v1", source_namespace=MESH_NS))
    assert isinstance(d, Forward) and d.service == V1 and d.response_headers.set == ()
