"""Names a request match may use, across the kinds that match requests: what no request can
carry is refused when applied (it was accepted, and the condition never matched: a DENY then
denied nothing), and the request's pseudo-headers are read as Envoy's header matchers read them.

The VirtualService's names (headers, pseudo-headers, JWT claims) are in test_jwt_claims.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.validation import validate_object
from tests.unit.waypoint.support import req
from tests.unit.waypoint.test_authz import allowed, policies, to_service


def errors(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.path, e.reason) for e in validate_object(obj)]


@pytest.mark.parametrize("name, reason", [
    ("x user", "must be an HTTP header name"),
    ("", "must be an HTTP header name"),
    (":status", "response pseudo-header"),
    (":Authority", "must be an HTTP header name"),
])
def test_a_policy_condition_on_a_header_no_request_carries_is_refused(name: str, reason: str) -> None:
    obj = to_service([{"when": [{"key": f"request.headers[{name}]", "values": ["a"]}]}], "DENY")
    got = errors(obj)
    if name == "":      # "request.headers[]" is no condition key at all
        assert got == [("spec.rules[0].when[0].key", 'unknown condition key "request.headers[]"')]
        return
    [(path, why)] = got
    assert path == "spec.rules[0].when[0].key" and reason in why and "a DENY with it would deny nothing" in why


@pytest.mark.parametrize("key, kw, denied", [
    ("request.headers[:authority]", {"authority": "admin.myapp"}, True),
    ("request.headers[:authority]", {"authority": "myapp"}, False),
    ("request.headers[:method]", {"method": "DELETE"}, True),
    ("request.headers[:path]", {"path": "/admin?x=1"}, True),      # the whole :path, as Envoy's RBAC
    ("request.headers[:scheme]", {}, False),
])
def test_a_deny_on_a_pseudo_header_denies(key: str, kw: dict[str, Any], denied: bool) -> None:
    """Was accepted and looked up among the headers, where it never is: the DENY denied nothing."""
    values = {":authority": "admin.*", ":method": "DELETE", ":path": "/admin*", ":scheme": "https"}
    ps = policies(to_service([{"when": [{"key": key, "values": [values[key[16:-1]]]}]}], "DENY"))
    assert allowed(ps, req(**{"authority": "myapp", **kw})) is not denied


def test_an_allow_on_a_pseudo_header_allows_only_what_it_names() -> None:
    ps = policies(to_service([{"when": [{"key": "request.headers[:method]", "values": ["GET", "HEAD"]}]}]))
    assert allowed(ps, req(authority="myapp", method="GET"))
    assert not allowed(ps, req(authority="myapp", method="POST"))


def httproute(match: dict[str, Any], kind: str = "HTTPRoute") -> dict[str, Any]:
    group = "gateway.networking.k8s.io"
    return {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": "r", "namespace": "default"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "myapp", "port": 80}],
                     "rules": [{"matches": [match], "backendRefs": [{"name": "myapp", "port": 80}]}]}}


@pytest.mark.parametrize("kind, match, path", [
    ("HTTPRoute", {"headers": [{"name": "x user", "value": "a"}]}, "spec.rules[0].matches[0].headers[0].name"),
    ("HTTPRoute", {"headers": [{"name": ":method", "value": "GET"}]}, "spec.rules[0].matches[0].headers[0].name"),
    ("HTTPRoute", {"queryParams": [{"name": "a b", "value": "1"}]}, "spec.rules[0].matches[0].queryParams[0].name"),
    ("GRPCRoute", {"headers": [{"name": "x/y", "value": "a"}]}, "spec.rules[0].matches[0].headers[0].name"),
])
def test_a_gateway_api_match_name_outside_its_pattern_is_refused(kind: str, match: dict[str, Any], path: str) -> None:
    """Gateway API's CRDs refuse these names by pattern (`:method` among them: "pseudo headers are
    not currently supported by this type"); the lab accepted them, and the rule never matched."""
    [(p, why)] = errors(httproute(match, kind))
    assert p == path and "must be an HTTP header name" in why, (p, why)


def test_gateway_api_match_names_in_the_pattern_are_accepted() -> None:
    assert errors(httproute({"headers": [{"name": "X-Env_1.v~2", "value": "a"}],
                             "queryParams": [{"name": "page", "value": "1"}]})) == []


# -- other fields that name a header or a cookie ----------------------------------------------------

def dr(hash_: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "d", "namespace": "default"},
            "spec": {"host": "myapp", "trafficPolicy": {"loadBalancer": {"consistentHash": hash_}}}}


BASE_HASH = "spec.trafficPolicy.loadBalancer.consistentHash"


@pytest.mark.parametrize("obj, path, reason", [
    # no request carries the header: every request was hashed on nothing (spread, never sticky)
    (dr({"httpHeaderName": "x user"}), f"{BASE_HASH}.httpHeaderName", "must be an HTTP header name"),
    # the cookie the waypoint sets (Set-Cookie) and then looks for
    (dr({"httpCookie": {"name": "sid;Domain=evil", "ttl": "10s"}}), f"{BASE_HASH}.httpCookie.name",
     "must be a cookie name"),
    (dr({"httpCookie": {"name": "sid", "ttl": "10s", "path": "/a;Secure"}}), f"{BASE_HASH}.httpCookie.path",
     'without ";"'),
    (dr({"httpCookie": {"name": "sid", "ttl": "10s", "attributes": [{"name": "SameSite", "value": "Lax\r\nX: 1"}]}}),
     f"{BASE_HASH}.httpCookie.attributes[0].value", "control characters"),
    (dr({"httpCookie": {"name": "sid", "ttl": "10s", "attributes": [{"name": "a b", "value": "1"}]}}),
     f"{BASE_HASH}.httpCookie.attributes[0].name", "must be a cookie name"),
    ({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": "t", "namespace": "default"},
      "spec": {"tracing": [{"customTags": {"user": {"header": {"name": "x user"}}}}]}},
     "spec.tracing[0].customTags[user].header.name", "must be an HTTP header name"),
    ({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
      "metadata": {"name": "ra", "namespace": "default"},
      "spec": {"jwtRules": [{"issuer": "i", "fromCookies": ["session id"]}]}},
     "spec.jwtRules[0].fromCookies[0]", "must be a cookie name"),
])
def test_a_header_or_cookie_name_that_cannot_be_is_refused(obj: dict[str, Any], path: str, reason: str) -> None:
    [(p, why)] = errors(obj)
    assert p == path and reason in why, (p, why)


def test_the_cookie_fields_istio_documents_are_accepted() -> None:
    assert errors(dr({"httpCookie": {"name": "user", "ttl": "0s", "path": "/",
                                     "attributes": [{"name": "SameSite", "value": "Strict"}, {"name": "Secure"}]}})) == []
    assert errors(dr({"httpHeaderName": "x-user"})) == []
