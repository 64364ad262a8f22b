"""VirtualService semantics (istio/api virtual_service.proto, Istio route.go, Envoy route matching;
see ../shared/notes/l7-semantics.md §1) through the real translation and `route()`."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.unit.waypoint.support import backend, decide, namespace, req, service, table_of, upstream_headers
from waypoint.request import Downstream, Forward, LocalReply

HOSTS = ("myapp", "a", "b", "c")


def objects() -> list[dict[str, Any]]:
    return [namespace("default")] + [service(h, "default", {"http": 80, "admin": 9090}, ip=f"10.96.0.{20 + i}")
                                     for i, h in enumerate(HOSTS)]


def vs(http: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "myapp", "namespace": "default"}, "spec": {"hosts": ["myapp"], "http": http}}


def to(host: str) -> dict[str, Any]:
    return {"route": [{"destination": {"host": host}}]}


def rule(match: list[dict[str, Any]] | None, host: str, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {**to(host), **extra}
    if match is not None:
        r["match"] = match
    return r


def down(port: int = 80, **kw: Any) -> Downstream:
    return Downstream(service="default/myapp", hostname="myapp.default.svc.cluster.local", destination_port=port,
                      **kw)


def go(http: list[dict[str, Any]], head=None, d: Downstream | None = None):
    return decide(table_of(objects() + [vs(http)]), head or req("/", authority="myapp"), d or down())


def where(http: list[dict[str, Any]], **req_kw: Any) -> str:
    d = req_kw.pop("down", None)
    return backend(go(http, req(**{"authority": "myapp", **req_kw}), d))


# -- matching -------------------------------------------------------------------------------------

@pytest.mark.parametrize("match,path,hit", [
    ({"uri": {"prefix": "/pre"}}, "/prefix-x", True),         # a plain string prefix, not segments
    ({"uri": {"prefix": "/api"}}, "/api?x=1", True),
    ({"uri": {"exact": "/api"}}, "/api?x=1", True),            # exact ignores the query string
    ({"uri": {"exact": "/api"}}, "/api/", False),
    ({"uri": {"regex": "/api/v[0-9]+"}}, "/api/v12", True),
    ({"uri": {"regex": "/api/v[0-9]+"}}, "/api/v12/x", False),  # a regex must match the whole path
    ({"uri": {"regex": "/api/v[0-9]+"}}, "/x/api/v1", False),
    ({"uri": {"regex": "/api/v[0-9]+"}}, "/api/v1?debug=1", True),
    ({"uri": {"prefix": "/API"}, "ignoreUriCase": True}, "/api/x", True),
    ({"uri": {"exact": "/API"}, "ignoreUriCase": True}, "/Api", True),
    ({"uri": {"prefix": "/API"}}, "/api/x", False),
])
def test_uri_matching(match: dict[str, Any], path: str, hit: bool) -> None:
    assert where([rule([match], "a"), to("b")], path=path) == ("default/a" if hit else "default/b")


@pytest.mark.parametrize("match,headers,hit", [
    ({"headers": {"x-v": {"exact": "1"}}}, {"x-v": "1"}, True),
    ({"headers": {"x-v": {"exact": "1"}}}, {}, False),
    ({"headers": {"x-v": {"prefix": "ab"}}}, {"x-v": "abc"}, True),
    ({"headers": {"x-v": {"regex": "[0-9]+"}}}, {"x-v": "a123"}, False),
    ({"headers": {"x-v": {}}}, {"x-v": ""}, True),                   # {} is "present"
    ({"headers": {"x-v": {}}}, {}, False),
    ({"headers": {"X-Upper": {"exact": "1"}}}, {"x-upper": "1"}, True),   # names are case-insensitive
    ({"withoutHeaders": {"x-legacy": {}}}, {}, True),
    ({"withoutHeaders": {"x-legacy": {}}}, {"x-legacy": "1"}, False),
    ({"withoutHeaders": {"x-env": {"exact": "prod"}}}, {"x-env": "dev"}, True),
    ({"withoutHeaders": {"x-env": {"exact": "prod"}}}, {"x-env": "prod"}, False),
    ({"withoutHeaders": {"x-env": {"exact": "prod"}}}, {}, True),
    ({"headers": {"x-a": {"exact": "1"}, "x-b": {"exact": "2"}}}, {"x-a": "1"}, False),  # AND within a match
])
def test_header_matching(match: dict[str, Any], headers: dict[str, str], hit: bool) -> None:
    assert where([rule([match], "a"), to("b")], path="/", headers=headers) == ("default/a" if hit else "default/b")


@pytest.mark.parametrize("path,hit", [
    ("/?id=123", True), ("/?id=a123", False),         # the proto's own example: regex \d+$ is a full match
    ("/?id=123&id=x", True), ("/?id=x&id=123", False),  # the first value counts
    ("/", False), ("/?id=1%32", True),                 # values are decoded
])
def test_query_param_regex(path: str, hit: bool) -> None:
    assert where([rule([{"queryParams": {"id": {"regex": r"\d+$"}}}], "a"), to("b")], path=path) == (
        "default/a" if hit else "default/b")


def test_query_param_present_and_exact() -> None:
    http = [rule([{"queryParams": {"debug": {}}}], "a"), rule([{"queryParams": {"v": {"exact": "2"}}}], "b"), to("c")]
    assert where(http, path="/?debug") == "default/a"
    assert where(http, path="/?v=2") == "default/b"
    assert where(http, path="/?v=22") == "default/c"


def test_method_authority_scheme_port_and_source() -> None:
    http = [rule([{"method": {"exact": "POST"}}], "a"),
            rule([{"authority": {"prefix": "myapp.example"}}], "b"),
            rule([{"port": 9090}], "c"),
            rule([{"sourceNamespace": "prod"}], "a"),
            rule([{"sourceLabels": {"app": "tester"}}], "b"),
            to("myapp")]
    assert where(http, method="POST") == "default/a"
    assert where(http, authority="myapp.example.com") == "default/b"
    assert where(http, down=down(9090)) == "default/c"
    assert where(http, down=down(source_namespace="prod")) == "default/a"
    assert where(http, down=down(source_labels=(("app", "tester"), ("v", "1")))) == "default/b"
    assert where(http) == "default/myapp"


def test_first_match_wins_and_blocks_are_ored() -> None:
    http = [rule([{"uri": {"prefix": "/a"}}], "a"), rule([{"uri": {"prefix": "/a/b"}}], "b"),
            rule([{"uri": {"exact": "/x"}}, {"headers": {"x-b": {}}}], "b"), to("c")]
    assert where(http, path="/a/b/c") == "default/a"      # no longest-prefix reordering
    assert where(http, path="/x") == "default/b"
    assert where(http, path="/y", headers={"x-b": "1"}) == "default/b"
    assert where(http, path="/y") == "default/c"


def test_a_bad_route_regex_is_left_out_not_fatal() -> None:
    from ambit.model import HttpMatch, HttpRoute, RouteDestination, StringMatch, WaypointRoutes
    from waypoint.routing import build_table
    bad = HttpRoute(source="VirtualService/default/x", matches=[HttpMatch(path=StringMatch("regex", "(?=x)"))],
                    destinations=[RouteDestination(host="a", service="default/a")])
    good = HttpRoute(source="VirtualService/default/x", destinations=[RouteDestination(host="b", service="default/b")])
    t = build_table([WaypointRoutes(hostname="h", service="default/h", http=[bad, good])])
    assert len(t.errors) == 1 and "invalid perl operator" in t.errors[0]
    assert backend(decide(t, req("/"), Downstream(hostname="h", service="default/h", destination_port=80))) == \
        "default/b"


# -- rewrite --------------------------------------------------------------------------------------

@pytest.mark.parametrize("match,rewrite,path,want", [
    ([{"uri": {"prefix": "/ratings"}}], {"uri": "/v1/bookRatings"}, "/ratings/2?x=1", "/v1/bookRatings/2?x=1"),
    ([{"uri": {"prefix": "/ratings/"}}], {"uri": "/"}, "/ratings/2", "/2"),
    ([{"uri": {"exact": "/old"}}], {"uri": "/new"}, "/old?q=1", "/new?q=1"),
    ([{"uri": {"regex": "/v[0-9]/.*"}}], {"uri": "/fixed"}, "/v1/x", "/fixed"),
    (None, {"uri": "/v2"}, "/items", "/v2items"),        # Envoy's implicit prefix "/" is replaced
    ([{"uri": {"prefix": "/service"}}], {"uriRegexRewrite": {"match": "^/service/([^/]+)(/.*)$",
                                                             "rewrite": "\\2/instance/\\1"}},
     "/service/foo/v1/api?x=1", "/v1/api/instance/foo?x=1"),
])
def test_uri_rewrite(match: list[dict[str, Any]] | None, rewrite: dict[str, Any], path: str, want: str) -> None:
    d = go([rule(match, "a", rewrite=rewrite)], req(path, authority="myapp"))
    assert isinstance(d, Forward) and d.path == want and d.authority is None


def test_authority_rewrite_and_host_header_set() -> None:
    d = go([rule(None, "a", rewrite={"authority": "a.internal"})])
    assert isinstance(d, Forward) and d.authority == "a.internal" and d.path is None
    d = go([rule(None, "a", headers={"request": {"set": {"Host": "h.internal", "x-r": "1"}}})])
    assert isinstance(d, Forward) and d.authority == "h.internal"
    assert d.request_headers.set == (("x-r", "1"),)      # host is a rewrite, not a header set


# -- redirect, direct response --------------------------------------------------------------------

@pytest.mark.parametrize("redirect,authority,scheme,status,location", [
    ({"uri": "/v1/new"}, "myapp:8080", "http", 301, "http://myapp:8080/v1/new?q=1"),     # Envoy keeps the port
    ({"authority": "new.example"}, "myapp:8080", "http", 301, "http://new.example/old?q=1"),
    ({"scheme": "https"}, "myapp:80", "http", 301, "https://myapp/old?q=1"),  # :80 dropped with the scheme change
    ({"scheme": "https"}, "myapp:8080", "http", 301, "https://myapp:8080/old?q=1"),
    ({"port": 8443, "scheme": "https", "redirectCode": 308}, "myapp", "http", 308, "https://myapp:8443/old?q=1"),
    ({"derivePort": "FROM_REQUEST_PORT", "authority": "x.example"}, "myapp:8080", "http", 301,
     "http://x.example:8080/old?q=1"),
    ({"derivePort": "FROM_PROTOCOL_DEFAULT", "scheme": "https"}, "myapp:8080", "http", 301,
     "https://myapp/old?q=1"),
])
def test_virtual_service_redirect(redirect: dict[str, Any], authority: str, scheme: str, status: int,
                                  location: str) -> None:
    d = go([{"match": [{"uri": {"prefix": "/old"}}], "redirect": redirect}],
           req("/old?q=1", authority=authority, scheme=scheme))
    assert isinstance(d, LocalReply) and d.status == status and dict(d.headers)["location"] == location
    assert urlsplit(location).path.startswith("/")


@pytest.mark.parametrize("match,prefix_rewrite,path,location", [
    # Envoy RedirectAction.prefix_rewrite: the matched uri prefix (a string, not segments) is
    # swapped; the rest of the path and the query stay
    ([{"uri": {"prefix": "/old"}}], "/new", "/old/x?q=1", "http://myapp/new/x?q=1"),
    ([{"uri": {"prefix": "/old"}}], "/new", "/older", "http://myapp/newer"),
    ([{"uri": {"prefix": "/old/"}}], "/", "/old/x/y", "http://myapp/x/y"),
    ([{"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/bb"}}], "/c", "/bb/x", "http://myapp/c/x"),   # the match that hit
    ([{"uri": {"prefix": "/OLD"}, "ignoreUriCase": True}], "/new", "/old/x", "http://myapp/new/x"),
    # no uri condition: Istio's implicit prefix is "/", so "/v2" + "x" (mind the trailing slash)
    ([{"headers": {"x-move": {"exact": "1"}}}], "/v2/", "/x?q=1", "http://myapp/v2/x?q=1"),
    (None, "/v2", "/x", "http://myapp/v2x"),
])
def test_virtual_service_redirect_prefix_rewrite(match: list[dict[str, Any]] | None, prefix_rewrite: str,
                                                 path: str, location: str) -> None:
    http: dict[str, Any] = {"redirect": {"prefixRewrite": prefix_rewrite}}
    if match is not None:
        http["match"] = match
    d = go([http], req(path, authority="myapp", headers={"x-move": "1"}))
    assert isinstance(d, LocalReply) and d.status == 301 and dict(d.headers)["location"] == location


def test_prefix_rewrite_with_the_other_redirect_fields() -> None:
    d = go([{"match": [{"uri": {"prefix": "/api/v1"}}],
             "redirect": {"prefixRewrite": "/api/v2", "authority": "new.example", "scheme": "https",
                          "redirectCode": 308}}], req("/api/v1/users?id=7", authority="myapp:8080"))
    assert isinstance(d, LocalReply) and d.status == 308
    assert dict(d.headers)["location"] == "https://new.example/api/v2/users?id=7"


@pytest.mark.parametrize("code", [300, 304, 305, 399])
def test_a_redirect_code_envoy_lacks_drops_the_route_as_istio_does(code: int) -> None:
    """Istio validation admits any 3xx as redirectCode, and its translation then drops the route
    (route.go ApplyRedirect): its requests go on to the next route, never answered with that code."""
    http = [{"match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/new", "redirectCode": code}}, rule(None, "b")]
    assert where(http, path="/old/x") == "default/b"
    assert where([{**http[0], "redirect": {"uri": "/new", "redirectCode": 307}}, http[1]], path="/old/x") == "307"


def test_direct_response_with_route_response_headers() -> None:
    d = go([{"directResponse": {"status": 418, "body": {"string": "short and stout"}},
             "headers": {"response": {"set": {"x-teapot": "yes"}}}}])
    assert isinstance(d, LocalReply) and (d.status, d.body, d.flags) == (418, b"short and stout", "")
    assert dict(d.headers) == {"content-type": "text/plain", "x-teapot": "yes"}


def test_direct_response_bytes_reach_the_wire_as_the_decoded_bytes() -> None:
    """`body.bytes` is base64 (Istio: `format: byte`): the client gets exactly the decoded bytes,
    binary included, after the model went over the config stream (JSON) to the waypoint."""
    from ambit.configclient.codec import decode, encode
    from tests.unit.waypoint.support import translated
    from waypoint.routing import build_table
    png = b"\x89PNG\r\n\x1a\n\xff\x00"
    http = [{"directResponse": {"status": 200, "body": {"bytes": base64.b64encode(png).decode()}}}]
    sent = [encode(w) for w in translated(objects() + [vs(http)]).waypoint_routes]
    got = [decode("ambit.io/WaypointRoutes", e.name, e.body) for e in sent]
    d = decide(build_table(got), req("/", authority="myapp"), down())
    assert isinstance(d, LocalReply) and (d.status, d.body) == (200, png)


# -- header operations ----------------------------------------------------------------------------

def test_route_level_header_operations_win_over_destination_level() -> None:
    """Envoy applies the weighted cluster's (destination's) operations first and the route's last
    (most_specific_header_mutations_wins is false, as Istio leaves it)."""
    http = [{"route": [{"destination": {"host": "a"},
                        "headers": {"request": {"set": {"x-both": "dest", "x-dest": "d"}, "add": {"x-gone": "d"}},
                                    "response": {"add": {"x-resp": "dest"}}}}],
             "headers": {"request": {"set": {"x-both": "route"}, "remove": ["x-gone", "x-client"]},
                         "response": {"add": {"x-resp": "route"}}}}]
    d = go(http)
    seen = upstream_headers(d, {"x-client": "c", "x-gone": "client", "x-keep": "k"})
    assert seen == {"x-keep": "k", "x-both": "route", "x-dest": "d"}
    assert isinstance(d, Forward) and d.response_headers.apply([]) == [("x-resp", "dest"), ("x-resp", "route")]


# -- Gateway API error codes ------------------------------------------------------------------------

def httproute(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "myapp", "port": 80}], "rules": rules}}


@pytest.mark.parametrize("rules,status", [
    ([{"backendRefs": [{"name": "ghost", "port": 80}]}], 500),     # MUST 500 for an invalid backend
    ([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}], 500),   # no backendRefs
    ([{"backendRefs": [{"name": "a", "port": 80, "weight": 0}, {"name": "b", "port": 80, "weight": 0}]}], 500),
])
def test_gateway_api_configuration_errors_answer_500(rules: list[dict[str, Any]], status: int) -> None:
    d = decide(table_of(objects() + [httproute(rules)]), req("/", authority="myapp"), down())
    assert isinstance(d, LocalReply) and d.status == status and d.flags == ""


def test_a_decision_carries_its_routes_name_and_policy() -> None:
    """Timeouts, retries, faults and mirrors are applied by later layers: they take them from the
    decision's `policy`, compiled from the route its `route` names."""
    t = table_of(objects() + [vs([rule([{"uri": {"prefix": "/slow"}}], "a", timeout="1.5s", name="slow"), to("b")])])
    d = decide(t, req("/slow", authority="myapp"), down())
    assert isinstance(d, Forward) and d.route == "VirtualService/default/myapp#slow"
    assert d.policy is not None and d.policy.timeout == 1.5


def test_redirect_and_direct_response_together_are_refused_not_half_applied() -> None:
    """istiod's webhook refuses both on one route ("HTTP route rule cannot contain both
    direct_response and redirect"). Ambit used to accept them and answer with the redirect,
    dropping the direct response without a word."""
    from controller.validation import validate_object

    both = vs([{"redirect": {"uri": "/moved"}, "directResponse": {"status": 200, "body": {"string": "x"}}}])
    assert [e.path for e in validate_object(both)] == ["spec.http[0]"]
    d = go([{"redirect": {"uri": "/moved"}}])
    assert isinstance(d, LocalReply) and d.status == 301 and dict(d.headers)["location"] == "http://myapp/moved"
