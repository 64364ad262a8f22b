"""A VirtualService `corsPolicy` is checked as Istio's validation checks it (validateCORSPolicy):
its methods, header names and max age become response headers the waypoint sends, so a value that
would change or split them is refused with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from controller.validation import validate_object


def vs(cors: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"hosts": ["web"], "http": [{"corsPolicy": cors, "route": [{"destination": {"host": "web"}}]}]}}


def errors(cors: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.path, e.reason) for e in validate_object(vs(cors))]


def test_a_policy_istio_accepts_is_accepted() -> None:
    assert errors({"allowOrigins": [{"exact": "*"}, {"prefix": "https://a."}, {"regex": "https://.*[.]b[.]example"}],
                   "allowOrigin": ["https://old.example"], "allowMethods": ["GET", "POST", "PATCH"],
                   "allowHeaders": ["x-token", "*"], "exposeHeaders": ["x-request-id"], "maxAge": "24h",
                   "allowCredentials": True, "unmatchedPreflights": "IGNORE"}) == []


@pytest.mark.parametrize("cors,path,why", [
    ({"allowMethods": ["get"]}, "allowMethods[0]", "must be one of"),
    ({"allowMethods": ["GET, PUT"]}, "allowMethods[0]", "must be one of"),
    ({"allowHeaders": ["x-a, x-b"]}, "allowHeaders[0]", "must be an HTTP header name"),
    ({"exposeHeaders": ["x-a\r\nset-cookie: s=1"]}, "exposeHeaders[0]", "must be an HTTP header name"),
    ({"maxAge": "1.5s"}, "maxAge", "max_age duration is accurate only to seconds precision"),
    ({"allowOrigins": [{"prefix": ""}]}, "allowOrigins[0]", "is not a valid match type for CORS allow origins"),
    ({"allowOrigins": [{"regex": "(?=a)"}]}, "allowOrigins[0].regex", ""),
])
def test_values_istio_refuses_are_refused_by_field(cors: dict[str, Any], path: str, why: str) -> None:
    found = errors(cors)
    assert [p for p, _ in found] == [f"spec.http[0].corsPolicy.{path}"], found
    assert why in found[0][1]
