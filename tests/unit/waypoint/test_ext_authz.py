"""External authorization's sans-IO parts (waypoint/authz: extauthz, extauthz_http, extauthz_grpc,
custom, hold), driven without sockets: the check request each provider kind gets, what each answer
means, which CUSTOM policy and provider apply, and the decision after a check."""

from __future__ import annotations

import struct

import pytest

from ambit.api import ext_authz_pb2 as pb
from ambit.model import Authorization, ExtAuthzProvider, Match, Rule, Service, ServicePort
from waypoint.authz import extauthz_grpc, extauthz_http
from waypoint.authz.custom import CHECK, DENY, custom_set, resolve_service
from waypoint.authz.evaluate import policy_set
from waypoint.authz.extauthz import (
    ADD,
    ADD_IF_ABSENT,
    ALLOWED,
    DENIED,
    ERROR,
    OVERWRITE_IF_EXISTS,
    SET,
    CheckResult,
    edit_request,
    edit_response,
    name_matcher,
)
from waypoint.authz.hold import after_check, hold
from waypoint.binding import Waypoint
from waypoint.request import Downstream, Forward, Hold, LocalReply, RequestHead, SubReply

WP = Waypoint("demo", "waypoint")
DOWN = Downstream("spiffe://cluster.local/ns/demo/sa/web", "10.0.0.5", "demo", (), "10.96.0.9", 80,
                  "demo/backend", "backend.demo.svc.cluster.local")
HTTP = ExtAuthzProvider(name="h", kind="http", service="authz.demo.svc.cluster.local", port=8000)
GRPC = ExtAuthzProvider(name="g", kind="grpc", service="authz.demo.svc.cluster.local", port=9000, timeout=0.5)
AUTHZ_SVC = Service(name="authz", namespace="demo", hostname="authz.demo.svc.cluster.local", vips=["10.96.0.20"],
                    ports=[ServicePort(8000, 8000, "http", "HTTP")])


def head(path: str = "/a?b=1", method: str = "GET", **headers: str) -> RequestHead:
    return RequestHead(method, path, "backend:80", "http", [(k.replace("_", "-"), v) for k, v in headers.items()])


def custom(provider: str, name: str = "ext", paths: list[str] | None = None, ref: str = "backend") -> Authorization:
    return Authorization(name=name, namespace="demo", action="CUSTOM", scope="waypoint", provider=provider,
                         target_refs=[{"kind": "Service", "group": "", "name": ref}],
                         http_rules=[Rule(clauses=[[Match(paths=paths)]] if paths else [])])


# --- header patterns and edits ------------------------------------------------------------------

def test_header_patterns_are_exact_prefix_or_suffix_and_ignore_case() -> None:
    m = name_matcher(["X-Exact", "x-pre*", "*-suf"])
    assert m("x-exact") and m("X-PRE-anything") and m("a-SUF")
    assert not m("x-exactly") and not m("y-pre") and not m("suf-x")
    assert not name_matcher([])("anything")


def test_an_allowing_checks_request_edits_set_append_and_remove_but_never_host_or_pseudo_headers() -> None:
    r = CheckResult(ALLOWED, upstream_set=(("X-A", "new"), ("host", "evil"), (":path", "/evil")),
                    upstream_add=(("x-b", "2"), ("x-absent", "3")), upstream_remove=("x-c", "Host"))
    out = edit_request([("x-a", "old"), ("x-a", "old2"), ("x-b", "1"), ("x-c", "gone"), ("host", "h")], r)
    # append joins to a header the request has, and adds none it lacks (Envoy's appendCopy)
    assert out == [("x-b", "1,2"), ("host", "h"), ("x-a", "new")]


