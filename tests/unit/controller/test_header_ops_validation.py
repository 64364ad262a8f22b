"""Route header operations are refused where they would re-frame a message or inject a header.

A VirtualService's `headers` and an HTTPRoute/GRPCRoute's Request/ResponseHeaderModifier were
accepted with any name and value. `set: {content-length: "0"}` on a POST made the rest of its body a
second request on an HTTP/1.1 upstream (smuggling), a value with CR/LF injected upstream headers,
and pseudo-headers were accepted and then dropped (a silent no-op). Each is now refused, naming the
field; setting Host (or `:authority`) on a request stays a host rewrite, as in Istio.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.validation import validate_object


def vs(request: dict[str, Any] | None = None, response: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {k: v for k, v in (("request", request), ("response", response)) if v is not None}
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"hosts": ["web"], "http": [{"headers": headers,
                                                 "route": [{"destination": {"host": "web"}}]}]}}


def route(kind: str, modifier: str, ops: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind, "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                     "rules": [{"filters": [{"type": modifier, modifier[0].lower() + modifier[1:]: ops}],
                                "backendRefs": [{"name": "web", "port": 80}]}]}}


def problems(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.path, e.reason) for e in validate_object(obj)]


@pytest.mark.parametrize(("ops", "path", "reason"), [
    ({"set": {"content-length": "0"}}, "spec.http[0].headers.request.set[content-length]", "proxy owns"),
    ({"add": {"Transfer-Encoding": "chunked"}}, "spec.http[0].headers.request.add[Transfer-Encoding]", "proxy owns"),
    ({"remove": ["connection"]}, "spec.http[0].headers.request.remove[0]", "proxy owns"),
    ({"set": {":path": "/admin"}}, "spec.http[0].headers.request.set[:path]", "pseudo-header"),
    ({"add": {"host": "other"}}, "spec.http[0].headers.request.add[host]", "set it to rewrite the authority"),
    ({"remove": [":authority"]}, "spec.http[0].headers.request.remove[0]", "set it to rewrite the authority"),
    ({"set": {"x-team": "a\r\nx-admin: 1"}}, "spec.http[0].headers.request.set[x-team]", "control characters"),
    ({"add": {"bad name": "v"}}, "spec.http[0].headers.request.add[bad name]", "HTTP header name"),
])
def test_virtualservice_request_header_operations_that_are_refused(ops: dict, path: str, reason: str) -> None:
    [(where, why)] = problems(vs(request=ops))
    assert where == path and reason in why


def test_virtualservice_response_header_operations_that_are_refused() -> None:
    found = problems(vs(response={"set": {"content-length": "9"}, "add": {"host": "h"}}))
    assert sorted(p for p, _ in found) == ["spec.http[0].headers.response.add[host]",
                                           "spec.http[0].headers.response.set[content-length]"]
    [(where, why)] = problems(vs(response={"set": {"x-ok": "\x00"}}))
    assert where == "spec.http[0].headers.response.set[x-ok]" and "control characters" in why


def test_ordinary_operations_and_a_host_rewrite_are_accepted() -> None:
    assert problems(vs(request={"set": {"Host": "api.internal", "x-team": "José 王\tok"},
                                "add": {"x-trace": "1"}, "remove": ["x-debug"]},
                       response={"set": {"cache-control": "no-store"}, "remove": ["server"]})) == []
    assert problems(route("HTTPRoute", "RequestHeaderModifier",
                          {"set": [{"name": "Host", "value": "api.internal"}], "add": [{"name": "x-a", "value": "1"}],
                           "remove": ["x-b"]})) == []


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
@pytest.mark.parametrize(("modifier", "ops", "path", "reason"), [
    ("RequestHeaderModifier", {"set": [{"name": "Content-Length", "value": "0"}]},
     "requestHeaderModifier.set[0].name", "proxy owns"),
    ("RequestHeaderModifier", {"add": [{"name": "x-a", "value": "1\nx-b: 2"}]},
     "requestHeaderModifier.add[0].value", "control characters"),
    ("RequestHeaderModifier", {"remove": [":method"]}, "requestHeaderModifier.remove[0]", "pseudo-header"),
    ("ResponseHeaderModifier", {"add": [{"name": "transfer-encoding", "value": "chunked"}]},
     "responseHeaderModifier.add[0].name", "proxy owns"),
])
def test_gateway_api_header_modifiers_that_are_refused(kind: str, modifier: str, ops: dict, path: str,
                                                       reason: str) -> None:
    [(where, why)] = problems(route(kind, modifier, ops))
    assert where == f"spec.rules[0].filters[0].{path}" and reason in why
