"""One record per request, to the access log and to the stats callback (Istio metrics later), with
Envoy's field names and response flags."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.unit.waypoint.harness import Origin, Proxy, by_header
from waypoint.http.record import RequestRecord
from waypoint.request import Downstream


def test_line_uses_envoy_names_and_dash_for_no_flags() -> None:
    down = Downstream(source_identity="spiffe://x/ns/a/sa/b", source_ip="10.0.0.9", destination_ip="10.96.0.10",
                      destination_port=80)
    rec = RequestRecord("GET", "/a?b=1", "svc:80", "HTTP/1.1", down, request_id="rid", status=200, bytes_sent=5,
                        upstream="10.0.0.1:80", route="r#0", user_agent="curl/8", duration_ms=12.4)
    d = json.loads(rec.line())
    assert d["response_flags"] == "-" and d["upstream_host"] == "10.0.0.1:80" and d["route_name"] == "r#0"
    assert d["request_id"] == "rid" and d["downstream_peer_principal"] == "spiffe://x/ns/a/sa/b"
    assert d["response_code"] == 200 and d["authority"] == "svc:80" and d["user_agent"] == "curl/8"
    assert d["downstream_remote_address"] == "10.0.0.9" and d["downstream_local_address"] == "10.96.0.10:80"
    assert d["duration"] == 12 and d["method"] == "GET" and d["path"] == "/a?b=1" and d["protocol"] == "HTTP/1.1"
    assert d["start_time"].endswith("Z") and "response_code_details" not in d


def test_each_request_reaches_access_log_and_stats_once() -> None:
    o = Origin()
    p = Proxy(by_header({"default": o.port}))
    try:
        for path in ("/one", "/two"):
            subprocess.run(["curl", "-sS", f"http://127.0.0.1:{p.port}{path}", "--data-binary", "abc"],
                           capture_output=True, timeout=10)
        recs = p.wait_records(2)
        deadline = time.time() + 5
        while len(p.stats) < 2 and time.time() < deadline:     # emitted just after the log record
            time.sleep(0.01)
        assert [r.path for r in recs] == ["/one", "/two"]
        assert [r.path for r in p.stats] == ["/one", "/two"]
        assert recs[0].bytes_received == 3 and recs[0].bytes_sent > 0 and recs[0].duration_ms > 0
        assert recs[0].user_agent.startswith("curl/") and recs[0].request_id
    finally:
        p.close()
        o.close()


def test_a_record_reads_its_defaults_until_set_and_takes_any_field_by_name() -> None:
    down = Downstream(source_ip="10.0.0.1")
    rec = RequestRecord("GET", "/", "svc", "HTTP/1.1", down)
    assert (rec.status, rec.response_flags, rec.grpc, rec.grpc_status, rec.bytes_sent, rec.user_agent) == \
        (0, "", False, "", 0, "")
    rec.bytes_sent += 5
    other = RequestRecord("GET", "/", "svc", "HTTP/1.1", down, grpc=True, user_agent="ua", status=503,
                          response_flags="UF", start=rec.start)
    assert (other.grpc, other.user_agent, other.status, other.response_flags) == (True, "ua", 503, "UF")
    assert rec.bytes_sent == 5 and RequestRecord("GET", "/", "svc", "HTTP/1.1", down).bytes_sent == 0
    assert other == RequestRecord("GET", "/", "svc", "HTTP/1.1", down, status=503, response_flags="UF",
                                  grpc=True, user_agent="ua", start=rec.start)
    with pytest.raises(TypeError):
        RequestRecord("GET", "/", "svc", "HTTP/1.1", down, stauts=200)  # type: ignore[call-arg]