def test_response_edits_follow_their_append_actions() -> None:
    ops = ((ADD, "x-a", "2"), (SET, "x-b", "new"), (ADD_IF_ABSENT, "x-a", "no"), (ADD_IF_ABSENT, "x-c", "yes"),
           (OVERWRITE_IF_EXISTS, "x-d", "no"), (OVERWRITE_IF_EXISTS, "x-b", "newer"))
    assert edit_response([("x-a", "1"), ("x-b", "old")], ops) == [("x-a", "1"), ("x-a", "2"), ("x-c", "yes"),
                                                                    ("x-b", "newer")]


# --- HTTP provider ------------------------------------------------------------------------------

def test_http_check_has_the_method_prefixed_path_host_authorization_and_only_the_included_headers() -> None:
    p = ExtAuthzProvider(name="h", kind="http", service="s", port=1, path_prefix="/check",
                         include_request_headers=["x-user*"], include_additional_headers={"X-Fixed": "v",
                                                                                           "x-user-id": "over"})
    h = head("/a?b=1", "DELETE", authorization="Bearer t", x_user_id="7", x_user_role="a", cookie="c",
             connection="x", content_length="5")
    h.headers.append(("x-user-role", "b"))
    check, body = extauthz_http.check_request(p, h)
    assert (check.method, check.path, check.authority) == ("DELETE", "/check/a?b=1", "backend:80")
    assert dict(check.headers) == {"authorization": "Bearer t", "x-user-role": "a,b", "x-fixed": "v",
                                   "x-user-id": "over", "content-length": "0"}
    assert body == b""
    assert dict(extauthz_http.check_request(p, h, b"abc")[0].headers)["content-length"] == "3"


def test_http_200_allows_with_the_named_headers_and_removals() -> None:
    p = ExtAuthzProvider(name="h", kind="http", service="s", port=1, headers_to_upstream_on_allow=["x-up*"],
                         headers_to_downstream_on_allow=["x-down"])
    r = extauthz_http.interpret(p, 200, [("X-Up-1", "a"), ("x-down", "b"), ("x-other", "c"),
                                          ("x-envoy-auth-headers-to-remove", "authorization, x-secret")], b"")
    assert r.result == ALLOWED and r.upstream_set == (("x-up-1", "a"),)
    assert r.downstream == ((ADD, "x-down", "b"),) and r.upstream_remove == ("authorization", "x-secret")
    # none named: nothing goes up or down
    r = extauthz_http.interpret(HTTP, 200, [("x-up-1", "a")], b"")
    assert (r.upstream_set, r.downstream) == ((), ())


def test_http_5xx_is_an_error_and_any_other_status_denies_with_the_authorizers_headers() -> None:
    assert extauthz_http.interpret(HTTP, 503, [], b"down").result == ERROR
    r = extauthz_http.interpret(HTTP, 401, [("www-authenticate", "Basic"), ("x-a", "1"), ("host", "h"),
                                            ("content-length", "4")], b"nope")
    assert (r.result, r.status, r.body) == (DENIED, 401, b"nope")
    assert r.reply_headers == (("www-authenticate", "Basic"), ("x-a", "1"))     # all but Host (and framing)
    p = ExtAuthzProvider(name="h", kind="http", service="s", port=1, headers_to_downstream_on_deny=["x-b"])
    r = extauthz_http.interpret(p, 302, [("location", "/login"), ("x-a", "1"), ("x-b", "2")], b"")
    assert r.reply_headers == (("location", "/login"), ("x-b", "2"))      # named ones, Location always


# --- gRPC provider ------------------------------------------------------------------------------

def _framed(msg: pb.CheckResponse) -> bytes:
    data = msg.SerializeToString()
    return struct.pack(">BI", 0, len(data)) + data


OK = [("grpc-status", "0")]


