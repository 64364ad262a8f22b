"""Verified JWT claims as routes and policies read them, with Istio's semantics:

- VirtualService matches on `@request.auth.claims.<claim>` (Istio's claim-based routing: the
  claim of the token RequestAuthentication verified, not a header), and on the request's
  pseudo-headers (`:method`, `:authority`, `:path`, `:scheme`), which Istio accepts as match names;
- `scope` and `permission`, and a rule's `spaceDelimitedClaims`, read as space-separated words
  (Envoy's `normalize_payload_in_metadata` as Istio configures it), for routes and policies alike,
  while the claim headers keep the token's own value;
- the controller refuses match names that no request can carry.

Each goes through the real controller validation and translation and the waypoint's own decision
(RequestAuthentication, then AuthorizationPolicy, then routing), with tokens signed by PyJWT.
"""

from __future__ import annotations

from typing import Any

import pytest

from ambit.configclient import ConfigUpdate
from ambit.jwtclaims import claim_values, routing_claim, space_delimited
from controller.validation import validate_object
from tests.unit.waypoint.support import backend, decide, namespace, req, service, table_of, translated
from tests.unit.waypoint.test_jwt_authn import ISS, JWKS, NOW, token
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import TYPES, WaypointConfig
from waypoint.request import Downstream, EndUser, Forward, LocalReply, RequestHead
from waypoint.settings import load

# -- the shared readers ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, path", [
    ("@request.auth.claims.admin", ("admin",)),                 # Istio's examples (pkg/jwt/routing.go)
    ("@request.auth.claims.group.id", ("group", "id")),
    ("@request.auth.claims[admin]", ("admin",)),
    ("@request.auth.claims[group][id]", ("group", "id")),
    ("@request.auth.claims[a.b]", ("a.b",)),                    # a dotted claim name needs brackets
    ("@Request.Auth.Claims.Group", ("Group",)),                 # the prefix without case, the claim with it
    ("@request.auth.claims", None), ("@request.auth.claims.", None), ("@request.auth.claims[]", None),
    ("@request.auth.claims[a", None), ("x-user", None), (":authority", None),
])
def test_routing_claim_reads_istios_two_spellings(name: str, path: tuple[str, ...] | None) -> None:
    assert routing_claim(name) == path


def test_space_delimited_splits_named_string_claims_as_envoy_does() -> None:
    claims = {"scope": "read  write ", "permission": "", "roles": ["a b"], "other": "x y", "n": 3}
    out = space_delimited(claims, ("scope", "permission", "roles", "n", "absent"))
    # words only (empty ones skipped); an empty string and a non-string stay as they were
    assert out == {"scope": ["read", "write"], "permission": "", "roles": ["a b"], "other": "x y", "n": 3}
    assert claims["scope"] == "read  write "                     # the token's own claims are not changed
    assert space_delimited(claims, ("other",))["other"] == ["x", "y"]
    assert space_delimited({"n": 1}, ("scope",)) == {"n": 1}


def test_claim_values_are_what_envoys_list_matcher_sees() -> None:
    claims = {"s": "x", "l": ["a", 1, "b", {"c": 1}], "n": 7, "o": {"team": "core", "deep": {"k": ["v"]}}}
    assert claim_values(claims, ("s",)) == ["x"]
    assert claim_values(claims, ("l",)) == ["a", "b"]           # a list: its string elements
    assert claim_values(claims, ("n",)) == []                   # a number matches no string
    assert claim_values(claims, ("o", "team")) == ["core"]
    assert claim_values(claims, ("o", "deep", "k")) == ["v"]
    assert claim_values(claims, ("o",)) == [] and claim_values(claims, ("missing",)) == []
    assert claim_values(claims, ("s", "x")) == []               # below a string there is nothing


# -- routing on claims and pseudo-headers (the route core, a verified user given) ------------------

def objects() -> list[dict[str, Any]]:
    return [namespace("default")] + [service(h, "default", {"http": 80}, ip=f"10.96.0.{20 + i}")
                                     for i, h in enumerate(("myapp", "a", "b"))]


def vs(match: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "myapp", "namespace": "default"},
            "spec": {"hosts": ["myapp"], "http": [{"match": [match], "route": [{"destination": {"host": "a"}}]},
                                                  {"route": [{"destination": {"host": "b"}}]}]}}


