"""Istio-named TCP metrics, served over a unix socket and parsed back as Prometheus would."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane.telemetry.metrics import MUTUAL_TLS, ConnLabels, Metrics, MetricsServer, scrape


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_a_connection_is_reported_with_istio_names_and_labels_over_the_unix_socket(tmp_path: Path) -> None:
    m = Metrics()
    labels = ConnLabels("destination", "client", "demo", "spiffe://cluster.local/ns/demo/sa/client",
                        "echo-v1", "demo", "spiffe://cluster.local/ns/demo/sa/echo",
                        "echo.demo.svc.cluster.local", MUTUAL_TLS)
    m.conn_opened(labels)
    m.conn_closed(labels, request_bytes=100, response_bytes=2500)
    m.conn_opened(ConnLabels("source"))
    sock = tmp_path / "metrics.sock"

    async def main() -> str:
        srv = MetricsServer(m)
        await srv.start(None, 0, sock)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, scrape, sock)
        finally:
            await srv.close()

    got = samples(asyncio.run(main()))
    want = frozenset({
        "reporter": "destination", "source_workload": "client", "source_workload_namespace": "demo",
        "source_principal": "spiffe://cluster.local/ns/demo/sa/client", "destination_workload": "echo-v1",
        "destination_workload_namespace": "demo", "destination_principal": "spiffe://cluster.local/ns/demo/sa/echo",
        "destination_service": "echo.demo.svc.cluster.local", "connection_security_policy": "mutual_tls",
        "request_protocol": "tcp", "response_flags": "-",
        # not given here: reported as "unknown", as Istio does (test_istio_labels fills them from workloads)
        **{k: "unknown" for k in ("source_app", "source_version", "source_canonical_service",
                                  "source_canonical_revision", "source_cluster", "destination_app",
                                  "destination_version", "destination_service_name",
                                  "destination_service_namespace", "destination_canonical_service",
                                  "destination_canonical_revision", "destination_cluster")}}.items())
    assert got[("istio_tcp_connections_opened_total", want)] == 1
    assert got[("istio_tcp_connections_closed_total", want)] == 1
    assert got[("istio_tcp_received_bytes_total", want)] == 100
    assert got[("istio_tcp_sent_bytes_total", want)] == 2500
    unknown = next(dict(k) for n, k in got if n == "istio_tcp_connections_opened_total" and dict(k)["reporter"] == "source")
    assert unknown["source_principal"] == "unknown" and unknown["connection_security_policy"] == "none"
    assert not sock.exists(), "the socket is removed on close"


def test_each_label_set_counts_in_its_own_series_and_bytes_appear_with_the_first_byte() -> None:
    m = Metrics()
    a, b, c = (ConnLabels("source", f"client-{i}") for i in range(3))
    for labels in (a, b, c, a):
        m.conn_opened(labels)
        m.conn_closed(labels, request_bytes=10 if labels is not b else 0, response_bytes=0)
    got = samples(m.exposition().decode())
    opened = {dict(k)["source_workload"]: v for (n, k), v in got.items() if n == "istio_tcp_connections_opened_total"}
    assert opened == {"client-0": 2, "client-1": 1, "client-2": 1}
    received = {dict(k)["source_workload"]: v for (n, k), v in got.items() if n == "istio_tcp_received_bytes_total"}
    assert received == {"client-0": 20, "client-2": 10}, "no series for a label set that never sent a byte"
    assert not any(n == "istio_tcp_sent_bytes_total" for n, _ in got)
    flagged = ConnLabels("source", "client-0", response_flags="DENY")
    m.conn_opened(flagged)              # a changed label set is a different series, not a stale hit
    got = samples(m.exposition().decode())
    assert sum(1 for n, k in got if n == "istio_tcp_connections_opened_total" and dict(k)["response_flags"] == "DENY") == 1
