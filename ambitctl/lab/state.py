"""The lab's state file: what was built and which processes the supervisor must keep running.

The supervisor re-reads it when it changes, so adding a process (a waypoint, say) or disabling one
(to simulate an outage) is a write to this file, not a new IPC protocol.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ambitctl.lab import paths


@dataclass
class ProcSpec:
    id: str                      # "controller", "agent/node1", "ztunnel/node1", "pod/demo/echo-v1"
    component: str               # controller | agent | ztunnel | waypoint | app
    argv: list[str]
    cgroup: str
    netns: str = ""              # path; "" = the host netns
    node: str = ""
    env: dict[str, str] = field(default_factory=dict)
    hosts_netns: str = ""        # for apps: run through `ip netns exec` so /etc/netns/<ns>/hosts applies
    enabled: bool = True
    stop_grace: float = 3.0      # SIGTERM, then SIGKILL after this long (a pod's terminationGracePeriod)
    # The id of a running process this spec takes over without restarting it: how a surge roll's
    # new node pod ("ztunnel/node1~surge") becomes the node's ("ztunnel/node1"); ambitctl/lab/roll.py.
    adopt: str = ""
    # Files that must exist before it starts: the node credential the controller writes, as the
    # kubelet starts no container before its projected token volume is there (started without it,
    # a data-plane process only logged warnings and retried until the controller had written it).
    needs: list[str] = field(default_factory=list)

    @property
    def log_name(self) -> str:
        """One log per component and node: a surge roll's new generation appends to the same file."""
        return self.id.split("~", 1)[0].replace("/", "-")

    def same_process(self, other: ProcSpec) -> bool:
        """Would `other` run the same process (so a running one need not be restarted)?"""
        return replace(self, adopt="") == replace(other, adopt="")


@dataclass
class LabState:
    name: str
    lab_dir: str
    spec: dict[str, Any]
    processes: list[ProcSpec] = field(default_factory=list)
    capture: str = "ebpf"
    etc_netns_created: bool = False
    # Waypoints the lab runs for waypoint Gateways in the store (ambitctl/lab/waypoints.py).
    waypoints: list[dict[str, Any]] = field(default_factory=list)
    # `lab up --prometheus`: {"port": Prometheus's, "bridge_port": the metrics bridge's} (lab/prometheus.py).
    prometheus: dict[str, Any] = field(default_factory=dict)
    # `lab up --tracing`: {"ip", "grpc_port", "http_port", "socket"} of the trace collector (lab/tracing.py).
    tracing: dict[str, Any] = field(default_factory=dict)
    # `lab up --waypoint-workers N`: every waypoint's `--workers` (waypoint/workers.py).
    waypoint_workers: int = 1

    def proc(self, pid_id: str) -> ProcSpec:
        for p in self.processes:
            if p.id == pid_id:
                return p
        raise KeyError(pid_id)


def save(state: LabState, base: Path | None = None) -> None:
    path = paths.state_path(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    os.replace(tmp, path)


def load(base: Path | None = None) -> LabState | None:
    try:
        d = json.loads(paths.state_path(base).read_text())
    except FileNotFoundError:
        return None
    d["processes"] = [ProcSpec(**p) for p in d.get("processes", [])]
    return LabState(**d)


@contextmanager
def editing(base: Path | None = None):
    """Read-modify-write the state under a lock."""
    lock = (base or paths.lab_dir()) / "state.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:   # no lab directory: say so, not which lock file could not be made
        raise FileNotFoundError(f"no lab is up (no state in {lock.parent})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        st = load(base)
        if st is None:
            raise FileNotFoundError("no lab is up (no state file)")
        yield st
        save(st, base)
    finally:
        os.close(fd)


def runtime(base: Path | None = None) -> dict[str, Any]:
    """What the supervisor last wrote about its children: pid, restarts, exit codes."""
    try:
        return json.loads(((base or paths.lab_dir()) / "procs.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