DOWN = Downstream(service="default/myapp", hostname="myapp.default.svc.cluster.local", destination_port=80)


def where(match: dict[str, Any], claims: dict[str, Any] | None = None, **req_kw: Any) -> str:
    head = req(**{"authority": "myapp", **req_kw})
    if claims is not None:
        head.user = EndUser(f"{ISS}/alice", claims)
    return backend(decide(table_of(objects() + [vs(match)]), head, DOWN))


GROUP = {"headers": {"@request.auth.claims.group": {"exact": "admin"}}}


@pytest.mark.parametrize("match, claims, hit", [
    (GROUP, {"group": "admin"}, True),
    (GROUP, {"group": ["dev", "admin"]}, True),                 # a list claim: one element suffices
    (GROUP, {"group": "dev"}, False),
    (GROUP, {}, False),                                          # no such claim
    (GROUP, None, False),                                        # no verified token
    ({"headers": {"@request.auth.claims[group]": {"prefix": "adm"}}}, {"group": "admin"}, True),
    ({"headers": {"@request.auth.claims[org][team]": {"regex": "co.e"}}}, {"org": {"team": "core"}}, True),
    ({"headers": {"@request.auth.claims.org.team": {"exact": "core"}}}, {"org": {"team": "edge"}}, False),
    ({"headers": {"@request.auth.claims.Group": {"exact": "admin"}}}, {"group": "admin"}, False),  # case-sensitive
    ({"headers": {"@request.auth.claims.level": {"exact": "3"}}}, {"level": 3}, False),   # a number is no string
    ({"headers": {"@request.auth.claims.group": {}}}, {"group": "x"}, True),              # {}: present
    ({"headers": {"@request.auth.claims.group": {}}}, {"other": "x"}, False),
    ({"withoutHeaders": {"@request.auth.claims.group": {"exact": "admin"}}}, {"group": "dev"}, True),
    ({"withoutHeaders": {"@request.auth.claims.group": {"exact": "admin"}}}, {"group": ["admin"]}, False),
    ({"withoutHeaders": {"@request.auth.claims.group": {"exact": "admin"}}}, None, True),   # no token: no claim
    ({"withoutHeaders": {"@request.auth.claims.group": {}}}, {"group": "x"}, False),
    # with a header of the same spelling the client cannot fake a claim
    ({"headers": {"@request.auth.claims.group": {"exact": "admin"}, "x-a": {"exact": "1"}}}, {"group": "admin"},
     True),
])
def test_a_route_matches_the_verified_claims(match: dict[str, Any], claims: dict[str, Any] | None, hit: bool) -> None:
    headers = {"x-a": "1"}
    assert where(match, claims, headers=headers) == ("default/a" if hit else "default/b")


@pytest.mark.parametrize("match, kw, hit", [
    ({"headers": {":method": {"exact": "POST"}}}, {"method": "POST"}, True),
    ({"headers": {":method": {"exact": "POST"}}}, {"method": "GET"}, False),
    ({"headers": {":path": {"prefix": "/api"}}}, {"path": "/api/v1?x=1"}, True),
    ({"headers": {":path": {"exact": "/api?x=1"}}}, {"path": "/api?x=1"}, True),     # the whole :path, query too
    ({"headers": {":authority": {"regex": "myapp(:80)?"}}}, {}, True),
    ({"headers": {":scheme": {"exact": "https"}}}, {}, False),
    ({"withoutHeaders": {":method": {"exact": "DELETE"}}}, {"method": "GET"}, True),
])
def test_a_route_matches_the_requests_pseudo_headers(match: dict[str, Any], kw: dict[str, Any], hit: bool) -> None:
    """Istio accepts these names; the waypoint looked them up among the headers, where they never are."""
    assert where(match, **kw) == ("default/a" if hit else "default/b")


def test_a_claim_match_is_sent_as_a_claim_and_keeps_its_case() -> None:
    [routes] = [r for r in translated(objects() + [vs({"headers": {"@request.auth.claims[Org][Team]": {}},
                                                       "withoutHeaders": {"X-Legacy": {}}})]).waypoint_routes
                if r.hostname.startswith("myapp.")]
    [h1, h2] = routes.http[0].matches[0].headers
    assert (h1.name, h1.claim, h1.invert) == ("@request.auth.claims[Org][Team]", ["Org", "Team"], False)
    assert (h2.name, h2.claim, h2.invert) == ("x-legacy", [], True)


