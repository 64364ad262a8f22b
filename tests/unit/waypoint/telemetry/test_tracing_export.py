"""The waypoint's spans end to end in one process: a real client, the engine, a real origin, and
the real OTLP gRPC / OTLP HTTP / Zipkin receiver (ambitctl/lab/otlp_receiver.py) the SDK's
exporters send to."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest

from ambit.telemetryconfig import Provider, TracingConfig
from ambitctl.lab.otlp_receiver import Receiver, Span
from tests.unit.waypoint.harness import Origin, Proxy, by_header, free_port
from waypoint.telemetry import tracing as tr
from waypoint.telemetry.tracing_sdk import Tracing

IDENT = tr.Identity("waypoint~~wp-0.default~default.svc.cluster.local", "waypoint", namespace="default")
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture()
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


def traced(p: Proxy, cfg: TracingConfig) -> None:
    def install() -> None:
        assert p.engine is not None
        p.engine.tracing = Tracing(lambda _service: cfg, IDENT, delay_ms=100)
    p.call(install)


def get(port: int, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
            return r.status, json.loads(body) if body.startswith(b"{") else {}
    except urllib.error.HTTPError as e:
        return e.code, {}


def grpc_provider(r: Receiver) -> Provider:
    return Provider("otel", "opentelemetry", "127.0.0.1", r.grpc_port, "", "grpc")


def of(spans: list[Span], trace: str) -> list[Span]:
    return [s for s in spans if s.trace_id == trace]


def test_server_and_client_span_link_the_client_and_the_origin(receiver: Receiver, origin: Origin) -> None:
    p = Proxy(by_header({"default": origin.port}))
    try:
        traced(p, TracingConfig((grpc_provider(receiver),), 0.0,
                                (("team", "literal", "pay"), ("user", "header", "x-user"))))
        status, echo = get(p.port, "/a?b=1", {"traceparent": PARENT, "x-user": "ann"})
        assert status == 200
        spans = of(receiver.wait(lambda s: len(of(s, TRACE)) >= 2), TRACE)
    finally:
        p.close()
    server = next(s for s in spans if s.kind == "SERVER")
    client = next(s for s in spans if s.kind == "CLIENT")
    assert len(spans) == 2 and {s.via for s in spans} == {"otlp-grpc"}
    assert server.parent_id == "00f067aa0ba902b7"      # the client's span (the incoming traceparent)
    assert client.parent_id == server.span_id
    sent = dict(echo["headers"])                        # what reached the origin
    assert sent["traceparent"] == f"00-{TRACE}-{client.span_id}-01"
    assert sent["x-b3-traceid"] == TRACE and sent["x-b3-spanid"] == client.span_id
    assert sent["x-b3-parentspanid"] == server.span_id and sent["x-b3-sampled"] == "1"
    assert sent["b3"] == f"{TRACE}-{client.span_id}-1-{server.span_id}"
    a = server.attributes
    assert a["component"] == "proxy" and a["http.method"] == "GET" and a["http.status_code"] == "200"
    assert a["http.url"].endswith("/a?b=1") and a["guid:x-request-id"] == sent["x-request-id"]
    assert a["response_size"] == str(int(a["response_size"])) and int(a["response_size"]) > 0
    assert a["team"] == "pay" and a["user"] == "ann" and a["istio.canonical_service"] == "waypoint"
    assert server.service == "waypoint.default" and server.name.endswith("/*")
    assert client.name.startswith("router ") and client.attributes["http.status_code"] == "200"
    assert client.attributes["upstream_address"] == f"127.0.0.1:{origin.port}"


def test_b3_parent_is_honoured(receiver: Receiver, origin: Origin) -> None:
    p = Proxy(by_header({"default": origin.port}))
    try:
        traced(p, TracingConfig((grpc_provider(receiver),), 0.0))
        get(p.port, "/", {"x-b3-traceid": "a3ce929d0e0e4736", "x-b3-spanid": "00f067aa0ba902b7",
                          "x-b3-sampled": "1"})
        trace = "0000000000000000a3ce929d0e0e4736"
        spans = of(receiver.wait(lambda s: len(of(s, trace)) >= 2), trace)
    finally:
        p.close()
    assert {s.kind for s in spans} == {"SERVER", "CLIENT"}
    assert next(s for s in spans if s.kind == "SERVER").parent_id == "00f067aa0ba902b7"


def test_each_try_gets_its_own_client_span(receiver: Receiver) -> None:
    """Istio's waypoints and gateways are router proxies, for which istiod sets the HCM's
    `spawn_upstream_span` (PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY, on by default since 1.28, no
    longer a flag since 1.31): one server span per request and one client span per try."""
    dead = free_port()      # nothing listens: connect failures, retried twice (Istio's default policy)
    p = Proxy(by_header({"default": dead}))
    try:
        traced(p, TracingConfig((grpc_provider(receiver),), 100.0))
        status, _ = get(p.port, "/")
        assert status == 503
        spans = receiver.wait(lambda s: len(s) >= 4)
    finally:
        p.close()
    server = next(s for s in spans if s.kind == "SERVER")
    tries = [s for s in spans if s.kind == "CLIENT"]
    assert len(tries) == 3 and all(c.parent_id == server.span_id for c in tries)
    assert len({c.span_id for c in tries}) == 3
    # Envoy's router tags each retry's span with its number (`retry.count`), not the first try's
    tries.sort(key=lambda c: c.start_us)
    assert [c.attributes.get("retry.count") for c in tries] == [None, "1", "2"]
    assert all(c.attributes["error"] == "true" and c.attributes["error.reason"] == "connect_failure" for c in tries)
    assert server.attributes["http.status_code"] == "503" and "URX" in server.attributes["response_flags"]
    assert server.error and all(c.error for c in tries)          # the spans' status, not just a tag
    assert {s.trace_id for s in spans} == {server.trace_id}


@pytest.mark.parametrize("kind,protocol", [("opentelemetry", "grpc"), ("zipkin", "")])
def test_a_request_without_a_trace_starts_one(receiver: Receiver, origin: Origin, kind: str, protocol: str) -> None:
    """Sampled here, no incoming context: a new trace whose root is the waypoint's server span; the
    origin gets the client span's context; the client span lies within the server span."""
    port = receiver.grpc_port if protocol == "grpc" else receiver.http_port
    p = Proxy(by_header({"default": origin.port}))
    try:
        traced(p, TracingConfig((Provider("p", kind, "127.0.0.1", port, "", protocol),), 100.0))
        status, echo = get(p.port, "/new")
        spans = receiver.wait(lambda s: len(s) >= 2)
    finally:
        p.close()
    assert status == 200 and len(spans) == 2
    server = next(s for s in spans if s.kind == "SERVER")
    client = next(s for s in spans if s.kind == "CLIENT")
    assert server.parent_id in ("", "0" * 16) and client.parent_id == server.span_id
    assert client.trace_id == server.trace_id and int(server.trace_id, 16) != 0
    assert dict(echo["headers"])["traceparent"] == f"00-{server.trace_id}-{client.span_id}-01"
    assert not server.error and not client.error
    assert server.start_us <= client.start_us
    assert client.start_us + client.duration_us <= server.start_us + server.duration_us + 1   # µs rounding
    assert server.attributes["guid:x-request-id"] and server.attributes["http.status_code"] == "200"


