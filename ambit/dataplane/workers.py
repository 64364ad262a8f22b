"""A data-plane component on every core: a supervisor process in front of N worker processes.

One asyncio loop uses one core, so ztunnel (ztunnel/workers.py) and the waypoint
(waypoint/workers.py) both run `--workers N` as a supervisor and N whole copies of themselves.
What they share is here:

- **Processes.** Workers are fresh interpreters (`python -m <component> ... --workers 1
  --worker-index I`), never forks of a loaded process, because grpc's threads do not survive
  `fork()`. Each gets `PR_SET_PDEATHSIG=SIGTERM`, so none outlives its supervisor, and a worker that
  exits while the supervisor is not stopping is started again, at most once per `RESTART_BACKOFF`.
- **How many.** `--workers 0` means one per CPU this process may use (ambit/dataplane/cpus.py).
- **The admin and metrics endpoints** are the supervisor's: metrics are every worker's exposition
  merged, each sample labelled `worker`, plus a restarts counter and the supervisor's own event-loop
  watchdog's samples (no `worker` label: its loop deals pods or connections to every worker, so a
  wedge there is an outage of all of them, aborted like a worker's); admin `/workers` lists the workers,
  `/healthz/*` is 200 only when every worker says so, and other paths are answered by the first
  worker that answers (its own view).

How connections reach the workers differs, and stays with each component: ztunnel's workers share
SO_REUSEPORT listeners in every pod netns; the waypoint's supervisor hands each accepted HBONE
connection to a worker (docs/performance.md, "All cores")."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from ambit.accept import BACKOFFS
from ambit.dataplane import endpoint, watchdog
from ambit.dataplane.endpoint import LocalEndpoint, Response
from ambit.dataplane.telemetry.health import backoff_family
from ambit.dataplane.telemetry.merge import MetricsMerger
from ambit.dataplane.watchdog import Watchdog

log = logging.getLogger("ambit.dataplane.workers")

PROM_TEXT = "text/plain; version=0.0.4; charset=utf-8"
RESTART_BACKOFF = 0.5       # seconds between two starts of the same worker (a crash loop spins no core)
SUN_PATH_MAX = 107          # bytes of a unix socket path, without the trailing NUL (sockaddr_un)


# --- processes -------------------------------------------------------------------------------------

def _prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()       # looked up here: between fork and exec only async-signal-safe work is safe
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: SIGTERM (a drain) if the supervisor dies, so no worker outlives it."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerProcess:
    """One worker process: its index, its private admin and metrics sockets, and its restarts."""

    def __init__(self, index: int, admin: Path, metrics: Path) -> None:
        self.index, self.admin, self.metrics = index, admin, metrics
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started = 0.0

    def spawn(self, argv: Sequence[str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(list(argv), preexec_fn=die_with_parent)
        log.info("worker %d started (pid %d)", self.index, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def due_restart(self) -> bool:
        """Dead, and started long enough ago that starting it again spins no core."""
        return not self.alive() and time.monotonic() - self.started >= RESTART_BACKOFF

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "pid": self.proc.pid if self.proc else None, "alive": self.alive(),
                "restarts": self.restarts, "admin_socket": str(self.admin), "metrics_socket": str(self.metrics)}


async def stop_workers(workers: Sequence[WorkerProcess], grace: float) -> None:
    """SIGTERM every live worker (each drains as a single process does), then SIGKILL whoever is
    still running `grace` seconds later."""
    loop = asyncio.get_running_loop()
    for w in workers:
        if w.alive():
            assert w.proc is not None
            w.proc.send_signal(signal.SIGTERM)
    deadline = loop.time() + grace
    for w in workers:
        if w.proc is not None:
            try:
                await loop.run_in_executor(None, w.proc.wait, max(0.1, deadline - loop.time()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) still running %.1f s after SIGTERM; killing it (SIGKILL)",
                            w.index, w.proc.pid, grace)
                w.proc.kill()
                await loop.run_in_executor(None, w.proc.wait)


# --- the supervisor's endpoints ------------------------------------------------------------------

def merge_expositions(per_worker: dict[str, str], label: str = "worker", extra: Sequence[Metric] = ()) -> str:
    """Prometheus text expositions of several workers as one: every family once, with every
    worker's samples of it carrying `label`. prometheus_client parses and writes the text, so
    escaping, histograms and counters' `_total`/`_created` samples follow its rules, not ours.
    `extra`: the supervisor's own families, written after the workers'; one the workers export too
    (the accept backoffs: the supervisor's zds or HBONE dealer, the workers' listeners) gets the
    supervisor's samples, without `label`, added to the workers' family: a family written twice
    (two HELP and TYPE lines) is not a valid exposition."""
    families: dict[str, Metric] = {}
    for worker, text in per_worker.items():
        for fam in text_string_to_metric_families(text):
            merged = families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type, fam.unit))
            merged.samples += [s._replace(labels={label: worker, **s.labels}) for s in fam.samples]
    own: list[Metric] = []
    for fam in extra:
        if fam.name in families:
            families[fam.name].samples += fam.samples
        else:
            own.append(fam)

    class _Merged:
        def collect(self) -> list[Metric]:
            return [*families.values(), *own]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry).decode()


class SupervisorAdmin(LocalEndpoint):
    """The component's admin endpoint in front of its workers' (see the module docstring)."""

    def __init__(self, workers: Sequence[WorkerProcess]) -> None:
        super().__init__()
        self.workers = workers

    async def respond(self, method: str, path: str) -> Response:
        # Only the workers' sockets are asked off the loop (up to the fetch's timeout for a wedged
        # worker): this loop hands out pods or connections meanwhile.
        if self._local(path) is not None:
            return self.handle(method, path)
        return self._merge(path, await asyncio.to_thread(self._ask, path))

    def handle(self, method: str, path: str) -> Response:
        local = self._local(path)
        return local if local is not None else self._merge(path, self._ask(path))

    def _local(self, path: str) -> Response | None:
        if path == "/workers":
            return Response(200, json.dumps({"workers": [w.describe() for w in self.workers]}).encode())
        if path.startswith("/tap"):
            return Response(404, b'{"error": "tap streams are per worker: read /workers for their admin sockets"}\n')
        return None

    def _ask(self, path: str) -> list[tuple[int, bytes]]:
        """The workers' answers to `path` (blocking): every worker's for /healthz, else up to the
        first that answers."""
        answers = []
        for w in self.workers:
            try:
                answers.append(endpoint.fetch(w.admin, path))
            except OSError:
                answers.append((503, json.dumps({"error": f"worker {w.index} is not answering"}).encode()))
            if not path.startswith("/healthz") and answers[-1][0] != 503:
                break
        return answers

    @staticmethod
    def _merge(path: str, answers: list[tuple[int, bytes]]) -> Response:
        if not answers:
            return Response(503, b'{"error": "no worker"}\n')
        status, body = max(answers, key=lambda a: a[0] != 200) if path.startswith("/healthz") else answers[-1]
        kind = "application/json" if body[:1] in (b"{", b"[") else "text/plain"
        return Response(status, body, kind)


class SupervisorMetrics(LocalEndpoint):
    """Every worker's metrics, merged with a `worker` label, plus each worker's restart count as
    `<restarts_family>_total{worker}`. With a `merger` (`--merge-metrics-from`), another local
    process's exposition is appended once, here, after the workers' (its samples get no `worker`
    label: they are no worker's); the workers themselves merge nothing."""

    def __init__(self, workers: Sequence[WorkerProcess], restarts_family: str,
                 merger: MetricsMerger | None = None) -> None:
        super().__init__()
        self.workers = workers
        self.restarts_family = restarts_family
        self.merger = merger
        self.watchdog: Watchdog | None = None     # the supervisor's own (`start_watchdog`)

    async def respond(self, method: str, path: str) -> Response:
        # The workers' expositions are read off the loop, as SupervisorAdmin's answers are.
        if method not in ("GET", "HEAD"):
            return self.handle(method, path)
        texts = await asyncio.to_thread(self._texts)
        if self.merger is None:
            return self._render(texts)
        text = await self.merger.merged(lambda: self._render(texts).body.decode())
        return Response(200, text.encode(), PROM_TEXT)

    def handle(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return Response(405, b"metrics are read-only: use GET\n", "text/plain")
        return self._render(self._texts())

    def _texts(self) -> dict[str, str]:
        """Every answering worker's exposition, by worker index (blocking)."""
        texts = {}
        for w in self.workers:
            with contextlib.suppress(OSError):
                status, body = endpoint.fetch(w.metrics, "/metrics")
                if status == 200:
                    texts[str(w.index)] = body.decode()
        return texts

    def _render(self, texts: dict[str, str]) -> Response:
        restarts = CounterMetricFamily(self.restarts_family, "times the supervisor restarted this worker",
                                       labels=["worker"])
        for w in self.workers:
            restarts.add_metric([str(w.index)], w.restarts)
        return Response(200, merge_expositions(texts, extra=[restarts, *self.extra()]).encode(), PROM_TEXT)

    def extra(self) -> list[Metric]:
        """The supervisor's own families beyond the restarts (a component's subclass adds to them):
        its accept loops' backoffs (the ZDS fan-out's, the HBONE dealer's) run here, not in a worker."""
        return [backoff_family(BACKOFFS), *([self.merger.failures.family()] if self.merger else []),
                *(self.watchdog.collect() if self.watchdog is not None else [])]


def start_watchdog(metrics: SupervisorMetrics, kill_after: float) -> Watchdog:
    """The supervisor's own event-loop watchdog (`--watchdog-kill-after`, as its workers'), its
    families served with the workers'; `stop` it before the drain, as a worker does at SIGTERM."""
    metrics.watchdog = watchdog.start(kill_after)
    return metrics.watchdog


async def start_endpoints(admin: SupervisorAdmin, metrics: SupervisorMetrics, admin_address: str,
                          admin_socket: Path | None, metrics_address: str, metrics_socket: Path | None) -> None:
    """Open the supervisor's admin and metrics endpoints (SO_REUSEPORT on TCP, as a single process's,
    so a surge roll's successor can bind beside them); a port that cannot be bound is a warning."""
    for ep, address, sock in ((admin, admin_address, admin_socket), (metrics, metrics_address, metrics_socket)):
        host, _, port = (address or "").rpartition(":")
        try:
            await ep.start(host or None, int(port or 0), sock, reuse_port=True)
        except OSError as e:
            log.warning("endpoint %s: %s", address, e)
