"""ztunnel's `--merge-metrics-from` in the lab, as `ambit install` runs it: the node agent serves
its metrics on 15014 and ztunnel (a supervisor and two workers) merges them into its own endpoint,
fetched over the node netns' loopback. One scrape of ztunnel's port, which is all a Prometheus that
discovers the node pod by annotation reads, carries the agent's families; a real Prometheus
scraping ztunnel alone stores them; a stopped agent costs the merge, never ztunnel's own metrics.
docs/observability.md, "Metrics merging"."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambitctl.commands import install
from ambitctl.lab import components
from ambitctl.lab.components import AGENT_ARGS_ENV, ZTUNNEL_ARGS_ENV
from ambitctl.lab.prometheus import query
from tests.lab.labctl import Lab, running_lab
from tests.unit.scrape import sample

pytestmark = pytest.mark.lab

SPEC = Path(__file__).parent / "specs" / "repair.yaml"     # one node, nothing else needed


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    env = {AGENT_ARGS_ENV: f"--metrics-port {install.AGENT_METRICS_PORT}",
           ZTUNNEL_ARGS_ENV: f"--merge-metrics-from {install.AGENT_METRICS_URL}"}
    with running_lab(tmp_path_factory.mktemp("mm"), "mmerge", SPEC, "metrics-merge-lab", "--prometheus",
                     "--ztunnel-workers", "2", env=env) as lab:
        lab.prom = lab.status()["prometheus"]  # type: ignore[attr-defined]
        yield lab


def ztunnel_scrape(lab: Lab) -> str:
    """One GET of the node's ztunnel metrics endpoint (its supervisor's)."""
    from ambit.dataplane.telemetry.metrics import scrape
    return scrape(components.ztunnel_metrics_socket(lab.dir, "node1"), timeout=10)


def test_one_scrape_of_ztunnel_carries_the_agents_metrics_once(lab: Lab) -> None:
    lab.wait_for(lambda: "ambit_agent_uncaptured_pods" in ztunnel_scrape(lab), 30, 0.5, "the agent's metrics merged")
    text = ztunnel_scrape(lab)
    assert sample(text, "ambit_agent_uncaptured_pods") == 0.0             # merged once, no `worker` label
    assert text.count("\nambit_agent_uncaptured_pods ") == 1
    assert sample(text, "ambit_agent_pod_repairs_total", action="delete", result="failed") == 0.0
    assert sample(text, "ambit_ztunnel_worker_restarts_total", worker="1") == 0.0   # and ztunnel's own
    assert sample(text, "ambit_config_connected", worker="0") == 1.0
    if shutil.which("promtool"):
        p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr


def test_prometheus_scraping_only_ztunnel_stores_the_agents_series(lab: Lab) -> None:
    def series() -> list:
        return query(lab.prom, 'ambit_agent_uncaptured_pods{job="ztunnel"}')["result"]  # type: ignore[attr-defined]
    lab.wait_for(series, 30, 1.0, "Prometheus to store the agent's series from ztunnel's target")
    [row] = series()
    assert row["metric"]["node"] == "node1" and row["value"][1] == "0"
    assert not query(lab.prom, 'ambit_agent_uncaptured_pods{job!="ztunnel"}')["result"]  # type: ignore[attr-defined]


def test_a_stopped_agent_costs_the_merge_not_ztunnels_metrics(lab: Lab) -> None:
    """SIGSTOP: the agent's listener still accepts (the kernel's backlog) and never answers, the
    worst case for the fetch. The scrape is answered, with ztunnel's metrics and the failure counted."""
    agent = lab.proc_pid("agent/node1")
    assert agent
    before = sample(ztunnel_scrape(lab), "ambit_metrics_merge_failures_total", reason="timeout") or 0.0
    os.kill(agent, signal.SIGSTOP)
    try:
        # Concurrent scrapes share the fetch in flight (ambit/dataplane/telemetry/merge.py): the lab's
        # Prometheus may have started one just before the stop, which the agent still answered. Any
        # fetch started after the stop meets the stopped agent; the second scrape's does.
        ztunnel_scrape(lab)
        text = ztunnel_scrape(lab)
    finally:
        os.kill(agent, signal.SIGCONT)
    assert "ambit_agent_uncaptured_pods" not in text
    assert sample(text, "ambit_config_connected", worker="0") == 1.0
    assert (sample(text, "ambit_metrics_merge_failures_total", reason="timeout") or 0.0) >= before + 1
    lab.wait_for(lambda: "ambit_agent_uncaptured_pods" in ztunnel_scrape(lab), 30, 0.5, "merged again")
