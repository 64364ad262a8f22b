"""Tracing providers' `timeout` and `headers` (OTLP/HTTP, Zipkin) or `initialMetadata` (OTLP/gRPC),
as Istio's MeshConfig has them: parsed by the controller (an `envName` read from the controller's own
environment, as istiod reads its own) and sent by the waypoint's exporters on every export, checked
at a real receiver (ambitctl/lab/otlp_receiver.py). A SaaS collector that needs an API key gets it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from ambit.telemetry import provider_from_dict
from ambitctl.lab.otlp_receiver import Receiver
from controller import meshconfig
from waypoint.telemetry.tracing_sdk import endpoint, exporter


def parsed(kind: str, **spec: Any) -> dict[str, Any]:
    return meshconfig._provider({"name": "p", kind: {"service": "127.0.0.1", "port": 4317, **spec}}, "extensionProviders[0]")


def test_headers_metadata_and_timeouts_are_read_as_istio_has_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_API_KEY", "s3cret")
    http = parsed("opentelemetry", http={"path": "/v1/traces", "timeout": "2500ms", "headers": [
        {"name": "x-api-key", "envName": "OTEL_API_KEY"}, {"name": "X-Tenant", "value": "shop"}]})
    assert http["protocol"] == "http" and http["timeout"] == 2.5
    assert http["headers"] == [("x-api-key", "s3cret"), ("X-Tenant", "shop")]
    grpc = parsed("opentelemetry", grpc={"timeout": "3s", "initialMetadata": [{"name": "authorization", "value": "Bearer t"}]})
    assert grpc["protocol"] == "grpc" and grpc["timeout"] == 3.0 and grpc["headers"] == [("authorization", "Bearer t")]
    zipkin = parsed("zipkin", timeout="1s", headers=[{"name": "x-key", "value": "z"}])
    assert zipkin["timeout"] == 1.0 and zipkin["headers"] == [("x-key", "z")]
    p = provider_from_dict(http)
    assert p.timeout == 2.5 and p.headers == (("x-api-key", "s3cret"), ("X-Tenant", "shop"))
    assert provider_from_dict(parsed("opentelemetry")).timeout == 0.0          # the exporter's default


@pytest.mark.parametrize(("kind", "spec", "msg"), [
    ("opentelemetry", {"http": {}, "grpc": {}}, "http and grpc are exclusive"),
    ("opentelemetry", {"http": {"headers": [{"name": "x-k", "envName": "AMBIT_TEST_UNSET_VAR"}]}},
     "'AMBIT_TEST_UNSET_VAR' is not set in the controller's environment"),
    ("opentelemetry", {"http": {"headers": [{"name": "x k", "value": "v"}]}}, "'x k' is not a header name"),
    ("opentelemetry", {"grpc": {"initialMetadata": [{"name": "Authorization", "value": "v"}]}}, "lower case"),
    ("opentelemetry", {"grpc": {"initialMetadata": [{"name": "grpc-timeout", "value": "1S"}]}}, "gRPC's own"),
    ("opentelemetry", {"http": {"headers": [{"name": "x-k", "value": "a\r\nInjected: yes"}]}}, "line break"),
    ("opentelemetry", {"http": {"headers": [{"name": "x-k", "value": "v", "envName": "HOME"}]}}, "{name, value}"),
    ("opentelemetry", {"http": {"timeout": "0s"}}, "more than 0"),
    ("opentelemetry", {"http": {"timeout": "soon"}}, "timeout"),
    ("opentelemetry", {"grpc": {"headers": []}}, "expected timeout, initialMetadata"),
    ("zipkin", {"headers": "x-key: v"}, "expected a list"),
])
def test_what_no_exporter_could_send_is_refused_naming_the_field(kind: str, spec: dict[str, Any], msg: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        parsed(kind, **spec)
    assert msg in str(e.value), e.value


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def one_span() -> Any:
    span = TracerProvider().get_tracer("test").start_span("GET /")
    span.end()
    return span


@pytest.mark.parametrize("kind", ["otlp-http", "zipkin", "otlp-grpc"])
def test_every_export_carries_the_providers_headers(receiver: Receiver, kind: str) -> None:
    if kind == "otlp-grpc":
        d = parsed("opentelemetry", grpc={"timeout": "5s", "initialMetadata": [{"name": "x-api-key", "value": "k1"}]})
        d["port"] = receiver.grpc_port
    elif kind == "otlp-http":
        d = parsed("opentelemetry", http={"headers": [{"name": "x-api-key", "value": "k1"},
                                                      {"name": "content-type", "value": "text/plain"}]})
        d["port"] = receiver.http_port
    else:
        d = parsed("zipkin", headers=[{"name": "x-api-key", "value": "k1"}])
        d["port"] = receiver.http_port
    p = provider_from_dict(d)
    ex = exporter(p)
    assert ex is not None, endpoint(p)
    try:
        from opentelemetry.sdk.trace.export import SpanExportResult
        assert ex.export([one_span()]) == SpanExportResult.SUCCESS
    finally:
        ex.shutdown()
    [(where, headers)] = receiver.seen_headers
    assert headers["x-api-key"] == "k1", (where, headers)
    if kind == "otlp-http":         # the body's type is the exporter's, whatever a header says
        assert headers["content-type"] == "application/x-protobuf"


def test_the_environment_resource_detector_reads_otel_resource_attributes_only_when_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Istio's `resourceDetectors.environment`: the waypoint's OTEL_RESOURCE_ATTRIBUTES on its spans'
    resource, under the waypoint's own identity keys; without it, the variable is not read (Envoy
    has no detector then). `dynatrace` is refused."""
    from waypoint.telemetry import tracing as tr
    from waypoint.telemetry.tracing_sdk import resource
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=prod-eu,service.name=not-this")
    ident = tr.Identity("waypoint~~wp-0.default~default.svc.cluster.local", "waypoint", namespace="default")
    on = provider_from_dict(parsed("opentelemetry", resourceDetectors={"environment": {}}))
    assert on.resource_env and not provider_from_dict(parsed("opentelemetry")).resource_env
    with_env = resource(ident, True).attributes
    assert with_env["k8s.cluster.name"] == "prod-eu" and with_env["service.name"] == ident.service_name
    without = resource(ident, False).attributes
    assert "k8s.cluster.name" not in without and without["service.name"] == ident.service_name == "waypoint.default"
    assert without["telemetry.sdk.language"] == "python"
    with pytest.raises(ValueError, match="dynatrace: not supported by Ambit"):
        parsed("opentelemetry", resourceDetectors={"dynatrace": {}})