def test_not_sampled_means_no_span_and_an_unsampled_context(receiver: Receiver, origin: Origin) -> None:
    p = Proxy(by_header({"default": origin.port}))
    try:
        traced(p, TracingConfig((grpc_provider(receiver),), 0.0))
        _, echo = get(p.port, "/")
        sent = dict(echo["headers"])
        assert sent["traceparent"].endswith("-00")          # a fresh unsampled context
        # a B3 parent that left the decision open: marked unsampled, same trace, in every format
        _, echo = get(p.port, "/", {"x-b3-traceid": "a3ce929d0e0e4736", "x-b3-spanid": "00f067aa0ba902b7"})
        sent = dict(echo["headers"])
        assert sent["traceparent"] == "00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-00"
        assert sent["x-b3-sampled"] == "0" and sent["x-b3-traceid"] == "0000000000000000a3ce929d0e0e4736"
        # an incoming unsampled context passes as it came
        unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        _, echo = get(p.port, "/", {"traceparent": unsampled})
        assert dict(echo["headers"])["traceparent"] == unsampled
        # sampled by the parent: spans
        get(p.port, "/", {"traceparent": PARENT})
        spans = receiver.wait(lambda s: len(s) >= 2)
    finally:
        p.close()
    assert {s.trace_id for s in spans} == {TRACE}       # only the sampled request made spans


def test_a_b3_decision_without_ids_is_obeyed_and_passed_on(receiver: Receiver, origin: Origin) -> None:
    """`b3: 0` / `x-b3-sampled: 0` without ids: not traced at 100 %, and the origin gets an
    unsampled context in every format (its tracer would otherwise start a trace); `b3: 1`/`d` /
    `x-b3-flags: 1` without ids: traced at 0 %, a new trace whose root is the server span."""
    p = Proxy(by_header({"default": origin.port}))
    try:
        traced(p, TracingConfig((grpc_provider(receiver),), 100.0))
        for deny in ({"b3": "0"}, {"x-b3-sampled": "0"}):
            sent = dict(get(p.port, "/", deny)[1]["headers"])
            assert sent["traceparent"].endswith("-00") and sent["x-b3-sampled"] == "0"
            assert sent["b3"].endswith("-0") and int(sent["x-b3-traceid"], 16) != 0
        traced(p, TracingConfig((grpc_provider(receiver),), 0.0))
        accepted = []
        for accept in ({"b3": "1"}, {"b3": "d"}, {"x-b3-flags": "1"}):
            sent = dict(get(p.port, "/", accept)[1]["headers"])
            assert sent["traceparent"].endswith("-01") and sent["x-b3-sampled"] == "1"
            accepted.append(sent["x-b3-traceid"])
        spans = receiver.wait(lambda s: len(s) >= 6)
    finally:
        p.close()
    assert len(spans) == 6 and {s.trace_id for s in spans} == set(accepted)   # none for a "deny"
    assert all(s.parent_id in ("", "0" * 16) for s in spans if s.kind == "SERVER")


