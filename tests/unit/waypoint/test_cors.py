"""CORS, the pure half: VirtualService `corsPolicy` and HTTPRoute `CORS` filters through the REAL
controller translation into the route table, then `route()` (routes that answer themselves) and
`cors.evaluate` (what the engine applies past the fault filter on a forwarded request).

The HTTPRoute cases are Gateway API's HTTPRouteCORS conformance test (conformance/tests/
httproute-cors.go), with its routes written out here for a mesh Service; the VirtualService cases
are Envoy's CORS filter as Istio configures it (waypoint/routing/cors.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.waypoint.support import MESH_NS, conformance_services, decide, req, table_of, to
from waypoint.request import Forward, LocalReply, RequestHead
from waypoint.routing import RouteTable
from waypoint.routing.cors import CorsResponse, compile_cors, evaluate


def httproute(name: str, path: str, cors: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": MESH_NS},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                                "filters": [{"type": "CORS", "cors": cors}],
                                "backendRefs": [{"name": "echo-v1", "port": 80}]}]}}


CONFORMANCE_ROUTES = [
    httproute("cors-multiple-origins-methods-headers", "/cors-1", {
        "allowOrigins": ["https://www.foo.com", "https://*.bar.com"], "allowMethods": ["GET", "OPTIONS"],
        "allowHeaders": ["x-header-1", "x-header-2"], "exposeHeaders": ["x-header-3", "x-header-4"],
        "maxAge": 3600, "allowCredentials": True}),
    httproute("cors-wildcard-methods", "/cors-2", {"allowOrigins": ["https://www.foo.com"], "allowMethods": ["*"]}),
    httproute("cors-wildcard-origin", "/cors-wildcard-origin", {"allowOrigins": ["*"], "allowMethods": ["*"]}),
    httproute("cors-wildcard-methods-headers", "/cors-wildcard-methods-headers", {
        "allowOrigins": ["https://*.foo.com"], "allowMethods": ["*"], "allowHeaders": ["*"], "allowCredentials": True}),
    httproute("cors-wildcard-methods-headers-unauth", "/cors-wildcard-methods-headers-unauth", {
        "allowOrigins": ["https://*.foo.com"], "allowMethods": ["*"], "allowHeaders": ["*"]}),
]


@pytest.fixture(scope="module")
def gw() -> RouteTable:
    return table_of(conformance_services() + CONFORMANCE_ROUTES)


def respond(table: RouteTable, method: str, path: str, headers: dict[str, str],
            backend: list[tuple[str, str]] | None = None) -> tuple[int | None, dict[str, str]]:
    """(status, response headers): a LocalReply's own, or for a forwarded request the backend's
    headers (`backend`) as the engine passes them on (status None: the backend answers)."""
    head = req(path, method=method, headers=headers)
    d = decide(table, head, to("echo"))
    if isinstance(d, LocalReply):
        return d.status, dict(d.headers)
    assert isinstance(d, Forward)
    c = evaluate(d.policy.cors, head) if d.policy is not None and d.policy.cors is not None else None
    if isinstance(c, LocalReply):
        return c.status, dict(c.headers)
    out = list(backend or [])
    if isinstance(c, CorsResponse):
        out = c.apply(out)
    return None, dict(out)


def pre(origin: str, method: str, headers: str = "") -> dict[str, str]:
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    return h


def same_set(value: str) -> set[str]:
    return {p.strip() for p in value.split(",")}


@pytest.mark.parametrize("origin", ["https://www.foo.com", "https://www.bar.com", "https://xpto.www.bar.com"])
def test_conformance_preflight_from_an_allowed_origin_is_answered_with_the_policy(gw: RouteTable, origin: str) -> None:
    status, h = respond(gw, "OPTIONS", "/cors-1", pre(origin, "GET", "x-header-1, x-header-2"))
    assert status in (200, 204)
    assert h["access-control-allow-origin"] == origin
    assert same_set(h["access-control-allow-methods"]) == {"GET", "OPTIONS"}
    assert same_set(h["access-control-allow-headers"]) == {"x-header-1", "x-header-2"}
    assert same_set(h["access-control-expose-headers"]) == {"x-header-3", "x-header-4"}
    assert (h["access-control-max-age"], h["access-control-allow-credentials"]) == ("3600", "true")


def test_conformance_origins_that_do_not_match(gw: RouteTable) -> None:
    # not a subdomain of bar.com, and the bare domain is not covered by *.bar.com
    for origin in ("https://foobar.com", "https://bar.com", "http://www.bar.com", "https://www.bar.com:8443"):
        status, h = respond(gw, "OPTIONS", "/cors-1", pre(origin, "GET"))
        assert status is None and "access-control-allow-origin" not in h, origin   # on to the backend
        status, h = respond(gw, "GET", "/cors-1", {"Origin": origin})
        assert "access-control-allow-origin" not in h, origin


def test_conformance_simple_requests_get_the_origin_echoed(gw: RouteTable) -> None:
    for origin in ("https://www.foo.com", "https://www.bar.com", "https://www.foo.com:443"):
        status, h = respond(gw, "GET", "/cors-1", {"Origin": origin},
                            backend=[("content-type", "text/plain"), ("access-control-allow-origin", "*")])
        assert status is None
        assert h["access-control-allow-origin"] == origin      # the backend's own value is replaced
        assert h["access-control-allow-credentials"] == "true"
        assert same_set(h["access-control-expose-headers"]) == {"x-header-3", "x-header-4"}


def test_conformance_wildcard_methods_and_no_credentials(gw: RouteTable) -> None:
    status, h = respond(gw, "OPTIONS", "/cors-2", pre("https://www.foo.com", "POST"))
    assert status == 200 and h["access-control-allow-origin"] == "https://www.foo.com"
    assert h["access-control-allow-methods"] in ("POST", "*")
    assert "access-control-allow-credentials" not in h
    assert h["access-control-max-age"] == "5"           # Gateway API's default


@pytest.mark.parametrize("origin", ["https://foobar.com", "https://foobar.com:12345", "null"])
def test_conformance_wildcard_origin(gw: RouteTable, origin: str) -> None:
    status, h = respond(gw, "OPTIONS", "/cors-wildcard-origin", pre(origin, "PUT"))
    assert status == 200 and h["access-control-allow-origin"] in (origin, "*")
    assert h["access-control-allow-methods"] == "PUT" and "access-control-allow-credentials" not in h
    status, h = respond(gw, "PUT", "/cors-wildcard-origin", {"Origin": origin})
    assert h["access-control-allow-origin"] in (origin, "*")


def test_conformance_credentials_echo_the_request_never_a_wildcard(gw: RouteTable) -> None:
    status, h = respond(gw, "OPTIONS", "/cors-wildcard-methods-headers",
                        pre("https://other.foo.com", "PUT", "x-header-1, x-header-2"))
    assert status == 200
    assert (h["access-control-allow-origin"], h["access-control-allow-methods"]) == ("https://other.foo.com", "PUT")
    assert same_set(h["access-control-allow-headers"]) == {"x-header-1", "x-header-2"}
    assert h["access-control-allow-credentials"] == "true"
    status, h = respond(gw, "GET", "/cors-wildcard-methods-headers", {"Origin": "https://other.foo.com", "Cookie": "a=b"})
    assert (h["access-control-allow-origin"], h["access-control-allow-credentials"]) == ("https://other.foo.com", "true")
    # the unauthenticated twin: no credentials header on either
    status, h = respond(gw, "OPTIONS", "/cors-wildcard-methods-headers-unauth",
                        pre("https://other.foo.com", "PUT", "x-header-1, x-header-2"))
    assert status == 200 and "access-control-allow-credentials" not in h
    assert h["access-control-allow-methods"] in ("PUT", "*")
    status, h = respond(gw, "GET", "/cors-wildcard-methods-headers-unauth", {"Origin": "https://other.foo.com"})
    assert h["access-control-allow-origin"] == "https://other.foo.com" and "access-control-allow-credentials" not in h


def test_a_request_without_origin_and_an_options_without_request_method_are_not_cors(gw: RouteTable) -> None:
    status, h = respond(gw, "GET", "/cors-1", {}, backend=[("x", "1")])
    assert (status, h) == (None, {"x": "1"})
    status, h = respond(gw, "OPTIONS", "/cors-1", {"Origin": "https://www.foo.com"})
    assert status is None and h["access-control-allow-origin"] == "https://www.foo.com"    # an actual OPTIONS


# -- VirtualService corsPolicy (Envoy's filter as Istio configures it) ----------------------------

def vs(cors: dict[str, Any], **route: Any) -> RouteTable:
    http = {"corsPolicy": cors, **(route or {"route": [{"destination": {"host": "echo-v1"}}]})}
    return table_of(conformance_services() + [{
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "echo", "namespace": MESH_NS}, "spec": {"hosts": ["echo"], "http": [http]}}])


@pytest.mark.parametrize("match,origin,allowed", [
    ({"exact": "https://a.example"}, "https://a.example", True),
    ({"exact": "https://a.example"}, "https://A.example", False),        # StringMatch is case-sensitive
    ({"prefix": "https://a."}, "https://a.example", True),
    ({"regex": r"https://[a-z]+\.example"}, "https://bb.example", True),
    ({"regex": r"https://[a-z]+\.example"}, "https://bb.example.evil", False),    # a full match
    ({"exact": "*"}, "https://anything", True),                        # Envoy: a matcher of "*" allows all
    ({"regex": ".*"}, "null", True),
])
def test_vs_origins(match: dict[str, str], origin: str, allowed: bool) -> None:
    status, h = respond(vs({"allowOrigins": [match], "allowMethods": ["POST"]}), "OPTIONS", "/", pre(origin, "POST"))
    if allowed:
        assert status == 200 and h["access-control-allow-origin"] == origin
        assert h["access-control-allow-methods"] == "POST" and "access-control-max-age" not in h
    else:   # unmatchedPreflights FORWARD, Istio's default: the backend answers the preflight
        assert status is None and not any(k.startswith("access-control") for k in h)


def test_vs_policy_fields_serialise_as_envoy_does() -> None:
    t = vs({"allowOrigin": ["https://a.example"], "allowMethods": ["GET", "PUT"], "allowHeaders": ["x-a", "x-b"],
            "exposeHeaders": ["x-c"], "maxAge": "24h", "allowCredentials": True})
    status, h = respond(t, "OPTIONS", "/", pre("https://a.example", "PUT", "x-a"))
    assert status == 200
    assert h == {"access-control-allow-origin": "https://a.example", "access-control-allow-credentials": "true",
                 "access-control-allow-methods": "GET,PUT", "access-control-allow-headers": "x-a,x-b",
                 "access-control-max-age": "86400", "access-control-expose-headers": "x-c"}


def test_vs_unmatched_preflights_ignore_answers_without_the_origin() -> None:
    t = vs({"allowOrigins": [{"exact": "https://a.example"}], "allowMethods": ["GET"],
            "unmatchedPreflights": "IGNORE"})
    status, h = respond(t, "OPTIONS", "/", pre("https://evil.example", "GET"))
    assert status == 200 and "access-control-allow-origin" not in h     # answered, never forwarded


def test_routes_that_answer_themselves_get_cors_too() -> None:
    t = vs({"allowOrigins": [{"exact": "https://a.example"}], "allowMethods": ["GET"]},
           directResponse={"status": 418, "body": {"string": "teapot"}})
    status, h = respond(t, "GET", "/", {"Origin": "https://a.example"})
    assert status == 418 and h["access-control-allow-origin"] == "https://a.example"
    status, h = respond(t, "OPTIONS", "/", pre("https://a.example", "GET"))
    assert status == 200 and h["access-control-allow-methods"] == "GET"     # the preflight, not the 418
    status, h = respond(t, "GET", "/", {"Origin": "https://b.example"})
    assert status == 418 and "access-control-allow-origin" not in h


def test_expose_all_with_credentials_lists_the_response_headers() -> None:
    """A browser reads `*` in Access-Control-Expose-Headers as a header named "*" on a credentialed
    response (Fetch); Gateway API says the gateway must not send it then."""
    p = compile_cors({"allowOrigins": [{"origin": "*"}], "exposeHeaders": ["*"], "allowCredentials": True})
    assert p is not None
    c = evaluate(p, RequestHead("GET", "/", "echo", headers=[("origin", "https://a.example")]))
    assert isinstance(c, CorsResponse)
    h = dict(c.apply([("content-type", "text/plain"), ("x-trace", "1"), ("etag", "\"v\"")]))
    assert h["access-control-expose-headers"] == "etag, x-trace"
    p = compile_cors({"allowOrigins": [{"origin": "*"}], "exposeHeaders": ["*"]})
    c = evaluate(p, RequestHead("GET", "/", "echo", headers=[("origin", "https://a.example")]))
    assert isinstance(c, CorsResponse) and dict(c.apply([]))["access-control-expose-headers"] == "*"


def test_a_field_from_a_newer_controller_is_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match="allowPrivateNetworkAccess"):
        compile_cors({"allowOrigins": [{"exact": "*"}], "allowPrivateNetworkAccess": True})
