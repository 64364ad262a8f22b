"""The lab supervisor: starts the lab's processes and keeps them running.

It plays the part of the kubelet: every process (controller, agent, ztunnel, app pods) is started
in its cgroup and netns, its output goes to a log file, and when it exits it is restarted with
backoff. The process list comes from the state file and is re-read when the file changes. It
also plays the waypoint deployment controller: when the store changes, `waypoints.reconcile`
starts a waypoint pod for each new waypoint Gateway and removes those whose Gateway is gone.
Run as `python -m ambitctl.lab.supervisor LAB_DIR` (detached by `ambit lab up`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ambit.netns import preexec_enter
from ambitctl.lab import paths, prometheus, state, waypoints
from ambitctl.lab.state import ProcSpec

BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0


@dataclass
class Child:
    spec: ProcSpec
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff: float = BACKOFF_MIN
    next_start: float = 0.0
    last_exit: int | None = None
    started_at: float = 0.0
    # The process this one replaces under the same id (its spec changed): it starts only once that
    # one has exited, since both would claim the same sockets and ports (a surge roll's new
    # generation runs under an id of its own instead, beside the old).
    predecessor: subprocess.Popen[bytes] | None = None

    def may_start(self, now: float) -> bool:
        if self.predecessor is not None and self.predecessor.poll() is None:
            return False
        self.predecessor = None
        return self.popen is None and now >= self.next_start and all(os.path.exists(p) for p in self.spec.needs)


def start(spec: ProcSpec, log_dir: Path) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{spec.log_name}.log", "ab", buffering=0)
    env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
    if spec.hosts_netns:
        # Apps go through `ip netns exec` so that /etc/netns/<ns>/hosts is their /etc/hosts.
        argv = ["ip", "netns", "exec", spec.hosts_netns, *spec.argv]
        pre = preexec_enter(None, Path(spec.cgroup))
    else:
        argv = spec.argv
        pre = preexec_enter(spec.netns or None, Path(spec.cgroup))
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                preexec_fn=pre, start_new_session=True)
    finally:
        log.close()


def _sigterm(child: Child) -> subprocess.Popen[bytes] | None:
    """SIGTERM a running child's process group; its process, or None if it is not running."""
    p = child.popen
    if p is None or p.poll() is not None:
        return None
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    return p


def stop(child: Child, grace: float = 3.0) -> None:
    p = _sigterm(child)
    if p is None:
        return
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def begin_stop(child: Child, draining: list[tuple[subprocess.Popen[bytes], float]]) -> None:
    """SIGTERM now; `reap` SIGKILLs it once its grace is over. Never blocks: other processes
    keep being supervised while one drains (a ztunnel finishing its connections)."""
    p = _sigterm(child)
    if p is not None:
        draining.append((p, time.monotonic() + child.spec.stop_grace))


def reap(draining: list[tuple[subprocess.Popen[bytes], float]]) -> None:
    for item in list(draining):
        p, deadline = item
        if p.poll() is None and time.monotonic() < deadline:
            continue
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        draining.remove(item)


def reconcile(children: dict[str, Child], wanted: dict[str, ProcSpec],
              draining: list[tuple[subprocess.Popen[bytes], float]]) -> None:
    """Make the children match the wanted specs. A spec that adopts a running child (a surge
    roll's hand-over) takes it over under its own id, with no restart."""
    for cid, spec in wanted.items():
        if spec.adopt and spec.adopt in children and spec.adopt not in wanted:
            if cid in children:
                begin_stop(children.pop(cid), draining)
            c = children.pop(spec.adopt)
            c.spec = spec
            children[cid] = c
    replaced: dict[str, subprocess.Popen[bytes]] = {}
    for cid in list(children):
        if cid not in wanted or not wanted[cid].same_process(children[cid].spec):
            old = children.pop(cid)
            if old.popen is not None and old.popen.poll() is None:
                replaced[cid] = old.popen
            begin_stop(old, draining)
    for cid, spec in wanted.items():
        if cid not in children:
            children[cid] = Child(spec, predecessor=replaced.get(cid))


def main(lab_dir: str) -> None:
    base = Path(lab_dir)
    log_dir = paths.log_dir(base)
    children: dict[str, Child] = {}
    draining: list[tuple[subprocess.Popen[bytes], float]] = []
    stopping = False

    def on_term(_sig: int, _frm: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    state_mtime = None
    store_mtime: int | None = None
    pending = False
    last_written = None
    while not stopping:
        try:
            sm: int | None = paths.store_path(base).stat().st_mtime_ns
        except FileNotFoundError:
            sm = None
        if sm is not None and (sm != store_mtime or pending):
            store_mtime = sm
            try:
                did, pending = waypoints.reconcile(base)
            except Exception as e:  # noqa: BLE001 - report, keep supervising, retry on the next change
                print(f"supervisor: waypoints: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                did, pending = [], False
            for d in did:
                print(f"supervisor: {d}", file=sys.stderr, flush=True)
        try:
            m = paths.state_path(base).stat().st_mtime_ns
        except FileNotFoundError:
            break  # the lab is gone
        if m != state_mtime:
            state_mtime = m
            st = state.load(base)
            if st is not None and st.prometheus:
                try:
                    prometheus.write_targets(base, st)      # waypoints come and go with the state
                except OSError as e:
                    print(f"supervisor: prometheus targets: {e}", file=sys.stderr, flush=True)
            reconcile(children, {p.id: p for p in (st.processes if st else []) if p.enabled}, draining)
        reap(draining)
        now = time.monotonic()
        for c in children.values():
            if c.popen is not None and c.popen.poll() is not None:
                c.last_exit = c.popen.returncode
                c.popen = None
                # Back off only for crash loops; a process that ran a while restarts at once.
                c.backoff = BACKOFF_MIN if now - c.started_at > 10 else min(c.backoff * 2, BACKOFF_MAX)
                c.next_start = now + c.backoff
                c.restarts += 1
            if c.may_start(now):
                try:
                    c.popen = start(c.spec, log_dir)
                    c.started_at = now
                except OSError as e:
                    print(f"supervisor: cannot start {c.spec.id}: {e}", file=sys.stderr, flush=True)
                    c.next_start = now + BACKOFF_MAX
        snapshot = {cid: {"pid": c.popen.pid if c.popen else None, "restarts": c.restarts,
                          "last_exit": c.last_exit, "component": c.spec.component, "node": c.spec.node}
                    for cid, c in children.items()}
        if snapshot != last_written:
            tmp = base / "procs.tmp"
            tmp.write_text(json.dumps(snapshot))
            os.replace(tmp, base / "procs.json")
            last_written = snapshot
        time.sleep(0.1)
    for c in children.values():
        stop(c)
    for p, _ in draining:
        stop(Child(ProcSpec("", "", [], ""), popen=p))


if __name__ == "__main__":
    main(sys.argv[1])