# -- the controller refuses names no request can carry ----------------------------------------------

@pytest.mark.parametrize("name, reason", [
    ("x user", "must be an HTTP header name"),
    (":status", "no request carries it"),
    (":Method", "must be an HTTP header name"),
    ("@request.auth.claims", "names no JWT claim"),
    ("@request.auth.claims.", "names no JWT claim"),
    ("@request.auth.claims.a..b", "names no JWT claim"),
    ("@request.auth.claims[a", "names no JWT claim"),
    ("@request.auth.claims[a][]", "names no JWT claim"),
])
@pytest.mark.parametrize("field", ["headers", "withoutHeaders"])
def test_a_match_name_no_request_can_carry_is_refused(name: str, reason: str, field: str) -> None:
    """They were accepted, and the route could never match."""
    [(path, why)] = [(e.path, e.reason) for e in validate_object(vs({field: {name: {"exact": "x"}}}))]
    assert path == f"spec.http[0].match[0].{field}[{name}]" and reason in why, (path, why)


@pytest.mark.parametrize("name", ["x-user", ":method", ":authority", ":path", ":scheme", "@request.auth.claims.a",
                                  "@request.auth.claims[a][b]", "@REQUEST.AUTH.CLAIMS.sub"])
def test_the_names_istio_accepts_are_accepted(name: str) -> None:
    assert validate_object(vs({"headers": {name: {"exact": "x"}}})) == []


@pytest.mark.parametrize("rule, reason", [
    ({"spaceDelimitedClaims": [""]}, "must not be empty"),
    ({"spaceDelimitedClaims": [f"c{i}" for i in range(65)]}, "at most 64 items"),
    ({"spaceDelimitedClaims": "roles"}, "must be a list"),
])
def test_space_delimited_claims_are_checked(rule: dict[str, Any], reason: str) -> None:
    obj = {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
           "metadata": {"name": "jwt", "namespace": "default"},
           "spec": {"jwtRules": [{"issuer": ISS, "jwks": JWKS, **rule}]}}
    [e] = validate_object(obj)
    assert e.path.startswith("spec.jwtRules[0].spaceDelimitedClaims") and reason in e.reason, e


# -- end to end through the waypoint's decision -----------------------------------------------------

FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"
TARGET = [{"kind": "Service", "group": "", "name": "myapp"}]


def waypoint_objects(rule: dict[str, Any], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ns = namespace("default", **{"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "waypoint"})
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "waypoint", "namespace": "default"},
          "spec": {"gatewayClassName": "ambit-waypoint",
                   "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
    ra = {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
          "metadata": {"name": "jwt", "namespace": "default"},
          "spec": {"targetRefs": TARGET, "jwtRules": [{"issuer": ISS, "audiences": ["app"], "jwks": JWKS, **rule}]}}
    return [ns, gw, ra, *[service(h, "default", {"http": 80}, ip=f"10.96.0.{20 + i}")
                          for i, h in enumerate(("myapp", "a", "b"))], *extra]


def proxy_of(objs: list[dict[str, Any]]) -> WaypointProxy:
    cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
    for t, items in translated(objs).by_type().items():
        if t in TYPES:
            state = {r.resource_name: r for r in items}
            cfg.apply(ConfigUpdate(t, "1", state, frozenset(), state))
    p = WaypointProxy(load(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "node2"]), cfg, None)
    p.wall_clock = lambda: NOW
    return p


def ask(p: WaypointProxy, tok: str | None, method: str = "GET") -> tuple[str, RequestHead]:
    down, why = p.downstream(FRONTEND, "10.244.1.5", "10.96.0.20:80")
    assert down is not None, why
    head = RequestHead(method, "/", "myapp", headers=[("authorization", f"Bearer {tok}")] if tok else [])
    d = p.decide(head, down)
    if isinstance(d, LocalReply):
        return str(d.status), head
    assert isinstance(d, Forward)
    return d.service, head


def policy(values: list[str], claim: str = "scope") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "writers", "namespace": "default"},
            "spec": {"targetRefs": TARGET, "rules": [{"to": [{"operation": {"methods": ["POST"]}}],
                                                      "when": [{"key": f"request.auth.claims[{claim}]",
                                                                "values": values}]},
                                                     {"to": [{"operation": {"methods": ["GET"]}}]}]}}