def test_grpc_check_is_a_framed_check_request_over_http2_with_the_deadline() -> None:
    msg = extauthz_grpc.check_message(head(x_a="1", x_request_id="rid"), DOWN, "spiffe://td/ns/demo/sa/waypoint", "rid")
    check, body = extauthz_grpc.check_request(GRPC, "authz.demo.svc.cluster.local", msg)
    assert (check.method, check.path, check.authority, check.version) == (
        "POST", "/envoy.service.auth.v3.Authorization/Check", "authz.demo.svc.cluster.local", "2")
    assert dict(check.headers)["content-type"] == "application/grpc" and dict(check.headers)["grpc-timeout"] == "500m"
    flag, n = struct.unpack(">BI", body[:5])
    got = pb.CheckRequest.FromString(body[5:])
    assert flag == 0 and n == len(body) - 5
    h = got.attributes.request.http
    assert (h.method, h.path, h.host, h.id, h.protocol, h.size) == ("GET", "/a?b=1", "backend:80", "rid", "HTTP/1.1", -1)
    assert h.headers[":authority"] == "backend:80" and h.headers["x-a"] == "1"
    assert got.attributes.source.principal == DOWN.source_identity
    assert got.attributes.destination.address.socket_address.port_value == 80
    assert not got.attributes.context_extensions


def test_grpc_ok_applies_its_header_options_and_denied_defaults_to_403() -> None:
    ok = pb.CheckResponse(status=pb.RpcStatus(code=0), ok_response=pb.OkHttpResponse(
        headers=[pb.HeaderValueOption(header=pb.HeaderValue(key="X-Set", value="1")),
                 pb.HeaderValueOption(header=pb.HeaderValue(key="x-add", value="2"), append={"value": True})],
        headers_to_remove=["Authorization"],
        response_headers_to_add=[pb.HeaderValueOption(header=pb.HeaderValue(key="x-r", value="3")),
                                 pb.HeaderValueOption(header=pb.HeaderValue(key="x-s", value="4"), append_action=2),
                                 pb.HeaderValueOption(header=pb.HeaderValue(key="x-t", value="5"),
                                                      append={"value": False})]))
    r = extauthz_grpc.interpret(200, [], _framed(ok), OK)
    assert r.result == ALLOWED and r.upstream_set == (("x-set", "1"),) and r.upstream_add == (("x-add", "2"),)
    assert r.upstream_remove == ("authorization",)
    assert r.downstream == ((ADD, "x-r", "3"), (SET, "x-s", "4"), (SET, "x-t", "5"))
    r = extauthz_grpc.interpret(200, [], _framed(pb.CheckResponse(status=pb.RpcStatus(code=7))), OK)
    assert (r.result, r.status, r.body) == (DENIED, 403, b"")
    denied = pb.CheckResponse(status=pb.RpcStatus(code=16), denied_response=pb.DeniedHttpResponse(
        status=pb.HttpStatus(code=401), body="who?", headers=[pb.HeaderValueOption(
            header=pb.HeaderValue(key="www-authenticate", value="Bearer"))]))
    r = extauthz_grpc.interpret(200, [], _framed(denied), OK)
    assert (r.status, r.body, r.reply_headers) == (401, b"who?", (("www-authenticate", "Bearer"),))


@pytest.mark.parametrize("key,value", [("x-a", "1\r\nx-injected: 1"), ("x-a", "a\nb"), ("x-a", "a\x00b"),
                                       ("x a", "1"), ("x-a\r\nx-b", "1"), ("", "1")])
def test_a_grpc_allows_header_edit_that_is_no_header_field_is_an_error(key: str, value: str) -> None:
    """Regression (found by test_ext_authz_fuzz): a CheckResponse's strings went into header
    fields as they were, so an authorizer could inject a header line into the upstream request
    (request smuggling on HTTP/1.1) or the client's response. Such an answer is an error (the
    provider's failure mode decides), as Envoy's `validate_mutations`; for either list of edits."""
    for ok in (pb.OkHttpResponse(headers=[pb.HeaderValueOption(header=pb.HeaderValue(key=key, value=value))]),
               pb.OkHttpResponse(response_headers_to_add=[pb.HeaderValueOption(header=pb.HeaderValue(key=key, value=value))])):
        r = extauthz_grpc.interpret(200, [], _framed(pb.CheckResponse(status=pb.RpcStatus(code=0), ok_response=ok)), OK)
        assert r.result == ERROR, r


