"""ztunnel on every core: a supervisor process and N worker processes (`--workers N`).

Why processes: one asyncio loop uses one core, so with one process 4 streams went no faster than
one (docs/performance.md). Each worker is a whole ztunnel (`--workers 1 --worker-index I`): its own
event loop, HBONE pool, config stream and certificates. It opens its listeners in every pod netns
with SO_REUSEPORT (the groups a surge roll already shares, ztunnel/listengroup.py), so the kernel
spreads new connections across the workers, and a worker that dies leaves the others' listeners in
the groups: new connections keep being accepted meanwhile.

The supervisor serves no traffic (it opens no pod listener, config stream or TLS) and forks nothing: it spawns the
workers as fresh interpreters, because grpc's threads do not survive fork. What it owns:
- the agent's zds socket. It keeps every pod the agent handed over (metadata and netns fd) and
  forwards each message to every worker; the agent's ack means every live worker opened the pod's
  listeners. A restarted worker gets the whole table replayed as a snapshot before it counts as live.
- worker restarts: a worker that exits while the supervisor is not stopping is started again.
- the admin and metrics endpoints. Metrics are every worker's exposition merged, each sample with
  a `worker` label (`merge_expositions`). Admin `/workers` lists the workers (pid, restarts, their
  own admin and metrics sockets); `/healthz/*` is 200 only when every worker says so; other paths
  are answered by the first worker that answers (its own view: `/pods`, `/config`, ...); `/tap`
  streams are per worker (their sockets are in `/workers`).
- SIGTERM, at any time (start-up included): forwarded to every worker, which drain as a single
  ztunnel does; one still running `--termination-drain` + 5 s later is killed; then it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambit import zds
from ambit.aiotask import cancel
from ambit.dataplane import shutdown
from ambit.dataplane.telemetry.merge import MetricsMerger, parse_source
from ambit.dataplane.workers import (
    SUN_PATH_MAX,
    SupervisorAdmin,
    SupervisorMetrics,
    WorkerProcess,
    start_endpoints,
    start_watchdog,
    stop_workers,
)
from ztunnel.settings import ZtunnelSettings

log = logging.getLogger("ambit.ztunnel.workers")

LINK_TIMEOUT = 30.0         # a worker answers each zds request within this (it waits on its own loop)


@dataclass(frozen=True)
class WorkerPaths:
    """A worker's private sockets, next to the supervisor's zds socket (an emptyDir in a cluster)."""
    zds: Path
    admin: Path
    metrics: Path

    @classmethod
    def under(cls, run_dir: Path, index: int) -> WorkerPaths:
        return cls(run_dir / f"w{index}.zds.sock", run_dir / f"w{index}.admin.sock", run_dir / f"w{index}.metrics.sock")


SHORT_RUN_BASE = Path("/run")


def run_dir(zds_socket: Path) -> Path:
    """`zds.sock` -> `zds.workers/`: per zds socket, so a surge roll's two generations do not meet.

    When that directory is too deep for a unix socket path (a socket path over 107 bytes cannot be
    bound), the workers' sockets go to `/run/ambit-ztw-<hash of the zds socket's path>/` instead:
    still one directory per zds socket, and every process derives the same name."""
    d = zds_socket.with_name(zds_socket.stem + ".workers")
    if len(os.fsencode(WorkerPaths.under(d, 99).metrics)) <= SUN_PATH_MAX:
        return d
    h = hashlib.sha256(os.fsencode(zds_socket.absolute())).hexdigest()[:16]
    return SHORT_RUN_BASE / f"ambit-ztw-{h}"


def worker_argv(argv: Sequence[str], index: int, paths: WorkerPaths) -> list[str]:
    """The supervisor's own flags, then the ones that make a worker (argparse keeps the last)."""
    return [sys.executable, "-m", "ztunnel", *argv, "--workers", "1", "--worker-index", str(index),
            "--zds-socket", str(paths.zds), "--admin-socket", str(paths.admin), "--admin-address", "",
            "--metrics-socket", str(paths.metrics), "--metrics-address", "", "--merge-metrics-from", ""]


class Worker(WorkerProcess):
    """One worker process and the supervisor's zds link to it."""

    def __init__(self, index: int, paths: WorkerPaths) -> None:
        super().__init__(index, paths.admin, paths.metrics)
        self.paths = paths
        self.link: socket.socket | None = None
        self.linking = False

    def spawn(self, argv: Sequence[str]) -> None:
        self.link = None
        super().spawn(worker_argv(argv, self.index, self.paths))

    def request(self, msg: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        """One zds request and its reply; OSError when the link is gone (the worker died)."""
        sock = self.link
        if sock is None:
            raise OSError(f"worker {self.index} is not linked")
        zds.send(sock, msg, fds)
        reply, extra = zds.recv(sock)
        for fd in extra:
            os.close(fd)
        if reply is None:
            raise ConnectionError(f"worker {self.index} closed its zds socket")
        return reply

    def unlink(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "linked": self.link is not None}


class Fanout:
    """The agent's zds socket, fanned out to every worker; the pod table for replays."""

    def __init__(self, path: Path, workers: list[Worker]) -> None:
        self.path, self.workers = path, workers
        self.lock = threading.Lock()
        self.pods: dict[str, tuple[dict[str, Any], int]] = {}   # uid -> (pod dict, netns fd we keep)
        self.snapshot: set[str] | None = None                   # the agent's snapshot in progress
        self.sock: socket.socket | None = None

    # --- workers --------------------------------------------------------------------------------
    def attach(self, w: Worker, stopping: threading.Event) -> None:
        """Connect to a (re)started worker, replay every pod, then count it live (in a thread)."""
        try:
            while not stopping.is_set() and w.alive():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    s.connect(str(w.paths.zds))
                except OSError:
                    s.close()
                    time.sleep(0.1)
                    continue
                s.settimeout(LINK_TIMEOUT)
                with self.lock:
                    w.link = s
                    try:
                        self._replay(w)
                    except OSError as e:
                        log.warning("worker %d: replay failed: %s", w.index, e)
                        w.unlink()
                        continue
                log.info("worker %d linked; serving %d pods", w.index, len(self.pods))
                return
        finally:
            w.linking = False

    def _replay(self, w: Worker) -> None:
        """The table as a snapshot. While the agent's own snapshot is in progress, only the pods it
        re-added so far, and no end: the agent's remaining adds and its snapshot_end follow."""
        w.request({"type": "snapshot_start"})
        for uid, (pod, fd) in self.pods.items():
            if self.snapshot is None or uid in self.snapshot:
                reply = w.request({"type": "add", "pod": pod}, [fd])
                if reply.get("type") != "ack":
                    log.warning("worker %d refused pod %s: %s", w.index, uid, reply.get("reason"))
        if self.snapshot is None:
            w.request({"type": "snapshot_end"})

    # --- the agent --------------------------------------------------------------------------------
    def start(self) -> None:
        self.sock = zds.listen(self.path)
        threading.Thread(target=self._accept_loop, name="zds-fanout", daemon=True).start()

    def stop(self) -> None:
        zds.close_listener(self.sock)

    def close(self) -> None:
        with self.lock:
            for _pod, fd in self.pods.values():
                os.close(fd)
            self.pods.clear()
            for w in self.workers:
                w.unlink()

    def _accept_loop(self) -> None:
        assert self.sock is not None
        zds.accept_loop(self.sock, self._serve, log)

    def _serve(self, conn: socket.socket) -> None:
        while True:
            msg, fds = zds.recv(conn)
            if msg is None:
                self._abandon_snapshot()
                return
            ref = msg.get("uid") or msg.get("pod", {}).get("uid", "") or msg.get("type")
            try:
                error = self.handle(msg, fds)
            except (ValueError, KeyError) as e:
                error = str(e)
            finally:
                for fd in fds:
                    os.close(fd)
            zds.send(conn, {"type": "error", "ref": ref, "reason": error} if error else {"type": "ack", "ref": ref})

    def handle(self, msg: dict[str, Any], fds: list[int]) -> str | None:
        """Record the message, forward it to every live worker; the first refusal, or None."""
        kind = msg.get("type")
        with self.lock:
            send_fds: list[int] | None = None
            if kind == "add":
                if len(fds) != 1:
                    raise ValueError(f"add needs exactly one netns fd, got {len(fds)}")
                uid = msg["pod"]["uid"]
                self._forget(uid)
                fd = fds.pop()
                self.pods[uid] = (msg["pod"], fd)
                send_fds = [fd]
                if self.snapshot is not None:
                    self.snapshot.add(uid)
            elif kind == "del":
                self._forget(msg["uid"])
            elif kind == "snapshot_start":
                self.snapshot = set()
            elif kind == "snapshot_end":
                for uid in set(self.pods) - (self.snapshot or set()):
                    self._forget(uid)
                self.snapshot = None
            live = [w for w in self.workers if w.link is not None]
            if not live:
                return "no ztunnel worker is serving yet"
            errors = []
            for w in live:
                try:
                    reply = w.request(msg, send_fds)
                except OSError as e:
                    log.warning("worker %d: zds link lost: %s", w.index, e)
                    w.unlink()          # the monitor restarts or re-links it, with a replay
                    continue
                if reply.get("type") != "ack":
                    errors.append(f"worker {w.index}: {reply.get('reason')}")
            return "; ".join(errors) or None

    def _abandon_snapshot(self) -> None:
        """The agent went away between its snapshot_start and snapshot_end (it restarted, or was
        killed): the pods it had not re-added yet are still the node's, since only an end removes
        any. Without this, a worker (re)started before the next agent's snapshot would be replayed
        only the dead agent's half of one, with no end, and serve none of the other pods."""
        with self.lock:
            self.snapshot = None

    def _forget(self, uid: str) -> None:
        old = self.pods.pop(uid, None)
        if old is not None:
            os.close(old[1])


async def tend(workers: Sequence[Worker], fan: Fanout, argv: Sequence[str], stopping: threading.Event) -> None:
    """One round of the supervisor's monitor: restart the workers that died, link the ones that run.

    The fan-out's lock is taken in a thread, never on the loop: the agent's thread holds it while it
    waits on a worker's answer (up to LINK_TIMEOUT, 30 s, for a wedged worker), and waiting for it
    here froze the supervisor's loop, its health and metrics endpoints and its HBONE hand-offs
    with it, for as long, until its own watchdog aborted the whole node's ztunnel."""
    loop = asyncio.get_running_loop()

    def unlink(w: Worker) -> None:
        with fan.lock:
            w.unlink()
    for w in workers:
        if w.due_restart():
            code = w.proc.returncode if w.proc else None
            log.warning("worker %d (pid %s) exited with %s; restarting", w.index,
                        w.proc.pid if w.proc else "-", code)
            await loop.run_in_executor(None, unlink, w)
            w.restarts += 1
            w.spawn(argv)
        if w.link is None and not w.linking and w.alive():
            w.linking = True
            loop.run_in_executor(None, fan.attach, w, stopping)


async def supervise(args: ZtunnelSettings, argv: Sequence[str]) -> None:
    loop = asyncio.get_running_loop()
    n = args.worker_count
    rdir = run_dir(args.zds_socket)
    rdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    workers = [Worker(i, WorkerPaths.under(rdir, i)) for i in range(n)]
    fan = Fanout(args.zds_socket, workers)
    stopping = threading.Event()
    # SIGTERM is ours from here on, start-up included: a supervisor stopped before every worker
    # linked (one still waiting for its first config) died of the signal itself, without stopping
    # its workers or removing its sockets.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for w in workers:
        w.spawn(argv)
    # `--merge-metrics-from`: merged once, here (the workers are told ''): the agent is asked once
    # per scrape, and its samples carry no `worker` label.
    merger = MetricsMerger(parse_source(args.merge_metrics_from)) if args.merge_metrics_from else None
    adm, msrv = SupervisorAdmin(workers), SupervisorMetrics(workers, "ambit_ztunnel_worker_restarts", merger)
    await start_endpoints(adm, msrv, args.admin_address, args.admin_socket, args.metrics_address, args.metrics_socket)

    async def monitor() -> None:
        while not stopping.is_set():
            await tend(workers, fan, argv, stopping)
            await asyncio.sleep(0.1)

    watch = asyncio.ensure_future(monitor())
    # The agent's ack must mean "listeners are open": take the agent only once every worker is linked.
    while not all(w.link is not None for w in workers) and not stop.is_set():
        await asyncio.sleep(0.1)
    if not stop.is_set():
        fan.start()
        log.info("ztunnel supervisor for %s ready: %d workers; agent socket %s", args.node, n, args.zds_socket)
        dog = start_watchdog(msrv, args.watchdog_kill_after)
        await stop.wait()
        dog.stop()
    stopping.set()
    fan.stop()
    step = shutdown.STEP_TIMEOUT
    await shutdown.run_steps([
        ("worker monitor", lambda: cancel(watch), step),
        # each worker drains as a single ztunnel does; one still running after that is killed
        ("workers", lambda: stop_workers(workers, args.termination_drain + 5.0), args.termination_drain + 5.0 + step),
        ("admin endpoint", adm.close, step),
        ("metrics server", msrv.close, step)], log)
    fan.close()
    for w in workers:       # the workers' zds sockets (a worker leaves its own in place for a successor)
        for path in (w.paths.zds, w.paths.admin, w.paths.metrics):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    with contextlib.suppress(OSError):
        rdir.rmdir()
