"""Parity with istiod's validating webhook (istio/istio `pkg/config/validation`): the rules Istio's
CRDs do not carry, which Ambit must enforce itself as it has no istiod in front.

`ADDED`: each rule this module was written for, on a valid seed with one field changed; every
case was seen accepted (failing here) on the code before it. `ENFORCED`: the rules that already
held, kept as a cheap guard. `KEPT`: what Istio's webhook refuses and Ambit accepts on purpose
(it honours it; docs/configuration.md "Known differences from upstream"), or what Istio accepts
and a too-wide Ambit rule must not refuse.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from controller.validation import validate_object

Obj = dict[str, Any]
ROUTE = [{"destination": {"host": "web"}}]
TR = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]


def _obj(api: str, kind: str, spec: Obj, **md: Any) -> Obj:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "x", "namespace": "demo", **md}, "spec": spec}


def vs(**spec: Any) -> Obj:
    """A VirtualService for host `web` with one route to it; `spec` replaces fields (None drops one)."""
    base: Obj = {"hosts": ["web"], "http": [{"route": ROUTE}], **spec}
    return _obj("networking.istio.io/v1", "VirtualService", {k: v for k, v in base.items() if v is not None})


def route(**h: Any) -> Obj:
    """A VirtualService whose one http route is `{route: ROUTE, **h}` (None drops a key)."""
    r = {"route": ROUTE, **h}
    return vs(http=[{k: v for k, v in r.items() if v is not None}])


def dr(**spec: Any) -> Obj:
    return _obj("networking.istio.io/v1", "DestinationRule", {"host": "web", **spec})


def tp(**policy: Any) -> Obj:
    return dr(trafficPolicy=policy)


def se(**spec: Any) -> Obj:
    base = {"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
            "resolution": "DNS", "location": "MESH_EXTERNAL", **spec}
    return _obj("networking.istio.io/v1", "ServiceEntry", {k: v for k, v in base.items() if v is not None})


def server(**s: Any) -> Obj:
    base = {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["shop.example.com"],
            "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}, **s}
    return gw([{k: v for k, v in base.items() if v is not None}])


def gw(servers: list[Obj]) -> Obj:
    return _obj("networking.istio.io/v1", "Gateway", {"selector": {"istio": "ingressgateway"}, "servers": servers})


def ap(annotations: dict[str, str] | None = None, **spec: Any) -> Obj:
    md = {"annotations": annotations} if annotations else {}
    return _obj("security.istio.io/v1", "AuthorizationPolicy", spec, **md)


def pa(**spec: Any) -> Obj:
    return _obj("security.istio.io/v1", "PeerAuthentication", spec)


def tel(**spec: Any) -> Obj:
    return _obj("telemetry.istio.io/v1", "Telemetry", spec)


SEEDS = [route(), dr(trafficPolicy={"loadBalancer": {"simple": "RANDOM"}}, subsets=[{"name": "v1"}]), se(),
         server(), ap(action="DENY", rules=[{}]), pa(mtls={"mode": "STRICT"}), tel(tracing=[{}])]


_TLS = {"number": 443, "name": "tls", "protocol": "TLS"}


def _opt_out(o: Obj) -> Obj:
    """`o` with the label that opts a ServiceEntry out of address auto-allocation."""
    o["metadata"]["labels"] = {"networking.istio.io/enable-autoallocate-ip": "false"}
    return o


def refusals(obj: Obj) -> list[tuple[str, str]]:
    return [(e.path, e.reason) for e in validate_object(obj)]


def test_the_seeds_are_valid() -> None:
    for seed in SEEDS:
        assert refusals(seed) == [], seed["kind"]


_KA = {"http": {"http2KeepAlive": {"timeout": "5s"}}}

# (istiod's rule, the object, the field refused, a part of the reason)
ADDED: list[tuple[str, Obj, str, str]] = [
    # -- VirtualService ---------------------------------------------------------------------------
    ("gateway name namespace/name", vs(gateways=["istio-system/Bad_Name"]), "spec.gateways[0]",
     'invalid value for gateway name: "Bad_Name"'),
    ("gateway name empty namespace", vs(gateways=["/ingress"]), "spec.gateways[0]",
     "config namespace and gateway name cannot be empty"),
    ("match gateway name", route(match=[{"gateways": ["a/b/c"]}]), "spec.http[0].match[0].gateways[0]",
     "invalid value for gateway name"),
    ("tcp match gateway name", vs(http=None, tcp=[{"match": [{"gateways": ["a b"]}], "route": ROUTE}]),
     "spec.tcp[0].match[0].gateways[0]", "invalid gateway name"),
    ("sourceNamespace is a label", route(match=[{"sourceNamespace": "Bad_NS"}]),
     "spec.http[0].match[0].sourceNamespace", "sourceNamespace match Bad_NS is invalid"),
    ("empty prefix in a header match", route(match=[{"headers": {"x-a": {"prefix": ""}}}]),
     "spec.http[0].match[0].headers[x-a].prefix", "prefix string match should not be empty"),
    ("empty prefix in withoutHeaders", route(match=[{"withoutHeaders": {"x-a": {"prefix": ""}}}]),
     "spec.http[0].match[0].withoutHeaders[x-a].prefix", "prefix string match should not be empty"),
    ("empty prefix in queryParams", route(match=[{"queryParams": {"q": {"prefix": ""}}}]),
     "spec.http[0].match[0].queryParams[q].prefix", "prefix string match should not be empty"),
    ("empty prefix in scheme", route(match=[{"scheme": {"prefix": ""}}]),
     "spec.http[0].match[0].scheme.prefix", "prefix string match should not be empty"),
    ("empty uri regex", route(match=[{"uri": {"regex": ""}}]), "spec.http[0].match[0].uri.regex",
     "regex string match should not be empty"),
    ("regex over 1024 characters", route(match=[{"uri": {"regex": "a" * 1025}}]), "spec.http[0].match[0].uri.regex",
     "regex is too large, max length allowed is 1024"),
    ("uriRegexRewrite regex over 1024", route(rewrite={"uriRegexRewrite": {"match": "a" * 1025, "rewrite": "/"}}),
     "spec.http[0].rewrite.uriRegexRewrite.match", "regex is too large"),
    ("uriRegexRewrite empty rewrite", route(rewrite={"uriRegexRewrite": {"match": "^/a", "rewrite": ""}}),
     "spec.http[0].rewrite.uriRegexRewrite.rewrite", "requires both Rewrite and Match"),
    ("rewrite sets nothing", route(rewrite={}), "spec.http[0].rewrite",
     "rewrite must specify at least one of uri, uriRegexRewrite or authority"),
    ("header value with an Envoy command operator", route(headers={"request": {"set": {"x-a": "%HOSTNAME%"}}}),
     "spec.http[0].headers.request.set[x-a]", "command-operator syntax"),
    ("header value with an un-escaped %", route(headers={"response": {"add": {"x-a": "50%"}}}),
     "spec.http[0].headers.response.add[x-a]", "command-operator syntax"),
    ("authority set twice (rewrite and Host)", route(rewrite={"authority": "a"}, headers={"request": {"set": {"Host": "b"}}}),
     "spec.http[0].headers.request.set[Host]", "authority header cannot be set multiple times"),
    ("authority set twice (Host and :authority)", route(headers={"request": {"set": {"host": "b", ":authority": "c"}}}),
     "spec.http[0].headers.request.set[:authority]", "authority header cannot be set multiple times"),
    ("redirect and directResponse", route(route=None, redirect={"uri": "/x"}, directResponse={"status": 200}),
     "spec.http[0]", "only one of route, redirect, directResponse, delegate may be set"),
    ("fault and redirect", route(route=None, redirect={"uri": "/x"}, fault={"abort": {"httpStatus": 500}}),
     "spec.http[0].fault", "HTTP route cannot contain both fault and redirect"),
    ("fault and directResponse", route(route=None, directResponse={"status": 200}, fault={"abort": {"httpStatus": 500}}),
     "spec.http[0].fault", "HTTP route cannot contain both fault and direct_response"),
    ("redirect scheme", route(route=None, redirect={"scheme": "ftp"}), "spec.http[0].redirect.scheme",
     'invalid redirect scheme, must be "http" or "https"'),
    ("directResponse body over 1MB", route(route=None, directResponse={"status": 200, "body": {"string": "a" * (2 ** 20 + 1)}}),
     "spec.http[0].directResponse.body.string", "must be less than 1MB"),
    ("fault without delay or abort", route(fault={}), "spec.http[0].fault",
     "HTTP fault injection must have an abort and/or a delay"),
    ("fault percentage under 0.0001", route(fault={"abort": {"httpStatus": 503, "percentage": {"value": 0.00001}}}),
     "spec.http[0].fault.abort.percentage.value", "is neither 0.0, nor in range [0.0001, 100.0]"),
    ("route subset name", vs(http=[{"route": [{"destination": {"host": "web", "subset": "v_1"}}]}]),
     "spec.http[0].route[0].destination.subset", "subset name is invalid: v_1"),
    ("mirror subset name", route(mirror={"host": "web", "subset": "a.b"}), "spec.http[0].mirror.subset",
     "subset name is invalid"),
    ("sni host outside the hosts", vs(hosts=["a.example.com"], http=None,
                                      tls=[{"match": [{"sniHosts": ["b.example.com"]}], "route": ROUTE}]),
     "spec.tls[0].match[0].sniHosts[0]", "is not a compatible subset of any of the virtual service hosts"),
    ("exportTo . and its own namespace", vs(exportTo=[".", "demo"]), "spec.exportTo",
     "duplicate entries in exportTo: . and current namespace demo"),
    ("dry-run annotation on another kind", {**vs(), "metadata": {"name": "x", "namespace": "demo",
                                                                 "annotations": {"istio.io/dry-run": "false"}}},
     "metadata.annotations[istio.io/dry-run]", "unsupported annotation istio.io/dry-run"),
    # -- DestinationRule --------------------------------------------------------------------------
    ("empty trafficPolicy", dr(trafficPolicy={}), "spec.trafficPolicy", "traffic policy must have at least one field"),
    ("empty subset trafficPolicy", dr(subsets=[{"name": "v1", "trafficPolicy": {}}]), "spec.subsets[0].trafficPolicy",
     "traffic policy must have at least one field"),
    ("port policy with a port only", tp(portLevelSettings=[{"port": {"number": 80}}]),
     "spec.trafficPolicy.portLevelSettings[0]", "port traffic policy must have at least one field"),
    ("empty connectionPool", tp(connectionPool={}), "spec.trafficPolicy.connectionPool",
     "connection pool must have at least one field"),
    ("tunnel with proxyProtocol", tp(tunnel={"targetHost": "proxy.example.com", "targetPort": 8080},
                                     proxyProtocol={"version": "V1"}),
     "spec.trafficPolicy", "tunnel and proxyProtocol must not be set together"),
    ("tunnel protocol", tp(tunnel={"protocol": "GET", "targetHost": "proxy.example.com", "targetPort": 8080}),
     "spec.trafficPolicy.tunnel.protocol", 'tunnel protocol must be "CONNECT" or "POST"'),
    ("tunnel target host", tp(tunnel={"targetHost": "*.example.com", "targetPort": 8080}),
     "spec.trafficPolicy.tunnel.targetHost", "tunnel target host must be valid FQDN or IP address"),
    ("local origin failures without split", tp(outlierDetection={"consecutiveLocalOriginFailures": 5}),
     "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
     "split external local origin errors is set to false"),
    ("useClientProtocol with UPGRADE", tp(connectionPool={"http": {"useClientProtocol": True, "h2UpgradePolicy": "UPGRADE"}}),
     "spec.trafficPolicy.connectionPool.http.useClientProtocol",
     "use client protocol must not be true when H2UpgradePolicy is UPGRADE"),
    ("http2KeepAlive without interval", tp(connectionPool=_KA),
     "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval", "http2 keepalive interval is required"),
    ("duplicate cookie attribute", tp(loadBalancer={"consistentHash": {"httpCookie": {
        "name": "s", "attributes": [{"name": "SameSite", "value": "Lax"}, {"name": "SameSite", "value": "None"}]}}}),
     "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[1].name",
     "duplicate cookie attribute name: SameSite"),
    ("warmup aggression 0", tp(loadBalancer={"warmup": {"duration": "10s", "aggression": 0}}),
     "spec.trafficPolicy.loadBalancer.warmup.aggression", "aggression should be greater than 0"),
    ("overlapping distribute localities", tp(loadBalancer={"localityLbSetting": {"distribute": [
        {"from": "us-east/*", "to": {"us-east": 100}}, {"from": "us-east/zone-a", "to": {"us-west": 100}}]}},
        outlierDetection={"consecutive5xxErrors": 5}),
     "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute",
     "locality us-east/zone-a overlap with previous specified ones"),
    ("subset name", dr(subsets=[{"name": "V 1"}]), "spec.subsets[0].name", "subset name is invalid"),
    ("selector rule exported beyond its namespace", dr(workloadSelector={"matchLabels": {"app": "web"}}, exportTo=["*"]),
     "spec.exportTo", "destination rule with workload selector cannot have exportTo beyond current namespace"),
    ("selector rule exported twice", dr(workloadSelector={"matchLabels": {"app": "web"}}, exportTo=[".", "demo"]),
     "spec.exportTo", "duplicate entries in exportTo"),
    # -- ServiceEntry -----------------------------------------------------------------------------
    ("port name is a label", se(ports=[{"number": 443, "name": "tls port", "protocol": "TLS"}]), "spec.ports[0].name",
     "invalid port name: tls port"),
    ("duplicate port name", se(ports=[{"number": 443, "name": "tls", "protocol": "TLS"},
                                      {"number": 8443, "name": "tls", "protocol": "TLS"}]),
     "spec.ports[1].name", 'service entry port name "tls" already defined'),
    ("DNS endpoint address", se(endpoints=[{"address": "api example.com"}]), "spec.endpoints[0].address",
     "is not a valid FQDN or an IP address"),
    ("DNS wildcard host without endpoints", se(hosts=["*.example.com"]), "spec.hosts[0]",
     "hosts must be FQDN if no endpoints are provided for resolution mode DNS"),
    ("exportTo ~ with others", se(exportTo=["~", "."]), "spec.exportTo",
     "cannot export service entry to no one (~) and someone"),
    ("exportTo duplicate", se(exportTo=[".", "."]), "spec.exportTo[1]", 'duplicate entry "."'),
    ("exportTo namespace name", se(exportTo=["Bad_NS"]), "spec.exportTo[0]", "RFC 1123 label"),
    # -- Gateway ----------------------------------------------------------------------------------
    ("server port name required", server(port={"number": 443, "protocol": "HTTPS"}), "spec.servers[0].port.name",
     "required field is missing"),
    ("duplicate server port names", gw([{"port": {"number": 80, "name": "web", "protocol": "HTTP"}, "hosts": ["*"]},
                                        {"port": {"number": 8080, "name": "web", "protocol": "HTTP"}, "hosts": ["*"]}]),
     "spec.servers[1].port.name", "port names in servers must be unique: duplicate name web"),
    ("server host namespace", server(hosts=["Bad_NS/shop.example.com"]), "spec.servers[0].hosts[0]",
     'invalid namespace value "Bad_NS" in gateway'),
    ("server host short name", server(hosts=["shop"]), "spec.servers[0].hosts[0]",
     "short names (non FQDN) are not allowed"),
    # -- AuthorizationPolicy, PeerAuthentication, Telemetry ----------------------------------------
    ("dry-run value", ap({"istio.io/dry-run": "maybe"}, action="DENY", rules=[{}]),
     "metadata.annotations[istio.io/dry-run]", 'invalid value "maybe"'),
    ("dry-run on AUDIT", ap({"istio.io/dry-run": "false"}, action="AUDIT", rules=[{}]),
     "metadata.annotations[istio.io/dry-run]", "only supports action ALLOW or DENY"),
    ("empty portLevelMtls", pa(selector={"matchLabels": {"app": "web"}}, portLevelMtls={}), "spec.portLevelMtls",
     "port level mTLS, if defined, must have at least one element"),
    ("empty custom tag name", tel(tracing=[{"customTags": {"": {"literal": {"value": "v"}}}}]),
     "spec.tracing[0].customTags[]", "tag name may not be empty"),
]


@pytest.mark.parametrize(("obj", "path", "part"), [c[1:] for c in ADDED], ids=[c[0] for c in ADDED])
def test_istiod_refuses_it_and_so_does_ambit_at_the_field(obj: Obj, path: str, part: str) -> None:
    found = refusals(obj)
    assert any(p == path and part in r for p, r in found), found


# (istiod's rule, the object, the field refused): already enforced before this module
ENFORCED: list[tuple[str, Obj, str]] = [
    ("mesh wildcard host", vs(hosts=["*"]), "spec.hosts[0]"),
    ("duplicate hosts", vs(hosts=["a.example.com", "*.example.com"]), "spec.hosts[1]"),
    ("route and redirect", route(redirect={"uri": "/x"}), "spec.http[0]"),
    ("rewrite and redirect", route(route=None, redirect={"uri": "/x"}, rewrite={"uri": "/y"}), "spec.http[0].rewrite"),
    ("root route with a route", vs(http=[{"delegate": {"name": "d"}, "route": ROUTE}]), "spec.http[0]"),
    ("header match null", route(match=[{"headers": {"x-a": None}}]), "spec.http[0].match[0].headers[x-a]"),
    ("regex RE2", route(match=[{"uri": {"regex": "(?=a)b"}}]), "spec.http[0].match[0].uri.regex"),
    ("request header pseudo", route(headers={"request": {"add": {":path": "x"}}}), "spec.http[0].headers.request.add[:path]"),
    ("mirrors percentage", route(mirrors=[{"destination": {"host": "web"}, "percentage": {"value": 101}}]),
     "spec.http[0].mirrors[0].percentage.value"),
    ("redirect code", route(route=None, redirect={"uri": "/x", "redirectCode": 200}), "spec.http[0].redirect.redirectCode"),
    ("retry without attempts", route(retries={"retryOn": "5xx"}), "spec.http[0].retries.attempts"),
    ("rewrite uri and regex", route(rewrite={"uri": "/a", "uriRegexRewrite": {"match": "a", "rewrite": "b"}}),
     "spec.http[0].rewrite"),
    ("weight total 0", vs(http=[{"route": [{"destination": {"host": "a"}, "weight": 0},
                                           {"destination": {"host": "b"}, "weight": 0}]}]), "spec.http[0].route"),
    ("cors maxAge seconds", route(corsPolicy={"allowOrigins": [{"exact": "https://a"}], "maxAge": "1500ms"}),
     "spec.http[0].corsPolicy.maxAge"),
    ("abort grpcStatus", route(fault={"abort": {"grpcStatus": "NOPE"}}), "spec.http[0].fault.abort.grpcStatus"),
    ("tls match without sniHosts", vs(http=None, tls=[{"match": [{}], "route": ROUTE}]), "spec.tls[0].match[0].sniHosts"),
    ("exportTo ~ on a VirtualService", vs(exportTo=["~"]), "spec.exportTo[0]"),
    ("maglev prime", tp(loadBalancer={"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 100}}}),
     "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize"),
    ("distribute and failover", tp(loadBalancer={"localityLbSetting": {"distribute": [{"from": "a", "to": {"b": 100}}],
                                                                       "failover": [{"from": "a", "to": "b"}]}}),
     "spec.trafficPolicy.loadBalancer.localityLbSetting"),
    ("tls MUTUAL files", tp(tls={"mode": "MUTUAL"}), "spec.trafficPolicy.tls.clientCertificate"),
    ("duplicate subset", dr(subsets=[{"name": "v1"}, {"name": "v1"}]), "spec.subsets[1].name"),
    ("SE CIDR with DNS", se(addresses=["10.0.0.0/24"]), "spec.addresses"),
    ("SE duplicate port number", se(ports=[{"number": 443, "name": "a", "protocol": "TLS"},
                                           {"number": 443, "name": "b", "protocol": "TLS"}]), "spec.ports[1].number"),
    ("SE endpoints with NONE", se(resolution="NONE", endpoints=[{"address": "1.2.3.4"}]), "spec.endpoints"),
    ("SE selector with endpoints", se(resolution="STATIC", workloadSelector={"labels": {"a": "b"}},
                                      endpoints=[{"address": "1.2.3.4"}]), "spec.workloadSelector"),
    ("gateway HTTPS without tls", server(tls=None), "spec.servers[0].tls"),
    ("gateway TCP with tls", server(port={"number": 9000, "name": "tcp", "protocol": "TCP"}), "spec.servers[0].tls"),
    ("AP DENY without rules", ap(action="DENY"), "spec.rules"),
    ("AP provider without CUSTOM", ap(action="ALLOW", provider={"name": "x"}, rules=[{}]), "spec.provider"),
    ("AP serviceAccounts with principals", ap(rules=[{"from": [{"source": {"principals": ["a"],
                                                                           "serviceAccounts": ["ns/sa"]}}]}]),
     "spec.rules[0].from[0].source"),
    ("AP when without values", ap(rules=[{"when": [{"key": "request.headers[x-a]"}]}]), "spec.rules[0].when[0]"),
    ("PA portLevelMtls without selector", pa(portLevelMtls={"8080": {"mode": "STRICT"}}), "spec.portLevelMtls"),
    ("Telemetry UPSERT without value", tel(metrics=[{"overrides": [{"tagOverrides": {"a": {"operation": "UPSERT"}}}]}]),
     "spec.metrics[0].overrides[0].tagOverrides[a].value"),
]


@pytest.mark.parametrize(("obj", "path"), [c[1:] for c in ENFORCED], ids=[c[0] for c in ENFORCED])
def test_rules_already_enforced_stay_enforced(obj: Obj, path: str) -> None:
    assert path in [p for p, _ in refusals(obj)], refusals(obj)


# Accepted on purpose: Istio's webhook refuses these and Ambit honours them (docs/configuration.md,
# "Known differences from upstream"), or Istio accepts them too.
KEPT: list[tuple[str, Obj]] = [
    ("JWT claim routing in the mesh (a waypoint routes by claims)",
     route(match=[{"headers": {"@request.auth.claims.group": {"exact": "admin"}}}])),
    ("sub-millisecond precision (honoured)", route(timeout="1500us", retries={"attempts": 2, "perTryTimeout": "2500us"})),
    ("CUSTOM with source principals (evaluated like any rule)",
     ap(action="CUSTOM", provider={"name": "authz"}, targetRefs=TR,
        rules=[{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/web"]}}]}])),
    ("uri prefix empty (Istio accepts it)", route(match=[{"uri": {"prefix": ""}}])),
    ("warmup aggression 0.5 (above 0)", tp(loadBalancer={"warmup": {"duration": "10s", "aggression": 0.5}})),
    ("tcp connection pool alone", tp(connectionPool={"tcp": {}})),
    ("exponentialDelay (applied as a fixed delay, warned)",
     route(fault={"delay": {"exponentialDelay": "1s", "percentage": {"value": 5}}})),
    ("http2KeepAlive interval alone (timeout 20 s)", tp(connectionPool={"http": {"http2KeepAlive": {"interval": "5s"}}})),
    ("upper-case subset and gateway names (Istio's labels allow them)",
     vs(gateways=["istio-system/Ingress", "mesh"], http=[{"route": [{"destination": {"host": "web", "subset": "V1"}}]}])),
    ("legacy gateway name", vs(gateways=["ingress.istio-system.svc.cluster.local"])),
    ("dry-run false", ap({"istio.io/dry-run": "false"}, action="DENY", rules=[{}])),
    ("dry-run true (evaluated and reported, never enforced: docs/security.md)",
     ap({"istio.io/dry-run": "true"}, action="DENY", rules=[{}])),
    ("selector rule exported to its own namespace", dr(workloadSelector={"matchLabels": {"app": "web"}},
                                                       exportTo=["demo"])),
    ("SE exportTo ~ alone", se(exportTo=["~"])),
    ("SE DNS wildcard host with endpoints", se(hosts=["*.example.com"], endpoints=[{"address": "proxy.example.com"}])),
    ("gateway IP host", server(hosts=["10.0.0.1"])),
    ("redirect alone", route(route=None, redirect={"scheme": "https"})),
    ("header value without %", route(headers={"request": {"set": {"x-a": "100 percent"}}})),
    ("sni within a wildcard host", vs(hosts=["*.example.com"], http=None,
                                      tls=[{"match": [{"sniHosts": ["a.example.com"]}], "route": ROUTE}])),
]


@pytest.mark.parametrize("obj", [c[1] for c in KEPT], ids=[c[0] for c in KEPT])
def test_what_ambit_accepts_on_purpose_stays_accepted(obj: Obj) -> None:
    assert refusals(copy.deepcopy(obj)) == []


# -- istiod's warnings -----------------------------------------------------------------------------

# (istiod's warning, the object, the field warned about, a part of the reason): each was accepted
# without a word before (controller.waypoints.istio_warnings)
WARNED: list[tuple[str, Obj, str, str]] = [
    ("mirrorPercent deprecated", route(mirror={"host": "web"}, mirrorPercent=10), "spec.http[0].mirrorPercent",
     'using deprecated setting "mirrorPercent", use "mirrorPercentage" instead'),
    ("large directResponse", route(route=None, directResponse={"status": 200, "body": {"string": "a" * 200_000}}),
     "spec.http[0].directResponse.body", "large direct_responses may impact control plane performance"),
    ("legacy gateway name", vs(gateways=["gw.web.svc.cluster.local"]), "spec.gateways[0]",
     'using legacy gatewayName format "gw.web.svc.cluster.local"; prefer the <namespace>/<name> format: "web/gw"'),
    ("SNI IP address", vs(hosts=["10.0.0.1"], http=None, tls=[{"match": [{"sniHosts": ["10.0.0.1"]}], "route": ROUTE}]),
     "spec.tls[0].match[0].sniHosts[0]", "goes against SNI spec"),
    ("consecutiveErrors deprecated", tp(outlierDetection={"consecutiveErrors": 5}),
     "spec.trafficPolicy.outlierDetection.consecutiveErrors", "outlier detection consecutive errors is deprecated"),
    ("minimumRingSize deprecated", dr(subsets=[{"name": "v1", "trafficPolicy": {"loadBalancer": {"consistentHash": {
        "useSourceIp": True, "minimumRingSize": 1024}}}}]),
     "spec.subsets[0].trafficPolicy.loadBalancer.consistentHash.minimumRingSize",
     "consistent hash MinimumRingSize is deprecated"),
    # -- ServiceEntry (ValidateServiceEntry) -----------------------------------------------------
    ("SE selector without labels", se(resolution="STATIC", workloadSelector={}), "spec.workloadSelector",
     "workload selector specified without labels, will be applied to all services in namespace"),
    ("SE selector with NONE", se(resolution="NONE", addresses=["10.9.0.1"], workloadSelector={"labels": {"app": "db"}}),
     "spec.workloadSelector", "workloadSelector should not be set when resolution mode is NONE"),
    ("SE TCP port, NONE, no addresses", se(resolution="NONE", ports=[_TLS, {"number": 5432, "name": "pg",
                                                                            "protocol": "TCP"}]),
     "spec.ports[1]", "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is "
                      "not enabled"),
    ("SE unset protocol, opted out of auto-allocation", _opt_out(se(ports=[{"number": 5432, "name": "pg"}]))
     , "spec.ports[0]", "addresses are required for ports serving TCP (or unset) protocol"),
    ("SE several hosts, an address, a TLS port", se(hosts=["a.example.com", "b.example.com"], addresses=["10.9.0.1"]),
     "spec.addresses", "service entry can not have more than one host specified simultaneously with address and "
                       "tcp port"),
    # -- selectors (validateWorkloadSelector) ------------------------------------------------------
    ("AP selector without labels", ap(selector={}, action="ALLOW", rules=[{}]), "spec.selector",
     "workload selector specified without labels"),
    ("PA selector with empty matchLabels", pa(selector={"matchLabels": {}}, mtls={"mode": "STRICT"}), "spec.selector",
     "workload selector specified without labels"),
    ("RA selector without labels", _obj("security.istio.io/v1", "RequestAuthentication", {
        "selector": {}, "jwtRules": [{"issuer": "https://issuer.example.com", "jwksUri": "https://issuer.example.com/k"}]}),
     "spec.selector", "workload selector specified without labels"),
    ("Telemetry selector without labels", tel(selector={}, tracing=[{}]), "spec.selector",
     "workload selector specified without labels"),
    # -- AuthorizationPolicy (ValidateAuthorizationPolicy) -----------------------------------------
    ("DENY with only HTTP operations", ap(action="DENY", rules=[{"to": [{"operation": {"methods": ["POST"]}}]}]),
     "spec.rules[0]", "will deny all traffic to TCP ports under its scope due to the use of only HTTP attributes"),
    ("DENY with only request principals, bound to a waypoint",
     ap(action="DENY", targetRefs=TR, rules=[{}, {"from": [{"source": {"requestPrincipals": ["*"]}}]}]),
     "spec.rules[1]", "it is recommended to explicitly specify the port"),
    ("DENY with TCP sources and HTTP operations", ap(action="DENY", rules=[{
        "from": [{"source": {"namespaces": ["dev"]}}], "to": [{"operation": {"paths": ["/admin"]}}]}]),
     "spec.rules[0]", "due to the use of only HTTP attributes in a DENY rule"),
    # -- Telemetry (validateTelemetryTracing) ------------------------------------------------------
    ("several tracing entries", tel(tracing=[{"randomSamplingPercentage": 5}, {"match": {"mode": "SERVER"}}]),
     "spec.tracing", "multiple tracing is not currently supported"),
    ("several tracing providers", tel(tracing=[{"providers": [{"name": "zipkin"}, {"name": "otel"}]}]),
     "spec.tracing[0].providers", "multiple providers is not currently supported"),
]

# istiod gives none of its warnings on these (its conditions, with the cases around them)
NOT_WARNED: list[tuple[str, Obj]] = [
    ("SE without addresses: its address is auto-allocated", se(ports=[{"number": 5432, "name": "pg",
                                                                        "protocol": "TCP"}])),
    ("SE NONE without addresses, HTTP port", se(resolution="NONE", ports=[{"number": 80, "name": "http",
                                                                            "protocol": "HTTP"}])),
    ("SE NONE, lower-case tcp (istiod compares the protocol as written)",
     se(resolution="NONE", ports=[{"number": 5432, "name": "pg", "protocol": "tcp"}])),
    ("SE NONE with addresses, TCP port", se(resolution="NONE", addresses=["10.9.0.0/24"],
                                            ports=[{"number": 5432, "name": "pg", "protocol": "TCP"}])),
    ("SE several hosts, an address, HTTP ports", se(hosts=["a.example.com", "b.example.com"], addresses=["10.9.0.1"],
                                                    ports=[{"number": 80, "name": "http", "protocol": "HTTP"}])),
    ("SE several hosts, a TLS port, STATIC", se(hosts=["a.example.com", "b.example.com"], addresses=["10.9.0.1"],
                                                resolution="STATIC", endpoints=[{"address": "10.0.0.7"}])),
    ("SE one host, an address, a TLS port", se(addresses=["10.9.0.1"])),
    ("SE selector with labels, STATIC", se(resolution="STATIC", workloadSelector={"labels": {"app": "db"}})),
    ("AP selector with labels", ap(selector={"matchLabels": {"app": "web"}}, action="ALLOW", rules=[{}])),
    ("ALLOW with only HTTP operations", ap(action="ALLOW", rules=[{"to": [{"operation": {"methods": ["GET"]}}]}])),
    ("DENY with a port", ap(action="DENY", rules=[{"to": [{"operation": {"methods": ["POST"], "ports": ["8080"]}}]}])),
    ("DENY with TCP sources only", ap(action="DENY", rules=[{"from": [{"source": {"remoteIpBlocks": ["1.2.3.4"]}}]}])),
    ("DENY with conditions only (istiod looks at from and to)",
     ap(action="DENY", rules=[{"when": [{"key": "request.headers[x-a]", "values": ["1"]}]}])),
    ("one tracing entry, one provider", tel(tracing=[{"providers": [{"name": "zipkin"}]}])),
]




def _private_jwks() -> str:
    """A JWKS holding a whole RSA private key (its "d", "p", "q", ...): what istiod warns about."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return json.dumps({"keys": [json.loads(RSAAlgorithm.to_jwk(key))]})


