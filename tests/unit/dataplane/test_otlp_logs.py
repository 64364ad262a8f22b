"""Access logs over OTLP (Istio's `envoyOtelAls` provider: ambit/dataplane/telemetry/otlp_logs.py,
ambit/telemetrylog.py): what a record carries, how records are batched and bounded, and the whole
way from the proxies' access-log writer to a real OTLP/gRPC receiver (grpcio, the OpenTelemetry
protos: ambitctl/lab/otlp_receiver.py), for a waypoint's request and a ztunnel's connection."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from prometheus_client import CollectorRegistry, generate_latest

from ambit.dataplane.telemetry.accesslog import ConnRecord, PolicySink, StreamSink
from ambit.dataplane.telemetry.otlp_logs import LogBatch, OtlpLogCollector, OtlpLogs, encode
from ambit.telemetry import provider_from_dict
from ambit.telemetryconfig import AccessLogConfig
from ambit.telemetryformat import ISTIO_TEXT_FORMAT
from ambit.telemetrylog import START, AccessLogWriter, LogRecord, otel_record
from ambitctl.lab.otlp_receiver import Receiver
from controller import meshconfig
from tests.support.net import free_port
from waypoint.http.record import RequestRecord
from waypoint.request import Downstream
from waypoint.telemetry.accesslog import RequestLog, request_values


def provider(port: int, **fmt: Any) -> Any:
    """An envoyOtelAls provider as the controller parses MeshConfig (controller/meshconfig.py)."""
    entry = {"name": "als", "envoyOtelAls": {"service": "127.0.0.1", "port": port, **fmt}}
    return provider_from_dict(meshconfig._provider(entry, "extensionProviders[0]"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver("127.0.0.1")
    try:
        yield r
    finally:
        r.close()


# -- what a record carries --------------------------------------------------------------------------

VALUES = {START: 1765000000.25, "START_TIME": "2025-12-06T05:46:40.250Z", "REQ(:METHOD)": "GET",
          "REQ(:PATH)": "/api", "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)": "/api", "PROTOCOL": "HTTP/1.1",
          "RESPONSE_CODE": 503, "DURATION": 12, "SOURCE_WORKLOAD": "client"}


def test_the_body_is_istios_default_text_and_the_labels_are_typed_attributes() -> None:
    """As Istio configures Envoy for envoyOtelAls: the body is the text format (Istio's default
    text format unless logFormat.text), the labels become attributes (a one-operator label keeps
    its type), and the record's time is the request's start."""
    p = provider(4317, logFormat={"labels": {"code": "%RESPONSE_CODE%", "who": "%SOURCE_WORKLOAD% via %PROTOCOL%",
                                             "peer": "%UPSTREAM_HOST%"}})
    assert p.log_name == "otel_envoy_accesslog"                 # Istio's default logName
    rec = otel_record(p, VALUES)
    assert rec.start == 1765000000.25
    assert rec.body.startswith('[2025-12-06T05:46:40.250Z] "GET /api HTTP/1.1" 503 ')
    assert dict(rec.attributes) == {"code": 503, "who": "client via HTTP/1.1", "peer": None}
    text = otel_record(provider(4317, logFormat={"text": "%REQ(:METHOD)% %RESPONSE_CODE%"}), VALUES)
    assert (text.body, text.attributes) == ("GET 503", ())
    assert otel_record(provider(4317), VALUES).body.count('"') == ISTIO_TEXT_FORMAT.count('"')


def test_a_batch_is_one_export_request_with_typed_values_and_the_scope_named_after_log_name() -> None:
    recs = [LogRecord(1.5, "one", (("code", 200), ("ok", True), ("ratio", 0.5), ("who", "a"), ("none", None))),
            LogRecord(2.0, "two")]
    req = ExportLogsServiceRequest()
    req.ParseFromString(encode(recs, "mesh-access"))
    [rl] = req.resource_logs
    [sl] = rl.scope_logs
    assert sl.scope.name == "mesh-access" and len(sl.log_records) == 2
    first = sl.log_records[0]
    assert first.time_unix_nano == 1_500_000_000 and first.body.string_value == "one"
    got = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in first.attributes}
    assert got == {"code": 200, "ok": True, "ratio": 0.5, "who": "a"}      # no value: left out


def test_records_wait_for_the_interval_or_a_full_batch_and_the_queue_is_bounded() -> None:
    now = [0.0]
    b = LogBatch(lambda: now[0], interval=1.0, batch=3, limit=5)
    assert not b.due()
    assert b.add(LogRecord(0, "a"))
    assert not b.due()                      # one record, interval not over
    now[0] = 1.0
    assert b.due() and [r.body for r in b.take()] == ["a"]
    for i in range(5):
        assert b.add(LogRecord(0, str(i)))
    assert not b.add(LogRecord(0, "over"))  # full: dropped (the caller counts it)
    assert b.due()                          # a full batch does not wait for the interval
    assert [r.body for r in b.take()] == ["0", "1", "2"] and len(b.queue) == 2


# -- the whole way to a real receiver -----------------------------------------------------------------

def test_a_waypoint_requests_record_reaches_the_collector_and_is_counted(receiver: Receiver) -> None:
    logs = OtlpLogs()
    p = provider(receiver.grpc_port, logName="mesh-access", logFormat={"labels": {
        "code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%", "src": "%SOURCE_WORKLOAD%"}})
    lines: list[str] = []
    log = RequestLog(lines.append, lambda svc: AccessLogConfig(providers=(p,)), otel=logs.submit)
    down = Downstream(source_ip="10.0.0.5", source_identity="spiffe://cluster.local/ns/demo/sa/client")
    rec = RequestRecord("GET", "/orders/42", "shop.demo", "HTTP/1.1", down, request_id="r-1")
    rec.status = 201
    try:
        log.emit(rec, None, None)
        got = receiver.wait_logs(lambda g: len(g) >= 1)
    finally:
        logs.close()
    assert lines == []                      # not written to the proxy's stdout as well
    [e] = got
    assert e.via == "otlp-grpc" and e.scope == "mesh-access"
    assert e.attributes == {"code": "201", "path": "/orders/42"}       # no source workload: left out
    assert '"GET /orders/42 HTTP/1.1" 201' in e.body
    assert abs(e.time_unix_nano / 1e9 - rec.start) < 0.001
    assert request_values(rec, None, None)[START] == rec.start
    reg = CollectorRegistry()
    reg.register(OtlpLogCollector(lambda: logs))
    text = generate_latest(reg).decode()
    assert 'ambit_access_log_otlp_records_total{provider="als",result="exported"} 1.0' in text
    assert 'ambit_access_log_otlp_records_total{provider="als",result="queued"} 1.0' in text


def test_a_ztunnel_connections_record_reaches_the_collector(receiver: Receiver) -> None:
    logs = OtlpLogs()
    p = provider(receiver.grpc_port, logFormat={"labels": {"direction": "%CONNECTION_DIRECTION%",
                                                           "dst": "%DESTINATION_WORKLOAD%", "sent": "%BYTES_SENT%"}})
    sink = PolicySink(StreamSink(), lambda rec: AccessLogConfig(providers=(p,)), otel=logs.submit)
    rec = ConnRecord("outbound", "10.0.0.5:40000", "10.0.1.7:8080", route="hbone")
    rec.dst_workload, rec.bytes_recv = "orders", 1234
    try:
        sink.emit(rec)
        got = receiver.wait_logs(lambda g: len(g) >= 1)
    finally:
        logs.close()
    [e] = got
    assert abs(e.time_unix_nano / 1e9 - rec.start) < 0.001          # conn_values carries START
    assert e.attributes == {"direction": "outbound", "dst": "orders", "sent": "1234"}
    assert e.scope == "otel_envoy_accesslog"


def test_a_collector_that_is_down_costs_dropped_batches_said_once_never_the_proxy(
        caplog: pytest.LogCaptureFixture) -> None:
    logs = OtlpLogs()
    p = provider(free_port())               # nothing listens there
    w = AccessLogWriter(lambda line: None, otel=logs.submit)
    caplog.set_level(logging.WARNING, "ambit.telemetry.otlp_logs")
    try:
        for _ in range(3):
            assert w.write(AccessLogConfig(providers=(p,)), {}, lambda: VALUES, lambda: "") == 1
            time.sleep(1.1)
        deadline = time.monotonic() + 10
        while dict(logs.counted()).get(("als", "failed"), 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        logs.close()
    assert dict(logs.counted())[("als", "failed")] == 3
    said = [r for r in caplog.records if "export of" in r.getMessage()]
    assert len(said) == 1 and "UNAVAILABLE" in said[0].getMessage()


def test_records_past_the_queues_bound_are_dropped_and_counted() -> None:
    logs = OtlpLogs(clock=lambda: 0.0)      # a clock that never moves: nothing is due but full batches
    logs._stopped = True                    # and no export thread: the queue only fills
    p = provider(free_port())
    for _ in range(4096 + 10):
        logs.submit(p, LogRecord(0.0, "x"))
    assert dict(logs.counted()) == {("als", "queued"): 4096, ("als", "dropped"): 10}


def test_a_proxy_without_an_exporter_says_so_once_and_writes_no_line(caplog: pytest.LogCaptureFixture) -> None:
    lines: list[str] = []
    w = AccessLogWriter(lines.append)
    caplog.set_level(logging.WARNING, "ambit.telemetry.accesslog")
    for _ in range(2):
        assert w.write(AccessLogConfig(providers=(provider(4317),)), {}, lambda: VALUES, lambda: "") == 0
    assert lines == [] and len([r for r in caplog.records if "no OTLP log exporter" in r.getMessage()]) == 1