def test_disable_span_reporting_reports_nothing_and_propagates(receiver: Receiver, origin: Origin) -> None:
    p = Proxy(by_header({"default": origin.port}))
    try:
        traced(p, TracingConfig((grpc_provider(receiver),), 100.0, disable_span_reporting=True))
        _, echo = get(p.port, "/", {"traceparent": PARENT})
        assert dict(echo["headers"])["traceparent"] == PARENT
        assert receiver.wait(lambda s: bool(s), timeout=1.0) == []
        assert p.call(lambda: p.engine.tracing._pipe) is None  # type: ignore[union-attr]
    finally:
        p.close()


@pytest.mark.parametrize("kind,protocol,via", [("opentelemetry", "http", "otlp-http"), ("zipkin", "", "zipkin")])
def test_otlp_http_and_zipkin_export(receiver: Receiver, origin: Origin, kind: str, protocol: str, via: str) -> None:
    p = Proxy(by_header({"default": origin.port}))
    try:
        traced(p, TracingConfig((Provider(via, kind, "127.0.0.1", receiver.http_port, "", protocol),), 100.0))
        get(p.port, "/", {"traceparent": PARENT})
        spans = of(receiver.wait(lambda s: len(of(s, TRACE)) >= 2), TRACE)
    finally:
        p.close()
    assert {s.via for s in spans} == {via} and {s.kind for s in spans} == {"SERVER", "CLIENT"}
    server = next(s for s in spans if s.kind == "SERVER")
    client = next(s for s in spans if s.kind == "CLIENT")
    assert server.parent_id == "00f067aa0ba902b7" and client.parent_id == server.span_id
    assert server.attributes["component"] == "proxy" and server.service == "waypoint.default"


def test_a_changed_config_switches_exporters(receiver: Receiver, origin: Origin) -> None:
    """The resolver's answer can change at runtime: the next request follows it."""
    cfgs = [TracingConfig((grpc_provider(receiver),), 100.0)]
    p = Proxy(by_header({"default": origin.port}))
    try:
        p.call(lambda: setattr(p.engine, "tracing", Tracing(lambda _service: cfgs[0], IDENT, delay_ms=100)))
        get(p.port, "/")
        receiver.wait(lambda s: len(s) >= 2)
        cfgs[0] = TracingConfig((Provider("z", "zipkin", "127.0.0.1", receiver.http_port),), 100.0)
        get(p.port, "/")
        spans = receiver.wait(lambda s: any(x.via == "zipkin" for x in s))
    finally:
        p.close()
    assert {s.via for s in spans} == {"otlp-grpc", "zipkin"}


def test_a_provider_whose_endpoint_cannot_be_used_is_logged_and_never_fails_a_request(
        receiver: Receiver, origin: Origin, caplog: pytest.LogCaptureFixture) -> None:
    """The controller refuses such a provider; one that comes through anyway (an older controller)
    costs its own spans only: the request is served and the other provider still gets its spans."""
    bad = Provider("bad", "zipkin", "127.0.0.1", 99999)
    p = Proxy(by_header({"default": origin.port}))
    try:
        traced(p, TracingConfig((bad, grpc_provider(receiver)), 100.0))
        status, _ = get(p.port, "/", {"traceparent": PARENT})
        spans = of(receiver.wait(lambda s: len(of(s, TRACE)) >= 2), TRACE)
    finally:
        p.close()
    assert status == 200 and {s.via for s in spans} == {"otlp-grpc"}
    assert any("tracing provider 'bad'" in r.getMessage() and "not exported" in r.getMessage() for r in caplog.records)


def test_spans_name_the_service_the_route_chose(receiver: Receiver, origin: Origin) -> None:
    """The client span and `upstream_cluster` name the routed Service's cluster (Istio's
    `outbound|port||host`), and the server span its host: a tunnel naming no Service (an ingress
    gateway's) made every span `router unknown egress` with `upstream_cluster` "-", and a
    VirtualService routing to another Service named the tunnel's."""
    from waypoint.request import Forward

    def decide(head: object, down: object) -> Forward:
        return Forward(service="demo/api.example.com", port=origin.port, hostname="api.example.com", route="r")
    p = Proxy(decide)   # type: ignore[arg-type]
    try:
        traced(p, TracingConfig((grpc_provider(receiver),), 0.0))
        assert get(p.port, "/", {"traceparent": PARENT})[0] == 200
        spans = of(receiver.wait(lambda s: len(of(s, TRACE)) >= 2), TRACE)
    finally:
        p.close()
    server = next(s for s in spans if s.kind == "SERVER")
    client = next(s for s in spans if s.kind == "CLIENT")
    cluster = f"outbound|{origin.port}||api.example.com"
    assert client.name == f"router {cluster} egress"
    assert client.attributes["upstream_cluster"] == server.attributes["upstream_cluster"] == cluster
    assert server.name.startswith("api.example.com:")
