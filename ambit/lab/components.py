"""Which processes a lab runs, and how to ask them whether they are ready.

Apps run in their pod's cgroup and netns. The mesh components (controller, agents, ztunnels) are
added here as they exist; each node's agent and ztunnel run in that node's netns, in cgroups of
their own (ztunnel's cgroup is where the getsockopt program is attached).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ambit.lab.spec import LabSpec
from ambit.lab.state import LabState, ProcSpec
from ambit.lab.topology import NETNS_RUN_DIR, LabNames


def processes(spec: LabSpec, names: LabNames, base: Path, capture: str = "ebpf") -> list[ProcSpec]:
    procs: list[ProcSpec] = []
    for p in spec.pods:
        procs.append(ProcSpec(
            id=f"pod/{p.namespace}/{p.name}", component="app", node=p.node, argv=list(p.command),
            cgroup=str(names.pod_cgroup(p.node, p.namespace, p.name)),
            netns=str(NETNS_RUN_DIR / names.pod_netns(p.namespace, p.name)),
            hosts_netns=names.pod_netns(p.namespace, p.name),
            env={"POD_NAME": p.name, "POD_NAMESPACE": p.namespace, "POD_IP": p.ip, "NODE_NAME": p.node,
                 "POD_LABELS": json.dumps(p.labels)}))
    return procs


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state in the netns of `pid` (read from its /proc/<pid>/net/tcp)."""
    ports: set[int] = set()
    for f in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{f}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 3 and cols[3] == "0A":
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def not_ready(st: LabState, base: Path) -> list[str]:
    """Processes that run but are not ready yet: apps whose declared ports are not listening."""
    from ambit.lab.state import runtime
    rt = runtime(base)
    waiting = []
    for p in st.spec["pods"]:
        pid = rt.get(f"pod/{p['namespace']}/{p['name']}", {}).get("pid")
        want = {int(x["containerPort"]) for x in p.get("ports") or []}
        if pid and want and not want <= listening_ports(pid):
            waiting.append(f"pod/{p['namespace']}/{p['name']}")
    return waiting


def capture_status(st: LabState, base: Path) -> dict[str, Any]:
    """Per pod "NS/NAME" -> capture state, from what each node's agent reports."""
    out: dict[str, Any] = {}
    for f in sorted(base.glob("agent-*.status.json")):
        try:
            out.update(json.loads(f.read_text()).get("pods", {}))
        except (OSError, json.JSONDecodeError):
            continue
    return out