def test_a_grpc_answers_text_is_sent_as_utf8_bytes() -> None:
    """Regression (found by test_ext_authz_fuzz): a value with a character beyond latin-1 ("€")
    made the waypoint's writer raise UnicodeEncodeError; it is sent as its UTF-8 bytes, as Envoy."""
    ok = pb.OkHttpResponse(headers=[pb.HeaderValueOption(header=pb.HeaderValue(key="x-a", value="5 €"))])
    r = extauthz_grpc.interpret(200, [], _framed(pb.CheckResponse(status=pb.RpcStatus(code=0), ok_response=ok)), OK)
    assert r.upstream_set == (("x-a", "5 \xe2\x82\xac"),)
    "".join(v for _, v in r.upstream_set).encode("latin-1")


@pytest.mark.parametrize("code", [1, 100, 199, 600, 999, 2**31 - 1])
def test_a_grpc_denial_with_a_status_http_cannot_answer_is_403_and_its_bad_headers_are_dropped(code: int) -> None:
    """Regression (found by test_ext_authz_fuzz): a denial's status went out as it was (HTTP/1.1
    600, or a 1xx the client takes for an interim response and waits on for ever). Outside
    200..599 it is the default 403; it still denies, its headers that are no fields dropped."""
    denied = pb.CheckResponse(status=pb.RpcStatus(code=7), denied_response=pb.DeniedHttpResponse(
        status=pb.HttpStatus(code=code), body="no", headers=[
            pb.HeaderValueOption(header=pb.HeaderValue(key="x-bad", value="a\r\nset-cookie: x")),
            pb.HeaderValueOption(header=pb.HeaderValue(key="x-good", value="1"))]))
    r = extauthz_grpc.interpret(200, [], _framed(denied), OK)
    assert (r.result, r.status, r.body, r.reply_headers) == (DENIED, 403, b"no", (("x-good", "1"),))


def test_an_allowing_check_never_edits_the_headers_the_proxy_owns() -> None:
    """Regression (found by test_ext_authz_fuzz): an authorizer's `content-length: 0` replaced
    the request's, and an HTTP/1.1 upstream then read the rest of a POST's body as a second
    request (smuggling); Transfer-Encoding and the connection's headers alike."""
    r = CheckResult(ALLOWED, upstream_set=(("content-length", "0"), ("transfer-encoding", "chunked"), ("x-a", "1")),
                    upstream_add=(("content-length", "5"), ("te", "x")), upstream_remove=("content-length", "expect"))
    out = edit_request([("content-length", "10"), ("expect", "100-continue"), ("te", "trailers")], r)
    assert out == [("content-length", "10"), ("expect", "100-continue"), ("te", "trailers"), ("x-a", "1")]


@pytest.mark.parametrize("status,headers,body,trailers", [
    (503, [], b"", None),                                               # not a gRPC answer
    (200, [], b"", [("grpc-status", "14"), ("grpc-message", "down")]),   # the call failed
    (200, [("grpc-status", "13")], b"", None),                          # trailers-only failure
    (200, [], b"", None),                                               # no grpc-status
    (200, [], b"\x00\x00\x00\x00\x09abc", OK),                          # truncated
    (200, [], b"\x01\x00\x00\x00\x00", OK),                             # compressed, never offered
    (200, [], b"\x00\x00\x00\x00\x02\xff\xff", OK),                     # not a CheckResponse
])
def test_a_failed_check_call_is_an_error(status: int, headers: list, body: bytes, trailers: list | None) -> None:
    assert extauthz_grpc.interpret(status, headers, body, trailers).result == ERROR


# --- which CUSTOM policy applies ----------------------------------------------------------------

