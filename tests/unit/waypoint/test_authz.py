"""L7 AuthorizationPolicy in the waypoint, through the REAL controller translation.

Semantics: istio/api security/v1beta1/authorization_policy.proto (decision order, rule shape,
targetRefs), Istio's matchers (pilot/pkg/security/authz), Envoy's RBAC filter reply
(rbac_filter.cc: 403 "RBAC: access denied"); see ../shared/notes/l7-semantics.md §4.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ambit.model import Authorization
from tests.unit.waypoint.support import EXAMPLES, load_yaml, namespace, req, service, translated
from waypoint.authz import TrustDomains, Waypoint, authorize, policy_set
from waypoint.request import Downstream, EndUser

WP = Waypoint(namespace="default", name="waypoint")
FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"


def policy(spec: dict[str, Any], name: str = "p", ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def to_service(rules: list[dict[str, Any]] | None, action: str = "ALLOW", name: str = "p") -> dict[str, Any]:
    spec: dict[str, Any] = {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}], "action": action}
    if rules is not None:
        spec["rules"] = rules
    return policy(spec, name)


def policies(*objs: dict[str, Any], trust_domain: str = "cluster.local") -> list[Authorization]:
    base = [namespace("default"), service("myapp", "default", {"http": 80}, ip="10.96.0.20")]
    return translated(base + list(objs), trust_domain=trust_domain).authorizations


def down(identity: str = FRONTEND, ip: str = "10.244.1.5", port: int = 80, svc: str = "default/myapp") -> Downstream:
    return Downstream(source_identity=identity, source_ip=ip, destination_port=port, service=svc,
                      hostname="myapp.default.svc.cluster.local", destination_ip="10.96.0.20")


def allowed(ps: list[Authorization], head=None, d: Downstream | None = None, tds=None,
            user: EndUser | None = None) -> bool:
    reply, verdict = authorize(policy_set(ps, WP), head or req("/", authority="myapp"), d or down(), tds, user)
    assert (reply is None) == verdict.allowed
    return verdict.allowed


# -- the seed example ------------------------------------------------------------------------------

def seed_policy() -> list[Authorization]:
    """../shared/examples/istio/authorization-policy.yaml with its `selector` swapped for
    `targetRefs` to the Service: a waypoint enforces only targetRefs policies (selector ones are
    the destination ztunnel's), so this is how the seed's intent reaches the waypoint."""
    [obj] = load_yaml(EXAMPLES / "istio" / "authorization-policy.yaml")
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = "default"
    del obj["spec"]["selector"]
    obj["spec"]["targetRefs"] = [{"kind": "Service", "group": "", "name": "myapp"}]
    return policies(obj)


@pytest.mark.parametrize("method,path,identity,ok", [
    ("GET", "/api/users", FRONTEND, True),
    ("GET", "/api/", FRONTEND, True),
    ("GET", "/api/users?id=7", FRONTEND, True),          # the query string is not part of the path
    ("GET", "/api", FRONTEND, False),                    # "/api/*" is the prefix "/api/"
    ("POST", "/api/users", FRONTEND, False),
    ("GET", "/admin", FRONTEND, False),
    ("GET", "/api/users", "spiffe://cluster.local/ns/default/sa/other", False),
    ("GET", "/api/users", "", False),                    # no identity (plaintext) is no principal
])
def test_seed_policy_allows_get_api_from_frontend_only(method: str, path: str, identity: str, ok: bool) -> None:
    ps = seed_policy()
    assert ps[0].scope == "waypoint" and ps[0].http_rules
    assert allowed(ps, req(path, authority="myapp", method=method), down(identity)) is ok


def test_a_denied_request_gets_envoys_rbac_reply() -> None:
    reply, verdict = authorize(policy_set(seed_policy(), WP), req("/admin", authority="myapp"), down())
    assert reply is not None and (reply.status, reply.body, reply.flags) == (403, b"RBAC: access denied", "RBAC")
    assert reply.grpc_status is None and "default/myapp-auth" in reply.reason and not verdict.allowed


def test_a_denied_grpc_request_gets_permission_denied() -> None:
    reply, _ = authorize(policy_set(seed_policy(), WP), req("/pkg.Svc/Get", authority="myapp", method="POST",
                                                            grpc=True), down())
    assert reply is not None and reply.status == 403 and reply.grpc_status == 7


# -- selection -------------------------------------------------------------------------------------

def test_selector_policies_are_not_the_waypoints() -> None:
    [obj] = load_yaml(EXAMPLES / "istio" / "authorization-policy.yaml")
    ps = policies(obj)
    assert ps[0].scope != "waypoint" and ps[0].http_rules == []
    assert allowed(ps, req("/admin", authority="myapp", method="DELETE"))


def test_gateway_bound_policies_apply_to_every_service_and_service_bound_only_to_theirs() -> None:
    deny_all_gw = policy({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                          "name": "waypoint"}], "action": "DENY", "rules": [{}]}, "gw")
    assert not allowed(policies(deny_all_gw), d=down(svc="default/other"))
    other_gw = copy.deepcopy(deny_all_gw)
    other_gw["spec"]["targetRefs"][0]["name"] = "another-waypoint"
    assert allowed(policies(other_gw))
    deny_svc = to_service([{}], action="DENY")
    assert not allowed(policies(deny_svc))
    assert allowed(policies(deny_svc), d=down(svc="default/other"))


# -- decision order --------------------------------------------------------------------------------

def test_allow_with_no_rules_denies_everything_and_an_empty_rule_allows_everything() -> None:
    assert not allowed(policies(to_service(None)))
    assert allowed(policies(to_service([{}])))


def test_deny_wins_over_allow_and_any_allow_makes_the_rest_denied() -> None:
    allow_get = to_service([{"to": [{"operation": {"methods": ["GET"]}}]}], name="allow-get")
    deny_admin = to_service([{"to": [{"operation": {"paths": ["/admin*"]}}]}], action="DENY", name="deny-admin")
    ps = policies(allow_get, deny_admin)
    assert allowed(ps, req("/x", authority="myapp"))
    assert not allowed(ps, req("/admin/x", authority="myapp"))
    assert not allowed(ps, req("/x", authority="myapp", method="PUT"))


def test_audit_never_decides_but_is_reported() -> None:
    ps = policies(to_service([{"to": [{"operation": {"methods": ["GET"]}}]}], action="AUDIT"))
    _, v = authorize(policy_set(ps, WP), req("/", authority="myapp"), down())
    assert v.allowed and v.audit == ("default/p",)


# -- attributes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("operation,method,path,authority,port,ok", [
    ({"notMethods": ["DELETE"]}, "GET", "/", "myapp", 80, True),
    ({"notMethods": ["DELETE"]}, "DELETE", "/", "myapp", 80, False),
    ({"paths": ["/exact"]}, "GET", "/exact", "myapp", 80, True),
    ({"paths": ["/exact"]}, "GET", "/exact/more", "myapp", 80, False),
    ({"paths": ["*.png"]}, "GET", "/img/a.png", "myapp", 80, True),
    ({"paths": ["*"]}, "GET", "/anything", "myapp", 80, True),
    ({"paths": ["/users/{*}/profile"]}, "GET", "/users/ann/profile", "myapp", 80, True),
    ({"paths": ["/users/{*}/profile"]}, "GET", "/users/a/b/profile", "myapp", 80, False),
    ({"paths": ["/files/{**}"]}, "GET", "/files/a/b/c", "myapp", 80, True),
    ({"notPaths": ["/private/*"]}, "GET", "/private/x", "myapp", 80, False),
    ({"notPaths": ["/private/*"]}, "GET", "/public", "myapp", 80, True),
    ({"hosts": ["MyApp.example.com"]}, "GET", "/", "myapp.example.com", 80, True),        # case
    ({"hosts": ["MyApp.example.com:*"]}, "GET", "/", "myapp.example.com:8080", 80, True),   # Istio: the port too
    ({"hosts": ["*.example.com"]}, "GET", "/", "myapp.example.com", 80, True),
    ({"hosts": ["myapp.example.com"]}, "GET", "/", "other.example.com", 80, False),
    ({"notHosts": ["myapp"]}, "GET", "/", "myapp:80", 80, False),
    ({"ports": ["8080"]}, "GET", "/", "myapp", 8080, True),
    ({"ports": ["8080"]}, "GET", "/", "myapp", 80, False),
])
def test_operation_fields(operation: dict[str, Any], method: str, path: str, authority: str, port: int,
                          ok: bool) -> None:
    ps = policies(to_service([{"to": [{"operation": operation}]}]))
    assert allowed(ps, req(path, authority=authority, method=method), down(port=port)) is ok


@pytest.mark.parametrize("source,identity,ip,ok", [
    ({"principals": ["cluster.local/ns/default/sa/*"]}, FRONTEND, "10.244.1.5", True),
    ({"principals": ["*"]}, "", "10.244.1.5", False),
    ({"notPrincipals": ["cluster.local/ns/default/sa/frontend"]}, FRONTEND, "10.244.1.5", False),
    ({"namespaces": ["default"]}, FRONTEND, "10.244.1.5", True),
    ({"namespaces": ["prod"]}, FRONTEND, "10.244.1.5", False),
    ({"notNamespaces": ["default"]}, FRONTEND, "10.244.1.5", False),
    ({"ipBlocks": ["10.244.0.0/16"]}, FRONTEND, "10.244.1.5", True),
    ({"ipBlocks": ["10.244.0.0/16"]}, FRONTEND, "192.168.1.1", False),
    ({"remoteIpBlocks": ["10.244.1.5"]}, FRONTEND, "10.244.1.5", True),
    ({"notRemoteIpBlocks": ["10.244.1.5"]}, FRONTEND, "10.244.1.5", False),
    ({"serviceAccounts": ["frontend"]}, FRONTEND, "10.244.1.5", True),
])
def test_source_fields(source: dict[str, Any], identity: str, ip: str, ok: bool) -> None:
    ps = policies(to_service([{"from": [{"source": source}]}]))
    assert allowed(ps, d=down(identity, ip=ip)) is ok


@pytest.mark.parametrize("when,headers,ok", [
    ({"key": "request.headers[X-Token]", "values": ["secret"]}, {"x-token": "secret"}, True),
    ({"key": "request.headers[X-Token]", "values": ["secret"]}, {"x-token": "other"}, False),
    ({"key": "request.headers[X-Token]", "values": ["sec*"]}, {"x-token": "secret"}, True),
    ({"key": "request.headers[X-Token]", "values": ["secret"]}, {}, False),
    ({"key": "request.headers[X-Env]", "notValues": ["prod"]}, {"x-env": "dev"}, True),
    ({"key": "request.headers[X-Env]", "notValues": ["prod"]}, {"x-env": "prod"}, False),
    ({"key": "source.namespace", "values": ["default"]}, {}, True),
    ({"key": "destination.port", "values": ["80"]}, {}, True),
    ({"key": "remote.ip", "values": ["10.244.0.0/16"]}, {}, True),
])
def test_when_conditions(when: dict[str, Any], headers: dict[str, str], ok: bool) -> None:
    ps = policies(to_service([{"when": [when]}]))
    assert allowed(ps, req("/", authority="myapp", headers=headers)) is ok


def test_from_to_when_are_anded_and_list_entries_ored() -> None:
    rule = {"from": [{"source": {"namespaces": ["prod"]}}, {"source": {"principals": [FRONTEND[9:]]}}],
            "to": [{"operation": {"methods": ["GET"]}}, {"operation": {"paths": ["/health"]}}],
            "when": [{"key": "request.headers[x-ok]", "values": ["1"]}]}
    ps = policies(to_service([rule]))
    assert allowed(ps, req("/x", authority="myapp", headers={"x-ok": "1"}))
    assert allowed(ps, req("/health", authority="myapp", method="POST", headers={"x-ok": "1"}))
    assert not allowed(ps, req("/x", authority="myapp", method="POST", headers={"x-ok": "1"}))
    assert not allowed(ps, req("/x", authority="myapp"))


ALICE = EndUser("https://issuer.example/alice", {"iss": "https://issuer.example", "sub": "alice",
                                                 "aud": ["app", "web"], "azp": "cli",
                                                 "groups": ["dev", "admin"], "org": {"team": "core"}})


def test_request_principals_need_a_verified_jwt() -> None:
    """requestPrincipals read the end user RequestAuthentication verified ("<iss>/<sub>"); a
    request without a JWT has none, so an ALLOW on "*" denies it (Istio's "require a JWT")."""
    any_jwt = policies(to_service([{"from": [{"source": {"requestPrincipals": ["*"]}}]}]))
    assert allowed(any_jwt, user=ALICE)
    assert not allowed(any_jwt)
    exact = policies(to_service([{"from": [{"source": {"requestPrincipals": ["https://issuer.example/bob",
                                                                            "https://issuer.example/ali*"]}}]}]))
    assert allowed(exact, user=ALICE)
    assert not allowed(exact, user=EndUser("https://other.example/alice"))
    # Istio's "deny requests without a JWT": notRequestPrincipals ["*"] matches them
    no_jwt = policies(to_service([{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}], action="DENY"))
    assert not allowed(no_jwt)
    assert allowed(no_jwt, user=ALICE)


@pytest.mark.parametrize("key, values, ok", [
    ("request.auth.claims[groups]", ["admin"], True),            # a list claim: any element
    ("request.auth.claims[groups]", ["ops"], False),
    ("request.auth.claims[org][team]", ["core"], True),          # nested claims
    ("request.auth.claims[org][team]", ["edge"], False),
    ("request.auth.claims[sub]", ["ali*"], True),
    ("request.auth.claims[missing]", ["*"], False),
    ("request.auth.principal", ["https://issuer.example/alice"], True),
    ("request.auth.audiences", ["web"], True),
    ("request.auth.audiences", ["other"], False),
    ("request.auth.presenter", ["cli"], True),
    ("request.auth.presenter", ["web"], False),
])
def test_request_auth_conditions(key: str, values: list[str], ok: bool) -> None:
    ps = policies(to_service([{"when": [{"key": key, "values": values}]}]))
    assert allowed(ps, user=ALICE) is ok
    assert not allowed(ps)                                       # no JWT: no claims
    nots = policies(to_service([{"when": [{"key": key, "notValues": values}]}]))
    assert allowed(nots, user=ALICE) is not ok


def test_connection_sni_is_unsupported_never_allows_and_always_denies() -> None:
    allow_sni = to_service([{"when": [{"key": "connection.sni", "values": ["x"]}]}])
    assert not allowed(policies(allow_sni))
    deny_sni = to_service([{"when": [{"key": "connection.sni", "values": ["x"]}]}], action="DENY")
    assert not allowed(policies(deny_sni))


# -- trust domains ---------------------------------------------------------------------------------

def test_principals_follow_trust_domain_aliases() -> None:
    ps = policies(to_service([{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/frontend"]}}]}]))
    old = "spiffe://old.td/ns/default/sa/frontend"
    assert not allowed(ps, d=down(old))
    assert allowed(ps, d=down(old), tds=TrustDomains("cluster.local", ("old.td",)))
    # a peer from a trust domain the mesh does not accept is denied before any policy is read
    assert not allowed(policies(to_service([{}])), d=down("spiffe://evil.td/ns/default/sa/frontend"),
                       tds=TrustDomains("cluster.local", ("old.td",)))


OLD_FRONTEND = "spiffe://old.td/ns/default/sa/frontend"
ALIASED = TrustDomains("cluster.local", ("old.td",))


@pytest.mark.parametrize("rule,identity,tds,ok", [
    ({"from": [{"source": {"trustDomains": ["cluster.local"]}}]}, FRONTEND, None, True),
    ({"from": [{"source": {"trustDomains": ["other.td"]}}]}, FRONTEND, None, False),
    ({"from": [{"source": {"trustDomains": ["*"]}}]}, FRONTEND, None, True),
    ({"from": [{"source": {"trustDomains": ["*"]}}]}, "", None, False),          # plaintext: no trust domain
    ({"from": [{"source": {"trustDomains": ["clus*"]}}]}, FRONTEND, None, True),
    ({"from": [{"source": {"trustDomains": ["*.local"]}}]}, FRONTEND, None, True),
    ({"from": [{"source": {"trustDomains": ["*frontend"]}}]}, FRONTEND, None, False),   # not the whole identity
    ({"from": [{"source": {"notTrustDomains": ["cluster.local"]}}]}, FRONTEND, None, False),
    ({"from": [{"source": {"notTrustDomains": ["other.td"]}}]}, FRONTEND, None, True),
    ({"from": [{"source": {"notTrustDomains": ["*"]}}]}, "", None, True),          # as notPrincipals
    ({"from": [{"source": {"namespaces": ["default"], "trustDomains": ["other.td"]}}]}, FRONTEND, None, False),
    ({"when": [{"key": "source.trustDomain", "values": ["cluster.local"]}]}, FRONTEND, None, True),
    ({"when": [{"key": "source.trustDomain", "values": ["other.td"]}]}, FRONTEND, None, False),
    ({"when": [{"key": "source.trustDomain", "notValues": ["cluster.*"]}]}, FRONTEND, None, False),
    # a value naming the trust domain or an alias stands for all of them; a wildcard is kept as written
    ({"from": [{"source": {"trustDomains": ["cluster.local"]}}]}, OLD_FRONTEND, ALIASED, True),
    ({"when": [{"key": "source.trustDomain", "values": ["old.td"]}]}, FRONTEND, ALIASED, True),
    ({"from": [{"source": {"notTrustDomains": ["old.td"]}}]}, FRONTEND, ALIASED, False),
    ({"from": [{"source": {"trustDomains": ["old*"]}}]}, FRONTEND, ALIASED, False),
])
def test_trust_domain_fields(rule: dict[str, Any], identity: str, tds: TrustDomains | None, ok: bool) -> None:
    assert allowed(policies(to_service([rule])), d=down(identity), tds=tds) is ok
    assert allowed(policies(to_service([rule], action="DENY")), d=down(identity), tds=tds) is (not ok)


def test_http_rules_survive_the_config_stream() -> None:
    [p] = seed_policy()
    back = Authorization.from_dict(p.to_dict())
    assert back.http_rules == p.http_rules and back.http_rules[0].clauses[1][0].paths == ["/api/*"]


def test_dot_segments_cannot_dodge_a_deny() -> None:
    """Paths are normalized (RFC 3986 dot segments, %2E) before they are matched, as Envoy's
    normalize_path does for Istio, so /api/../admin is /admin."""
    ps = policies(to_service([{"to": [{"operation": {"paths": ["/admin*"]}}]}], action="DENY"))
    for path in ("/admin", "/api/../admin", "/api/%2e%2e/admin", "/./admin/x"):
        assert not allowed(ps, req(path, authority="myapp")), path
    assert allowed(ps, req("/api/admin", authority="myapp"))


def test_the_l4_view_ztunnel_enforces_is_unchanged() -> None:
    """`rules` (ztunnel's view) keeps only the L4 part, marked has_l7, exactly as before the HTTP
    fields existed; the full rule is in `http_rules`, which ztunnel never reads."""
    from ambit.model import Match, Rule
    [p] = seed_policy()
    assert p.rules == [Rule(clauses=[[Match(principals=["cluster.local/ns/default/sa/frontend"])]], has_l7=True)]
    assert p.has_l7 and p.l7_rules
    assert p.http_rules[0].clauses[1] == [Match(methods=["GET"], paths=["/api/*"])]


def test_destination_ip_at_an_ingress_gateway_is_the_address_the_client_connected_to() -> None:
    """At an ingress HTTP listener the request is addressed to no workload (no `destination_ip`, so
    the route lookup goes by Host), but `destination.ip` is still Envoy's downstream local address:
    the gateway's own address. It used to be "" there, so an ALLOW on it denied everything."""
    ps = policies(to_service([{"when": [{"key": "destination.ip", "values": ["192.0.2.10/32"]}]}]))
    at_gateway = Downstream(source_identity=FRONTEND, source_ip="203.0.113.9", destination_port=80,
                            service="default/myapp", hostname="myapp.default.svc.cluster.local",
                            local_ip="192.0.2.10")
    assert allowed(ps, d=at_gateway)
    assert not allowed(ps, d=Downstream(source_ip="203.0.113.9", destination_port=80, service="default/myapp",
                                        hostname="myapp.default.svc.cluster.local", local_ip="192.0.2.11"))
    deny = policies(to_service([{"when": [{"key": "destination.ip", "notValues": ["192.0.2.10/32"]}]}],
                               action="DENY"))
    assert allowed(deny, d=at_gateway)
