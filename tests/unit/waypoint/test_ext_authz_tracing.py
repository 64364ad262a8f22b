"""External authorization checks in the trace, end to end in one process: curl through the
waypoint's own `decide` and `upstream` (as test_ext_authz_wire.py), the real HTTP and grpcio
authorizers, and the real OTLP receiver the SDK's exporters send to (ambitctl/lab/otlp_receiver.py).

What a platform team relies on, as Envoy gives it: a traced request's check is a CLIENT span, a
child of the request's span, named as Envoy's async clients name theirs and tagged with the
ext_authz outcome; the authorizer receives that span's context (HTTP headers, gRPC metadata), so
one that traces joins the trace; a failed check still ends its span, with the error; an unsampled
request's check carries the unsampled context its backend gets (none without a tracer).
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from ambit.model import ExtAuthzProvider, HttpRoute, RouteDestination, WaypointRoutes
from ambit.telemetryconfig import Provider, TracingConfig
from ambitctl.lab.apps import ext_authz as app
from ambitctl.lab.otlp_receiver import Receiver, Span
from tests.unit.waypoint.harness import Origin
from tests.unit.waypoint.test_ext_authz_wire import EDGE, Mesh, custom, entry, http_provider, ingress, serving
from waypoint.telemetry import tracing as tr
from waypoint.telemetry.tracing_sdk import Tracing

pytestmark = pytest.mark.timeout(90)

IDENT = tr.Identity("waypoint~~waypoint-0.demo~demo.svc.cluster.local", "waypoint", namespace="demo")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"traceparent: 00-{TRACE}-00f067aa0ba902b7-01"
UNSAMPLED = f"traceparent: 00-{TRACE}-00f067aa0ba902b7-00"
HTTP_CLUSTER = "outbound|8000||ext-authz.demo.svc.cluster.local"
GRPC_CLUSTER = "outbound|9000||ext-authz-grpc.demo.svc.cluster.local"
GRPC_SPAN = "async envoy.service.auth.v3.Authorization.Check egress"
TRACE_KEYS = {"traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled"}


class MetadataAuthorizer(app.GrpcAuthorizer):
    """The lab's gRPC authorizer, also keeping each call's metadata (where trace context travels)."""

    def __init__(self) -> None:
        super().__init__()
        self.metadata: list[dict[str, str]] = []
        self._mlock = threading.Lock()

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self._mlock:
            self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        return super().Check(request, context)


@dataclass
class Traced:
    mesh: Mesh
    receiver: Receiver
    grpc: MetadataAuthorizer

    def spans(self, n: int) -> list[Span]:
        """The trace's spans, once there are `n` of them."""
        return [s for s in self.receiver.wait(lambda ss: len(of(ss)) >= n) if s.trace_id == TRACE]


def of(spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.trace_id == TRACE]


