"""`ambit stat` / `ambit top`: the aggregation of two real expositions (the waypoint's HttpMetrics
and ztunnel's TCP Metrics, the code the components run) into rates, success and percentiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambit.dataplane.telemetry.metrics import ConnLabels, Metrics
from ambitctl.commands.top import STAT_BY, TOP_BY, diff, histogram_quantile, parse, render, table
from tests.unit.waypoint.test_telemetry import CLIENT, ECHO_V2, record, wl
from waypoint.telemetry.metrics import HttpMetrics

OTHER = wl("other-6c8d9f7b5-qwert", {"app": "other", "pod-template-hash": "6c8d9f7b5"}, ns="prod")


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    # 10 observations: 4 in (0,10], 4 in (10,20], 2 in (20,+Inf)
    b = [(10.0, 4.0), (20.0, 8.0), (float("inf"), 10.0)]
    assert histogram_quantile(0.5, b) == pytest.approx(12.5)
    assert histogram_quantile(0.2, b) == pytest.approx(5.0)
    assert histogram_quantile(0.99, b) == 20.0          # in +Inf: the highest finite bound
    assert histogram_quantile(0.5, [(10.0, 0.0), (float("inf"), 0.0)]) is None


def test_diff_takes_increases_and_handles_resets() -> None:
    k1, k2 = ("istio_requests_total", (("a", "1"),)), ("istio_requests_total", (("a", "2"),))
    assert diff({k1: 5.0, k2: 9.0}, {k1: 8.0, k2: 2.0}) == {k1: 3.0, k2: 2.0}


def test_stat_and_top_from_the_components_metrics() -> None:
    http = HttpMetrics()
    http.observe(record(duration_ms=3.0), CLIENT, ECHO_V2)              # before the window
    before = parse(http.exposition().decode())
    for _ in range(8):
        http.observe(record(duration_ms=3.0), CLIENT, ECHO_V2)
    http.observe(record(status=503, duration_ms=40.0), CLIENT, ECHO_V2)
    http.observe(record(status=0, duration_ms=400.0), CLIENT, ECHO_V2)
    http.observe(record(duration_ms=3.0), OTHER, ECHO_V2)
    tcp = Metrics()
    for reporter in ("source", "destination"):                          # one connection, reported twice
        lab = ConnLabels(reporter=reporter)
        lab.source_from(CLIENT)
        lab.destination_from(ECHO_V2)
        tcp.conn_opened(lab)
        tcp.conn_closed(lab, 100, 900)
    after = {**parse(http.exposition().decode()), **parse(tcp.exposition().decode())}
    delta = diff(before, after)

    [row] = table(delta, 2.0, STAT_BY, namespace="demo")
    assert (row["destination_workload_namespace"], row["destination_workload"]) == ("demo", "echo-v2")
    assert row["requests"] == 11 and row["rps"] == 5.5
    assert row["success_rate"] == pytest.approx(9 / 11)                 # a 503 and a reset failed
    assert row["p50_ms"] is not None and 1 <= row["p50_ms"] <= 5        # in the (1, 5] bucket
    assert 250 <= row["p99_ms"] <= 500
    assert row["tcp_connections_per_s"] == 0.5 and row["tcp_bytes_per_s"] == 500.0   # counted once

    edges = table(delta, 2.0, TOP_BY)
    assert [(e["source_workload"], e["requests"]) for e in edges] == [("client", 10), ("other", 1)]
    assert table(delta, 2.0, TOP_BY, namespace="prod")[0]["source_workload"] == "other"
    text = render(edges, TOP_BY)
    head, first, second = text.splitlines()
    assert head.split()[:6] == ["SRC", "NS", "SRC", "DST", "NS", "DST"]
    assert first.split()[:5] == ["demo", "client", "demo", "echo-v2", "80.00%"]
    assert second.split()[:5] == ["prod", "other", "demo", "echo-v2", "100.00%"]


@pytest.mark.parametrize("command", ["stat", "top"])
def test_no_component_answering_is_an_error_not_an_empty_table(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ztunnel and waypoint down (or wedged): `ambit stat` printed an empty table and exited
    0, which a script reads as "no traffic"."""
    from ambitctl.cli import main
    from ambitctl.lab import state
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    state.save(state.LabState(name="t", lab_dir=str(tmp_path), spec={"nodes": [{"name": "node1"}, {"name": "node2"}],
                                                                      "pods": []}), tmp_path)
    with pytest.raises(SystemExit) as e:
        main([command, "--window", "0.1"])
    out, err = capsys.readouterr()
    assert e.value.code == 1 and out == ""
    assert err.count("warning: ztunnel/node") == 2
    assert err.splitlines()[-1] == "error: no component's metrics could be read (2 tried: see the warnings above)"
