"""A method in lower case or a path without its "/" in an AuthorizationPolicy or a VirtualService
matches no request (Envoy compares both as written; so does the waypoint): accepted, as Istio
accepts them, and warned about by `ambit apply`, the object's status and `ambit analyze`
(AMB0133), naming the field and the value meant. Before, nothing said so, and a DENY written that
way denied nothing."""

from __future__ import annotations

from typing import Any

import pytest

from ambitctl.analyze import analyze
from controller.waypoints.advisories import advisories
from tests.unit.waypoint.support import namespace, req, service
from tests.unit.waypoint.test_authz import allowed, policies, to_service

BASE = [namespace("default", **{"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "waypoint"}),
        service("myapp", "default", {"http": 80}, ip="10.96.0.20")]


def warned(obj: dict[str, Any]) -> dict[str, str]:
    return {a.path: a.reason for a in advisories(BASE + [obj]) if a.cause == "NeverMatches"}


@pytest.mark.parametrize("op, path, words", [
    ({"methods": ["delete"]}, "methods[0]", ('"delete" matches no request', "this DENY rule denies nothing", '"DELETE"')),
    ({"methods": ["GET", "po*"]}, "methods[1]", ('"po*"', 'write "PO*"')),
    ({"notMethods": ["get"]}, "notMethods[0]", ("it excludes nothing from this DENY rule",)),
    ({"paths": ["admin/*"]}, "paths[0]", ('"admin/*" matches none', 'write "/admin/*"')),
    ({"notPaths": ["health"]}, "notPaths[0]", ('write "/health"',)),
])
def test_a_deny_that_can_match_nothing_is_warned_naming_the_value_meant(op: dict[str, Any], path: str,
                                                                         words: tuple[str, ...]) -> None:
    got = warned(to_service([{"to": [{"operation": op}]}], "DENY"))
    why = got.pop(f"spec.rules[0].to[0].operation.{path}")
    assert all(w in why for w in words), why
    assert got == {}


def test_the_warning_is_about_what_happens_the_deny_really_denies_nothing() -> None:
    """The behaviour the warning describes, through the real translation and the waypoint's check."""
    ps = policies(to_service([{"to": [{"operation": {"methods": ["delete"]}}]}], "DENY"))
    assert allowed(ps, req("/", authority="myapp", method="DELETE"))
    ps = policies(to_service([{"to": [{"operation": {"paths": ["admin/*"]}}]}], "DENY"))
    assert allowed(ps, req("/admin/users", authority="myapp"))


def test_an_allow_says_what_it_admits() -> None:
    why = warned(to_service([{"to": [{"operation": {"methods": ["get"]}}]}]))["spec.rules[0].to[0].operation.methods[0]"]
    assert "this ALLOW rule admits nothing on it" in why


@pytest.mark.parametrize("op", [
    {"methods": ["GET", "PURGE", "purge", "*"]},          # a lower-case custom method is a legal token: not warned
    {"paths": ["/admin/*", "*", "*.json", "/api/{*}/x"]},
    {"notPaths": ["/health"]},
])
def test_values_that_can_match_are_not_warned(op: dict[str, Any]) -> None:
    assert warned(to_service([{"to": [{"operation": op}]}], "DENY")) == {}


def vs(match: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "v", "namespace": "default"},
            "spec": {"hosts": ["myapp"], "http": [{"match": [match], "route": [{"destination": {"host": "myapp"}}]}]}}


def test_a_virtual_service_match_that_never_routes_is_warned_and_analyzed() -> None:
    obj = vs({"method": {"exact": "post"}, "uri": {"prefix": "api/"}})
    got = warned(obj)
    assert set(got) == {"spec.http[0].match[0].method.exact", "spec.http[0].match[0].uri.prefix"}
    assert all("this match never routes" in w for w in got.values())
    codes = {(f.code, f.path) for f in analyze(BASE + [obj], complete=True)
             if f.ref == "VirtualService/default/v" and f.code == "AMB0133"}
    assert codes == {("AMB0133", "spec.http[0].match[0].method.exact"), ("AMB0133", "spec.http[0].match[0].uri.prefix")}
    assert warned(vs({"method": {"exact": "POST"}, "uri": {"prefix": "/api/"}})) == {}
    assert warned(vs({"uri": {"prefix": ""}})) == {}          # an empty prefix matches every path


def test_rules_after_a_catch_all_and_repeated_matches_are_warned_as_istio_warns() -> None:
    """Istio's VirtualServiceUnreachableRule / VirtualServiceIneffectiveMatch: the first rule that
    matches wins, so a block placed after a catch-all route blocks nothing."""
    obj = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "v", "namespace": "default"},
           "spec": {"hosts": ["myapp"], "http": [
               {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "myapp"}}]},
               {"name": "dup", "match": [{"uri": {"prefix": "/api"}, "name": "again"}, {"uri": {"exact": "/x"}}],
                "route": [{"destination": {"host": "myapp"}}]},
               {"match": [{"uri": {"exact": "/x"}}], "route": [{"destination": {"host": "myapp"}}]},
               {"route": [{"destination": {"host": "myapp"}}]},
               {"match": [{"uri": {"prefix": "/admin"}}], "directResponse": {"status": 403}}]}}
    got = {a.path: a.reason for a in advisories(BASE + [obj]) if a.cause == "UnreachableRule"}
    assert set(got) == {"spec.http[1].match[0]", "spec.http[2].match[0]", "spec.http[2]", "spec.http[4]"}
    assert "spec.http[1]" not in got          # one of its matches still decides
    assert "rule 3 before it has no match" in got["spec.http[4]"]
    assert "all its matches are used by rules before it" in got["spec.http[2]"]
    assert {f.code for f in analyze(BASE + [obj], complete=True) if f.path == "spec.http[4]"} == {"AMB0134"}
    # the usual shape, a catch-all last, is not warned
    ok = {**obj, "spec": {**obj["spec"], "http": [obj["spec"]["http"][i] for i in (0, 4, 3)]}}
    assert [a for a in advisories(BASE + [ok]) if a.cause == "UnreachableRule"] == []


