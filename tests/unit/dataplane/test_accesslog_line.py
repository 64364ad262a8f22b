"""ztunnel's built-in access line: field order, empty texts left out, extras last (a user's log
queries and parsers rely on the exact line)."""

from __future__ import annotations

import json

import pytest

from ambit.dataplane.telemetry.accesslog import ConnRecord

FULL = dict(src_workload="client", src_namespace="demo", src_identity="spiffe://cluster.local/ns/demo/sa/client",
            dst_workload="echo", dst_namespace="demo", dst_identity="spiffe://cluster.local/ns/demo/sa/echo",
            dst_service="echo.demo.svc.cluster.local", route="hbone", bytes_sent=40, bytes_recv=1060)
ORDER = ["time", "direction", "route", "src.addr", "src.workload", "src.namespace", "src.identity", "dst.addr",
         "dst.workload", "dst.namespace", "dst.identity", "dst.service", "bytes_sent", "bytes_recv", "duration_ms"]


def fields(rec: ConnRecord) -> dict:
    return json.loads(rec.line())


def test_a_line_with_every_field_set_keeps_them_all_in_order_with_extras_last() -> None:
    rec = ConnRecord("outbound", "10.0.1.2:43210", "10.96.0.10:80", **FULL, extra={"upstream": "10.0.2.3:15008"})
    d = fields(rec)
    assert list(d) == [*ORDER, "upstream"]
    assert d["bytes_sent"] == 40 and d["src.identity"] == FULL["src_identity"] and d["upstream"] == "10.0.2.3:15008"


@pytest.mark.parametrize("extra", [{}, {"upstream": ""}, {"audit": ["p"]}, {"dst.service": "", "upstream": "u"},
                                   {"dst.service": "svc"}])
def test_empty_texts_are_left_out_and_the_rest_keep_their_place(extra: dict) -> None:
    """Zero byte counts stay (they are numbers); an extra that reuses a standard name takes that
    field's place, and an empty one removes it."""
    rec = ConnRecord("inbound", "10.0.1.2:0", "10.0.2.3:8080", dst_workload="echo", route="inbound-hbone",
                     error="503 cannot reach the app", policy="demo/deny", extra=dict(extra))
    d = fields(rec)
    merged = {"dst.workload": "echo", "route": "inbound-hbone", "dst.service": "", **extra}
    want = [k for k in ORDER if k in ("time", "direction", "src.addr", "dst.addr", "bytes_sent", "bytes_recv",
                                      "duration_ms") or merged.get(k, "") != ""]
    want += ["error", "policy"] + [k for k, v in extra.items() if k not in ORDER and v != ""]
    assert list(d) == want
    assert d["bytes_sent"] == 0 and d["error"] == "503 cannot reach the app"
    assert all(v != "" for v in d.values())
