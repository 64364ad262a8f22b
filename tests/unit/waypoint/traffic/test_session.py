"""Session persistence, sans-IO (waypoint/traffic/session.py): the session value as Envoy's
stateful session encodes it, which endpoint a request's session pins, and the route's choice of
backend for a session (GEP-1619: the pin holds across a rule's backends, weight 0 included)."""

from __future__ import annotations

import base64
import dataclasses
import random
from collections.abc import Collection

import pytest

from ambit.configclient import ConfigUpdate
from ambit.model import (
    HttpRoute,
    IngressGateway,
    IngressListener,
    RouteDestination,
    Service,
    SessionPersistence,
    TrafficPolicy,
    WaypointRoutes,
    Workload,
)
from tests.unit.waypoint.test_wiring import FRONTEND, SVC, V1, V2, V2B, proxy
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http.attempt import RESPONSE, Outcome
from waypoint.ingress_listen import IngressListeners
from waypoint.request import Downstream, Forward, LocalReply, RequestHead
from waypoint.resilience.policy import compile_policy
from waypoint.routing import build_table, route
from waypoint.settings import load
from waypoint.traffic.session import SessionPolicy, decode, encode, keeps


def test_the_value_is_envoys_base64_address_and_its_message_with_an_expiry() -> None:
    # envoy cookie.proto: `cookie: sticky-host="MS4yLjMuNDo4MA=="` names 1.2.3.4:80
    assert encode("1.2.3.4:80") == "MS4yLjMuNDo4MA=="
    assert decode("MS4yLjMuNDo4MA==", 0) == "1.2.3.4:80"
    # with a TTL: envoy.Cookie {address = 1; expires = 2} (Envoy's stateful_session_encode_ttl_in_cookie)
    v = encode("1.2.3.4:80", 1000)
    assert base64.b64decode(v) == b"\x0a\x0a1.2.3.4:80\x10\xe8\x07"
    assert decode(v, 999.5) == "1.2.3.4:80"
    assert decode(v, 1000) is None, "an expired session pins nothing"


@pytest.mark.parametrize("value", [
    "", "!!!", "MS4yLjMuNDo4MA", "bm90IGFuIGVuZHBvaW50",           # not base64, unpadded, no ":"
    base64.b64encode(b"\x0a\x7f1.2.3.4:80").decode(),               # a length past the end
    base64.b64encode(b"\x0a\x0a1.2.3.4:80\x18\x01").decode(),       # a field that is not Envoy's
    base64.b64encode(b"\x0a\x0a1.2.3.4:80\x10\xff").decode(),       # a truncated varint
    base64.b64encode(b"1.2.3.4:80\n").decode(),             # a control character
    base64.b64encode(b"\xff\xfe:80").decode(),                      # not ASCII
    "A" * 600,                                                      # too long to be ours
])
def test_a_malformed_value_pins_nothing(value: str) -> None:
    assert decode(value, 0) is None


def test_random_values_never_raise() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        if rng.random() < 0.5:
            raw = b"\x0a" + raw
        got = decode(base64.b64encode(raw).decode(), 0)
        assert got is None or (":" in got and got.isprintable())


def test_cookies_and_headers_in_and_out() -> None:
    cookie = SessionPolicy.compile(SessionPersistence(name="Sess"))
    assert cookie is not None
    head = RequestHead("GET", "/", "h", headers=[("cookie", f'a=1; Sess="{encode("10.0.0.1:80")}"; b=2')])
    assert cookie.pinned(head, 0) == "10.0.0.1:80"
    assert cookie.pinned(RequestHead("GET", "/", "h", headers=[("cookie", "sess=x")]), 0) is None
    assert cookie.response_header("10.0.0.2:80", 0) == ("set-cookie", f'Sess="{encode("10.0.0.2:80")}"; Path=/; '
                                                                      "HttpOnly")
    permanent = SessionPolicy.compile(SessionPersistence(name="s", path="/app", absolute_timeout=90.5,
                                                         permanent=True))
    assert permanent is not None
    name, value = permanent.response_header("10.0.0.2:80", 1000)
    assert value.endswith("; Max-Age=91; Path=/app; HttpOnly")
    assert permanent.pinned(RequestHead("GET", "/", "h", headers=[("cookie", value.split(";")[0])]), 1090) \
        == "10.0.0.2:80"
    assert permanent.pinned(RequestHead("GET", "/", "h", headers=[("cookie", value.split(";")[0])]), 1091) is None
    header = SessionPolicy.compile(SessionPersistence(name="X-Session", header=True))
    assert header is not None and header.response_header("10.0.0.2:80", 0) == ("x-session", encode("10.0.0.2:80"))
    assert header.pinned(RequestHead("GET", "/", "h", headers=[("x-session", encode("10.0.0.2:80"))]), 0) \
        == "10.0.0.2:80"