def test_a_custom_policy_needs_a_provider_and_is_not_an_allow_deny_policy() -> None:
    with pytest.raises(ValueError, match="CUSTOM names no provider"):
        policy_set([custom("")], WP)
    assert policy_set([custom("h")], WP).by_service == {}


def test_only_requests_a_custom_rule_matches_are_checked_with_its_provider_and_service() -> None:
    cs = custom_set([custom("h", paths=["/admin*"])], WP, [HTTP], {AUTHZ_SVC.resource_name: AUTHZ_SVC})
    assert cs.for_request(head("/public"), DOWN) is None
    c = cs.for_request(head("/admin/x"), DOWN)
    assert c is not None and (c.action, c.policy, c.provider, c.service) == (CHECK, "demo/ext", HTTP, "demo/authz")
    other = Downstream(service="demo/other")
    assert cs.for_request(head("/admin/x"), other) is None


def test_an_unknown_provider_or_two_providers_deny_what_the_policies_match(caplog: pytest.LogCaptureFixture) -> None:
    cs = custom_set([custom("nope", paths=["/a"])], WP, [HTTP], {})
    c = cs.for_request(head("/a"), DOWN)
    assert c is not None and c.action == DENY and "provider 'nope'" in c.reason
    assert "demo/ext" in caplog.text and "provider 'nope'" in caplog.text
    cs = custom_set([custom("h", "one", ["/a"]), custom("g", "two", ["/b"])], WP, [HTTP, GRPC], {})
    c = cs.for_request(head("/b"), DOWN)
    assert c is not None and c.action == DENY and "several CUSTOM providers (g, h)" in c.reason
    assert cs.for_request(head("/c"), DOWN) is None


def test_a_providers_service_is_found_by_hostname_with_an_optional_namespace() -> None:
    svcs = {AUTHZ_SVC.resource_name: AUTHZ_SVC}
    assert resolve_service("authz.demo.svc.cluster.local", svcs) is AUTHZ_SVC
    assert resolve_service("demo/authz.demo.svc.cluster.local", svcs) is AUTHZ_SVC
    assert resolve_service("other/authz.demo.svc.cluster.local", svcs) is None
    assert resolve_service("authz", svcs) is None


# --- after the check ----------------------------------------------------------------------------

ROUTED = Forward("demo/backend", 80, route="first")


def _then(calls: list[bool]):
    def then():
        calls.append(True)
        return ROUTED
    return then


def test_an_allow_edits_the_request_and_keeps_the_route_chosen_before_the_check() -> None:
    counts: list[tuple[str, str]] = []
    calls: list[bool] = []
    h = head(x_a="1")
    r = CheckResult(ALLOWED, upstream_set=(("x-a", "2"),), downstream=((ADD, "x-d", "v"),))
    d = after_check(HTTP, "demo/ext", r, h, _then(calls), lambda *a: counts.append(a))
    assert isinstance(d, Forward) and d.route == "first" and d.response_edits == ((ADD, "x-d", "v"),)
    assert h.headers == [("x-a", "2")] and calls == [True] and counts == [("h", ALLOWED)]


def test_a_denial_and_an_error_answer_locally_with_uaex_unless_fail_open() -> None:
    d = after_check(HTTP, "p", CheckResult(DENIED, 401, b"no", reply_headers=(("x-a", "1"),)), head(),
                    _then([]), lambda *a: None)
    assert isinstance(d, LocalReply) and (d.status, d.body, d.flags) == (401, b"no", "UAEX")
    assert ("x-a", "1") in d.headers
    d = after_check(HTTP, "p", CheckResult(ERROR, reason="x"), head(), _then([]), lambda *a: None)
    assert isinstance(d, LocalReply) and (d.status, d.body, d.flags) == (403, b"", "UAEX")
    opened = ExtAuthzProvider(name="h", kind="http", service="s", port=1, fail_open=True)
    assert after_check(opened, "p", CheckResult(ERROR), head(), _then([]), lambda *a: None) is ROUTED
    g = head()
    g.grpc = True
    d = after_check(HTTP, "p", CheckResult(DENIED, 403, b"no"), g, _then([]), lambda *a: None)
    assert d.grpc_status == 7


