"""The waypoint on every core: a supervisor process and N worker processes (`--workers N`).

Each worker is a whole waypoint (waypoint/serve.py, started with `--workers 1 --worker-index I`):
its own event loop, config stream, certificate, upstream pools and telemetry. The supervisor
serves no request. It spawns the workers as fresh interpreters (ambit/dataplane/workers.py says
why), restarts one that exits, and fronts their admin and metrics endpoints (merged metrics with a
`worker` label; `/workers`; `/healthz/*` ready only when every worker is).

How connections reach the workers:
- **HBONE (a waypoint).** The supervisor owns the HBONE listener and hands each accepted connection
  to the next live worker in turn (ambit/dataplane/handoff.py says why: a waypoint holds a few
  long-lived connections from ztunnels' pools, which a reuseport hash spreads badly). The worker
  does the TLS handshake and everything after it.
- **An ingress gateway's listeners** follow its Gateway, which each worker learns from its own
  config stream, so each worker opens them itself with SO_REUSEPORT: an ingress gateway's clients
  open many connections, which the kernel spreads.

SIGTERM: the supervisor stops accepting, forwards SIGTERM to every worker (each drains as a single
waypoint does, `--http-drain-timeout`), and removes its sockets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from ambit.aiotask import wait_set
from ambit.dataplane.handoff import Dealer
from ambit.dataplane.listen import tcp_listener
from ambit.dataplane.workers import (
    SUN_PATH_MAX,
    SupervisorAdmin,
    SupervisorMetrics,
    WorkerProcess,
    start_endpoints,
    start_watchdog,
    stop_workers,
)
from waypoint.admin import start_status
from waypoint.settings import WaypointSettings

log = logging.getLogger("ambit.waypoint.workers")

HANDOFF = "handoff.sock"
OWNER = "supervisor.pid"


def run_dir(args: WaypointSettings) -> Path:
    """Where the workers' private sockets go: beside the supervisor's admin socket when it has one
    (the lab: `<admin>.workers/`), else `<--run-dir>/ambit-waypoint-<hash of the pod and Gateway>/`
    (a cluster pod, or a path too deep for a unix socket)."""
    base = args.admin_socket or args.metrics_socket
    if base is not None:
        d = base.with_name(base.stem + ".workers")
        if len(os.fsencode(d / "w99.metrics.sock")) <= SUN_PATH_MAX:
            return d
    h = hashlib.sha256(f"{args.waypoint}/{args.pod_name}/{base}".encode()).hexdigest()[:16]
    return args.run_dir / f"ambit-waypoint-{h}"


class Worker(WorkerProcess):
    """One worker process, and what the supervisor handed it."""

    def __init__(self, index: int, rdir: Path, dealer: Dealer | None) -> None:
        super().__init__(index, rdir / f"w{index}.admin.sock", rdir / f"w{index}.metrics.sock")
        self.dealer = dealer

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The supervisor's own flags, then the ones that make a worker (argparse keeps the last)."""
        own = [sys.executable, "-m", "waypoint", *argv, "--workers", "1", "--worker-index", str(self.index),
               "--admin-socket", str(self.admin), "--admin-address", "", "--status-address", "",
               "--metrics-socket", str(self.metrics), "--metrics-address", ""]
        if self.dealer is not None:
            own += ["--handoff-socket", str(self.dealer.path)]
        return own

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.dealer is not None:
            d["linked"] = self.index in self.dealer.links
            d["connections_handed"] = self.dealer.handed.get(self.index, 0)
        return d


MIGRATE_SYSCTL = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def migrate_queued_connections(sysctl: Path = MIGRATE_SYSCTL) -> bool:
    """An ingress gateway's workers share SO_REUSEPORT listeners: with `tcp_migrate_req=1` (Linux
    5.14), connections queued on a worker's listener when it dies move to a sibling's instead of
    being reset. The pod's netns is its own, so this changes nothing else; a pod that may not write
    the sysctl (no NET_ADMIN: a cluster pod, unless the sysctl is allowed) keeps the kernel's
    default, and says so."""
    try:
        if sysctl.read_text().strip() != "1":
            sysctl.write_text("1\n")
        return True
    except OSError as e:
        log.info("%s not set (%s): connections queued on a worker that dies are reset, not moved", sysctl, e)
        return False


class _Metrics(SupervisorMetrics):
    """The merged metrics, the restarts, and how many HBONE connections each worker was handed."""

    def __init__(self, workers: Sequence[Worker], dealer: Dealer | None) -> None:
        super().__init__(workers, "ambit_waypoint_worker_restarts")
        self.dealer = dealer

    def extra(self) -> list[Metric]:
        if self.dealer is None:
            return super().extra()
        handed = CounterMetricFamily("ambit_waypoint_worker_connections_handed",
                                     "HBONE connections the supervisor handed to this worker", labels=["worker"])
        for w in self.workers:
            handed.add_metric([str(w.index)], self.dealer.handed.get(w.index, 0))
        dropped = CounterMetricFamily("ambit_waypoint_connections_dropped",
                                      "HBONE connections accepted that no worker could take")
        dropped.add_metric([], self.dealer.dropped)
        return [*super().extra(), handed, dropped]


async def supervise(args: WaypointSettings, argv: Sequence[str]) -> None:
    loop = asyncio.get_running_loop()
    n = args.worker_count
    rdir = run_dir(args)
    rdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (rdir / OWNER).write_text(str(os.getpid()))      # this generation's: see remove_run_dir
    dealer = None
    if not args.ingress:
        dealer = Dealer(tcp_listener(args.listen), rdir / HANDOFF)
        dealer.start()
    else:
        migrate_queued_connections()
    workers = [Worker(i, rdir, dealer) for i in range(n)]
    for w in workers:
        w.spawn(w.argv(argv))
    adm, msrv = SupervisorAdmin(workers), _Metrics(workers, dealer)
    await start_endpoints(adm, msrv, args.admin_address, args.admin_socket, args.metrics_address, args.metrics_socket)
    status = await start_status(adm, args.status_address)
    log.info("waypoint supervisor for %s (%s) ready: %d workers%s", args.waypoint, args.pod_name, n,
             f"; HBONE on {args.listen}, handed out in turn" if dealer else "; ingress listeners per worker")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dog = start_watchdog(msrv, args.watchdog_kill_after)
    while not stop.is_set():
        for w in workers:
            if w.due_restart():
                log.warning("worker %d (pid %s) exited with %s; restarting", w.index,
                            w.proc.pid if w.proc else "-", w.proc.returncode if w.proc else None)
                w.restarts += 1
                w.spawn(w.argv(argv))
        await wait_set(stop, 0.1)
    dog.stop()
    if dealer is not None:
        dealer.close()          # new connections are refused from now; the workers drain theirs
    # Now, not after the drain: whoever stops us (a kubelet, the lab) may SIGKILL us when its grace
    # is over, and the directory would stay behind. The draining workers' sockets are bound already.
    remove_run_dir(rdir)
    await stop_workers(workers, args.http.drain_timeout + 5.0)
    await adm.close()
    if status is not None:
        await status.close()
    await msrv.close()


def remove_run_dir(rdir: Path) -> bool:
    """Remove the workers' socket directory, unless a successor (a restart that began while this
    supervisor drains) has taken it over since: it is the same path, so it belongs to whoever wrote
    `OWNER` last."""
    try:
        if (rdir / OWNER).read_text() != str(os.getpid()):
            return False
    except OSError:
        return False
    shutil.rmtree(rdir, ignore_errors=True)
    return True
