"""Tracing end to end: the real waypoint process with its `--tracing-*` settings (as
AMBIT_WAYPOINT_TRACING_* in its environment) exporting to the real span receiver
(ambitctl/lab/otlp_receiver.py) running in a pod outside the mesh, over OTLP gRPC, OTLP HTTP and
Zipkin's API at once; a client in a pod that makes its own root span with the OpenTelemetry SDK;
the echo app behind the waypoint reports the trace headers it received.

Layout: tests/lab/specs/tracing.yaml (client and echo on node1, waypoint and receiver on node2).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambitctl.lab.otlp_receiver import LogEntry, Span, read_logs, read_spans
from tests.lab.labctl import Lab, running_lab
from tests.lab.test_waypoint import GATEWAY, apply, delete, waypoints

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

REPO = Path(__file__).resolve().parents[2]
SPEC = Path(__file__).parent / "specs" / "tracing.yaml"
RECEIVER = "10.210.2.10"        # the first pod of node2 (see the spec)
CLIENT = "default/client"

# In the client pod. `root URL COLLECTOR [SERVICE]`: one request inside a root span of the client's own
# (OpenTelemetry SDK, exported over OTLP gRPC, as SERVICE), its context sent as traceparent; prints the span's
# ids and the echo's reply. `plain URL N`: N requests on one keep-alive connection, no trace
# headers; prints the status counts and the rate.
CLIENT_SCRIPT = r"""
import http.client, json, sys, time, urllib.parse
mode, url = sys.argv[1], sys.argv[2]
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=20)
if mode == "root":
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.propagate import inject
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    tp = TracerProvider(resource=Resource.create({"service.name": sys.argv[4] if len(sys.argv) > 4 else "client.default"}))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[3], insecure=True)))
    with tp.get_tracer("lab-client").start_as_current_span("GET echo", kind=trace.SpanKind.CLIENT) as span:
        headers = {}
        inject(headers)
        conn.request("GET", u.path, headers=headers)
        r = conn.getresponse(); body = json.loads(r.read())
        sc = span.get_span_context()
    tp.shutdown()
    print(json.dumps({"status": r.status, "trace_id": f"{sc.trace_id:032x}", "span_id": f"{sc.span_id:016x}",
                      "echo": body}))
else:
    n, codes, t0 = int(sys.argv[3]), {}, time.monotonic()
    for i in range(n):
        conn.request("GET", "%s?i=%d" % (u.path, i))
        r = conn.getresponse(); r.read()
        codes[r.status] = codes.get(r.status, 0) + 1
    print(json.dumps({"codes": codes, "rate": n / (time.monotonic() - t0)}))
