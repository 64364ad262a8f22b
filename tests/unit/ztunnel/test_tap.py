"""ztunnel's connection record → tap event mapping, and the sink that feeds the hub only when tapped."""

from __future__ import annotations

from ambit.dataplane.tap import TapHub
from ambit.dataplane.telemetry.accesslog import ConnRecord
from ztunnel.tap import TapSink, conn_event, verdict


def rec(**kw: object) -> ConnRecord:
    base: dict[str, object] = dict(direction="inbound", src_addr="10.1.0.5:0", dst_addr="10.1.0.9:8080",
                                   src_workload="client", src_namespace="demo",
                                   src_identity="spiffe://cluster.local/ns/demo/sa/client",
                                   dst_workload="echo-v1", dst_namespace="demo", route="inbound-hbone",
                                   start=100.0)
    base.update(kw)
    return ConnRecord(**base)  # type: ignore[arg-type]


def test_allowed_connection() -> None:
    ev = conn_event(rec(bytes_sent=10, bytes_recv=20), now=100.25)
    assert ev["layer"] == "L4" and ev["verdict"] == "allowed" and ev["policy"] == ""
    assert ev["src"]["workload"] == "client" and ev["dst"]["workload"] == "echo-v1"
    assert ev["src"]["identity"].endswith("/sa/client")
    assert (ev["bytes_sent"], ev["bytes_recv"], ev["latency_ms"]) == (10, 20, 250.0)
    assert ev["time"] == "1970-01-01T00:01:40.000000Z" and "error" not in ev


def test_denied_by_policy_names_the_policy() -> None:
    ev = conn_event(rec(error="403 denied by demo/deny-all", policy="demo/deny-all"), now=100.0)
    assert (ev["verdict"], ev["policy"]) == ("denied", "demo/deny-all")
    assert ev["error"].startswith("403")


def test_identity_refusal_is_denied_and_a_connect_failure_is_an_error() -> None:
    assert verdict(rec(error="401 plaintext refused: PeerAuthentication demo/strict requires mTLS")) == "denied"
    assert verdict(rec(error="ConnectionRefusedError: [Errno 111]")) == "error"


class ListSink:
    def __init__(self) -> None:
        self.records: list[ConnRecord] = []

    def emit(self, r: ConnRecord) -> None:
        self.records.append(r)


def test_sink_logs_always_and_taps_only_when_subscribed() -> None:
    inner, hub = ListSink(), TapHub("ztunnel/n1")
    sink = TapSink(inner, hub, clock=lambda: 101.0)
    sink.emit(rec())
    assert len(inner.records) == 1 and hub.published == 0
    sub = hub.subscribe()
    assert sub is not None
    sink.emit(rec())
    [ev] = sub.drain()
    assert len(inner.records) == 2 and ev["source"] == "ztunnel/n1" and ev["latency_ms"] == 1000.0
