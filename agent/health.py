"""The agent's HTTP endpoint (`--metrics-port`): its Prometheus metrics, and `/healthz/ready`.

Why an HTTP readiness path: the node pod's readiness probe was an exec of `python3 -m
ambit.readymark` every 5 s, a fresh interpreter on every node for ever (tens of ms of CPU each).
An httpGet probe answered by the agent from its memory costs one small request instead, as Istio's
CNI node agent does (its `/readyz`: ready once its CNI config is installed and its pod watch has
synced and the ztunnel server started, unready again once it stops).

Ready means what the status file's writer stamp means (ambit/readymark.py): this process has
written its status, i.e. done its first full reconcile (eBPF loaded, the node's pods handed to
ztunnel: `Agent.reported`), and it is not stopping (SIGTERM). The two are the same moment by
construction: `Agent.write_status` sets `reported`.

One listener for both paths: the metrics port is served whenever the probe is (the manifest's
probe names that port), and LocalEndpoint bounds each request in size, time and concurrency (the
port faces every pod of the cluster). Its event loop runs on a thread of its own: the agent's
loops are threads, and an idle asyncio loop blocks in epoll without waking.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from concurrent.futures import Future

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.metrics import AgentMetrics
from ambit.dataplane.endpoint import HealthEndpoint, LocalEndpoint, Response

READY_PATH = HealthEndpoint.PATH        # "/healthz/ready", as ztunnel's and the waypoint's


class AgentEndpoint(LocalEndpoint):
    """GET /healthz/ready: 200 or 503 from `not_ready()` (None: ready, else why not). Any other
    path: the metrics, as prometheus_client's server answered them before."""

    def __init__(self, metrics: AgentMetrics, not_ready: Callable[[], str | None]) -> None:
        super().__init__()
        self.metrics = metrics
        self.not_ready = not_ready

    def handle(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return Response(405, b"read-only: use GET\n", "text/plain")
        if path.rstrip("/") == READY_PATH:
            why = self.not_ready()
            body = {"ready": why is None, **({"reason": why} if why else {})}
            return Response(503 if why else 200, json.dumps(body).encode() + b"\n")
        return Response(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)


def readiness(reported: Callable[[], bool], stop: threading.Event) -> Callable[[], str | None]:
    """The agent's readiness (`AgentEndpoint.not_ready`): not before its first reconcile
    (`reported()`, i.e. `Agent.reported`), nor once `stop` is set (SIGTERM: the kubelet and a roll
    stop counting on this pod at once)."""
    def not_ready() -> str | None:
        if stop.is_set():
            return "stopping"
        if not reported():
            return "the first reconcile has not handed the node's pods to ztunnel yet"
        return None
    return not_ready


class Served:
    """An endpoint served on a daemon thread's event loop until `close()` or the process exits."""

    def __init__(self, endpoint: LocalEndpoint, port: int, addr: str) -> None:
        self.endpoint = endpoint
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        started: Future[None] = Future()

        async def main() -> None:
            self._loop, self._done = asyncio.get_running_loop(), asyncio.Event()
            try:
                await endpoint.start(addr, port)
            except BaseException as e:  # noqa: BLE001 - raised in the starting thread
                started.set_exception(e)
                return
            started.set_result(None)
            await self._done.wait()
            await endpoint.close()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="agent-http", daemon=True)
        self._thread.start()
        started.result(timeout=30)  # a port that cannot be bound fails the start, as it did before

    def close(self) -> None:
        if self._loop is not None and self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set)
            self._thread.join(timeout=5)


def serve(metrics: AgentMetrics, not_ready: Callable[[], str | None], port: int,
          addr: str = "0.0.0.0") -> Served:  # noqa: S104 - scraped and probed from outside the pod
    return Served(AgentEndpoint(metrics, not_ready), port, addr)