"""


def client(lab: Lab, *args: str) -> dict[str, Any]:
    p = lab.exec(CLIENT, sys.executable, "-c", CLIENT_SCRIPT, *args, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def spans(lab: Lab) -> list[Span]:
    return read_spans(lab.out)  # type: ignore[attr-defined]


def wait_spans(lab: Lab, pred, what: str, timeout: float = 15.0) -> list[Span]:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while True:
        got = spans(lab)
        if pred(got):
            return got
        if time.time() > deadline:
            pytest.fail(f"{what}: not in the {len(got)} spans received")
        time.sleep(0.3)


def server_spans(got: list[Span], marker: str, via: str = "otlp-grpc") -> list[Span]:
    return [s for s in got if s.via == via and s.kind == "SERVER" and marker in s.attributes.get("http.url", "")]


@pytest.fixture(scope="module")
def tlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("trcfg")
    out, sampling, logs = tmp / "spans.jsonl", tmp / "sampling", tmp / "logs.jsonl"
    spec = tmp / "tracing.yaml"
    spec.write_text(SPEC.read_text().replace("{repo}", str(REPO)).replace("{out}", str(out)).replace("{logs}", str(logs)))
    env = {"AMBIT_WAYPOINT_TRACING_OTLP": f"{RECEIVER}:4317",
           "AMBIT_WAYPOINT_TRACING_OTLP_HTTP": f"http://{RECEIVER}:4318/v1/traces",
           "AMBIT_WAYPOINT_TRACING_ZIPKIN": f"http://{RECEIVER}:4318/api/v2/spans",
           "AMBIT_WAYPOINT_TRACING_SAMPLING": "10",    # the seed's randomSamplingPercentage
           "AMBIT_WAYPOINT_TRACING_SAMPLING_FILE": str(sampling),
           "AMBIT_WAYPOINT_TRACING_TAG": "team=literal:tracing-lab,user=header:x-user"}
    with running_lab(tmp_path_factory.mktemp("trlab"), "tr", spec, "tracing-lab", env=env) as lab:
        lab.out, lab.sampling, lab.logs = out, sampling, logs  # type: ignore[attr-defined]
        apply(lab, [GATEWAY], tmp, "gateway")
        lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=30, what="waypoint ready")
        lab.wait_for(lambda: client(lab, "plain", "http://echo/warmup", "1")["codes"].get("200") == 1,
                     timeout=30, interval=0.5, what="echo through the waypoint")
        yield lab


def test_a_trace_covers_client_waypoint_and_server(tlab: Lab) -> None:
    r = client(tlab, "root", "http://echo/linked", f"{RECEIVER}:4317")
    assert r["status"] == 200
    tid, root = r["trace_id"], r["span_id"]
    got = wait_spans(tlab, lambda g: len([s for s in g if s.trace_id == tid and s.via == "otlp-grpc"]) >= 3,
                     "the client's span and the waypoint's server and client spans")
    mine = [s for s in got if s.trace_id == tid and s.via == "otlp-grpc"]
    assert any(s.span_id == root and s.parent_id == "" and s.service == "client.default" for s in mine)
    server = next(s for s in mine if s.kind == "SERVER")
    upstream = [s for s in mine if s.name.startswith("router ")]
    assert server.parent_id == root                                 # client -> waypoint
    assert len(upstream) == 1 and upstream[0].parent_id == server.span_id
    # waypoint -> server: the app received the waypoint's client span as its parent
    seen = r["echo"]["headers"]
    assert seen["traceparent"] == f"00-{tid}-{upstream[0].span_id}-01"
    assert seen["x-b3-traceid"] == tid and seen["x-b3-spanid"] == upstream[0].span_id
    assert seen["b3"].startswith(f"{tid}-{upstream[0].span_id}-1")
    a = server.attributes
    assert server.name == "echo.default.svc.cluster.local:80/*"
    assert upstream[0].name == "router outbound|80||echo.default.svc.cluster.local egress"
    assert a["component"] == "proxy" and a["http.method"] == "GET" and a["http.status_code"] == "200"
    assert a["upstream_cluster"] == "outbound|80||echo.default.svc.cluster.local"
    assert a["istio.canonical_service"] == "waypoint" and a["team"] == "tracing-lab"
    assert a["guid:x-request-id"] == seen["x-request-id"] and a["node_id"].startswith("waypoint~")
    assert server.service == "waypoint.default"
    print(f"\ntrace {tid}: client {root} -> waypoint server {server.span_id} -> waypoint client "
          f"{upstream[0].span_id} -> echo (traceparent {seen['traceparent']})")


def test_otlp_http_and_zipkin_carry_the_same_trace(tlab: Lab) -> None:
    r = client(tlab, "root", "http://echo/three", f"{RECEIVER}:4317")
    tid = r["trace_id"]
    got = wait_spans(tlab, lambda g: {s.via for s in g if s.trace_id == tid} >= {"otlp-http", "zipkin"},
                     "the trace over OTLP HTTP and Zipkin")
    for via in ("otlp-http", "zipkin"):
        mine = [s for s in got if s.trace_id == tid and s.via == via]
        assert {s.kind for s in mine} == {"SERVER", "CLIENT"}, via
        server = next(s for s in mine if s.kind == "SERVER")
        assert server.parent_id == r["span_id"] and server.attributes["http.status_code"] == "200", via
        assert next(s for s in mine if s.kind == "CLIENT").parent_id == server.span_id, via


def test_ten_percent_sampling_holds_over_1000_requests(tlab: Lab) -> None:
    r = client(tlab, "plain", "http://echo/sampled10", "1000")
    assert r["codes"] == {"200": 1000}
    time.sleep(3.0)     # the batch processor exports every second
    traced = {s.trace_id for s in server_spans(spans(tlab), "/sampled10")}
    print(f"\nrandomSamplingPercentage 10: {len(traced)} of 1000 requests traced ({r['rate']:.0f} req/s)")
    assert 50 <= len(traced) <= 150


def test_sampling_switches_at_runtime(tlab: Lab) -> None:
    """The switch `make bench` uses: the sampling file, re-read within a second."""
    sampling: Path = tlab.sampling  # type: ignore[attr-defined]
    try:
        sampling.write_text("0\n")
        time.sleep(1.5)
        assert client(tlab, "plain", "http://echo/sampled0", "200")["codes"] == {"200": 200}
        sampling.write_text("100\n")
        time.sleep(1.5)
        assert client(tlab, "plain", "http://echo/sampled100", "100")["codes"] == {"200": 100}
        got = wait_spans(tlab, lambda g: len(server_spans(g, "/sampled100")) >= 100, "100 % of 100 requests")
        assert server_spans(got, "/sampled0") == []
    finally:
        sampling.unlink(missing_ok=True)


def test_telemetry_request_id_sampling_and_istio_tags(tlab: Lab) -> None:
    """The Telemetry API's tracing for the waypoint (it replaces the --tracing-* settings once it
    names a provider): 50 % sampling decided by the x-request-id (`useRequestIdForTraceSampling`,
    Istio's default), so ids in the lower half of Envoy's 10000 buckets are all traced and the others
    none, whatever the waypoint's random draws; `enableIstioTags: false` leaves out the istio.* tags."""
    tmp = tlab.dir / "telemetry-tracing"
    tmp.mkdir(exist_ok=True)
    (tlab.dir / "mesh-config.yaml").write_text(yaml.safe_dump({"extensionProviders": [
        {"name": "lab-otel", "opentelemetry": {"service": RECEIVER, "port": 4317}}]}))
    tel = {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": "tr", "namespace": "default"},
           "spec": {"tracing": [{"providers": [{"name": "lab-otel"}], "randomSamplingPercentage": 50.0,
                                 "enableIstioTags": False}]}}
    f = apply(tlab, [tel], tmp, "telemetry")
    try:
        def get(path: str, rid: str) -> None:
            p = tlab.exec(CLIENT, "curl", "-sS", "--fail", "-o", "/dev/null", "-H", f"x-request-id: {rid}",
                          f"http://echo{path}", timeout=30)
            assert p.returncode == 0, p.stderr

        def applied() -> bool:      # bucket 0: traced once the Telemetry is in force
            get("/rid-probe", "00000000-0000-4000-8000-000000000000")
            return any("istio.canonical_service" not in s.attributes for s in server_spans(spans(tlab), "/rid-probe"))
        tlab.wait_for(applied, timeout=30, interval=1.0, what="the waypoint traces by the Telemetry API")
        for i in range(10):
            get(f"/rid-low-{i}", f"{i * 499:08x}-0000-4000-8000-000000000000")          # buckets 0 .. 4491
            get(f"/rid-high-{i}", f"{5000 + i * 499:08x}-0000-4000-8000-000000000000")  # buckets 5000 .. 9491
        got = wait_spans(tlab, lambda g: len(server_spans(g, "/rid-low-")) >= 10, "the 10 low-bucket requests")
        time.sleep(1.5)     # one more export round: any high-bucket span would be in by now
        got = spans(tlab)
        assert len({s.trace_id for s in server_spans(got, "/rid-low-")}) == 10
        assert server_spans(got, "/rid-high-") == []
        for s in server_spans(got, "/rid-low-"):
            assert not [k for k in s.attributes if k.startswith("istio.")], s.attributes
            assert s.attributes["component"] == "proxy"         # Envoy's tags stay
    finally:
        delete(tlab, f)
        (tlab.dir / "mesh-config.yaml").unlink(missing_ok=True)


def test_access_logs_reach_the_collector_over_otlp_from_the_waypoint_and_ztunnel(tlab: Lab) -> None:
    """Istio's envoyOtelAls provider: a Telemetry naming it sends the waypoint's request records
    and ztunnel's connection records to the collector over OTLP/gRPC (LogsService), the labels as
    attributes and Istio's text format as the body, under the provider's logName."""
    tmp = tlab.dir / "telemetry-als"
    tmp.mkdir(exist_ok=True)
    labels = {"path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%", "direction": "%CONNECTION_DIRECTION%",
              "src": "%SOURCE_WORKLOAD%", "dst": "%DESTINATION_WORKLOAD%"}
    (tlab.dir / "mesh-config.yaml").write_text(yaml.safe_dump({"extensionProviders": [
        {"name": "lab-als", "envoyOtelAls": {"service": RECEIVER, "port": 4317, "logName": "mesh-access",
                                             "logFormat": {"labels": labels}}}]}))
    tel = {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": "als", "namespace": "default"},
           "spec": {"accessLogging": [{"providers": [{"name": "lab-als"}]}]}}
    f = apply(tlab, [tel], tmp, "telemetry")

    def logs() -> list[LogEntry]:
        return read_logs(tlab.logs)  # type: ignore[attr-defined]
    try:
        def waypoint_logged() -> bool:
            p = tlab.exec(CLIENT, "curl", "-sS", "--fail", "-o", "/dev/null", "http://echo/als-probe", timeout=30)
            assert p.returncode == 0, p.stderr
            return any(e.attributes.get("path") == "/als-probe" for e in logs())
        tlab.wait_for(waypoint_logged, timeout=40, interval=1.0, what="the waypoint's record at the collector")
        tlab.wait_for(lambda: any(e.attributes.get("direction") == "outbound" and e.attributes.get("src") == "client"
                                  for e in logs()), timeout=20, interval=0.5,
                      what="ztunnel's record of the client's connection at the collector")
        got = logs()
        w = next(e for e in got if e.attributes.get("path") == "/als-probe")
        assert w.via == "otlp-grpc" and w.scope == "mesh-access" and w.resource == {}
        assert w.attributes["code"] == "200" and w.attributes["direction"] == "inbound"
        assert w.attributes["src"] == "client" and w.attributes["dst"] == "echo"
        assert '"GET /als-probe HTTP/1.1" 200' in w.body
        z = next(e for e in got if e.attributes.get("direction") == "outbound" and e.attributes.get("src") == "client")
        assert "path" not in z.attributes and z.scope == "mesh-access"     # a connection has no request path
        print(f"\nwaypoint record: {w.body}\nztunnel record: {z.attributes}")
    finally:
        delete(tlab, f)
        (tlab.dir / "mesh-config.yaml").unlink(missing_ok=True)