WARNED.append(("JWKS with private key material",
               _obj("security.istio.io/v1", "RequestAuthentication", {"jwtRules": [
                   {"issuer": "https://issuer.example.com", "jwks": _private_jwks()}]}),
               "spec.jwtRules[0].jwks", "jwks key at index 0 contains private key material"))


@pytest.mark.parametrize(("obj", "path", "part"), [c[1:] for c in WARNED], ids=[c[0] for c in WARNED])
def test_istiods_warnings_are_ambits_warnings(obj: Obj, path: str, part: str) -> None:
    from controller.waypoints.advisories import ISTIO_WARNING, advisories

    assert refusals(obj) == []
    found = [(a.path, a.reason) for a in advisories([obj]) if a.condition == ISTIO_WARNING]
    assert any(p == path and part in r for p, r in found), found


def _istio_warnings(obj: Obj, **translate_kw: Any) -> list[tuple[str, str]]:
    from controller.translate import translate
    from controller.waypoints.advisories import advisories
    from controller.waypoints.istio_warnings import istio_warnings

    tr = translate([obj], **translate_kw)
    mine = istio_warnings(obj)          # what istiod says, with the auto-allocation on (its default)
    return [(a.path, a.reason) for a in advisories([obj], translation=tr)
            if any(a.path == p and a.reason == r for p, r in mine) or "istiod warns" in a.reason]


