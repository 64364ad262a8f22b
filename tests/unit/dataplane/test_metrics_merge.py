"""Metrics merging (`--merge-metrics-from`, ambit/dataplane/telemetry/merge.py): one scrape of
ztunnel's port serves the node agent's metrics too, so a pod scraped by annotation (one port) feeds
the alerts on the agent's (AmbitPodsUncaptured, AmbitPodRepairFailing).

The merge itself is checked without sockets (dedupe, failure counting, the log's rate limit); what
a scraper gets is checked over real HTTP: the agent's real endpoint (agent/health.py) on a loopback
port, ztunnel's real metrics endpoint (or its supervisor's) in front of it, read with urllib, and
the answer checked by Prometheus's own parser (`promtool check metrics`)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent import health
from agent.metrics import AgentMetrics
from ambit.dataplane.endpoint import LocalEndpoint, Response
from ambit.dataplane.telemetry.merge import (
    REASONS,
    MergeError,
    MergeFailures,
    MetricsMerger,
    append,
    parse_source,
    response_body,
)
from ambit.dataplane.telemetry.metrics import ConnLabels, Metrics, MetricsServer
from ambit.dataplane.workers import SupervisorMetrics, WorkerProcess, merge_expositions
from ambit.settings import SettingsError
from tests.unit.scrape import exposition, sample
from ztunnel import settings as zsettings
from ztunnel.workers import WorkerPaths, worker_argv

PROMTOOL = shutil.which("promtool")

ZTUNNEL_TEXT = """\
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 3.5
# HELP ambit_config_connected 1 while the config stream is up
# TYPE ambit_config_connected gauge
ambit_config_connected 1.0
"""
AGENT_TEXT = """\
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 0.7
# HELP ambit_agent_uncaptured_pods Running enrolled pods whose capture failed
# TYPE ambit_agent_uncaptured_pods gauge
ambit_agent_uncaptured_pods 2.0
# HELP ambit_agent_pod_repairs_total Repairs
# TYPE ambit_agent_pod_repairs_total counter
ambit_agent_pod_repairs_total{action="delete",result="failed"} 4.0
"""


def promtool_check(text: str) -> None:
    """Prometheus's own linter on the exposition: a duplicated family or HELP/TYPE fails it."""
    if PROMTOOL is None:
        return
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


# --- sans-IO ------------------------------------------------------------------------------------------

def test_the_agents_families_are_appended_and_a_name_both_export_is_the_proxys_alone() -> None:
    text, dropped = append(ZTUNNEL_TEXT, AGENT_TEXT)
    assert sample(text, "ambit_agent_uncaptured_pods") == 2.0
    assert sample(text, "ambit_agent_pod_repairs_total", action="delete", result="failed") == 4.0
    assert sample(text, "ambit_config_connected") == 1.0
    # ztunnel's process_* on ztunnel's target: the agent's copy is left out, not summed or renamed
    assert sample(text, "process_cpu_seconds_total") == 3.5 and dropped == ["process_cpu_seconds"]
    assert text.count("# TYPE process_cpu_seconds_total") == 1 and text.count("# HELP ") == 4
    promtool_check(text)


def test_a_family_whose_sample_names_clash_with_the_proxys_is_left_out() -> None:
    """A gauge named `x_total` would put a second `x_total` series beside the proxy's counter `x`."""
    own = "# HELP x Things\n# TYPE x counter\nx_total 1.0\n"
    text, dropped = append(own, "# HELP x_total other\n# TYPE x_total gauge\nx_total 7.0\n# TYPE y gauge\ny 1\n")
    assert dropped == ["x_total"] and sample(text, "x_total") == 1.0 and sample(text, "y") == 1.0


