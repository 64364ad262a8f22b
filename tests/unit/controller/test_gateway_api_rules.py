"""Gateway API rules the upstream CRDs enforce with CEL (the API server refuses these objects in a
cluster, so `ambit apply` refuses them in the lab too, with Gateway API's own messages), and the
Gateway fields a waypoint (or any Ambit gateway) cannot honour, refused by name."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.validation import validate_object

GW = "gateway.networking.k8s.io/v1"


def route(rule: dict[str, Any], parents: list[dict[str, Any]] | None = None, kind: str = "HTTPRoute") -> dict[str, Any]:
    return {"apiVersion": GW, "kind": kind, "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"parentRefs": parents or [{"group": "", "kind": "Service", "name": "reviews"}], "rules": [rule]}}


def errors(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.path, e.reason) for e in validate_object(obj)]


BACKEND = {"name": "reviews", "port": 9080}
REDIRECT = {"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}
REWRITE = {"type": "URLRewrite", "urlRewrite": {"hostname": "internal.example"}}
SET_HEADER = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}
SET_RESPONSE = {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}


# -- HTTPRoute rules (gateway.networking.k8s.io_httproutes.yaml x-kubernetes-validations) ---------------

def test_a_redirect_with_backends_is_refused() -> None:
    assert errors(route({"filters": [REDIRECT], "backendRefs": [BACKEND]})) == [
        ("spec.rules[0]", "RequestRedirect filter must not be used together with backendRefs")]
    assert errors(route({"filters": [REDIRECT]})) == []


def test_a_redirect_and_a_rewrite_in_one_rule_are_refused() -> None:
    assert errors(route({"filters": [REDIRECT, REWRITE]})) == [
        ("spec.rules[0].filters",
         "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both")]


@pytest.mark.parametrize("f", [SET_HEADER, SET_RESPONSE, REDIRECT, REWRITE], ids=lambda f: f["type"])
def test_a_filter_upstream_forbids_repeating_is_refused(f: dict[str, Any]) -> None:
    rule: dict[str, Any] = {"filters": [f, copy.deepcopy(f)]}
    if f is not REDIRECT:
        rule["backendRefs"] = [BACKEND]
    assert errors(route(rule)) == [("spec.rules[0].filters", f"{f['type']} filter cannot be repeated")]


def test_repeated_filters_on_a_backend_are_refused_too() -> None:
    assert errors(route({"backendRefs": [{**BACKEND, "filters": [SET_HEADER, SET_HEADER]}]})) == [
        ("spec.rules[0].backendRefs[0].filters", "RequestHeaderModifier filter cannot be repeated")]


def test_a_grpc_route_may_not_repeat_a_header_modifier() -> None:
    r = route({"filters": [SET_RESPONSE, SET_RESPONSE], "backendRefs": [BACKEND]}, kind="GRPCRoute")
    assert errors(r) == [("spec.rules[0].filters", "ResponseHeaderModifier filter cannot be repeated")]
    mirrors = {"type": "RequestMirror", "requestMirror": {"backendRef": BACKEND}}
    assert errors(route({"filters": [mirrors, mirrors], "backendRefs": [BACKEND]}, kind="GRPCRoute")) == []


def test_a_backend_timeout_longer_than_the_request_timeout_is_refused() -> None:
    for timeouts, ok in (({"request": "1s", "backendRequest": "10s"}, False),
                         ({"request": "10s", "backendRequest": "1s"}, True),
                         ({"request": "1s", "backendRequest": "1s"}, True),
                         ({"request": "0s", "backendRequest": "10s"}, True),      # 0s: no request timeout
                         ({"request": "1m", "backendRequest": "59s"}, True),
                         ({"backendRequest": "10s"}, True)):
        found = errors(route({"timeouts": timeouts, "backendRefs": [BACKEND]}))
        assert found == ([] if ok else [("spec.rules[0].timeouts",
                                         "backendRequest timeout cannot be longer than request timeout")]), timeouts


def test_replace_prefix_match_needs_exactly_one_path_prefix_match() -> None:
    prefix_rewrite = {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}
    exact = [{"path": {"type": "Exact", "value": "/v1"}}]
    assert errors(route({"matches": exact, "filters": [prefix_rewrite], "backendRefs": [BACKEND]})) == [
        ("spec.rules[0]", "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match "
                          "must be specified")]
    for matches in (None, [{"path": {"type": "PathPrefix", "value": "/v1"}}], [{"headers": [{"name": "a", "value": "b"}]}]):
        rule = {"filters": [prefix_rewrite], "backendRefs": [BACKEND]}
        if matches is not None:
            rule["matches"] = matches     # none: one PathPrefix "/" match (the CRD's default); no path: PathPrefix "/"
        assert errors(route(rule)) == [], matches
    two = [{"path": {"type": "PathPrefix", "value": "/a"}}, {"path": {"type": "PathPrefix", "value": "/b"}}]
    prefix_redirect = {"type": "RequestRedirect",
                       "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}
    assert [r for _, r in errors(route({"matches": two, "filters": [prefix_redirect]}))] == [
        "When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"]


def test_two_references_to_one_parent_need_distinct_section_names() -> None:
    svc = {"group": "", "kind": "Service", "name": "reviews"}
    assert errors(route({"backendRefs": [BACKEND]}, [{**svc, "port": 9080}, {**svc, "port": 9090}])) == [
        ("spec.parentRefs", "sectionName must be unique when parentRefs includes 2 or more references to the same parent")]
    assert errors(route({"backendRefs": [BACKEND]}, [{**svc, "sectionName": "http"}, svc])) == [
        ("spec.parentRefs", "sectionName must be specified when parentRefs includes 2 or more references to the same "
                            "parent")]
    assert errors(route({"backendRefs": [BACKEND]}, [{**svc, "sectionName": "http"}, {**svc, "sectionName": "admin"}])) == []
    assert errors(route({"backendRefs": [BACKEND]}, [svc, {**svc, "name": "ratings"}])) == []


# -- Gateway fields Ambit cannot honour ----------------------------------------------------------------

def gateway(cls: str = "ambit-waypoint", listener: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "wp", "namespace": "demo"},
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE",
                                                             **(listener or {})}], **spec}}


def test_a_waypoint_refuses_addresses_listener_hostnames_and_tls() -> None:
    found = errors(gateway(listener={"hostname": "only.example.com",
                                     "tls": {"mode": "Terminate", "certificateRefs": [{"name": "cert"}]}},
                           addresses=[{"type": "IPAddress", "value": "10.96.7.7"}]))
    assert [p for p, _ in found] == ["spec.listeners[0].hostname", "spec.listeners[0].tls", "spec.addresses"]
    assert all("not supported" in r for _, r in found)
    assert "cluster IP" in dict(found)["spec.addresses"]
    assert errors(gateway()) == []


@pytest.mark.parametrize("cls, listener", [("ambit-waypoint", None),
                                           ("ambit", {"name": "http", "port": 80, "protocol": "HTTP"})])
def test_infrastructure_parameters_ref_is_accepted_for_every_class(cls: str, listener: dict[str, Any] | None) -> None:
    """Honoured (controller/waypoints/params.py); a ref of another kind is the Gateway status's to
    report (InvalidParameters), as Gateway API asks, so it is not refused here either."""
    for kind in ("ConfigMap", "GatewayParameters"):
        gw = gateway(cls, infrastructure={"labels": {"team": "a"},
                                          "parametersRef": {"group": "", "kind": kind, "name": "tuning"}})
        if listener:
            gw["spec"]["listeners"] = [listener]
        assert errors(gw) == []
    gw["spec"]["infrastructure"]["parametersRef"] = {"kind": "ConfigMap"}
    assert [p for p, _ in errors(gw)] == ["spec.infrastructure.parametersRef.group",
                                          "spec.infrastructure.parametersRef.name"]


# -- values Gateway API's CRD enums refuse, and filters Ambit refuses ------------------------------------

@pytest.mark.parametrize("code", [304, 305, 306])
def test_a_redirect_status_code_outside_gateway_apis_enum_is_refused(code: int) -> None:
    redirect = {"type": "RequestRedirect", "requestRedirect": {"statusCode": code}}
    assert errors(route({"filters": [redirect]})) == [
        ("spec.rules[0].filters[0].requestRedirect.statusCode",
         f'Unsupported value: {code}: supported values: "301", "302", "303", "307", "308"')]
    for ok in (301, 302, 303, 307, 308):
        assert errors(route({"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": ok}}]})) == []


@pytest.mark.parametrize("kind,f,why", [
    ("HTTPRoute", {"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "F", "name": "f"}},
     "ExtensionRef filters are not supported by Ambit"),
    ("GRPCRoute", {"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "F", "name": "f"}},
     "ExtensionRef filters are not supported by Ambit"),
])
def test_filters_ambit_does_not_support_are_refused_by_name(kind: str, f: dict[str, Any], why: str) -> None:
    # the refusal names the field: these must never be accepted and silently not applied
    assert errors(route({"filters": [f], "backendRefs": [BACKEND]}, kind=kind)) == [
        ("spec.rules[0].filters[0].type", why)]
    assert errors(route({"filters": [], "backendRefs": [BACKEND]}, kind=kind)) == []     # control


# -- CORS filters (the HTTPCORSFilter schema: patterns, limits, CEL rules) ---------------------------

CORS_OK = {"allowOrigins": ["https://www.foo.com", "https://*.bar.com:8443", "http://10.0.0.1"],
           "allowMethods": ["GET", "OPTIONS"], "allowHeaders": ["x-header-1"], "exposeHeaders": ["*"],
           "maxAge": 3600, "allowCredentials": True}


@pytest.mark.parametrize("field,value,why", [
    ("allowOrigins", ["ftp://a.example"], "must be"),
    ("allowOrigins", ["https://a.example/path"], "must be"),
    ("allowOrigins", ["https://a.*.example"], "must be"),
    ("allowOrigins", ["https://a.example:70000"], "port 70000 is not between 1 and 65535"),
    ("allowOrigins", ["*", "https://a.example"], "AllowOrigins cannot contain '*' alongside other origins"),
    ("allowOrigins", ["https://a.example", "https://a.example"], 'Duplicate value: "https://a.example"'),
    ("allowMethods", ["GET", "*"], "AllowMethods cannot contain '*' alongside other methods"),
    ("allowMethods", ["FETCH"], "must be one of"),
    ("allowHeaders", ["x-a, x-b"], "must be an HTTP header name"),
    ("allowHeaders", ["x-a\r\nset-cookie: a=b"], "must be an HTTP header name"),
    ("exposeHeaders", ["x-" + str(i) for i in range(65)], "must have at most 64 items, got 65"),
    ("maxAge", 0, "must be"),
])
def test_a_cors_filter_is_checked_as_gateway_apis_crd_checks_it(field: str, value: Any, why: str) -> None:
    """Every value becomes a response header on the route: a comma or a line break in one would
    change or split the Access-Control-* headers of every response."""
    assert errors(route({"filters": [{"type": "CORS", "cors": CORS_OK}], "backendRefs": [BACKEND]})) == []
    bad = {**CORS_OK, field: value}
    found = errors(route({"filters": [{"type": "CORS", "cors": bad}], "backendRefs": [BACKEND]}))
    assert found and all(p.startswith(f"spec.rules[0].filters[0].cors.{field}") for p, _ in found), found
    assert why in found[0][1], found


PATH_CHARS = r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$"
BAD_CHARS = f"must only contain valid characters (matching {PATH_CHARS}) for types ['Exact', 'PathPrefix']"


@pytest.mark.parametrize("value, reasons", [
    ("/a//b", ["must not contain '//' when type one of ['Exact', 'PathPrefix']"]),
    ("/a/./b", ["must not contain '/./' when type one of ['Exact', 'PathPrefix']"]),
    ("/a/../b", ["must not contain '/../' when type one of ['Exact', 'PathPrefix']"]),
    ("/a%2fb", ["must not contain '%2f' when type one of ['Exact', 'PathPrefix']"]),
    ("/a%2Fb", ["must not contain '%2F' when type one of ['Exact', 'PathPrefix']"]),
    ("/a#b", ["must not contain '#' when type one of ['Exact', 'PathPrefix']", BAD_CHARS]),
    ("/a/..", ["must not end with '/..' when type one of ['Exact', 'PathPrefix']"]),
    ("/a/.", ["must not end with '/.' when type one of ['Exact', 'PathPrefix']"]),
    ("/a b", [BAD_CHARS]), ("/é", [BAD_CHARS]), ("/a\nb", [BAD_CHARS]), ("/a?q=1", [BAD_CHARS]),
    ("/" + "a" * 1024, ["must be at most 1024 characters, got 1025"]),
])
@pytest.mark.parametrize("kind", ["Exact", "PathPrefix"])
def test_a_path_match_no_normalized_request_path_can_equal_is_refused(kind: str, value: str, reasons: list[str]) -> None:
    """HTTPPathMatch's CEL rules for Exact and PathPrefix, with their messages. The waypoint matches
    the path as it normalizes it (dot segments removed, a fragment refused, nothing but unreserved
    characters decoded): "/a/../b", "/a b" or "/é" could never match, the rule was accepted and
    never applied."""
    r = route({"matches": [{"path": {"type": kind, "value": value}}], "backendRefs": [BACKEND]})
    assert errors(r) == [("spec.rules[0].matches[0].path.value", why) for why in reasons]


@pytest.mark.parametrize("value", ["/", "/a/b", "/a.b/c~d", "/%41%20x", "/a:b@c!$&'()*+,;=", "/..a/.b"])
def test_a_path_match_gateway_api_accepts_is_accepted(value: str) -> None:
    assert errors(route({"matches": [{"path": {"type": "Exact", "value": value}}], "backendRefs": [BACKEND]})) == []
    assert errors(route({"matches": [{"path": {"type": "RegularExpression", "value": "/a//b.*#"}}],
                         "backendRefs": [BACKEND]})) == []


@pytest.mark.parametrize("modifier, reasons", [
    ({"type": "ReplaceFullPath", "replacePrefixMatch": "/b"},
     ["replaceFullPath must be specified when type is set to 'ReplaceFullPath'",
      "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set"]),
    ({"type": "ReplacePrefixMatch", "replaceFullPath": "/b"},
     ["type must be 'ReplaceFullPath' when replaceFullPath is set",
      "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'"]),
    ({"type": "ReplaceFullPath"}, ["replaceFullPath must be specified when type is set to 'ReplaceFullPath'"]),
])
@pytest.mark.parametrize("filter_type, field", [("URLRewrite", "urlRewrite"), ("RequestRedirect", "requestRedirect")])
def test_a_path_modifier_must_set_the_replacement_its_type_names(filter_type: str, field: str, modifier: dict[str, Any],
                                                                 reasons: list[str]) -> None:
    """HTTPPathModifier's CEL rules, with their messages: a ReplaceFullPath with only
    `replacePrefixMatch` was accepted and replaced nothing (the path written was not applied)."""
    rule: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
                            "filters": [{"type": filter_type, field: {"path": modifier}}]}
    if filter_type == "URLRewrite":
        rule["backendRefs"] = [BACKEND]
    assert errors(route(rule)) == [(f"spec.rules[0].filters[0].{field}.path", why) for why in reasons]


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
def test_a_mirror_fraction_above_one_is_refused(kind: str) -> None:
    """Fraction's CEL rule, with its message: 5/2 was accepted (and mirrored every request)."""
    def mirror(fraction: dict[str, int]) -> dict[str, Any]:
        return route({"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": BACKEND, "fraction": fraction}}],
                      "backendRefs": [BACKEND]}, kind=kind)
    assert errors(mirror({"numerator": 5, "denominator": 2})) == [
        ("spec.rules[0].filters[0].requestMirror.fraction", "numerator must be less than or equal to denominator")]
    assert errors(mirror({"numerator": 101})) == [     # (the denominator defaults to 100)
        ("spec.rules[0].filters[0].requestMirror.fraction", "numerator must be less than or equal to denominator")]
    assert errors(mirror({"numerator": 2, "denominator": 2})) == errors(mirror({"numerator": 100})) == []


