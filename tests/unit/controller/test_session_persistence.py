"""Gateway API `sessionPersistence` (GEP-1619, experimental channel) in the controller: refused
where its CEL rules (and the wire) refuse it, translated for the waypoint (mesh routes) and the
ingress gateway (Gateway-attached routes), and no longer warned about as "not enforced"; only
`idleTimeout`, which no implementation applies (Gateway API removed it in v1.6), is named."""

from __future__ import annotations

from typing import Any

import pytest

from ambit.model import SessionPersistence
from controller.translate import translate
from controller.validation import validate_object
from controller.waypoints.advisories import advisories
from tests.unit.controller import test_ingress as ingress
from tests.unit.controller.test_config_translate import SVCS, httproute, routes_for
from tests.unit.controller.test_gateway_api_rules import route
from tests.unit.controller.test_waypoint_advisories import ns, svc, waypoint

BACKEND = {"name": "reviews", "port": 9080}


def errors(sp: dict[str, Any], kind: str = "HTTPRoute") -> list[tuple[str, str]]:
    obj = route({"backendRefs": [BACKEND], "sessionPersistence": sp}, kind=kind)
    return [(e.path, e.reason) for e in validate_object(obj)]


WHERE = "spec.rules[0].sessionPersistence"


@pytest.mark.parametrize("sp", [
    {}, {"sessionName": "JSESSIONID"}, {"sessionName": ""}, {"type": "Header", "sessionName": "x-session"},
    {"absoluteTimeout": "1h30m", "cookieConfig": {"lifetimeType": "Permanent"}},
    {"cookieConfig": {"lifetimeType": "Session"}, "idleTimeout": "10m"},
    {"cookie": {"name": "s", "path": "/app", "lifetimeType": "Session"}},     # Gateway API main's shape
    {"type": "Header", "header": {"name": "x-s"}},
])
def test_valid_sessions_are_accepted(sp: dict[str, Any]) -> None:
    assert errors(sp) == []
    assert errors(sp, kind="GRPCRoute") == []


@pytest.mark.parametrize("sp,path,reason", [
    # the CRD's CEL rules, with their messages
    ({"cookieConfig": {"lifetimeType": "Permanent"}}, WHERE,
     "AbsoluteTimeout must be specified when cookie lifetimeType is Permanent"),
    ({"cookie": {"lifetimeType": "Permanent"}}, WHERE,
     "AbsoluteTimeout must be specified when cookie lifetimeType is Permanent"),
    ({"type": "Header", "sessionName": "s", "cookieConfig": {}}, WHERE, "cookieConfig can only be set with type Cookie"),
    ({"type": "Header", "cookie": {"name": "s"}}, WHERE, "cookie must be nil if type is not Cookie"),
    ({"header": {"name": "s"}}, WHERE, "header can only be set with type Header"),
    # the CRD's field schemas
    ({"absoluteTimeout": "1.5h"}, f"{WHERE}.absoluteTimeout",
     'must be a Gateway API duration such as "10s", "500ms" or "1h30m", got "1.5h"'),
    ({"idleTimeout": "10"}, f"{WHERE}.idleTimeout",
     'must be a Gateway API duration such as "10s", "500ms" or "1h30m", got "10"'),
    ({"type": "Sticky"}, f"{WHERE}.type", 'must be one of Cookie, Header, got "Sticky"'),
    ({"cookieConfig": {"lifetimeType": "Forever"}}, f"{WHERE}.cookieConfig.lifetimeType",
     'must be one of Permanent, Session, got "Forever"'),
    ({"sessionName": "x" * 129}, f"{WHERE}.sessionName", "must be at most 128 characters, got 129"),
    ({"type": "Header", "header": {}}, f"{WHERE}.header.name", "required field is missing"),
    # names that would break the Set-Cookie or the header on the wire
    ({"sessionName": "my session"}, f"{WHERE}.sessionName",
     "must be a cookie or header name (letters, digits and !#$%&'*+-.^_`|~), got \"my session\""),
    ({"cookie": {"name": "a=b"}}, f"{WHERE}.cookie.name",
     "must be a cookie or header name (letters, digits and !#$%&'*+-.^_`|~), got \"a=b\""),
    ({"cookie": {"path": "/a; Domain=evil.example"}}, f"{WHERE}.cookie.path",
     'must be a path starting with "/", at most 1024 characters, without ";", got "/a; Domain=evil.example"'),
    ({"sessionName": "a", "cookie": {"name": "b"}}, f"{WHERE}.sessionName",
     "the name is set twice: set sessionName (Gateway API v1.1 to v1.6) or cookie.name / header.name, not both"),
    ({"type": "Header", "sessionName": "Content-Length"}, WHERE,   # would re-frame the response
     "\"Content-Length\" is a header the proxy owns (the message's framing or the connection's options): it cannot "
     "carry a session"),
    ({"type": "Header", "header": {"name": "transfer-encoding"}}, WHERE, None),
    ({"sessionTimeout": "1h"}, f"{WHERE}.sessionTimeout", None),
])
def test_invalid_sessions_are_refused(sp: dict[str, Any], path: str, reason: str | None) -> None:
    got = errors(sp)
    assert [p for p, _ in got] == [path], got
    if reason is not None:
        assert got[0][1] == reason


