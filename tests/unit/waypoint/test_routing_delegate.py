"""VirtualService delegation (`http[].delegate`, Istio's mergeVirtualServicesIfNeeded/mergeHTTPRoute/
hasConflict; controller.translate.delegates) through the real translation into the waypoint's
route table, in the mesh and at an Istio-Gateway ingress: a platform team's root VirtualService
hands path prefixes to VirtualServices app teams own."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from controller.translate import translate
from controller.waypoints.advisories import advisories
from tests.unit.controller.test_ingress import BASE
from tests.unit.controller.test_istio_gateway import HTTP_8080, INGRESS, istio_gateway
from tests.unit.waypoint.support import backend, decide, namespace, req, service, table_of, upstream_headers
from waypoint import ingress
from waypoint.request import Downstream, Forward
from waypoint.routing import route

NET = "networking.istio.io/v1"


def objects() -> list[dict[str, Any]]:
    return [namespace("default"), namespace("team"),
            *[service(h, "default", {"http": 80}, ip=f"10.96.0.{20 + i}") for i, h in enumerate(("myapp", "a", "b"))],
            service("c", "team", {"http": 80}, ip="10.96.0.40"), service("a", "team", {"http": 80}, ip="10.96.0.41")]


def root(http: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": NET, "kind": "VirtualService", "metadata": {"name": "root", "namespace": "default"},
            "spec": {"hosts": ["myapp"], "http": http, **spec}}


def delegate(http: list[dict[str, Any]], name: str = "shop", ns: str = "team", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": NET, "kind": "VirtualService", "metadata": {"name": name, "namespace": ns},
            "spec": {"http": http, **spec}}


def to(host: str, **extra: Any) -> dict[str, Any]:
    return {"route": [{"destination": {"host": host}}], **extra}


def uri(prefix: str) -> list[dict[str, Any]]:
    return [{"uri": {"prefix": prefix}}]


DOWN = Downstream(service="default/myapp", hostname="myapp.default.svc.cluster.local", destination_port=80)
FALLBACK = to("b")          # the root's last route: default/b


def where(objs: list[dict[str, Any]], path: str, **kw: Any) -> str:
    return backend(decide(table_of(objects() + objs), req(path, authority="myapp", **kw), DOWN))


# -- the mesh --------------------------------------------------------------------------------------

def test_a_root_route_is_replaced_by_its_delegates_routes_in_place() -> None:
    """The delegate's routes take the root route's place (before the root's later routes), narrowed
    to the root's prefix; the delegate's short hosts are its own namespace's."""
    objs = [root([{"match": uri("/shop"), "delegate": {"name": "shop", "namespace": "team"}}, FALLBACK]),
            delegate([{"match": uri("/shop/cart"), **to("c")}, to("a")])]
    assert where(objs, "/shop/cart/1") == "team/c"
    assert where(objs, "/shop/items") == "team/a"       # the delegate's catch-all, within the root's /shop
    assert where(objs, "/other") == "default/b"         # not the delegate's catch-all: the root's next route


def test_the_delegate_namespace_defaults_to_the_roots() -> None:
    objs = [root([{"match": uri("/shop"), "delegate": {"name": "shop"}}, FALLBACK]),
            delegate([to("a")], ns="default"), delegate([to("c")], ns="team")]
    assert where(objs, "/shop") == "default/a"


@pytest.mark.parametrize("name,reason", [
    ("missing", "does not exist"),
    ("hosted", "has hosts, so it is no delegate"),
    ("private", "is not exported to namespace default (its exportTo: .)"),
])
def test_a_delegate_that_cannot_be_used_leaves_the_route_out(name: str, reason: str) -> None:
    """Istio: the root route is dropped, its requests go on to the next route (404 when none matches)."""
    hosted = {**delegate([to("c")], name="hosted"), "spec": {"hosts": ["a"], "http": [to("c")]}}
    objs = [hosted, delegate([to("c")], name="private", exportTo=["."]), delegate([to("c")], name="shop")]
    rooted = root([{"match": uri("/shop"), "delegate": {"name": name, "namespace": "team"}}, FALLBACK])
    assert where([rooted, *objs], "/shop") == "default/b"
    alone = root([{"match": uri("/shop"), "delegate": {"name": name, "namespace": "team"}},
                  {"match": uri("/other"), **to("b")}])
    assert where([alone, *objs], "/shop") == "404"
    assert translate(objects() + [rooted, *objs]).errors == []
    [note] = [a for a in advisories(objects() + [rooted, *objs]) if a.path == "spec.http[0].delegate"]
    assert note.ref == "VirtualService/default/root" and reason in note.reason and "left out" in note.reason
    # exported to the root's namespace by name, the same delegate is used
    shared = delegate([to("c")], name="private", exportTo=[".", "default"])
    assert where([root([{"match": uri("/shop"), "delegate": {"name": "private", "namespace": "team"}}]), shared],
                 "/shop") == "team/c"


def test_a_delegate_routes_nothing_on_its_own_and_says_so() -> None:
    objs = objects() + [delegate([to("c")])]
    assert [r for wr in translate(objs).waypoint_routes for r in wr.http] == []
    assert [(a.ref, a.path, a.cause) for a in advisories(objs) if a.ref.startswith("VirtualService/")] == [
        ("VirtualService/team/shop", "spec.hosts", "DelegateNotUsed")]


@pytest.mark.parametrize("root_match,sub_match,hits,misses", [
    # uri: an exact inside a prefix, a longer prefix; the root's exact only the same exact
    (uri("/api"), [{"uri": {"exact": "/api/health"}}], ["/api/health"], ["/api/health/x", "/api/x"]),
    (uri("/api"), uri("/api/v2"), ["/api/v2/x"], ["/api/v1"]),
    (uri("/api"), uri("/v2"), [], ["/v2", "/api/v2"]),                                  # outside: left out
    ([{"uri": {"exact": "/login"}}], uri("/login"), [], ["/login"]),                    # prefix in exact
    ([{"uri": {"regex": "/a.*"}}], uri("/ab"), [], ["/ab"]),                           # a regex narrows nothing
    # the root's fields fill the delegate's: its method stays
    ([{"uri": {"prefix": "/api"}, "method": {"exact": "GET"}}], uri("/api/v2"), ["/api/v2"], ["POST /api/v2"]),
    # headers: the delegate's add to the root's; a different value for the root's header conflicts
    ([{"uri": {"prefix": "/api"}, "headers": {"x-team": {"exact": "a"}}}],
     [{"headers": {"X-Env": {"exact": "prod"}}}], ["/api x-team=a x-env=prod"], ["/api x-team=a", "/api x-env=prod"]),
    ([{"headers": {"x-team": {"exact": "a"}}}], [{"headers": {"x-team": {"exact": "b"}}}], [], ["/ x-team=b"]),
    # several root matches: each delegate match is merged with every root match it fits
    ([{"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/b"}}], [{"headers": {"x-v": {"exact": "1"}}}],
     ["/a x-v=1", "/b x-v=1"], ["/a", "/c x-v=1"]),
    # ignoreUriCase must agree; a root sourceNamespace must be the delegate's too (Istio's hasConflict)
    ([{"uri": {"prefix": "/api"}, "ignoreUriCase": True}], uri("/api/x"), [], ["/api/x"]),
    ([{"sourceNamespace": "ops"}], uri("/x"), [], ["/x"]),
])
def test_matches_merge_as_istio_merges_them(root_match: list[dict[str, Any]], sub_match: list[dict[str, Any]],
                                            hits: list[str], misses: list[str]) -> None:
    objs = [root([{"match": root_match, "delegate": {"name": "shop", "namespace": "team"}}, FALLBACK]),
            delegate([{"match": sub_match, **to("c")}])]
    table = table_of(objects() + objs)

    def sent(what: str) -> str:     # "[METHOD] path [name=value ...]"
        words = what.split()
        method = words.pop(0) if words[0] in ("GET", "POST") else "GET"
        return backend(decide(table, req(words[0], authority="myapp", method=method,
                                         headers=dict(h.split("=") for h in words[1:])), DOWN))
    assert [sent(h) for h in hits] == ["team/c"] * len(hits)
    assert [sent(m) for m in misses] == ["default/b"] * len(misses)