@pytest.mark.parametrize("hostname", ["a@b.example", "a/b", "a.example:8080", "A.example", "*.example", "a b",
                                      "é.example", "", "a" * 254, "[::1]", "a..b", "-a.example"])
@pytest.mark.parametrize("filter_type, field", [("URLRewrite", "urlRewrite"), ("RequestRedirect", "requestRedirect")])
def test_a_redirect_or_rewrite_hostname_must_be_a_precise_hostname(filter_type: str, field: str, hostname: str) -> None:
    """Gateway API's PreciseHostname (the CRD's pattern, 1 to 253 characters). The waypoint wrote the
    text as the Location's or the upstream Host's host: "a@b.example" redirected to b.example, "a/b"
    to path /b of host a, "a.example:8080" replaced the port the redirect derives."""
    rule: dict[str, Any] = {"filters": [{"type": filter_type, field: {"hostname": hostname}}]}
    if filter_type == "URLRewrite":
        rule["backendRefs"] = [BACKEND]
    found = errors(route(rule))
    assert [p for p, _ in found] == [f"spec.rules[0].filters[0].{field}.hostname"], found
    assert "hostname" in found[0][1] or "253" in found[0][1], found
    rule["filters"][0][field]["hostname"] = "a-1.b.example"
    assert errors(route(rule)) == []