@pytest.mark.parametrize("garbage", ["<html>oops</html>\n", "x 1 abc\n", "x{a=\"b\",a=\"c\"} 1\n"])
def test_a_source_that_is_not_an_exposition_fails_the_merge_and_nothing_of_it_is_served(garbage: str) -> None:
    with pytest.raises(MergeError) as e:
        append(ZTUNNEL_TEXT, garbage)
    assert e.value.reason == "invalid"


def test_failures_are_counted_by_reason_from_zero_and_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    f = MergeFailures("http://127.0.0.1:15014/metrics", interval=60, clock=lambda: now[0])
    assert {s.labels["reason"]: s.value for s in f.family().samples if s.name.endswith("_total")} == dict.fromkeys(REASONS, 0)
    with caplog.at_level(logging.WARNING, logger="ambit.dataplane.merge"):
        assert f.record(MergeError("unreachable", "refused"))
        for _ in range(5):
            now[0] += 5
            assert not f.record(MergeError("timeout", "slow"))
        now[0] += 60
        assert f.record(MergeError("unreachable", "refused"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "15014" in lines[0] and "5 more since the last line" in lines[1]
    assert f.counts["unreachable"] == 2 and f.counts["timeout"] == 5


@pytest.mark.parametrize("value", ["http://10.0.0.7:15014/metrics", "http://agent.example:15014/metrics",
                                   "https://127.0.0.1:15014/metrics", "http://127.0.0.1/metrics", "unix:relative.sock"])
def test_a_source_that_is_not_loopback_or_a_unix_socket_is_refused_at_start_naming_the_flag(value: str) -> None:
    with pytest.raises(SettingsError) as e:
        zsettings.load(["--node", "n", "--zds-socket", "/tmp/z.sock", "--merge-metrics-from", value])
    assert "--merge-metrics-from" in str(e.value)


def test_loopback_and_unix_sources_are_accepted_and_off_is_the_default() -> None:
    assert zsettings.load(["--node", "n", "--zds-socket", "/z"]).merge_metrics_from == ""
    for value in ("http://127.0.0.1:15014/metrics", "http://[::1]:15014/", "http://localhost:9/m", "unix:/run/a.sock"):
        assert zsettings.load(["--node", "n", "--zds-socket", "/z", "--merge-metrics-from", value]).merge_metrics_from == value
    assert parse_source("unix:///run/a.sock").unix == "/run/a.sock"


def test_workers_merge_nothing_their_supervisor_merges_once() -> None:
    argv = worker_argv(["--node", "n", "--zds-socket", "/z", "--merge-metrics-from", "http://127.0.0.1:15014/m"], 0,
                       WorkerPaths.under(Path("/run/x"), 0))
    assert zsettings.load(argv[3:]).merge_metrics_from == ""


# --- over real HTTP -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def agent_endpoint() -> Iterator[tuple[AgentMetrics, int]]:
    """The node agent's real metrics endpoint (agent/health.py) on a loopback port."""
    metrics, port = AgentMetrics(), free_port()
    served = health.serve(metrics, lambda: None, port, addr="127.0.0.1")
    try:
        yield metrics, port
    finally:
        served.close()


@contextmanager
def on_loop(endpoint: LocalEndpoint) -> Iterator[tuple[int, asyncio.AbstractEventLoop]]:
    """`endpoint` served on a loopback port by an event loop on a thread of its own (as in ztunnel)."""
    loop = asyncio.new_event_loop()
    port = free_port()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    asyncio.run_coroutine_threadsafe(endpoint.start("127.0.0.1", port), loop).result(10)
    try:
        yield port, loop
    finally:
        asyncio.run_coroutine_threadsafe(endpoint.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


def scrape(port: int) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=10) as r:
        return r.status, r.read().decode()


def ztunnel_metrics() -> Metrics:
    m = Metrics()
    m.conn_opened(ConnLabels("destination", destination_workload="cart"))
    return m


def test_one_scrape_of_ztunnels_port_serves_the_agents_metrics_and_passes_promtool() -> None:
    with agent_endpoint() as (agent, aport):
        agent.uncaptured.set(3)
        agent.repairs.labels("delete", "failed").inc(2)
        merger = MetricsMerger(parse_source(f"http://127.0.0.1:{aport}/metrics"))
        with on_loop(MetricsServer(ztunnel_metrics(), merger)) as (zport, _):
            status, text = scrape(zport)
    assert status == 200
    assert sample(text, "ambit_agent_uncaptured_pods") == 3.0
    assert sample(text, "ambit_agent_pod_repairs_total", action="delete", result="failed") == 2.0
    assert "istio_tcp_connections_opened_total{" in text
    assert sample(text, "ambit_metrics_merge_failures_total", reason="unreachable") == 0.0
    promtool_check(text)


class Source(LocalEndpoint):
    """A stand-in for a misbehaving agent: answers `status` and `body`."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()
        self.status, self.body = status, body

    def handle(self, method: str, path: str) -> Response:
        return Response(self.status, self.body, "text/plain")


@pytest.mark.parametrize(("status", "body", "reason"), [
    (500, b"internal error\n", "status"),
    (200, b"<html>not metrics</html>\n", "invalid"),
    (200, b"# TYPE big gauge\n" + b"big 1\n" * 300_000, "too_large"),
])
def test_a_failing_source_still_serves_ztunnels_metrics_and_counts_why(status: int, body: bytes, reason: str) -> None:
    with on_loop(Source(status, body)) as (sport, _):
        merger = MetricsMerger(parse_source(f"http://127.0.0.1:{sport}/metrics"))
        with on_loop(MetricsServer(ztunnel_metrics(), merger)) as (zport, _):
            first = scrape(zport)
            code, text = scrape(zport)
    assert first[0] == code == 200 and "istio_tcp_connections_opened_total{" in text
    assert "big 1" not in text and "not metrics" not in text
    assert sample(text, "ambit_metrics_merge_failures_total", reason=reason) == 2.0    # counted in the same scrape
    promtool_check(text)


def test_an_agent_that_is_down_leaves_ztunnels_metrics_and_counts_unreachable() -> None:
    # a port bound and not listening, held for the test: connecting is refused. (A free port, closed
    # again, could be another test's listener by the time it was dialled: a timeout, not refused.)
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    merger = MetricsMerger(parse_source(f"http://127.0.0.1:{down.getsockname()[1]}/metrics"))
    with down, on_loop(MetricsServer(ztunnel_metrics(), merger)) as (zport, _):
        code, text = scrape(zport)
    assert code == 200 and sample(text, "ambit_metrics_merge_failures_total", reason="unreachable") == 1.0
    assert "istio_tcp_connections_opened_total{" in text


def test_a_wedged_source_times_out_and_holds_up_only_the_scrape_not_the_loop() -> None:
    """The source accepts and never answers: the scrape is answered with ztunnel's own after the
    timeout, and meanwhile the same loop answers other requests (ztunnel's traffic runs on it)."""
    wedged = socket.socket()
    wedged.bind(("127.0.0.1", 0))
    wedged.listen()
    merger = MetricsMerger(parse_source(f"http://127.0.0.1:{wedged.getsockname()[1]}/metrics"), timeout=3.0)
    other = Source(200, b"still here\n")
    with on_loop(MetricsServer(ztunnel_metrics(), merger)) as (zport, loop):
        oport = free_port()
        asyncio.run_coroutine_threadsafe(other.start("127.0.0.1", oport), loop).result(10)
        result: list[tuple[int, str]] = []
        t = threading.Thread(target=lambda: result.append(scrape(zport)))
        t.start()
        conn, _ = wedged.accept()                # the merge is asking the source now
        with urllib.request.urlopen(f"http://127.0.0.1:{oport}/", timeout=10) as r:
            assert r.read() == b"still here\n"
        assert not result, "the scrape was answered before its fetch ended"
        t.join(20)
        asyncio.run_coroutine_threadsafe(other.close(), loop).result(10)
        conn.close()
    wedged.close()
    code, text = result[0]
    assert code == 200 and sample(text, "ambit_metrics_merge_failures_total", reason="timeout") == 1.0


class WorkerMetricsEndpoint(LocalEndpoint):
    """A worker's metrics socket (what `ztunnel --workers 1 --worker-index I` serves)."""

    def handle(self, method: str, path: str) -> Response:
        return Response(200, ztunnel_metrics().exposition(), "text/plain")


def test_with_workers_the_supervisor_merges_the_agent_once_without_a_worker_label(tmp_path: Path) -> None:
    workers = [WorkerProcess(i, tmp_path / f"w{i}.admin.sock", tmp_path / f"w{i}.metrics.sock") for i in range(2)]
    eps = [WorkerMetricsEndpoint() for _ in workers]
    with agent_endpoint() as (agent, aport):
        agent.uncaptured.set(1)
        sup = SupervisorMetrics(workers, "ambit_ztunnel_worker_restarts",
                                MetricsMerger(parse_source(f"http://127.0.0.1:{aport}/metrics")))
        with on_loop(sup) as (zport, loop):
            for w, ep in zip(workers, eps, strict=True):
                asyncio.run_coroutine_threadsafe(ep.start(None, 0, w.metrics), loop).result(10)
            code, text = scrape(zport)
            for ep in eps:
                asyncio.run_coroutine_threadsafe(ep.close(), loop).result(10)
    assert code == 200
    assert sample(text, "ambit_agent_uncaptured_pods") == 1.0          # once, no `worker` label
    assert text.count("\nambit_agent_uncaptured_pods ") == 1
    assert sample(text, "ambit_ztunnel_worker_restarts_total", worker="1") == 0.0
    assert sample(text, "ambit_metrics_merge_failures_total", reason="timeout") == 0.0
    promtool_check(text)


def test_a_supervisors_exposition_has_each_family_once_its_own_backoffs_with_the_workers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's own accept backoffs (its zds fan-out) and its workers' (their listeners) are
    one family, `ambit_accept_backoffs_total`: written twice, with two HELP and TYPE lines, the
    exposition is invalid (promtool: "second HELP line"), whatever is merged after it."""
    from ambit.accept import BACKOFFS
    from ztunnel.proxy import Proxy
    monkeypatch.setitem(BACKOFFS, "zds", 2)         # an accept loop of this process paused twice
    worker = exposition(Proxy().health())
    assert "# TYPE ambit_accept_backoffs_total counter" in worker
    text = merge_expositions({"0": worker, "1": worker},
                             extra=SupervisorMetrics([], "ambit_ztunnel_worker_restarts").extra())
    assert text.count("# TYPE ambit_accept_backoffs_total ") == 1
    assert sample(text, "ambit_accept_backoffs_total", listener="zds") == 2.0               # the supervisor's
    assert sample(text, "ambit_accept_backoffs_total", listener="zds", worker="1") == 2.0   # a worker's
    promtool_check(text)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nambit_agent_uncaptured_pods 1", "invalid"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1e\r\nambit_agent_uncaptured_pods 1",
     "invalid"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", "invalid"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "invalid"),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "status"),
])
def test_an_answer_cut_short_or_not_http_is_refused_whole(raw: bytes, reason: str) -> None:
    """An exposition cut mid-line can still parse, with a wrong value (`... 12` read as `... 1`):
    an answer whose framing says more was coming is refused, not merged."""
    with pytest.raises(MergeError) as e:
        response_body(raw)
    assert e.value.reason == reason


def test_an_answer_ended_by_closing_the_connection_is_whole() -> None:
    assert response_body(b"HTTP/1.0 200 OK\r\n\r\nx 1\n") == "x 1\n"
    assert response_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nx 1\n\r\n0\r\n\r\n") == "x 1\n"
