"""Gateway API HTTPRoute semantics the mesh conformance suite does not pin, through the REAL
controller translation and `route()` (../shared/notes/l7-semantics.md §3; gateway-api
apis/v1/httproute_types.go): the oldest-route tie-break of match precedence, equivalent
header/query names in one match, and a `ReplacePrefixMatch` of ""."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.waypoint.support import MESH_NS, backend, conformance_services, decide, req, table_of, to
from waypoint.request import Forward, LocalReply

V1, V2 = f"{MESH_NS}/echo-v1", f"{MESH_NS}/echo-v2"


def route(name: str, rules: list[dict[str, Any]], created: str = "2024-01-01T00:00:00Z") -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": MESH_NS, "creationTimestamp": created},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}], "rules": rules}}


def to_backend(svc: str, match: dict[str, Any], **rule: Any) -> dict:
    return {"matches": [match], "backendRefs": [{"name": svc, "port": 8080}], **rule}


def prefix(value: str) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": value}}


def winner(*routes: dict, path: str = "/a/b", headers: dict[str, str] | None = None) -> str:
    return backend(decide(table_of(conformance_services() + list(routes)), req(path, headers=headers), to("echo")))


# -- precedence: the oldest route -------------------------------------------------------------

@pytest.mark.parametrize("older,newer", [
    ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00.5Z"),        # fractional seconds
    ("2024-01-01T01:00:00+02:00", "2024-01-01T00:00:00Z"),     # an offset: 23:00 UTC the day before
])
def test_the_oldest_route_wins_by_time_not_by_text(older: str, newer: str) -> None:
    assert winner(route("a", [to_backend("echo-v1", prefix("/a"))], created=newer),
                  route("z", [to_backend("echo-v2", prefix("/a"))], created=older)) == V2


# -- equivalent names: only the first entry counts -------------------------------------------------

def test_of_equivalent_header_names_only_the_first_is_considered() -> None:
    r = route("r", [to_backend("echo-v2", {"headers": [{"name": "x-v", "value": "a"}, {"name": "X-V", "value": "b"}]})])
    assert winner(r, path="/", headers={"x-v": "a"}) == V2
    assert winner(r, path="/", headers={"x-v": "b"}) == "404"


def test_of_equal_query_param_names_only_the_first_is_considered() -> None:
    r = route("r", [to_backend("echo-v2", {"queryParams": [{"name": "q", "value": "a"}, {"name": "q", "value": "b"}]})])
    assert winner(r, path="/?q=a") == V2
    assert winner(r, path="/?q=b") == "404"
    # query names are case-sensitive: different names, both apply
    r = route("r", [to_backend("echo-v2", {"queryParams": [{"name": "q", "value": "a"}, {"name": "Q", "value": "b"}]})])
    assert winner(r, path="/?q=a") == "404" and winner(r, path="/?q=a&Q=b") == V2


# -- ReplacePrefixMatch "" -------------------------------------------------------------------------

def _modifier(replacement: str) -> dict[str, Any]:
    return {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": replacement}}


@pytest.mark.parametrize("path,want", [("/foo/bar", "/bar"), ("/foo/", "/"), ("/foo", "/"), ("/foo/bar?x=1", "/bar?x=1")])
def test_rewrite_replace_prefix_match_with_an_empty_string_strips_the_prefix(path: str, want: str) -> None:
    r = route("r", [to_backend("echo-v1", prefix("/foo"), filters=[{"type": "URLRewrite", "urlRewrite": _modifier("")}])])
    d = decide(table_of(conformance_services() + [r]), req(path), to("echo"))
    assert isinstance(d, Forward) and d.path == want


def test_redirect_replace_prefix_match_with_an_empty_string_strips_the_prefix() -> None:
    r = route("r", [{"matches": [prefix("/foo")],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": _modifier("")}]}])
    d = decide(table_of(conformance_services() + [r]), req("/foo/bar"), to("echo"))
    assert isinstance(d, LocalReply) and (d.status, dict(d.headers)["location"]) == (302, "http://echo/bar")