def test_the_hold_builds_the_check_and_reads_its_answer() -> None:
    cs = custom_set([custom("h")], WP, [HTTP], {AUTHZ_SVC.resource_name: AUTHZ_SVC})
    c = cs.for_request(head(), DOWN)
    assert c is not None
    counts: list[tuple[str, str]] = []
    h = hold(c, head(x_ext="1"), DOWN, "spiffe://td/ns/demo/sa/waypoint", _then([]), lambda *a: counts.append(a),
             1024)
    assert isinstance(h, Hold) and (h.forward.service, h.forward.port, h.h2, h.body_limit) == ("demo/authz", 8000,
                                                                                                False, -1)
    assert h.build(None, False)[0].path == "/a?b=1"
    assert h.resume(SubReply(200), "") is ROUTED
    assert h.resume(None, "connect failed").status == 403 and counts == [("h", ALLOWED), ("h", ERROR)]
    # the provider's Service is unknown: an error at once, no hold
    lost = custom_set([custom("h")], WP, [HTTP], {}).for_request(head(), DOWN)
    assert lost is not None
    assert hold(lost, head(), DOWN, "", _then([]), lambda *a: None, 1024).status == 403


def test_the_hold_tags_a_traced_checks_span_with_envoys_ext_authz_status() -> None:
    cs = custom_set([custom("h")], WP, [HTTP], {AUTHZ_SVC.resource_name: AUTHZ_SVC})
    c = cs.for_request(head(), DOWN)
    assert c is not None
    h = hold(c, head(), DOWN, "", _then([]), lambda *a: None, 1024)
    assert isinstance(h, Hold) and h.span_tags is not None
    assert h.span_tags(SubReply(200)) == {"ext_authz_status": "ext_authz_ok", "ext_authz_http_status": "OK"}
    assert h.span_tags(SubReply(403)) == {"ext_authz_status": "ext_authz_unauthorized",
                                          "ext_authz_http_status": "Forbidden"}
    # a 5xx is an error to the filter, but Envoy's HTTP client tags the answer it got
    assert h.span_tags(SubReply(503))["ext_authz_status"] == "ext_authz_unauthorized"
    assert extauthz_http.span_tags(599)["ext_authz_http_status"] == "Unknown"
    ok, no = (extauthz_grpc.span_tags(extauthz_grpc.interpret(200, [], _grpc_answer(code), [("grpc-status", "0")]))
              for code in (0, 7))
    assert (ok, no) == ({"ext_authz_status": "ext_authz_ok"}, {"ext_authz_status": "ext_authz_unauthorized"})
    assert extauthz_grpc.span_tags(extauthz_grpc.interpret(200, [], b"", [("grpc-status", "14")])) == {}


def _grpc_answer(code: int) -> bytes:
    data = pb.CheckResponse(status=pb.RpcStatus(code=code)).SerializeToString()
    return struct.pack(">BI", 0, len(data)) + data


def test_checks_are_counted_by_provider_and_result_in_the_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from waypoint.telemetry.extauthz import CheckCollector, CheckCounts
    counts = CheckCounts()
    reg = CollectorRegistry()
    reg.register(CheckCollector(counts))
    for r in (ALLOWED, ALLOWED, ERROR):
        counts.count("opa", r)
    text = generate_latest(reg).decode()
    assert 'ambit_waypoint_ext_authz_checks_total{provider="opa",result="allowed"} 2.0' in text
    assert 'ambit_waypoint_ext_authz_checks_total{provider="opa",result="denied"} 0.0' in text
    assert 'ambit_waypoint_ext_authz_checks_total{provider="opa",result="error"} 1.0' in text
