"""The panel's trace rows from the two query APIs the view reads (Zipkin v2 and Jaeger), in the
shapes those backends answer (zipkin2-api.yaml; Jaeger query's /api/traces), and the flags."""

from __future__ import annotations

import pytest

from controller.dashboard import traces
from controller.dashboard.server import Dashboard
from controller.dashboard.tracequery import TraceBackend
from controller.settings import load

T = "4bf92f3577b34da6a3ce929d0e0e4736"
# client -> waypoint server span -> waypoint client span, the upstream answering 503
ZIPKIN = [[
    {"traceId": T, "id": "00f067aa0ba902b7", "name": "GET echo", "kind": "CLIENT", "timestamp": 1_000_000,
     "duration": 9_000, "localEndpoint": {"serviceName": "client.default"}},
    {"traceId": T, "id": "1111111111111111", "parentId": "00f067aa0ba902b7", "kind": "SERVER",
     "name": "echo.default.svc.cluster.local:80/*", "timestamp": 1_001_000, "duration": 7_000,
     "localEndpoint": {"serviceName": "waypoint.default"}, "tags": {"http.status_code": "503"}},
    {"traceId": T, "id": "2222222222222222", "parentId": "1111111111111111", "kind": "CLIENT",
     "name": "router outbound|80||echo.default.svc.cluster.local egress", "timestamp": 1_002_000,
     "duration": 5_000, "localEndpoint": {"serviceName": "waypoint.default"}, "tags": {"http.status_code": "503"}},
]]
JAEGER = {"data": [{
    "traceID": T, "warnings": None,
    "processes": {"p1": {"serviceName": "client.default", "tags": []},
                  "p2": {"serviceName": "waypoint.default", "tags": []}},
    "spans": [
        {"traceID": T, "spanID": "2222222222222222", "operationName": "router outbound|80||echo egress",
         "references": [{"refType": "CHILD_OF", "traceID": T, "spanID": "1111111111111111"}],
         "startTime": 1_002_000, "duration": 5_000, "processID": "p2",
         "tags": [{"key": "span.kind", "type": "string", "value": "client"}]},
        {"traceID": T, "spanID": "00f067aa0ba902b7", "operationName": "GET echo", "references": [],
         "startTime": 1_000_000, "duration": 9_000, "processID": "p1", "tags": []},
        {"traceID": T, "spanID": "1111111111111111", "operationName": "echo:80/*",
         "references": [{"refType": "CHILD_OF", "traceID": T, "spanID": "00f067aa0ba902b7"}],
         "startTime": 1_001_000, "duration": 7_000, "processID": "p2",
         "tags": [{"key": "span.kind", "type": "string", "value": "server"},
                  {"key": "http.status_code", "type": "int64", "value": 200}]},
    ]}], "total": 0, "limit": 0, "offset": 0, "errors": None}


def test_a_zipkin_trace_becomes_a_row_with_its_span_tree() -> None:
    [r] = traces.rows(traces.parse("zipkin", ZIPKIN))
    assert (r["traceId"], r["root"], r["rootService"]) == (T, "GET echo", "client.default")
    assert r["durationMs"] == 9.0 and r["spanCount"] == 3 and r["status"] == "error" and r["errors"] == 2
    assert r["services"] == ["client.default", "waypoint.default"]
    assert [(s["depth"], s["parentId"], s["offsetMs"], s["durationMs"]) for s in r["spans"]] == [
        (0, "", 0.0, 9.0), (1, "00f067aa0ba902b7", 1.0, 7.0), (2, "1111111111111111", 2.0, 5.0)]
    assert r["spans"][1]["kind"] == "SERVER" and r["spans"][1]["status"] == "503"


def test_a_jaeger_trace_becomes_the_same_row() -> None:
    [r] = traces.rows(traces.parse("jaeger", JAEGER))
    assert (r["traceId"], r["root"], r["spanCount"], r["status"]) == (T, "GET echo", 3, "ok")
    assert [s["spanId"] for s in r["spans"]] == ["00f067aa0ba902b7", "1111111111111111", "2222222222222222"]
    assert [s["depth"] for s in r["spans"]] == [0, 1, 2] and r["spans"][1]["kind"] == "SERVER"


def test_a_trace_answered_for_two_services_is_one_row_and_rows_are_newest_first() -> None:
    older = [dict(s, traceId="a" * 32, timestamp=s["timestamp"] - 500_000) for s in ZIPKIN[0]]
    got = traces.rows(traces.parse("zipkin", ZIPKIN) + traces.parse("zipkin", ZIPKIN + [older]))
    assert [r["traceId"] for r in got] == [T, "a" * 32] and got[0]["spanCount"] == 3


def test_an_answer_of_the_wrong_shape_is_refused_naming_the_api() -> None:
    with pytest.raises(ValueError, match="Zipkin v2"):
        traces.parse("zipkin", JAEGER)
    with pytest.raises(ValueError, match="Jaeger"):
        traces.parse("jaeger", ZIPKIN)


def test_the_service_names_a_node_is_queried_under() -> None:
    assert traces.service_names("wl:default/frontend-7d9", canonical="frontend") == ["frontend.default"]
    assert traces.service_names("wp:default/waypoint") == ["waypoint.default"]
    assert traces.service_names("svc:shop/cart") == ["cart.shop"]


def test_flags_and_bad_backends_are_refused_with_the_reason() -> None:
    s = load(["--kube", "--tracing-url", "http://jaeger-query.observability:16686", "--tracing-api", "jaeger"], {})
    assert (s.tracing_url, s.tracing_api) == ("http://jaeger-query.observability:16686", "jaeger")
    assert load(["--kube"], {}).tracing_api == "zipkin"
    with pytest.raises(ValueError, match="tracing-api|tracing_api"):
        load(["--kube", "--tracing-api", "tempo"], {})
    with pytest.raises(ValueError, match="--tracing-url 'jaeger:16686'"):
        TraceBackend("jaeger:16686")
    assert TraceBackend("http://z:9411").path("cart.shop") == "/api/v2/traces?serviceName=cart.shop&lookback=3600000&limit=20"
    assert TraceBackend("http://j:16686", "jaeger").path("cart.shop") == "/api/traces?service=cart.shop&lookback=1h&limit=20"


def test_an_unreachable_backend_is_said_in_the_panel_not_an_empty_list() -> None:
    from controller.dashboard.graph import Mesh
    d = Dashboard(lambda: Mesh(), None, None, tracing=TraceBackend("unix:/nonexistent/query.sock"))  # type: ignore[arg-type]
    t = d.node("wp:default/waypoint")["traces"]
    assert not t["available"] and "waypoint.default:" in t["message"] and t["traces"] == []