def grpc_provider(**kw: object) -> ExtAuthzProvider:
    return ExtAuthzProvider(name="authz-grpc", kind="grpc", service="ext-authz-grpc.demo.svc.cluster.local",
                            port=9000, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def traced() -> Iterator[Traced]:
    receiver = Receiver()
    servicer = MetadataAuthorizer()
    tracing = tracer(receiver)
    try:
        with serving(servicer) as mesh:
            install(mesh, tracing)
            yield Traced(mesh, receiver, servicer)
    finally:
        tracing.shutdown()      # its exporter's thread ends now, not at exit
        receiver.close()


def tracer(receiver: Receiver) -> Tracing:
    """Every request with a sampled parent traced, its spans sent to `receiver` over OTLP gRPC."""
    cfg = TracingConfig((Provider("otel", "opentelemetry", "127.0.0.1", receiver.grpc_port, "", "grpc"),), 0.0)
    return Tracing(lambda _service: cfg, IDENT, delay_ms=100)


def install(mesh: Mesh, tracing: Tracing) -> None:
    def on_loop() -> None:
        assert mesh.proxy.engine is not None
        mesh.proxy.engine.tracing = tracing
    mesh.proxy.call(on_loop)


def check_and_server(spans: list[Span]) -> tuple[Span, Span]:
    [server] = [s for s in spans if s.kind == "SERVER"]
    [check] = [s for s in spans if s.name.startswith("async ")]
    return check, server


def assert_context_sent(sent: dict[str, str], check: Span, server: Span) -> None:
    """The authorizer got the check span's context, in W3C and B3, as an upstream request does."""
    assert sent["traceparent"] == f"00-{TRACE}-{check.span_id}-01"
    assert sent["x-b3-traceid"] == TRACE and sent["x-b3-spanid"] == check.span_id
    assert sent["x-b3-parentspanid"] == server.span_id and sent["x-b3-sampled"] == "1"
    assert sent["b3"] == f"{TRACE}-{check.span_id}-1-{server.span_id}"


def test_an_http_check_is_a_child_span_the_authorizer_joins_allowed_then_denied(traced: Traced) -> None:
    m = traced.mesh
    m.configure([http_provider(8000)], custom("authz-http"))
    assert m.curl("--http1.1", "/a", SAMPLED, "x-ext-authz: allow")[0] == 200
    check, server = check_and_server(spans := traced.spans(3))     # server, check, the backend's try
    assert check.kind == "CLIENT" and check.name == f"async {HTTP_CLUSTER} egress"
    assert check.parent_id == server.span_id and server.parent_id == "00f067aa0ba902b7"
    assert check.start_us >= server.start_us and not check.error
    a = check.attributes
    assert a["ext_authz_status"] == "ext_authz_ok" and a["ext_authz_http_status"] == "OK"
    assert a["upstream_cluster"] == HTTP_CLUSTER and a["http.status_code"] == "200" and a["component"] == "proxy"
    assert a["upstream_address"] == f"127.0.0.1:{m.http.server_address[1]}"
    assert_context_sent(m.http.checks[0]["headers"], check, server)
    router = next(s for s in spans if s.name.startswith("router "))
    assert router.parent_id == server.span_id and router.span_id != check.span_id

    traced.receiver.spans.clear()
    status, _, body = m.curl("--http2-prior-knowledge", "/a", SAMPLED, "x-ext-authz: nope")
    assert (status, body) == (403, b"denied by ext_authz")
    check, server = check_and_server(traced.spans(2))
    assert check.attributes["ext_authz_status"] == "ext_authz_unauthorized"
    assert check.attributes["ext_authz_http_status"] == "Forbidden" and check.attributes["http.status_code"] == "403"
    assert server.attributes["response_flags"] == "UAEX" and server.attributes["http.status_code"] == "403"
    assert_context_sent(m.http.checks[1]["headers"], check, server)


def test_a_grpc_check_is_a_child_span_whose_context_goes_as_the_calls_metadata(traced: Traced) -> None:
    m = traced.mesh
    m.configure([grpc_provider()], custom("authz-grpc"))
    assert m.curl("--http1.1", "/g", SAMPLED, "x-ext-authz: allow")[0] == 200
    check, server = check_and_server(traced.spans(3))
    assert (check.kind, check.name, check.parent_id) == ("CLIENT", GRPC_SPAN, server.span_id)
    a = check.attributes
    assert a["ext_authz_status"] == "ext_authz_ok" and "ext_authz_http_status" not in a
    assert a["grpc.status_code"] == "0" and a["upstream_cluster"] == GRPC_CLUSTER and not check.error
    assert_context_sent(traced.grpc.metadata[0], check, server)

    traced.receiver.spans.clear()
    assert m.curl("--http1.1", "/g", SAMPLED, "x-ext-authz: no")[0] == 403
    check, server = check_and_server(traced.spans(2))
    assert check.attributes["ext_authz_status"] == "ext_authz_unauthorized" and not check.error
    assert_context_sent(traced.grpc.metadata[1], check, server)


def test_a_failed_check_ends_its_span_with_the_error(traced: Traced) -> None:
    m = traced.mesh
    m.configure([ExtAuthzProvider(name="authz-http", kind="http", service="ext-authz-dead.demo.svc.cluster.local",
                                  port=8000, status_on_error=503)], custom("authz-http"))
    assert m.curl("--http1.1", "/x", SAMPLED)[0] == 503
    check, server = check_and_server(traced.spans(2))
    assert check.error and check.attributes["error"] == "true"
    assert check.attributes["error.reason"] == "connect_failure" and "ext_authz_status" not in check.attributes
    assert check.parent_id == server.span_id and server.error

    traced.receiver.spans.clear()
    m.configure([grpc_provider(timeout=0.2, status_on_error=504)], custom("authz-grpc"))
    assert m.curl("--http1.1", "/x", SAMPLED, "x-ext-authz: allow", "x-ext-authz-delay: 1")[0] == 504
    check, _ = check_and_server(traced.spans(2))
    # DEADLINE_EXCEEDED either way: the waypoint's timer (`error.reason: timeout`, no status got) or,
    # when that timer is late on a loaded machine, the authorizer's own answer to the grpc-timeout
    # the call carries (a status got: no `error.reason`), whichever comes first
    assert check.name == GRPC_SPAN and check.error and check.attributes.get("error.reason", "timeout") == "timeout"
    assert check.attributes["grpc.status_code"] == "4"      # DEADLINE_EXCEEDED

    traced.receiver.spans.clear()
    m.configure([grpc_provider(fail_open=True)], custom("authz-grpc"))
    assert m.curl("--http1.1", "/x", SAMPLED, "x-ext-authz: error")[0] == 200     # the call failed: UNAVAILABLE
    check, server = check_and_server(traced.spans(3))
    assert check.error and check.attributes["grpc.status_code"] == "14" and not server.error


def trace_headers(headers: dict[str, str] | list[list[str]]) -> dict[str, str]:
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {k.lower(): v for k, v in pairs if k.lower() in TRACE_KEYS}


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_an_unsampled_requests_check_carries_the_unsampled_context_its_upstream_gets(traced: Traced,
                                                                                      kind: str) -> None:
    """As Envoy with a tracer: an unsampled request has an unsampled span, whose child's context
    the check's async client injects (flags 00), so a tracing authorizer does not start a trace of
    its own; the waypoint sends it the same unsampled context the request's backend gets. Without
    a tracer (Envoy's null span) the check carries none."""
    m = traced.mesh
    if kind == "http":
        m.configure([http_provider(8000)], custom("authz-http"))
    else:
        m.configure([grpc_provider()], custom("authz-grpc"))
    sent = m.http.checks if kind == "http" else traced.grpc.metadata

    def check_and_backend(*headers: str) -> tuple[dict[str, str], dict[str, str]]:
        status, _, body = m.curl("--http1.1", "/a", "x-ext-authz: allow", *headers)
        assert status == 200
        got = sent[-1]["headers"] if kind == "http" else sent[-1]
        return trace_headers(got), trace_headers(json.loads(body)["headers"])

    check, backend = check_and_backend(UNSAMPLED)           # an unsampled parent: passed on as it came
    assert check == backend == {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-00"}
    check, backend = check_and_backend()                    # none: a fresh unsampled root, the same to both
    assert check == backend and check["traceparent"].endswith("-00") and TRACE not in check["traceparent"]
    check, backend = check_and_backend("x-b3-sampled: 0")   # a bare B3 "deny": unsampled in every format
    assert check == backend and check["x-b3-sampled"] == "0" and check["traceparent"].endswith("-00")
    check, _ = check_and_backend(SAMPLED)                   # traced: the check span's own context
    assert check["traceparent"].startswith(f"00-{TRACE}-") and check["traceparent"].endswith("-01")

    untraced = Tracing(lambda _service: TracingConfig((), 0.0), IDENT)
    install(m, untraced)
    try:
        check, backend = check_and_backend(UNSAMPLED)
        assert check == {} and backend == {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-00"}  # passed, untouched
    finally:
        untraced.shutdown()


def test_a_check_whose_request_went_away_ends_its_span_canceled(traced: Traced) -> None:
    m = traced.mesh
    m.configure([http_provider(8000)], custom("authz-http"))
    # the client gives up while the authorizer still thinks: the held request ends, its check is dropped
    r = subprocess.run(["curl", "-sS", "--http1.1", "-m", "0.5", "-H", SAMPLED, "-H", "x-ext-authz: allow",
                        "-H", "x-ext-authz-delay: 1.5", f"http://127.0.0.1:{m.proxy.port}/slow"],
                       capture_output=True, timeout=20)
    assert r.returncode == 28       # curl: timed out
    check, server = check_and_server(traced.spans(2))
    assert check.attributes["status"] == "canceled" and check.parent_id == server.span_id
    assert "ext_authz_status" not in check.attributes and m.origin.requests == 0


def test_an_ingress_gateways_check_is_a_span_of_the_request_too() -> None:
    """The ingress gateway checks through the same exchange: an external client's traced request
    (its traceparent is a parent there, as at Envoy's edge) has its check in the trace."""
    receiver, http, backend = Receiver(), app.serve_http(0, "127.0.0.1"), Origin()
    routes = WaypointRoutes("*", http=[HttpRoute(
        destinations=[RouteDestination("plain.demo.svc.cluster.local", "demo/plain", port=80)])])
    mesh = ingress(http, [entry("plain", "240.240.1.1", 80, backend.port, waypoint="")], routes, backend)
    tracing = tracer(receiver)
    try:
        install(mesh, tracing)
        mesh.configure([http_provider(8000)], EDGE)
        assert mesh.curl("--http1.1", "/edge", SAMPLED, "x-ext-authz: allow")[0] == 200
        spans = of(receiver.wait(lambda ss: len(of(ss)) >= 3))
        check, server = check_and_server(spans)
        assert check.name == f"async {HTTP_CLUSTER} egress" and check.parent_id == server.span_id
        assert check.attributes["ext_authz_status"] == "ext_authz_ok"
        assert_context_sent(http.checks[0]["headers"], check, server)
    finally:
        mesh.proxy.close()
        http.shutdown()
        http.server_close()
        backend.close()
        tracing.shutdown()
        receiver.close()