def test_the_delegate_route_takes_the_root_routes_settings_it_leaves_unset() -> None:
    """mergeHTTPRoute: timeout, headers, retries, rewrite... of the root where the delegate route has
    none; its own win (whole fields: headers are not merged key by key); names join."""
    platform = {"request": {"set": {"x-platform": "1"}}}
    objs = [root([{"name": "shop", "match": uri("/shop"), "delegate": {"name": "shop", "namespace": "team"},
                   "timeout": "7s", "headers": platform, "rewrite": {"uri": "/"}}, FALLBACK]),
            delegate([{"name": "cart", "match": uri("/shop/cart/"), **to("c"), "timeout": "2s",
                       "headers": {"request": {"set": {"x-app": "cart"}}}},
                      {"match": uri("/shop/"), **to("a")}])]
    [wr] = [w for w in translate(objects() + objs).waypoint_routes if w.http]
    assert [(r.name, r.timeout, r.source) for r in wr.http] == [
        ("shop-cart", 2.0, "VirtualService/default/root"), ("shop", 7.0, "VirtualService/default/root"),
        ("", 0.0, "VirtualService/default/root")]
    assert wr.sources == ["VirtualService/default/root", "VirtualService/team/shop"]
    table = table_of(objects() + objs)
    cart = decide(table, req("/shop/cart/9", authority="myapp"), DOWN)
    items = decide(table, req("/shop/items", authority="myapp"), DOWN)
    assert isinstance(cart, Forward) and isinstance(items, Forward)
    assert upstream_headers(cart, {}).get("x-app") == "cart" and "x-platform" not in upstream_headers(cart, {})
    assert upstream_headers(items, {}).get("x-platform") == "1"
    assert (cart.service, items.service) == ("team/c", "team/a")
    # the root's rewrite, on both: it replaces the prefix the merged route matched (the delegate's)
    assert (cart.path, items.path) == ("/9", "/items")


