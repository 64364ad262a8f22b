"""Tracing's pure half: trace-context parsing and injection (W3C, B3 multi and single), Envoy's
sampling decision, span names and tags, custom tags, and the waypoint's tracing flags."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from ambit.telemetryconfig import Provider, TracingConfig
from waypoint.http.record import RequestRecord
from waypoint.request import Downstream, RequestHead
from waypoint.telemetry import tracing as tr
from waypoint.telemetry.tracing_sdk import Pipeline, RequestTrace, Tracing, endpoint
from waypoint.telemetry.tracing_settings import SamplingFile, from_flags

TID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SID = 0x00F067AA0BA902B7


def test_traceparent_is_parsed_with_its_sampled_flag() -> None:
    assert tr.parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == tr.Context(TID, SID, True)
    assert tr.parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00") == tr.Context(TID, SID, False)
    # a later version is read as 00 (W3C: parse the fields it knows)
    assert tr.parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra") is not None


@pytest.mark.parametrize("bad", ["", "00-0-0-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                 "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                                 "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                                 "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                                 "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                 # int(s, 16) would take these: a sign, an underscore, a space
                                 "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                 "00-4bf92f3577b34da6_3ce929d0e0e4736-00f067aa0ba902b7-01",
                                 "00-4bf92f3577b34da6a3ce929d0e0e4736- 0f067aa0ba902b7-01",
                                 "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1"])
def test_invalid_traceparent_is_no_context(bad: str) -> None:
    assert tr.parse_traceparent(bad) is None


def test_b3_single_and_multi() -> None:
    assert tr.parse_b3_single("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1") == tr.Context(TID, SID, True)
    assert tr.parse_b3_single("a3ce929d0e0e4736-00f067aa0ba902b7") == tr.Context(0xA3CE929D0E0E4736, SID, None)
    assert tr.parse_b3_single("0") is None     # a bare decision carries no ids
    ctx, force = tr.extract([("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", "00f067aa0ba902b7"),
                             ("x-b3-sampled", "0")])
    assert ctx == tr.Context(0xA3CE929D0E0E4736, SID, False) and not force
    ctx, _ = tr.extract([("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", "00f067aa0ba902b7"),
                         ("x-b3-flags", "1")])
    assert ctx is not None and ctx.sampled is True      # debug implies sampled


@pytest.mark.parametrize(("headers", "decision"), [
    ([("b3", "0")], False), ([("b3", "1")], True), ([("b3", "d")], True),
    ([("x-b3-sampled", "0")], False), ([("x-b3-sampled", "1")], True), ([("x-b3-flags", "1")], True),
    ([("b3", "0"), ("x-b3-sampled", "1")], False),     # `b3` present: Envoy reads no `x-b3-*`
    ([("x-b3-sampled", "1"), ("x-b3-spanid", "00f067aa0ba902b7")], True),     # no trace id: no ids
])
def test_a_b3_sampling_decision_without_ids_is_obeyed(headers: list[tuple[str, str]], decision: bool) -> None:
    """B3's "deny" (`b3: 0`, `x-b3-sampled: 0`) and "accept"/"debug" (`b3: 1`/`d`,
    `x-b3-sampled: 1`, `x-b3-flags: 1`) sent without ids are decisions, as Envoy's Zipkin
    extractor reads them: they were no context, so the percentage decided instead."""
    ctx, _ = tr.extract(headers)
    assert ctx is not None and not ctx.has_ids and ctx.sampled is decision
    rng = random.Random(1)
    assert all(tr.sample(ctx, False, 0.0 if decision else 100.0, rng) is decision for _ in range(100))
    # a valid traceparent still comes first
    ctx, _ = tr.extract([("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), *headers])
    assert ctx == tr.Context(TID, SID, True)


@pytest.mark.parametrize("bad", ["4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-banana",
                                 "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-true",
                                 "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-",
                                 "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-zz",
                                 "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-00f067aa0ba902b7-x"])
def test_a_malformed_b3_single_header_is_no_context(bad: str) -> None:
    """Envoy's B3 extractor refuses these; read as "not sampled" they would drop the trace at this
    hop and every hop after, whatever the sampling percentage."""
    assert tr.parse_b3_single(bad) is None
    ctx, _ = tr.extract([("b3", bad)])
    assert ctx is None and tr.sample(ctx, False, 100.0, random.Random(1))
    assert tr.parse_b3_single("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-d-00f067aa0ba902b7") == \
        tr.Context(TID, SID, True)


def test_traceparent_wins_over_b3() -> None:
    ctx, _ = tr.extract([("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0"),
                         ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
    assert ctx == tr.Context(TID, SID, True)


def test_the_parents_decision_is_honoured_whatever_the_percentage() -> None:
    rng = random.Random(1)
    assert all(tr.sample(tr.Context(TID, SID, True), False, 0.0, rng) for _ in range(100))
    assert not any(tr.sample(tr.Context(TID, SID, False), True, 100.0, rng) for _ in range(100))


def test_force_trace_and_the_edges() -> None:
    rng = random.Random(1)
    assert tr.sample(None, True, 0.0, rng)
    assert tr.sample(tr.Context(TID, SID, None), True, 0.0, rng)    # no decision in the parent
    assert not any(tr.sample(None, False, 0.0, rng) for _ in range(1000))
    assert all(tr.sample(None, False, 100.0, rng) for _ in range(1000))


def test_random_sampling_holds_the_percentage() -> None:
    rng = random.Random(7)
    n = sum(tr.sample(None, False, 10.0, rng) for _ in range(100_000))
    assert 9_700 < n < 10_300       # 10 % ± 3 sigma (sigma ≈ 95)


def test_request_id_sampling_decides_alike_for_one_request_and_holds_the_percentage() -> None:
    """useRequestIdForTraceSampling (Istio's default): the x-request-id's first 8 hex digits mod
    10000 decide, so two proxies (two rngs) agree on every request, and 10 % of ids are sampled."""
    ids = [str(uuid.UUID(int=random.Random(i).getrandbits(128), version=4)) for i in range(20_000)]
    a = [tr.sample(None, False, 10.0, random.Random(1), rid) for rid in ids]
    b = [tr.sample(None, False, 10.0, random.Random(2), rid) for rid in ids]
    assert a == b and 1_700 < sum(a) < 2_300
    assert tr.request_id_bucket("0000270f-aaaa") == 9999 and tr.request_id_bucket("not-hex!") is None
    assert tr.sample(None, False, 10.0, random.Random(1), "00000000-x") is True       # bucket 0 < 1000
    assert tr.sample(None, False, 10.0, random.Random(1), "000003e8-x") is False      # bucket 1000


def test_inject_replaces_every_trace_header_in_three_formats() -> None:
    out = tr.inject([("traceparent", "00-1-2-01"), ("b3", "x"), ("x-b3-sampled", "1"), ("tracestate", "k=v"),
                     ("host", "a")], TID, SID, True, parent_span_id=0x1234)
    d = dict(out)
    assert d["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert d["x-b3-traceid"] == "4bf92f3577b34da6a3ce929d0e0e4736" and d["x-b3-spanid"] == "00f067aa0ba902b7"
    assert d["x-b3-parentspanid"] == "0000000000001234" and d["x-b3-sampled"] == "1"
    assert d["b3"] == "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-0000000000001234"
    assert d["tracestate"] == "k=v" and d["host"] == "a"
    assert len(out) == len(d)       # no duplicates left
    # what we inject, we read back
    assert tr.extract(out)[0] == tr.Context(TID, SID, True)
    assert tr.parse_b3_single(d["b3"]) == tr.Context(TID, SID, True)
    unsampled = dict(tr.inject([], TID, SID, False))
    assert unsampled["traceparent"].endswith("-00") and unsampled["x-b3-sampled"] == "0"


def test_span_names_are_istios() -> None:
    assert tr.server_span_name("10.96.0.11", "echo.default.svc.cluster.local", 80) == \
        "echo.default.svc.cluster.local:80/*"
    # a tunnel addressed to a pod: its address, whatever Host the client sent (bounded names)
    assert tr.server_span_name("10.210.2.11", "", 8080) == "10.210.2.11:8080/*"
    assert tr.server_span_name("fd00::b", "", 8080) == "[fd00::b]:8080/*"
    assert tr.client_span_name(tr.cluster_name("echo.default.svc.cluster.local", 80)) == \
        "router outbound|80||echo.default.svc.cluster.local egress"


def test_an_ext_authz_checks_span_is_named_and_tagged_as_envoys_async_clients() -> None:
    c = tr.cluster_name("authz.demo.svc.cluster.local", 8000)
    assert tr.async_span_name(c) == "async outbound|8000||authz.demo.svc.cluster.local egress"
    assert tr.GRPC_CHECK_SPAN == "async envoy.service.auth.v3.Authorization.Check egress"
    http = tr.check_end_attributes(False, 403, None, "http1", c, "authz.demo.svc.cluster.local", "10.0.0.5:8000", "")
    assert http["http.status_code"] == "403" and http["upstream_cluster"] == c and "error" not in http
    assert http["upstream_address"] == "10.0.0.5:8000" and http["component"] == "proxy"
    failed = tr.check_end_attributes(False, 0, None, "http1", c, "", "10.0.0.5:8000", "connect_failure")
    assert failed["error"] == "true" and failed["error.reason"] == "connect_failure"
    g = tr.check_end_attributes(True, 200, "0", "h2", c, "authz.demo.svc.cluster.local", "10.0.0.5:8000", "")
    assert g == {"component": "proxy", "upstream_cluster": c, "upstream_address": "authz.demo.svc.cluster.local",
                 "grpc.status_code": "0"}
    assert tr.check_end_attributes(True, 200, "14", "h2", c, "a", "", "")["error"] == "true"
    timeout = tr.check_end_attributes(True, 0, None, "h2", c, "a", "", "timeout")
    assert timeout["grpc.status_code"] == "4" and timeout["error"] == "true"     # DEADLINE_EXCEEDED
    assert tr.check_end_attributes(True, 0, None, "h2", c, "a", "", "reset")["grpc.status_code"] == "14"
    cancel = tr.check_end_attributes(False, 0, None, "", c, "", "", "canceled")
    assert cancel["status"] == "canceled" and "error" not in cancel


def test_envoys_tags() -> None:
    ident = tr.Identity("waypoint~~wp-1.default~default.svc.cluster.local", "waypoint", namespace="default")
    a = tr.server_start_attributes(ident, "GET", "http", "echo", "/a?b", "HTTP/1.1", "rid", "curl", "10.0.0.1",
                                   "spiffe://cluster.local/ns/default/sa/client")
    assert a["component"] == "proxy" and a["guid:x-request-id"] == "rid" and a["http.url"] == "http://echo/a?b"
    assert a["istio.canonical_service"] == "waypoint" and a["node_id"].startswith("waypoint~")
    e = tr.server_end_attributes(503, "UF", 3, 91, "outbound|80||echo", "10.0.0.9:80")
    assert e["http.status_code"] == "503" and e["response_flags"] == "UF" and e["error"] == "true"
    assert e["request_size"] == "3" and e["response_size"] == "91" and e["upstream_cluster"] == "outbound|80||echo"
    assert "error" not in tr.server_end_attributes(200, "", 0, 0, "", "")
    assert ident.service_name == "waypoint.default"


def test_custom_tags_literal_environment_header() -> None:
    tags = (("team", "literal", "payments"), ("region", "environment", "REGION"),
            ("zone", "environment", "NOPE|unknown"), ("gone", "environment", "NOPE"),
            ("user", "header", "X-User"), ("tenant", "header", "x-tenant|none"))
    out = tr.custom_tags(tags, [("x-user", "ann"), ("x-user", "bob")], {"REGION": "eu"})
    assert out == {"team": "payments", "region": "eu", "zone": "unknown", "user": "ann", "tenant": "none"}


def test_tag_and_provider_flags() -> None:
    assert tr.parse_tag_flag("team=literal:a:b") == ("team", "literal", "a:b")
    with pytest.raises(ValueError, match="--tracing-tag"):
        tr.parse_tag_flag("team=metadata:x")
    cfg = from_flags("10.0.0.1:4317", "http://10.0.0.1:4318", "10.0.0.1:9411", 10.0, ("a=literal:b",))
    assert [endpoint(p) for p in cfg.providers] == ["10.0.0.1:4317", "http://10.0.0.1:4318/v1/traces",
                                                    "http://10.0.0.1:9411/api/v2/spans"]
    assert cfg.sampling_percent == 10.0 and cfg.custom_tags == (("a", "literal", "b"),) and cfg.enabled
    assert endpoint(Provider("z", "zipkin", "zipkin.istio-system", 9411, "/custom")) == \
        "http://zipkin.istio-system:9411/custom"
    with pytest.raises(ValueError, match="--tracing-otlp"):
        from_flags("nohost")


def test_sampling_file_switches_at_runtime(tmp_path: Path) -> None:
    now = [0.0]
    f = tmp_path / "pct"
    sf = SamplingFile(from_flags("127.0.0.1:1", sampling=5.0), f, clock=lambda: now[0])
    assert sf().sampling_percent == 5.0         # no file: the flag's
    f.write_text("100\n")
    assert sf().sampling_percent == 5.0         # re-read at most once a second
    now[0] = 1.5
    assert sf().sampling_percent == 100.0
    f.write_text("banana")
    import os
    os.utime(f, (1, 1))
    now[0] = 3.0
    assert sf().sampling_percent == 100.0       # a bad value keeps the last good one
    f.unlink()
    now[0] = 5.0
    assert sf().sampling_percent == 5.0


def test_a_pod_addressed_requests_span_name_does_not_follow_the_host_header() -> None:
    """Tracing backends index span names; a client sending random Host headers to a pod behind
    the waypoint must not make one span name per request."""
    ident = tr.Identity("waypoint~10.0.0.1~wp-0.default~default.svc.cluster.local", "waypoint", namespace="default")
    tracing = Tracing(lambda _s: TracingConfig(), ident, random.Random(3))
    pipe = Pipeline((), ident, 1000)
    down = Downstream(source_identity="spiffe://cluster.local/ns/default/sa/a", source_ip="10.0.1.5",
                      destination_ip="10.210.2.11", destination_port=8080)
    names = set()
    for _ in range(20):
        head = RequestHead("GET", "/", f"{uuid.uuid4()}.attacker.example")
        rec = RequestRecord("GET", "/", head.authority, "HTTP/1.1", down)
        names.add(RequestTrace(tracing, pipe, TracingConfig(), head, down, rec, None).name)
    assert names == {"10.210.2.11:8080/*"}


def test_a_client_trace_id_forces_a_trace_from_any_client() -> None:
    """Envoy traces a request carrying `x-client-trace-id` (Istio sets client_sampling 100 %),
    from an external client too; the waypoint ignored the header."""
    assert tr.extract([("x-client-trace-id", "my-trace-1")]) == (None, True)
    assert tr.extract([("x-request-id", "x")]) == (None, False)
    # a parent's decision still wins, as in Envoy
    assert not tr.sample(tr.Context(1, 2, False), True, 0.0, random.Random(1))
    assert tr.sample(*tr.extract([("x-client-trace-id", "t")]), 0.0, random.Random(1))

    from ambit.telemetryconfig import Provider, TracingConfig
    from waypoint.http.record import RequestRecord
    from waypoint.request import Downstream, RequestHead
    from waypoint.telemetry.tracing_sdk import Tracing

    cfg = TracingConfig((Provider("otel", "opentelemetry", "127.0.0.1", 9, "", "grpc"),), 0.0)
    tracing = Tracing(lambda _s: cfg, tr.Identity("gw", "gw"), random.Random(1))
    try:     # an ingress gateway's client (waypoint/http/edge.py keeps x-client-trace-id), sampling at 0 %
        head = RequestHead("GET", "/", "shop.example.com", headers=[("x-client-trace-id", "t-1")])
        down = Downstream(source_ip="198.51.100.7", destination_port=443, edge="https")
        assert tracing.server(head, down, RequestRecord("GET", "/", "shop.example.com", "HTTP/1.1", down)) is not None
    finally:
        tracing.shutdown()
