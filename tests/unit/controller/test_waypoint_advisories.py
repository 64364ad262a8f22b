"""Accepted-but-not-enforced configuration is said out loud (controller.waypoints.advisories),
as AuthorizationPolicy status conditions and as `ambit apply` warnings."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import yaml

from ambitctl.commands import config
from controller.waypoints.advisories import (
    ISTIO_WARNING,
    NOT_ENFORCED,
    WAYPOINT_ACCEPTED,
    ZTUNNEL_ACCEPTED,
    advisories,
    object_conditions,
    policy_conditions,
)


def ns(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def svc(name: str, namespace: str = "demo", **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}}


def waypoint(name: str = "waypoint", namespace: str = "demo", **labels: str) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"gatewayClassName": "ambit-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def policy(spec: dict, name: str = "p") -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "demo"}, "spec": spec}


L7_RULES = {"rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}}]}]}


def test_selector_policy_with_http_rules_is_ztunnel_accepted_false() -> None:
    p = policy({"selector": {"matchLabels": {"app": "web"}}, **L7_RULES})
    found = advisories([ns("demo"), p])
    assert [(a.path, a.condition) for a in found] == [
        ("spec.rules[0].to[0].operation.methods", ZTUNNEL_ACCEPTED),
        ("spec.rules[0].to[0].operation.paths", ZTUNNEL_ACCEPTED)]
    assert "fails closed (in an ALLOW policy these rules allow nothing)" in found[0].reason
    [cond] = policy_conditions(p, found)
    assert (cond["type"], cond["status"], cond["reason"]) == ("ZtunnelAccepted", "False", "UnsupportedValue")
    assert "operation.methods" in cond["message"] and "targetRefs" in cond["message"]


def test_l4_only_selector_policy_has_no_condition() -> None:
    p = policy({"selector": {"matchLabels": {"app": "web"}},
                "rules": [{"from": [{"source": {"namespaces": ["demo"]}}], "to": [{"operation": {"ports": ["80"]}}]}]})
    assert advisories([p]) == [] and policy_conditions(p, []) == []


def test_targetref_policy_needs_a_waypoint_serving_its_service() -> None:
    p = policy({"targetRefs": [{"kind": "Service", "group": "", "name": "web"}], **L7_RULES})
    # no waypoint at all
    [a] = advisories([ns("demo"), svc("web"), p])
    assert (a.condition, a.cause, a.path) == (WAYPOINT_ACCEPTED, "AncestorNotBound", "spec.targetRefs[0]")
    assert "uses no waypoint" in a.reason and "ambit waypoint apply -n demo" in a.reason
    assert policy_conditions(p, [a])[0]["status"] == "False"
    # the namespace uses a waypoint that does not exist yet
    [a] = advisories([ns("demo", **{"ambit.io/use-waypoint": "waypoint"}), svc("web"), p])
    assert "does not exist" in a.reason
    # a waypoint for workloads only does not enforce Service policy
    [a] = advisories([ns("demo", **{"ambit.io/use-waypoint": "waypoint"}), svc("web"), p,
                      waypoint(**{"istio.io/waypoint-for": "workload"})])
    assert "workload traffic" in a.reason
    # served: accepted
    objs = [ns("demo", **{"ambit.io/use-waypoint": "waypoint"}), svc("web"), p, waypoint()]
    assert advisories(objs) == []
    [cond] = policy_conditions(p, [])
    assert (cond["type"], cond["status"]) == ("WaypointAccepted", "True")


def test_targetref_to_missing_gateway_or_service_is_target_not_found() -> None:
    p = policy({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "wp"},
                               {"kind": "Service", "group": "", "name": "nope"}], **L7_RULES})
    found = advisories([p])
    assert [(a.path, a.cause) for a in found] == [("spec.targetRefs[0]", "TargetNotFound"),
                                                  ("spec.targetRefs[1]", "TargetNotFound")]
    assert advisories([p, waypoint("wp"), svc("nope")])[0].path == "spec.targetRefs[1]"  # a Service without waypoint


def test_routes_for_a_host_without_waypoint_warn() -> None:
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r", "namespace": "demo"},
          "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]}}
    [a] = advisories([ns("demo"), svc("web"), vs])
    assert a.ref == "VirtualService/demo/r" and a.condition == NOT_ENFORCED
    assert ("accepted, but not enforced until a waypoint serves web.demo.svc.cluster.local: apply a waypoint with "
            "`ambit waypoint apply -n demo") in a.reason
    assert advisories([ns("demo", **{"istio.io/use-waypoint": "waypoint"}), svc("web"), vs, waypoint()]) == []
    hr = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "h", "namespace": "demo"},
          "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                   "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}
    [a] = advisories([ns("demo"), svc("web"), hr])
    assert a.ref == "HTTPRoute/demo/h" and "not enforced until a waypoint serves web.demo.svc.cluster.local" in a.reason


def test_resilience_fields_are_applied_without_warnings_and_the_rest_is_named() -> None:
    """Issue 12's fields are applied by the waypoint: no warning. What is not applied, or applied
    differently from Istio, is named with its field path and the reason."""
    served = [ns("demo", **{"ambit.io/use-waypoint": "waypoint"}), svc("web"), waypoint()]
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r", "namespace": "demo"},
          "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}], "timeout": "1s",
                                               "retries": {"attempts": 3},
                                               "fault": {"abort": {"httpStatus": 500, "percentage": {"value": 5}}},
                                               "mirror": {"host": "web"},
                                               "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}]}}]}}
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "d", "namespace": "demo"},
          "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"},
                                                    "connectionPool": {"tcp": {"maxConnections": 1}},
                                                    "outlierDetection": {"consecutive5xxErrors": 1},
                                                    "retryBudget": {"percent": 20}},
                   "subsets": [{"name": "v1", "labels": {"v": "1"},
                                "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}]}}
    hr = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "h", "namespace": "demo"},
          "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                   "rules": [{"backendRefs": [{"name": "web", "port": 80}], "timeouts": {"request": "1s"},
                              "retry": {"attempts": 2},
                              "filters": [{"type": "RequestMirror", "requestMirror": {
                                  "backendRef": {"name": "web", "port": 80}}}]}]}}
    assert advisories([*served, vs, dr, hr]) == []

    vs2 = {**vs, "spec": {"hosts": ["web"], "http": [{
        "route": [{"destination": {"host": "web"}}],
        "fault": {"delay": {"exponentialDelay": "1s"}},
        "retries": {"attempts": 2, "retryRemoteLocalities": True},     # applied (previous_priorities)
        "mirrors": [{"destination": {"host": "web"}}, {"destination": {"host": "shadow.example.com"}}]}]}}
    dr2 = {**dr, "spec": {"host": "web", "trafficPolicy": {
        "loadBalancer": {"simple": "PASSTHROUGH"},
        "connectionPool": {"tcp": {"tcpKeepalive": {"time": "10s"}}, "http": {"http2KeepAlive": {"interval": "5s"}}},
        "tls": {"mode": "SIMPLE"}}}}
    found = {(a.ref, a.path): a.reason for a in advisories([*served, vs2, dr2])}
    assert set(found) == {
        ("VirtualService/demo/r", "spec.http[0].fault.delay"),
        ("VirtualService/demo/r", "spec.http[0].fault.delay.exponentialDelay"),
        ("VirtualService/demo/r", "spec.http[0].mirrors[1].destination.host"),
        ("DestinationRule/demo/d", "spec.trafficPolicy.loadBalancer.simple"),
        ("DestinationRule/demo/d", "spec.trafficPolicy.tls")}
    assert "this delay is injected into no request, as in Istio" in \
        found[("VirtualService/demo/r", "spec.http[0].fault.delay")]
    assert "shadow.example.com is not a Service the mesh knows" in \
        found[("VirtualService/demo/r", "spec.http[0].mirrors[1].destination.host")]


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="ambit")
    config.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    args.stdout, args.stderr, args.stdin = out, err, io.StringIO(stdin)
    return args.func(args), out.getvalue(), err.getvalue()


def test_ambit_apply_warns_naming_policy_field_and_reason(lab_dir: Path) -> None:
    p = policy({"selector": {"matchLabels": {"app": "web"}}, **L7_RULES}, name="get-only")
    rc, out, err = run("apply", "-f", "-", stdin=yaml.safe_dump_all([ns("demo"), svc("web"), p]))
    assert rc == 0 and "authorizationpolicy.security.istio.io/get-only created" in out
    assert ("Warning: AuthorizationPolicy/demo/get-only: spec.rules[0].to[0].operation.methods: ztunnel cannot "
            "enforce HTTP attributes and fails closed") in err
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r", "namespace": "demo"},
          "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]}}
    rc, out, err = run("apply", "-f", "-", stdin=yaml.safe_dump(vs))
    assert rc == 0 and "Warning: VirtualService/demo/r: no waypoint serves this host: accepted, but not enforced " \
                       "until a waypoint serves web.demo.svc.cluster.local" in err
    # once a waypoint serves the namespace, the same route applies silently
    rc, _, err = run("apply", "-f", "-", stdin=yaml.safe_dump_all([ns("demo", **{"ambit.io/use-waypoint": "waypoint"}),
                                                                  waypoint()]))
    rc, _, err = run("apply", "-f", "-", stdin=yaml.safe_dump(vs))
    assert rc == 0 and err == ""


def test_waypoint_policy_attributes_the_waypoint_cannot_evaluate_are_named() -> None:
    p = policy({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
                "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}],
                           "when": [{"key": "connection.sni", "values": ["x"]},
                                    {"key": "request.auth.claims[iss]", "values": ["x"]},
                                    {"key": "request.headers[x-user]", "values": ["a"]}]}]})
    found = advisories([p, waypoint()])
    # requestPrincipals and request.auth.* are the waypoint's (RequestAuthentication): not named
    assert [(a.path, a.condition) for a in found] == [("spec.rules[0].when[0].key", NOT_ENFORCED)]
    assert "an ALLOW rule that needs it never matches" in found[0].reason
    assert policy_conditions(p, found)[0]["status"] == "True"      # bound to a waypoint all the same


def test_unsupported_targets_are_target_not_found() -> None:
    p = policy({"targetRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "ext"},
                               {"kind": "GatewayClass", "group": "gateway.networking.k8s.io",
                                "name": "istio-waypoint"}], **L7_RULES})
    found = advisories([p])
    assert [(a.path, a.cause) for a in found] == [("spec.targetRefs[0]", "TargetNotFound"),
                                                  ("spec.targetRefs[1]", "TargetNotFound")]
    assert "root namespace" in found[1].reason


def test_unserved_host_messages_say_what_would_make_the_route_apply() -> None:
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r", "namespace": "demo"},
          "spec": {"hosts": ["web", "api.example.com"], "http": [{"route": [{"destination": {"host": "web"}}]}]}}
    reasons = [a.reason for a in advisories([ns("demo"), svc("web"), vs])]
    assert len(reasons) == 2
    assert any(r.startswith("no Service named api.example.com is known to the mesh") for r in reasons)
    assert any(r.startswith("no waypoint serves this host") and "web.demo.svc.cluster.local" in r for r in reasons)
    # a waypoint exists in the namespace but nothing uses it: say which label to set
    found = advisories([ns("demo"), svc("web"), vs, waypoint("wp")])
    assert any("web.demo.svc.cluster.local: label the Service or namespace ambit.io/use-waypoint=wp" in a.reason
               for a in found)
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "d", "namespace": "demo"},
          "spec": {"host": "web", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}}
    [a] = [a for a in advisories([dr]) if a.path]
    assert "HBONE mutual TLS" in a.reason and "issue 12" not in a.reason


def test_request_authentication_not_bound_to_a_waypoint_is_named() -> None:
    def ra(**spec: object) -> dict:
        return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                "metadata": {"name": "jwt", "namespace": "demo"},
                "spec": {**spec, "jwtRules": [{"issuer": "i", "jwksUri": "https://keys.example/jwks"}]}}
    [a] = advisories([ra(selector={"matchLabels": {"app": "x"}}), waypoint()])
    assert (a.path, a.condition) == ("spec.selector", NOT_ENFORCED) and "targetRefs" in a.reason
    [a] = advisories([ra(targetRefs=[{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "nope"}])])
    assert a.path == "spec.targetRefs[0]" and 'no waypoint Gateway "demo/nope"' in a.reason
    gw = ra(targetRefs=[{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}])
    assert advisories([gw, waypoint()]) == []


def test_a_redirect_code_that_drops_the_route_is_named() -> None:
    served = [ns("demo", **{"ambit.io/use-waypoint": "waypoint"}), svc("reviews"), waypoint()]
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r", "namespace": "demo"},
          "spec": {"hosts": ["reviews"], "http": [{"redirect": {"uri": "/n", "redirectCode": 304}},
                                                  {"redirect": {"uri": "/n", "redirectCode": 308}}]}}
    found = {(a.ref, a.path): a.reason for a in advisories([*served, vs])}
    assert found == {("VirtualService/demo/r", "spec.http[0].redirect.redirectCode"):
                     "304 is accepted, not applied: as in Istio, a redirect code other than 301, 302, 303, 307 or 308 "
                     "drops this route (requests it matches go on to the next route)"}


def test_a_selector_policy_on_a_waypoints_pods_is_named_enforced_nowhere() -> None:
    """Istio's pre-1.22 way to bind a policy to a waypoint (`selector: istio.io/gateway-name`) is
    ignored by Istio today, and by every Ambit proxy: a waypoint binds targetRefs only and ztunnel
    does not capture its pods. Accepting it silently would leave a DENY enforced nowhere."""
    deny = {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}
    for label in ("istio.io/gateway-name", "gateway.networking.k8s.io/gateway-name"):
        p = policy({"selector": {"matchLabels": {label: "waypoint"}}, **deny})
        every = advisories([ns("demo"), waypoint(), p])
        found = [a for a in every if "istiod warns" not in a.reason]    # (and istiod's: only HTTP in a DENY)
        assert [(a.path, a.condition, a.cause) for a in found] == [("spec.selector", NOT_ENFORCED, "SelectsWaypoint")]
        assert "enforced nowhere" in found[0].reason and "targetRefs" in found[0].reason
        [cond] = object_conditions(p, every)
        assert (cond["type"], cond["status"], cond["reason"]) == ("Enforced", "False", "SelectsWaypoint")
    # a waypoint of another namespace is not selected; the root namespace selects every namespace's
    l4_deny = {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["legacy"]}}]}]}
    other = policy({"selector": {"matchLabels": {"istio.io/gateway-name": "waypoint"}}, **l4_deny})
    assert advisories([ns("demo"), ns("prod"), waypoint(namespace="prod"), other]) == []
    root = {**other, "metadata": {"name": "p", "namespace": "ambit-system"}}
    assert [a.path for a in advisories([ns("ambit-system"), ns("prod"), waypoint(namespace="prod"), root])] == [
        "spec.selector"]
    # a selector for an application's pods is the destination ztunnel's, as before
    found = advisories([ns("demo"), waypoint(), policy({"selector": {"matchLabels": {"app": "web"}}, **deny})])
    assert [(a.path, a.condition) for a in found] == [("spec.rules[0]", ISTIO_WARNING),    # istiod's warning
                                                      ("spec.rules[0].to[0].operation.paths", ZTUNNEL_ACCEPTED)]


def test_a_star_inside_a_principal_or_a_ztunnel_namespace_is_named() -> None:
    """Istio's wildcards are a leading or trailing `*`: `cluster.local/ns/*/sa/x` matches no
    identity anywhere, and `team-*-prod` no namespace at ztunnel (a waypoint reads it as Istio's
    Envoy does, a wildcard). Accepted as Istio accepts them, but said out loud."""
    rules = [{"from": [{"source": {"principals": ["cluster.local/ns/*/sa/x", "*/sa/x"],
                                   "namespaces": ["team-*-prod", "team-*"]}}],
              "when": [{"key": "source.namespace", "notValues": ["a*b"]}]}]
    found = advisories([ns("demo"), policy({"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
                                            "rules": rules})])
    assert [(a.path, a.condition) for a in found] == [
        ("spec.rules[0].from[0].source.principals[0]", NOT_ENFORCED),
        ("spec.rules[0].from[0].source.namespaces[0]", NOT_ENFORCED),
        ("spec.rules[0].when[0].notValues[0]", NOT_ENFORCED)]
    assert "ztunnel matches this one literally" in found[0].reason and "matches nothing" in found[0].reason
    at_waypoint = advisories([ns("demo"), svc("web", **{"istio.io/use-waypoint": "waypoint"}), waypoint(),
                              policy({"targetRefs": [{"kind": "Service", "group": "", "name": "web"}],
                                      "action": "DENY", "rules": rules})])
    assert [a.path for a in at_waypoint] == ["spec.rules[0].from[0].source.principals[0]"]
