"""One record per request, to the access log and to the stats callback (Istio metrics later), with
Envoy's field names and response flags."""

from __future__ import annotations

import json
import subprocess
import time

from tests.unit.waypoint.harness import Origin, Proxy, by_header
from waypoint.http.record import RequestRecord
from waypoint.request import Downstream


def test_line_uses_envoy_names_and_dash_for_no_flags() -> None:
    rec = RequestRecord("GET", "/a?b=1", "svc:80", "HTTP/1.1", Downstream(source_identity="spiffe://x/ns/a/sa/b"),
                        request_id="rid", status=200, bytes_sent=5, upstream="10.0.0.1:80", route="r#0")
    d = json.loads(rec.line())
    assert d["response_flags"] == "-" and d["upstream_host"] == "10.0.0.1:80" and d["route_name"] == "r#0"
    assert d["x_request_id"] == "rid" and d["src.identity"] == "spiffe://x/ns/a/sa/b" and d["status"] == 200


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
    finally:
        p.close()
        o.close()