GRPC_SERVICE_PATTERN = r"^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$"
GRPC_METHOD_PATTERN = r"^[A-Za-z_][A-Za-z_0-9]*$"


@pytest.mark.parametrize("method, field, pattern", [
    ({"method": "("}, "method", GRPC_METHOD_PATTERN),
    ({"service": "pkg.Svc", "method": "Get.List"}, "method", GRPC_METHOD_PATTERN),
    ({"type": "Exact", "method": "a b"}, "method", GRPC_METHOD_PATTERN),
    ({"service": "pkg/Svc", "method": "Get"}, "service", GRPC_SERVICE_PATTERN),
    ({"service": "pkg.Svc+"}, "service", GRPC_SERVICE_PATTERN),
    ({"service": "", "method": "Get"}, "service", GRPC_SERVICE_PATTERN),
])
def test_a_grpc_exact_method_match_outside_gateway_apis_pattern_is_refused(method: dict[str, Any], field: str,
                                                                         pattern: str) -> None:
    """GRPCMethodMatch's CEL rules for type Exact (the default), with their messages. A lone method
    becomes the regex `/[^/]+/<method>`: with `method: "("` RE2 refused it and the waypoint left
    the route out of its table, accepted and never applied."""
    r = route({"matches": [{"method": method}], "backendRefs": [BACKEND]}, kind="GRPCRoute")
    assert errors(r) == [(f"spec.rules[0].matches[0].method.{field}",
                          f"{field} must only contain valid characters (matching {pattern})")]