def test_tcp_and_tls_rules_nothing_reaches_are_warned_as_istio_warns() -> None:
    """istiod's analyzeUnreachableTCPRules and analyzeUnreachableTLSRules are the HTTP one's, and the
    waypoint tries `tcp` and `tls` rules in order too: a `tcp` rule after one without `match`, or a
    `tls` match repeated, never decides. They were accepted without a word."""
    dest = [{"destination": {"host": "myapp"}}]
    obj = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "v", "namespace": "default"},
           "spec": {"hosts": ["myapp"], "tcp": [{"route": dest}, {"match": [{"port": 9000}], "route": dest}],
                    "tls": [{"match": [{"sniHosts": ["myapp"]}], "route": dest},
                            {"match": [{"sniHosts": ["myapp"]}, {"sniHosts": ["myapp"], "port": 443}], "route": dest}]}}
    got = {a.path: a.reason for a in advisories(BASE + [obj]) if a.cause == "UnreachableRule"}
    assert set(got) == {"spec.tcp[1]", "spec.tls[1].match[0]"}, got
    assert "rule 0 before it has no match, so it takes every connection" in got["spec.tcp[1]"]
    assert "rule 0 before it has the same match" in got["spec.tls[1].match[0]"]
    assert {f.code for f in analyze(BASE + [obj], complete=True) if f.path == "spec.tcp[1]"} == {"AMB0134"}


def _http(*matches: list[dict[str, Any]]) -> dict[str, Any]:
    dest = [{"destination": {"host": "myapp"}}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "v", "namespace": "default"},
            "spec": {"hosts": ["myapp"], "http": [{"match": m, "route": dest} for m in matches]}}


def test_a_prefix_within_an_earlier_prefix_is_warned_where_istiod_is_right() -> None:
    """istiod's VirtualServiceIneffectiveMatch for a uri prefix shadowed by a shorter earlier one
    (`/api` before `/api/v2`): the first match wins, so the later one never decides."""
    got = {a.path: a.reason for a in advisories(BASE + [_http([{"uri": {"prefix": "/api"}}],
                                                              [{"uri": {"prefix": "/api/v2"}}])])
           if a.cause == "UnreachableRule"}
    # and the rule, whose only match that was, is never used (as for a repeated match)
    assert list(got) == ["spec.http[1].match[0]", "spec.http[1]"]
    assert "rule 1 is never used: all its matches are used by rules before it" in got["spec.http[1]"]
    assert 'its uri prefix "/api/v2" is within the prefix "/api" of an earlier match (rule 0)' in got[
        "spec.http[1].match[0]"]
    assert "istiod warns too" in got["spec.http[1].match[0]"]


@pytest.mark.parametrize("first, later", [
    ({"uri": {"prefix": "/api/v2"}}, {"uri": {"prefix": "/api"}}),                     # the wider one later
    ({"uri": {"prefix": "/api"}, "headers": {"x-a": {"exact": "1"}}}, {"uri": {"prefix": "/api/v2"}}),
    # istiod warns of these two, wrongly: an earlier GET-only match, and one from some pods only,
    # leave the later match the requests they do not take (its comparison skips such fields)
    ({"uri": {"prefix": "/api"}, "method": {"exact": "GET"}}, {"uri": {"prefix": "/api/v2"}}),
    ({"uri": {"prefix": "/api"}, "sourceLabels": {"app": "a"}}, {"uri": {"prefix": "/api/v2"}}),
])
def test_a_prefix_match_that_still_decides_is_not_warned(first: dict[str, Any], later: dict[str, Any]) -> None:
    assert [a for a in advisories(BASE + [_http([first], [later])]) if a.cause == "UnreachableRule"] == []