def test_an_oauth_scope_is_read_as_its_words_by_policies_and_routes() -> None:
    """`scope: "read write"` was one string: a policy asking for the `write` scope denied every
    token that carried it among others, where Istio admits it."""
    route = vs({"headers": {"@request.auth.claims.scope": {"exact": "admin"}}})
    p = proxy_of(waypoint_objects({"outputClaimToHeaders": [{"header": "x-scope", "claim": "scope"}]},
                                  [policy(["write"]), route]))
    assert ask(p, token(scope="read write"), "POST")[0] == "default/b"
    assert ask(p, token(scope="read"), "POST")[0] == "403"
    assert ask(p, token(permission="write"), "POST")[0] == "403"      # another claim's words are not scopes
    assert ask(p, None, "POST")[0] == "403"
    # the route reads the same words; the claim header gets the token's own value
    where_, head = ask(p, token(scope="read admin"))
    assert where_ == "default/a" and ("x-scope", "read admin") in head.headers
    assert ask(p, token(scope="readadmin"))[0] == "default/b"
    assert ask(p, None)[0] == "default/b"                              # no token: no claim to route on


def test_space_delimited_claims_name_more_claims_to_split() -> None:
    p = proxy_of(waypoint_objects({"spaceDelimitedClaims": ["roles"]}, [policy(["editor"], "roles")]))
    assert ask(p, token(roles="viewer editor"), "POST")[0] == "default/myapp"
    assert ask(p, token(scope="editor"), "POST")[0] == "403"
    plain = proxy_of(waypoint_objects({}, [policy(["editor"], "roles")]))
    assert ask(plain, token(roles="viewer editor"), "POST")[0] == "403"   # not named: one string
    assert ask(plain, token(roles="editor"), "POST")[0] == "default/myapp"


def test_a_claim_route_routes_on_the_verified_token_only() -> None:
    p = proxy_of(waypoint_objects({}, [vs({"headers": {"@request.auth.claims.group": {"exact": "admin"}}})]))
    assert ask(p, token(group="admin"))[0] == "default/a"
    assert ask(p, token(group=["ops", "admin"]))[0] == "default/a"
    assert ask(p, token(group="ops"))[0] == "default/b"
    assert ask(p, token(group="admin", aud="elsewhere"))[0] == "401"  # a token that does not verify routes nowhere


def test_a_claim_match_where_no_token_is_verified_is_warned() -> None:
    """Istio says nothing, and the route never matches; `ambit apply` and `ambit analyze` say why."""
    from ambitctl.analyze import analyze
    from controller.waypoints.advisories import advisories

    route = vs({"headers": {"@request.auth.claims.group": {"exact": "admin"}},
                "withoutHeaders": {"@request.auth.claims[tier]": {}, "x-a": {}}})
    objs = [o for o in waypoint_objects({}, [route]) if o["kind"] != "RequestAuthentication"]
    found = {(a.path, a.cause) for a in advisories(objs) if a.ref == "VirtualService/default/myapp"}
    assert found == {("spec.http[0].match[0].headers[@request.auth.claims.group]", "ClaimsNotVerified"),
                     ("spec.http[0].match[0].withoutHeaders[@request.auth.claims[tier]]", "ClaimsNotVerified")}
    [a] = [a for a in advisories(objs) if a.path.endswith("headers[@request.auth.claims.group]")]
    assert "myapp.default.svc.cluster.local at waypoint default/waypoint" in a.reason and "never holds" in a.reason
    assert {f.code for f in analyze(objs, complete=True) if f.ref == "VirtualService/default/myapp"} == {"AMB0132"}
    # bound to the Service, or to the waypoint: nothing to say
    assert not [a for a in advisories(waypoint_objects({}, [route])) if a.cause == "ClaimsNotVerified"]
    ra_gw = [o for o in waypoint_objects({}, [route])]
    for o in ra_gw:
        if o["kind"] == "RequestAuthentication":
            o["spec"]["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]
    assert not [a for a in advisories(ra_gw) if a.cause == "ClaimsNotVerified"]


def test_an_ingress_gateway_routes_on_claims_too() -> None:
    """Istio's documented use: claim-based routing at the ingress gateway, with a RequestAuthentication
    bound to its Gateway."""
    from tests.unit.controller.test_ingress import BASE
    from tests.unit.controller.test_istio_gateway import HTTP_8080, INGRESS, istio_gateway
    from waypoint.ingress_listen import IngressListeners

    both = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "canary", "namespace": "web"},
            "spec": {"clusterIP": "10.96.0.52", "selector": {"app": "canary"}, "ports": [{"port": 80}]}}
    route = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "edge", "namespace": "web"},
             "spec": {"hosts": ["*"], "gateways": ["bookinfo-gateway"], "http": [
                 {"match": [{"headers": {"@request.auth.claims[group]": {"exact": "beta"}}}],
                  "route": [{"destination": {"host": "canary", "port": {"number": 80}}}]},
                 {"route": [{"destination": {"host": "echo", "port": {"number": 80}}}]}]}}
    ra = {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
          "metadata": {"name": "jwt", "namespace": "web"},
          "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}],
                   "jwtRules": [{"issuer": ISS, "audiences": ["app"], "jwks": JWKS}]}}
    cfg = WaypointConfig(Waypoint("web", "gw"), "cluster.local")
    for t, items in translated(BASE + [INGRESS, both, istio_gateway(HTTP_8080), route, ra]).by_type().items():
        if t in TYPES:
            state = {r.resource_name: r for r in items}
            cfg.apply(ConfigUpdate(t, "1", state, frozenset(), state))
    p = WaypointProxy(load(["--waypoint", "web/gw", "--pod-name", "gw-0", "--node", "node1",
                            "--gateway-class", "ambit"]), cfg, None)
    p.wall_clock = lambda: NOW
    p.ingress = IngressListeners("127.0.0.1", lambda plug, down: None, lambda transport, down, early: None)

    def where(tok: str | None) -> str:
        head = RequestHead("GET", "/", "shop.example.com", headers=[("authorization", f"Bearer {tok}")] if tok else [])
        d = p.decide(head, Downstream(source_ip="198.51.100.1", destination_port=8080))
        return d.service if isinstance(d, Forward) else str(d.status)

    assert where(token(group="beta")) == "web/canary"
    assert where(token(group="ga")) == "web/echo"
    assert where(None) == "web/echo"
    assert where(token(group="beta", aud="other")) == "401"


