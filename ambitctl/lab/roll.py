"""`ambit lab roll NODE [--surge]`: replace a node's agent and ztunnel as the DaemonSet does.

The lab's supervisor plays the kubelet; this plays the DaemonSet controller during an update of
one node. The new node pod gets cgroups of its own (as a new pod would), so the capture layer
really sees a second ztunnel (agent/capture/ztunnels.py).

* `--surge` (`maxSurge: 1, maxUnavailable: 0`): start the new ztunnel beside the old one, then the
  new agent; once the new ztunnel serves every captured pod of the node (both listen, SO_REUSEPORT)
  the old pair is stopped: its ztunnel closes its listeners at once and drains its open
  connections. The new processes take over the node's ids (`ztunnel/NODE`, `agent/NODE`) without
  restarting (ProcSpec.adopt). Last, the old pod's cgroups are removed, as the kubelet does.
* without: the old pair stops first, then the new one starts (`maxUnavailable: 1`): new
  connections to and from the node's pods wait (SYN retransmits, fail closed) in between.

Both generations share the lab's per-node paths (zds, admin and metrics sockets, caches): the
newest binds the sockets, and the old one never unlinks a path it no longer owns.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ambit import cgroups
from ambitctl.lab import components, state
from ambitctl.lab.state import ProcSpec

SURGE = "~surge"
ZTUNNEL_DRAIN = components.ZTUNNEL_DRAIN


class RollError(RuntimeError):
    pass


def next_cgroup(current: str) -> Path:
    """`<node>/ztunnel` -> `<node>/ztunnel.g1` -> `<node>/ztunnel.g2` ...: a new pod, a new cgroup."""
    p = Path(current)
    m = re.fullmatch(r"(.+)\.g(\d+)", p.name)
    base, gen = (m.group(1), int(m.group(2))) if m else (p.name, 0)
    return p.with_name(f"{base}.g{gen + 1}")


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _with_arg(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except OSError:
        return 0


def _wait(cond: Callable[[], bool], what: str, deadline: float) -> None:
    while not cond():
        if time.monotonic() > deadline:
            raise RollError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _pid_gone(pid: int | None) -> bool:
    return pid is None or not Path(f"/proc/{pid}").exists()


def _serving(base: Path, node: str) -> set[str]:
    from ambit.dataplane import endpoint
    try:
        status, doc = endpoint.get_json(components.ztunnel_admin_socket(base, node), "/pods", timeout=1.0)
    except (OSError, ValueError):
        return set()
    return {p["uid"] for p in (doc or {}).get("serving", [])} if status == 200 else set()


def _captured(base: Path, node: str) -> set[str]:
    import json
    try:
        pods = json.loads(components.agent_status_file(base, node).read_text()).get("pods", {})
    except (OSError, ValueError):
        return set()
    return {p["uid"] for p in pods.values() if p.get("state") == "captured" and p.get("uid")}


def _new_agent_ready(base: Path, node: str, proc_id: str) -> bool:
    return components.agent_ready(base, node, state.runtime(base).get(proc_id, {}).get("pid"))


def roll(node: str, surge: bool, base: Path, timeout: float = 60.0,
         progress: Callable[[str], None] = lambda _m: None) -> None:
    deadline = time.monotonic() + timeout
    st = state.load(base)
    if st is None:
        raise RollError("no lab is up (no state file)")
    zid, aid = f"ztunnel/{node}", f"agent/{node}"
    try:
        zt, ag = st.proc(zid), st.proc(aid)
    except KeyError:
        raise RollError(f"no node {node!r} in the lab (nodes: "
                        f"{', '.join(n['name'] for n in st.spec['nodes'])})") from None
    zt_cg, ag_cg = next_cgroup(zt.cgroup), next_cgroup(ag.cgroup)
    cgroups.create(zt_cg)
    cgroups.create(ag_cg)
    # The agent -> ztunnel socket is private to a node pod (an emptyDir): each generation its own.
    old_zds = Path(_arg(zt.argv, "--zds-socket"))
    zds = str(old_zds.with_name(f"zds.{zt_cg.name.rsplit('.', 1)[-1]}.sock"))
    new_zt = replace(zt, cgroup=str(zt_cg), argv=_with_arg(zt.argv, "--zds-socket", zds), adopt="")
    new_ag = replace(ag, cgroup=str(ag_cg), adopt="",
                     argv=_with_arg(_with_arg(ag.argv, "--ztunnel-cgroup", str(zt_cg)), "--zds-socket", zds))
    rt = state.runtime(base)
    old_pids = [rt.get(zid, {}).get("pid"), rt.get(aid, {}).get("pid")]
    if surge:
        _surge(node, base, new_zt, new_ag, deadline, progress)
    else:
        progress(f"stopping the node pod of {node}")
        with state.editing(base) as s:
            s.processes = [p for p in s.processes if p.id not in (zid, aid)]
        _wait(lambda: all(_pid_gone(p) for p in old_pids), "the old node pod to stop", deadline)
        progress(f"starting the new node pod of {node}")
        with state.editing(base) as s:
            s.processes += [new_zt, new_ag]
    _wait(lambda: all(_pid_gone(p) for p in old_pids), "the old node pod to stop", deadline)
    for cg in (zt.cgroup, ag.cgroup):          # the kubelet removes a deleted pod's cgroup ...
        cgroups.remove_tree(Path(cg))
    old_zds.unlink(missing_ok=True)             # ... and its emptyDir
    _wait(lambda: components.ztunnel_ready(base, node) and _new_agent_ready(base, node, aid)
          and _captured(base, node) <= _serving(base, node),
          f"the new node pod of {node} to be ready", deadline)
    progress(f"node {node} rolled ({'surge' if surge else 'stop, then start'})")


def _surge(node: str, base: Path, new_zt: ProcSpec, new_ag: ProcSpec, deadline: float,
           progress: Callable[[str], None]) -> None:
    zid, aid = new_zt.id, new_ag.id
    admin = components.ztunnel_admin_socket(base, node)
    admin_before = _inode(admin)
    progress(f"starting the new node pod of {node} (agent and ztunnel) beside the old one")
    with state.editing(base) as s:
        s.processes += [replace(new_zt, id=zid + SURGE), replace(new_ag, id=aid + SURGE)]
    # The new ztunnel takes over the node's admin socket once it runs; it serves a pod once the new
    # agent handed it over (both ztunnels listen in the pod's netns then). The new agent is ready
    # (its own status, not the old agent's, in the file both write) as the kubelet's probe has it.
    _wait(lambda: _inode(admin) not in (0, admin_before) and components.ztunnel_ready(base, node)
          and _new_agent_ready(base, node, aid + SURGE)
          and _captured(base, node) <= _serving(base, node),
          "the new node pod to serve every captured pod", deadline)
    progress(f"stopping the old node pod of {node} (its ztunnel drains for up to {ZTUNNEL_DRAIN:g}s)")
    with state.editing(base) as s:
        s.processes = [p for p in s.processes if p.id not in (zid, aid, zid + SURGE, aid + SURGE)]
        s.processes += [replace(new_zt, adopt=zid + SURGE), replace(new_ag, adopt=aid + SURGE)]