def test_a_header_the_proxy_owns_never_carries_a_session() -> None:
    """A session header named `content-length` would re-frame every response that starts a session;
    the controller refuses it, and a waypoint given it anyway leaves the route out (fail closed)."""
    with pytest.raises(ValueError, match="proxy owns"):
        SessionPolicy.compile(SessionPersistence(name="Content-Length", header=True))
    r = HttpRoute(source="HTTPRoute/demo/r", session=SessionPersistence(name="transfer-encoding", header=True))
    table = build_table([WaypointRoutes(hostname="web", namespace="demo", service="demo/web",
                                        waypoint="demo/waypoint", http=[r])])
    assert table.hosts["web"].routes == () and "proxy owns" in table.errors[0]
    assert SessionPolicy.compile(SessionPersistence(name="content-length")) is not None, "a cookie's name is free"


def test_a_pin_holds_while_its_endpoint_is_ready_not_ejected_and_not_already_tried() -> None:
    hosts = ("10.0.0.1:80", "10.0.0.2:80")
    assert keeps("10.0.0.1:80", hosts, (), lambda h: False)
    assert not keeps("10.0.0.9:80", hosts, (), lambda h: False)
    assert not keeps("10.0.0.1:80", hosts, ("10.0.0.1:80",), lambda h: False)
    assert not keeps("10.0.0.1:80", hosts, (), lambda h: h == "10.0.0.1:80")
    assert not keeps(None, hosts, (), lambda h: False)


class _Endpoints:
    def __init__(self, by_service: dict[str, Collection[str]]) -> None:
        self.by_service = by_service

    def wall_clock(self) -> float:
        return 0.0

    def session_addresses(self, dest: RouteDestination, port: int) -> Collection[str]:
        return self.by_service.get(dest.service, ())


def test_a_session_keeps_its_backend_whatever_the_weights() -> None:
    """GEP-1619 "Traffic Splitting": a session established on one backend stays there, weight 0
    included; without a session (or one naming no backend's endpoint) the weights decide."""
    r = HttpRoute(source="HTTPRoute/demo/split", session=SessionPersistence(name="s"), destinations=[
        RouteDestination("v1.demo.svc.cluster.local", service="demo/v1", weight=100),
        RouteDestination("v2.demo.svc.cluster.local", service="demo/v2", weight=0)])
    table = build_table([WaypointRoutes(hostname="web.demo.svc.cluster.local", namespace="demo", service="demo/web",
                                        waypoint="demo/waypoint", http=[r])])
    eps = _Endpoints({"demo/v1": ("10.0.1.1:80",), "demo/v2": ("10.0.2.1:80",)})
    down = Downstream(service="demo/web", hostname="web.demo.svc.cluster.local", destination_port=80)

    def to(cookie: str) -> str:
        d = route(table, RequestHead("GET", "/", "web", headers=[("cookie", cookie)] if cookie else []), down,
                  random.Random(1), eps)
        assert isinstance(d, Forward)
        return d.service

    assert {to(f's={encode("10.0.2.1:80")}') for _ in range(20)} == {"demo/v2"}
    assert {to(f's={encode("10.0.1.1:80")}') for _ in range(20)} == {"demo/v1"}
    assert {to(f's={encode("10.0.9.9:80")}') for _ in range(20)} == {"demo/v1"}, "a gone endpoint: by weight"
    assert {to("") for _ in range(20)} == {"demo/v1"}
    d = route(table, RequestHead("GET", "/", "web"), down, random.Random(1), eps)
    assert isinstance(d, Forward) and d.policy is not None and d.policy.session == SessionPolicy.compile(r.session)
    assert compile_policy(HttpRoute()).session is None