def test_a_second_level_is_refused_and_the_root_route_left_out() -> None:
    deeper = delegate([{"match": uri("/shop/x"), "delegate": {"name": "x"}}, to("c")])
    tr = translate(objects() + [root([{"match": uri("/shop"), "delegate": {"name": "shop", "namespace": "team"}},
                                      FALLBACK]), deeper, delegate([to("a")], name="x")])
    assert [(e.ref, e.path) for e in tr.errors] == [("VirtualService/team/shop", "spec.http[0].delegate")]
    [wr] = [w for w in tr.waypoint_routes if w.http]
    assert [r.destinations[0].host for r in wr.http] == ["b.default.svc.cluster.local"]


def test_a_changed_delegate_changes_the_roots_routes() -> None:
    """Translation is a function of the whole snapshot: the root is translated again with the
    delegate's new routes, the delegate's arrival and its removal alike."""
    rooted = root([{"match": uri("/shop"), "delegate": {"name": "shop", "namespace": "team"}}, FALLBACK])
    v1 = delegate([to("c")])
    v2 = copy.deepcopy(v1)
    v2["spec"]["http"] = [{"match": uri("/shop/new"), **to("a")}]
    assert where([rooted], "/shop/new") == "default/b"
    assert where([rooted, v1], "/shop/new") == "team/c"
    assert where([rooted, v2], "/shop/new") == "team/a"
    assert where([rooted, v2], "/shop/old") == "default/b"


# -- at the ingress ------------------------------------------------------------------------------

def _edge(objs: list[dict[str, Any]], path: str, host: str = "shop.example.com", **headers: str) -> str:
    tr = translate(BASE + [INGRESS, istio_gateway(HTTP_8080), *objs])
    assert tr.errors == []
    port = ingress.build(tr.ingress.gateways[0]).ports[8080]
    vhost = port.virtual_host(host)
    if vhost is None:
        return "404"
    return backend(route(port.table, req(path, authority=host, headers=headers),
                         Downstream(destination_port=8080, hostname=vhost), random.Random(1)))


def test_a_platform_root_at_the_ingress_delegates_prefixes_to_app_teams() -> None:
    """The root binds the Gateway and the host; each app team's delegate (no hosts, no gateways)
    routes its prefix to its own Services, which it names by short name."""
    edge = {"apiVersion": NET, "kind": "VirtualService", "metadata": {"name": "edge", "namespace": "web"},
            "spec": {"hosts": ["shop.example.com"], "gateways": ["bookinfo-gateway"], "http": [
                {"match": uri("/team"), "delegate": {"name": "team-routes", "namespace": "team"}},
                {"match": uri("/gone"), "delegate": {"name": "nobody", "namespace": "team"}},
                {"route": [{"destination": {"host": "echo", "port": {"number": 80}}}]}]}}
    team = delegate([{"match": [{"uri": {"prefix": "/team/api"}, "headers": {"x-v": {"exact": "2"}}}],
                      "route": [{"destination": {"host": "echo", "port": {"number": 80}}}]}],
                    name="team-routes", ns="team")
    assert _edge([edge, team], "/team/api/x", **{"x-v": "2"}) == "team/echo"
    assert _edge([edge, team], "/team/api/x") == "web/echo"                 # the header is the delegate's too
    tr = translate(BASE + [INGRESS, istio_gateway(HTTP_8080), edge, team])
    [vhost] = [h for ln in tr.ingress.gateways[0].listeners if ln.port == 8080 for h in ln.hosts]
    assert [(r.destinations[0].host, [(m.path.value, [h.name for h in m.headers]) for m in r.matches])
            for r in vhost.http] == [("echo.team.svc.cluster.local", [("/team/api", ["x-v"])]),
                                     ("echo.web.svc.cluster.local", [])]
    # the delegate's route is not served without the root (nor for other hosts), and a missing one is left out
    assert _edge([team], "/team/api/x", **{"x-v": "2"}) == "404"
    assert _edge([edge, team], "/gone") == "web/echo"