@pytest.mark.parametrize("obj", [c[1] for c in NOT_WARNED], ids=[c[0] for c in NOT_WARNED])
def test_what_istiod_does_not_warn_about_ambit_does_not_either(obj: Obj) -> None:
    assert refusals(obj) == []
    assert _istio_warnings(obj) == []


def test_without_auto_allocation_a_tcp_port_needs_addresses() -> None:
    """istiod's condition includes PILOT_ENABLE_IP_AUTOALLOCATE: the controller's --no-ip-autoallocate."""
    from controller.translate.autoalloc import AutoAllocate

    entry = se(ports=[{"number": 5432, "name": "pg", "protocol": "TCP"}])
    assert _istio_warnings(entry) == []
    [(path, why)] = _istio_warnings(entry, autoallocate=AutoAllocate(enabled=False))
    assert path == "spec.ports[0]" and "runs with --no-ip-autoallocate" in why


def test_a_dry_run_deny_is_warned_as_istiod_warns_without_claiming_it_denies() -> None:
    """istiod warns of a dry-run DENY too; Ambit does not say it denies, since it enforces nothing."""
    rules = [{"to": [{"operation": {"methods": ["POST"]}}]}]
    [(_, enforced)] = _istio_warnings(ap(action="DENY", rules=rules))
    [(path, dry)] = _istio_warnings(ap({"istio.io/dry-run": "true"}, action="DENY", rules=rules))
    assert path == "spec.rules[0]" and "so does Ambit" in enforced
    assert "so does Ambit" not in dry and "in this dry run Ambit reports such denials" in dry