@pytest.mark.parametrize("rule, path, effect", [
    ({"from": [{"source": {"requestPrincipals": [f"{ISS}/*"]}}]}, "spec.rules[0].from[0].source.requestPrincipals",
     "a DENY rule with it denies nothing"),
    ({"when": [{"key": "request.auth.claims[group]", "values": ["banned"]}]}, "spec.rules[0].when[0].values",
     "a DENY rule with it denies nothing"),
])
def test_a_policy_on_the_token_where_no_token_is_verified_is_warned(rule: dict[str, Any], path: str,
                                                                    effect: str) -> None:
    """A DENY on a JWT's principal or claims denies nothing where no RequestAuthentication verifies
    a token: every request there has none. Istio says nothing."""
    from controller.waypoints.advisories import advisories

    deny = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "no-banned", "namespace": "default"},
            "spec": {"targetRefs": TARGET, "action": "DENY", "rules": [rule]}}
    objs = [o for o in waypoint_objects({}, [deny]) if o["kind"] != "RequestAuthentication"]
    [a] = [a for a in advisories(objs) if a.cause == "ClaimsNotVerified"]
    assert (a.ref, a.path) == ("AuthorizationPolicy/default/no-banned", path)
    assert "waypoint default/waypoint" in a.reason and effect in a.reason
    # bound to the waypoint's Gateway, the policy to the Service: verified there, nothing to say
    gw_bound = waypoint_objects({}, [deny])
    for o in gw_bound:
        if o["kind"] == "RequestAuthentication":
            o["spec"]["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]
    assert [a for a in advisories(gw_bound) if a.cause == "ClaimsNotVerified"] == []
    # and the policy bound to the Gateway, the token verified for myapp: requests to myapp carry it
    at_gw = {**deny, "spec": {**deny["spec"], "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                                               "name": "waypoint"}]}}
    assert [a for a in advisories(waypoint_objects({}, [at_gw])) if a.cause == "ClaimsNotVerified"] == []
    # notRequestPrincipals ("require a token") is not warned: it denies every request, visibly
    require = {**deny, "spec": {**deny["spec"], "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]}}
    assert [a for a in advisories([o for o in waypoint_objects({}, [require]) if o["kind"] != "RequestAuthentication"])
            if a.cause == "ClaimsNotVerified"] == []