def _fwd(r: HttpRoute) -> Forward:
    return Forward("default/myapp", 80, "", SVC.hostname, policy=compile_policy(r))


def test_the_waypoint_pins_re_pins_on_a_retry_and_on_ejection_and_renews_only_on_change() -> None:
    """`WaypointProxy.upstream` with the session of a route over the test Service's three
    endpoints: the pinned one while it serves; another one (and a new value) when a retry has
    tried it, or outlier detection ejected it."""
    r = HttpRoute(session=SessionPersistence(name="s"))
    p = proxy(routes=(WaypointRoutes(hostname=SVC.hostname, namespace="default", service="default/myapp",
                                     waypoint="default/waypoint", policy=TrafficPolicy(
                                         lb="ROUND_ROBIN", outlier_detection=True, consecutive_5xx_errors=1,
                                         max_ejection_percent=100)),))
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert down is not None
    pinned = "10.0.1.2:8080"
    head = RequestHead("GET", "/", "myapp", headers=[("cookie", f"s={encode(pinned)}")])
    for _ in range(4):
        t = p.upstream(_fwd(r), head, down)
        assert t is not None and t.address == pinned and t.response_headers == ()
    t = p.upstream(_fwd(r), head, down, frozenset({pinned}))
    assert t is not None and t.address != pinned
    assert t.response_headers == (("set-cookie", f's="{encode(t.address)}"; Path=/; HttpOnly'),)
    fresh = p.upstream(_fwd(r), RequestHead("GET", "/", "myapp"), down)
    assert fresh is not None and len(fresh.response_headers) == 1
    cluster = t.cluster
    assert cluster is not None and cluster.outlier is not None
    cluster.attempt_result(pinned, Outcome(RESPONSE, 503))
    assert cluster.ejected(pinned)
    t = p.upstream(_fwd(r), head, down)
    assert t is not None and t.address != pinned and t.response_headers[0][1].startswith('s="')


def test_the_ingress_gateway_keeps_a_session_on_its_endpoint_even_at_weight_zero() -> None:
    """A Gateway-attached route at the ingress gateway: `decide` (route) and `upstream` keep a
    session on its endpoint, through a backend whose weight is now 0; a new client is balanced by
    the weights (all on a backend that is no Service: 500, as Gateway API wants)."""
    shop = "shop.example.com"
    r = HttpRoute(source="HTTPRoute/web/shop", session=SessionPersistence(name="shop"), destinations=[
        RouteDestination(SVC.hostname, service="default/myapp", port=80, weight=0),
        RouteDestination("gone.web.svc.cluster.local", weight=1)])
    gw = IngressGateway("gw", "web", listeners=[IngressListener("http", 80, "HTTP", "", "", [],
                                                                [WaypointRoutes(shop, http=[r])])])
    cfg = WaypointConfig(Waypoint("web", "gw"), "cluster.local")
    # the test Service without its waypoint: the gateway balances over its endpoints itself (one bound
    # to a waypoint is reached through it: tests/unit/waypoint/test_wiring.py)
    svc = dataclasses.replace(SVC, waypoint="")
    for t, items in ((Workload.TYPE, {w.uid: w for w in (V1, V2, V2B)}), (Service.TYPE, {svc.resource_name: svc}),
                     (IngressGateway.TYPE, {gw.resource_name: gw})):
        cfg.apply(ConfigUpdate(t, "1", {}, frozenset(), items))
    p = WaypointProxy(load(["--waypoint", "web/gw", "--pod-name", "gw-0", "--node", "node1",
                            "--gateway-class", "ambit"]), cfg, None)
    p.ingress = IngressListeners("127.0.0.1", lambda plug, down: None, lambda *a: None)    # unopened
    down = Downstream(source_ip="198.51.100.1", destination_port=80, edge="http")
    fresh = p.decide(RequestHead("GET", "/", shop), down)
    assert isinstance(fresh, LocalReply) and fresh.status == 500
    head = RequestHead("GET", "/", shop, headers=[("cookie", f"shop={encode('10.0.1.3:8080')}")])
    for _ in range(5):
        d = p.decide(head, down)
        assert isinstance(d, Forward) and d.service == "default/myapp"
        t = p.upstream(d, head, down)
        assert t is not None and t.address == "10.0.1.3:8080" and t.response_headers == ()