def test_istiods_warnings_come_back_from_the_webhook_and_leave_the_object_enforced() -> None:
    """istiod prints its warnings on `kubectl apply`: so does Ambit's admission webhook (as
    `ambit apply` does in the lab). Ambit applies such an object as written (a Telemetry's several
    tracing providers all get the spans; a DENY with HTTP attributes denies), so it gets no
    `Enforced=False`: that condition says a field does nothing, and these do what they say."""
    from controller.admission.review import answer
    from controller.waypoints.advisories import advisories, object_conditions

    two = tel(tracing=[{"providers": [{"name": "zipkin"}, {"name": "otel"}]}])
    deny = ap(action="DENY", rules=[{"to": [{"operation": {"methods": ["POST"]}}]}], targetRefs=[
        {"group": "", "kind": "Service", "name": "web"}])
    for obj, said in ((two, "spec.tracing[0].providers: multiple providers is not currently supported"),
                      (deny, "will deny all traffic to TCP ports")):
        assert any(said in str(a) for a in advisories([obj])), advisories([obj])
        assert not [c for c in object_conditions(obj, advisories([obj])) if c["type"] == "Enforced"
                    and said in c["message"]]
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "request": {"uid": "u1", "operation": "CREATE", "object": obj}}).encode()
        r = answer(body)[0]["response"]
        assert r["allowed"] is True and any(said in w for w in r.get("warnings", [])), r


