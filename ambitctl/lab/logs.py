"""Which log file (`ambit lab logs`) or supervised process (`ambit lab stop|start|restart`) a
component name means.

Both accept the names `ambit lab status` prints (`ztunnel/node1`, `waypoint/default/waypoint`,
`demo/client`, a waypoint's pod `default/waypoint-0`) as well as the short forms (`ztunnel --node node1`, a bare `waypoint` when one
runs), and answer a wrong name with the names that exist, never with a path that happens not to
exist. Waypoints are looked up among the ones running, not among log files: the log of a deleted
waypoint stays behind and must not make `lab logs waypoint` ambiguous.
"""

from __future__ import annotations

from pathlib import Path

from ambitctl.lab import paths, state
from ambitctl.lab.lab import LabError

PER_NODE = ("agent", "ztunnel")
KINDS = "controller, supervisor, dns, agent/NODE, ztunnel/NODE, waypoint[/NS/NAME], or NS/POD"


def _node_names(st: state.LabState | None) -> list[str]:
    return [n["name"] for n in (st.spec.get("nodes", []) if st else [])]


def _per_node(kind: str, node: str | None, st: state.LabState | None, logs: Path) -> str:
    """`agent`/`ztunnel` and a node: the node checked against the lab's nodes."""
    nodes = _node_names(st) or sorted(f.stem.split("-", 1)[1] for f in logs.glob(f"{kind}-*.log"))
    if node is None:
        if len(nodes) == 1:
            return nodes[0]
        if not nodes:
            raise LabError("no lab is up" if st is None else f"the lab has no {kind}")
        raise LabError(f"{kind} runs on every node; pick one with --node or as {kind}/NODE "
                         f"({', '.join(nodes)})")
    if node not in nodes:
        raise LabError(f"no node {node!r} in the lab (have: {', '.join(nodes) or 'none'})")
    return node


def _waypoint(key: str, st: state.LabState | None, logs: Path) -> str:
    """A waypoint's "NS/NAME" ("" for the only one running)."""
    running = [f"{w['namespace']}/{w['name']}" for w in (st.waypoints if st else []) if not w.get("removing")]
    if st is None:  # no state: what the log files say
        running = sorted(f.stem.removeprefix("waypoint-").replace("-", "/", 1) for f in logs.glob("waypoint-*.log"))
    if key in running or (key and (logs / f"waypoint-{key.replace('/', '-')}.log").exists()):
        return key
    if not key and len(running) == 1:
        return running[0]
    if st is None and not running:
        raise LabError("no lab is up")
    have = ", ".join(f"waypoint/{k}" for k in running) or "none is running"
    if not key:
        raise LabError(f"{'several waypoints' if running else 'no waypoint'}; name one as waypoint/NS/NAME "
                         f"({have})")
    raise LabError(f"no waypoint {key!r} (have: {have})")


def _is_pod(component: str, st: state.LabState | None) -> bool:
    """A pod of the lab's spec wins over a component of the same name (a namespace "agent")."""
    return st is not None and component in {f"{p['namespace']}/{p['name']}" for p in st.spec.get("pods", [])}


def _waypoint_pod(component: str, st: state.LabState | None) -> str:
    """"NS/NAME" of the waypoint whose pod `component` ("NS/POD", as `lab status` lists it) is, or ""."""
    return next((f"{w['namespace']}/{w['name']}" for w in (st.waypoints if st else [])
                 if component == f"{w['namespace']}/{w['pod']}"), "")


def process_id(component: str, node: str | None, st: state.LabState) -> str:
    """The supervisor's id of a component: `controller`, `ztunnel/node1`, `waypoint/NS/NAME`,
    `pod/NS/POD`."""
    ids = [p.id for p in st.processes]
    kind, _, rest = component.partition("/")
    logs = paths.log_dir(Path(st.lab_dir))
    if _is_pod(component, st) or component in ids:
        return f"pod/{component}" if _is_pod(component, st) else component
    if _waypoint_pod(component, st):
        return f"waypoint/{_waypoint_pod(component, st)}"
    if kind in PER_NODE and (rest or node):
        return f"{kind}/{_per_node(kind, rest or node, st, logs)}"
    if kind == "waypoint":
        return f"waypoint/{_waypoint(rest, st, logs)}"
    if f"pod/{component}" in ids:
        return f"pod/{component}"
    if kind in PER_NODE:
        raise LabError(f"{kind} runs on every node; pick one with --node or as {kind}/NODE "
                         f"({', '.join(_node_names(st))})")
    raise LabError(f"no lab process {component!r} (have: {', '.join(ids)})")


def log_file(component: str, node: str | None, base: Path | None = None) -> Path:
    """The log of a component (see the module docstring for the names)."""
    d = paths.log_dir(base)
    st = state.load(base)
    kind, _, rest = component.partition("/")
    if _is_pod(component, st):
        return d / f"pod-{component.replace('/', '-')}.log"
    if _waypoint_pod(component, st):
        return d / f"waypoint-{_waypoint_pod(component, st).replace('/', '-')}.log"
    if kind in PER_NODE and "/" not in rest:
        return d / f"{kind}-{_per_node(kind, rest or node, st, d)}.log"
    if kind == "waypoint" and rest.count("/") <= 1:
        return d / f"waypoint-{_waypoint(rest, st, d).replace('/', '-')}.log"
    if rest:
        return d / f"pod-{component.replace('/', '-')}.log"
    if component in ("controller", "supervisor", "dns"):     # dns: the lab's cluster DNS (dnsmasq)
        return d / f"{component}.log"
    raise LabError(f"unknown component {component!r}: {KINDS}")