def _session_of(rules: list[dict[str, Any]], kind: str = "HTTPRoute") -> list[SessionPersistence | None]:
    obj = httproute("web", rules)
    obj["kind"] = kind
    return [r.session for r in routes_for(SVCS + [obj], "reviews.demo.svc.cluster.local").http]


def test_mesh_routes_carry_the_session_of_their_rule_in_either_shape() -> None:
    rule = {"backendRefs": [BACKEND]}
    got = _session_of([
        {**rule, "matches": [{"path": {"type": "Exact", "value": "/a"}}],
         "sessionPersistence": {"sessionName": "JSESSIONID", "absoluteTimeout": "1h",
                                "cookieConfig": {"lifetimeType": "Permanent"}}},
        {**rule, "matches": [{"path": {"type": "Exact", "value": "/b"}}],
         "sessionPersistence": {"type": "Header", "header": {"name": "X-Session"}, "absoluteTimeout": "90s"}},
        {**rule, "matches": [{"path": {"type": "Exact", "value": "/c"}}],
         "sessionPersistence": {"cookie": {"name": "c", "path": "/c"}}},
        {**rule, "matches": [{"path": {"type": "Exact", "value": "/d"}}]}])
    assert got == [SessionPersistence(name="JSESSIONID", absolute_timeout=3600.0, permanent=True),
                   SessionPersistence(name="X-Session", header=True, absolute_timeout=90.0),
                   SessionPersistence(name="c", path="/c"),
                   None]


def test_a_rule_without_a_name_gets_its_own_so_rules_never_share_sessions() -> None:
    """GEP-1619 conformance "Session Persistence Scoped to Route Rule": two rules to the same
    Service each keep their own session; all matches of one rule share it."""
    rules = [{"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}, {"headers": [{"name": "x", "value": "1"}]}],
              "backendRefs": [BACKEND], "sessionPersistence": {}},
             {"matches": [{"path": {"type": "PathPrefix", "value": "/b"}}], "backendRefs": [BACKEND],
              "sessionPersistence": {"type": "Header"}}]
    names = {(s.name, s.header) for s in _session_of(rules) if s is not None}
    assert names == {("httproute-demo-web-0", False), ("httproute-demo-web-1", True)}
    grpc = [{"matches": [{"method": {"service": "svc.Foo", "method": m}}], "backendRefs": [BACKEND],
             "sessionPersistence": {}} for m in ("A", "B")]
    assert {s.name for s in _session_of(grpc, kind="GRPCRoute") if s is not None} == {
        "grpcroute-demo-web-0", "grpcroute-demo-web-1"}


def test_gateway_attached_routes_carry_it_to_the_ingress_gateway() -> None:
    r = ingress.route("r")
    r["spec"]["rules"][0]["sessionPersistence"] = {"sessionName": "edge", "type": "Header"}
    tr = translate(ingress.BASE + [ingress.gateway(ingress.HTTP), r])
    assert tr.errors == []
    [host] = tr.ingress.gateways[0].listeners[0].hosts
    assert [x.session for x in host.http] == [SessionPersistence(name="edge", header=True)]


def test_session_persistence_is_no_longer_warned_about_but_idle_timeout_is() -> None:
    served = [ns("demo", **{"ambit.io/use-waypoint": "waypoint"}), svc("web"), waypoint()]

    def hr(sp: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "h", "namespace": "demo"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                         "rules": [{"backendRefs": [{"name": "web", "port": 80}], "sessionPersistence": sp}]}}

    assert advisories([*served, hr({"sessionName": "s", "absoluteTimeout": "1h"})]) == []
    [a] = advisories([*served, hr({"idleTimeout": "10m"})])
    assert (a.ref, a.path) == ("HTTPRoute/demo/h", "spec.rules[0].sessionPersistence.idleTimeout")
    assert a.reason.startswith("accepted, not applied: sessions end only by absoluteTimeout")