def test_the_webhook_warns_of_a_tcp_port_without_addresses_as_the_controller_allocates() -> None:
    """istiod's "addresses are required for ports serving TCP" depends on auto-allocation: the
    webhook follows the controller's --ip-autoallocate (the server's `autoallocate`)."""
    from controller.admission.review import answer
    obj = se(hosts=["db.example.com"], ports=[{"number": 5432, "name": "pg", "protocol": "TCP"}])
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "u1", "operation": "CREATE", "object": obj}}).encode()
    said = "addresses are required for ports serving TCP"
    assert not any(said in w for w in answer(body)[0]["response"].get("warnings", []))
    assert any(said in w for w in answer(body, autoallocate=False)[0]["response"]["warnings"])


def test_a_legacy_gateway_name_binds_the_gateway_it_names() -> None:
    """`name.ns.svc.cluster.local` is Istio's legacy spelling of `ns/name` (resolveGatewayName),
    which Istio binds (and warns about). It was read as a Gateway named `gw.web.svc.cluster.local`
    in the VirtualService's namespace: the routes were served nowhere, without a word."""
    from controller.translate import translate
    from tests.unit.controller.test_ingress import BASE
    from tests.unit.controller.test_istio_gateway import INGRESS, istio_gateway
    from tests.unit.controller.test_istio_gateway import vs as gvs

    gw = istio_gateway({"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["a.example.com"]},
                       name="gw")

    def served(gateways: list[str]) -> list[str]:
        tr = translate(BASE + [INGRESS, gw, gvs("b", ["a.example.com"], gateways, ns="team")])
        return [h.hostname for g in tr.ingress.gateways for ln in g.listeners if ln.name.startswith("web/gw/")
                for h in ln.hosts if any(r.source == "VirtualService/team/b" for r in h.http)]
    assert served(["web/gw"]) == ["a.example.com"]
    assert served(["gw.web.svc.cluster.local"]) == served(["gw.web"]) == ["a.example.com"]