@pytest.mark.parametrize("method", [
    {"service": "pkg.Svc", "method": "Get"}, {"service": ".pkg.v1_x.Svc"}, {"method": "_Get2"},
    {"type": "RegularExpression", "service": "pkg\\..*", "method": "Get|List"}, {"type": "RegularExpression", "method": "("},
])
def test_grpc_method_matches_gateway_api_accepts_are_accepted(method: dict[str, Any]) -> None:
    r = route({"matches": [{"method": method}], "backendRefs": [BACKEND]}, kind="GRPCRoute")
    found = errors(r)
    if method.get("method") == "(":     # (a regex: checked as one, not by the Exact pattern)
        assert [p for p, _ in found] == ["spec.rules[0].matches[0].method.method"], found
    else:
        assert found == []


def test_a_grpcroute_has_no_cors_filter() -> None:
    found = errors(route({"filters": [{"type": "CORS", "cors": CORS_OK}], "backendRefs": [BACKEND]}, kind="GRPCRoute"))
    assert [p for p, _ in found] == ["spec.rules[0].filters[0].type"], found


@pytest.mark.parametrize("where,obj", [
    ("spec.hostnames[0]", {**route({"backendRefs": [BACKEND]}), "spec": {
        **route({"backendRefs": [BACKEND]})["spec"], "hostnames": ["reviews.example\n"]}}),
    ("spec.parentRefs[0].namespace", route({"backendRefs": [BACKEND]},
                                           [{"group": "", "kind": "Service", "name": "reviews", "namespace": "demo\n"}])),
    ("spec.listeners[0].hostname", {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "g", "namespace": "demo"},
                                    "spec": {"gatewayClassName": "ambit", "listeners": [
                                        {"name": "h", "port": 80, "protocol": "HTTP", "hostname": "a.example\n"}]}}),
    ("spec.addresses[0]", {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "g", "namespace": "demo"},
                           "spec": {"gatewayClassName": "other", "addresses": [{"type": "Hostname", "value": "a.example\n"}],
                                    "listeners": [{"name": "h", "port": 80, "protocol": "HTTP"}]}}),
    ("spec.rules[0].filters[0].requestRedirect.hostname", route({"filters": [
        {"type": "RequestRedirect", "requestRedirect": {"hostname": "b.example\n"}}]})),
])
def test_a_typed_string_with_a_trailing_line_break_is_refused(where: str, obj: dict[str, Any]) -> None:
    """Python's `$` matches before a final newline, Go's (the API server's) does not: `a.example\\n`
    passed Gateway API's patterns here and then matched nothing."""
    assert [p for p, _ in errors(obj)] == [where], errors(obj)
