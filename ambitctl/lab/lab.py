"""Lab lifecycle: `up` builds the topology, fills the store and starts the supervisor; `down`
removes everything. Both are safe to interrupt: any failure or Ctrl-C during `up` tears down what
was built, because teardown works from names, not from what `up` managed to record.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ambit import cgroups
from ambit.labstore import LabStore
from ambitctl.lab import (
    components,
    dashboard,
    dns,
    paths,
    prometheus,
    runtime,
    state,
    topology,
    tracing,
    waypoints,
)
from ambitctl.lab import spec as specmod
from ambitctl.lab.spec import LabSpec
from ambitctl.lab.topology import LabNames


class LabError(RuntimeError):
    pass


def progress(msg: str) -> None:
    from ambitctl.term import paint
    print(f"{paint('==>', 'bold-green')} {msg}", flush=True)


def store_objects(spec: LabSpec, names: LabNames) -> list[dict[str, Any]]:
    """The Kubernetes objects a cluster would have for this lab."""
    objs: list[dict[str, Any]] = []
    for ns, labels in spec.namespaces.items():
        objs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": dict(labels)}})
    for n in spec.nodes:
        objs.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name, "labels": {
            **n.labels, "kubernetes.io/hostname": n.name}},
            "spec": {"podCIDR": n.pod_cidr, "podCIDRs": [n.pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": n.underlay_ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}})
    sas = set()
    for p in spec.pods:
        sas.add((p.namespace, p.service_account))
        node = spec.node(p.node)
        objs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p.name, "namespace": p.namespace, "labels": dict(p.labels),
                         "annotations": {**p.annotations,
                                         "lab.ambit.io/netns": str(topology.NETNS_RUN_DIR / names.pod_netns(p.namespace, p.name)),
                                         "lab.ambit.io/cgroup": str(names.pod_cgroup(p.node, p.namespace, p.name))}},
            "spec": {"nodeName": p.node, "serviceAccountName": p.service_account,
                     "containers": [{"name": "app", "command": p.command, "ports": p.ports, **p.probes}]},
            "status": {"phase": "Running", "podIP": p.ip, "podIPs": [{"ip": p.ip}], "hostIP": node.underlay_ip},
        })
    for ns, sa in sorted(sas):
        objs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}})
    for s in spec.services:
        objs.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": {"selector": dict(s.selector), "clusterIP": s.vip, "clusterIPs": [s.vip], "type": "ClusterIP",
                     "ports": [{"name": sp.name, "port": sp.port, "targetPort": sp.target_port, "protocol": "TCP",
                                **({"appProtocol": sp.app_protocol} if sp.app_protocol else {})}
                               for sp in s.ports]},
        })
    return objs


def is_up(base: Path | None = None) -> bool:
    return state.load(base) is not None


def up(spec: LabSpec, name: str = "ambit", base: Path | None = None, capture: str = "ebpf",
       wait: bool = True, cert_ttl: float | None = None, with_prometheus: bool = False,
       with_tracing: bool = False, ztunnel_workers: int = 1, waypoint_workers: int = 1) -> state.LabState:
    base = base or paths.lab_dir()
    topology.check_lab_name(name)
    names = LabNames(name)
    if state.load(base) is not None:
        raise LabError(f"a lab is already up (state in {base}); run `ambit lab down` first")
    if with_prometheus and shutil.which(prometheus.BINARY) is None:
        raise LabError("--prometheus: the prometheus binary is not installed "
                       "(`apt-get install prometheus`; `make setup` installs it)")
    leftovers = [ns for ns in topology.list_netns() if names.owns_netns(ns)]
    if leftovers:
        raise LabError(f"netns of a previous lab named {name!r} exist ({', '.join(leftovers[:3])}...); "
                       f"run `ambit lab down` first")
    # Ctrl-C must reach our teardown, not leave a half-built lab: make SIGTERM behave like SIGINT.
    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    etc_created = not topology.ETC_NETNS.exists()
    try:
        base.mkdir(parents=True, exist_ok=True)
        progress(f"building lab {name!r}: {len(spec.nodes)} nodes, {len(spec.pods)} pods, "
                 f"{len(spec.services)} services")
        collector = tracing.add_collector(spec, base) if with_tracing else None
        topology.build(spec, names)
        dns.build(spec, names)      # the cluster DNS's netns; dnsmasq is one of the processes
        for n in spec.nodes:        # the cluster network's CNI configuration, before the node agents
            runtime.write_network_config(base, n.name)
        store = LabStore(paths.store_path(base))
        store.apply(store_objects(spec, names))
        st = state.LabState(name=name, lab_dir=str(base), spec=asdict(spec),
                            processes=components.processes(spec, names, base, capture, cert_ttl=cert_ttl,
                                                           ztunnel_workers=ztunnel_workers),
                            capture=capture, etc_netns_created=etc_created, waypoint_workers=waypoint_workers)
        if with_prometheus:
            prometheus.enable(st, base, names)
        if collector is not None:
            tracing.enable(st, base, collector)
        dashboard.enable(st, base)
        state.save(st, base)
        progress("starting the supervisor (controller, agents, ztunnels, app pods)")
        start_supervisor(names, base)
        if wait:
            wait_ready(st, base)
        if st.prometheus:
            progress(f"Prometheus on {prometheus.url(st)} (scraping the controller, every ztunnel and waypoint)")
        if st.tracing:
            progress(f"trace collector on {tracing.url(st)} (the waypoints export to it; the view lists its traces)")
        progress(f"topology view on {dashboard.url(st)} (`ambit dashboard`)")
        return st
    except BaseException:
        print("lab up failed or was interrupted; tearing down what was built", file=sys.stderr)
        down(name, base, quiet=True, etc_netns_created=etc_created, keep_logs=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)


def start_supervisor(names: LabNames, base: Path) -> int:
    log_dir = paths.log_dir(base)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "supervisor.log", "ab")
    try:
        p = subprocess.Popen([sys.executable, "-m", "ambitctl.lab.supervisor", str(base)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                             preexec_fn=lambda: cgroups.join(names.cgroup_root / "supervisor"),
                             cwd="/")
    finally:
        log.close()
    return p.pid


def wait_ready(st: state.LabState, base: Path, timeout: float = 30.0) -> None:
    """Wait until every enabled process runs and each component that reports readiness is ready."""
    deadline = time.monotonic() + timeout
    want = {p.id for p in st.processes if p.enabled}
    while True:
        rt = state.runtime(base)
        running = {k for k, v in rt.items() if v.get("pid")}
        missing = want - running
        not_ready = components.not_ready(st, base) if not missing else []
        if not missing and not not_ready:
            return
        if time.monotonic() > deadline:
            raise LabError(f"lab processes not ready after {timeout:.0f}s: {sorted(missing) or not_ready}; "
                           f"see logs in {paths.log_dir(base)}")
        time.sleep(0.1)


def down(name: str | None = None, base: Path | None = None, quiet: bool = False,
         etc_netns_created: bool = False, keep_logs: bool = False) -> list[str]:
    """Remove the lab. `keep_logs` keeps the log directory (a failed `up` points the user at it).

    A `name` other than the one the directory's state file records removes that lab's netns,
    cgroups and pins only: the directory belongs to the other lab, which keeps running (deleting
    its state left it running with no way to find or stop it: `lab status` said "no lab is up")."""
    base = base or paths.lab_dir()
    st = state.load(base)
    if name:
        topology.check_lab_name(name)
    other = st.name if st is not None and name and st.name != name else None
    name = name or (st.name if st else "ambit")
    names = LabNames(name)
    # Stop the supervisor first so it does not restart what we kill.
    sup = names.cgroup_root / "supervisor"
    for pid in cgroups.pids(sup):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    removed = topology.teardown(names)
    if other is not None:
        if not quiet:
            progress(f"lab {name!r} removed ({len(removed)} objects); {base} holds lab {other!r}, left running "
                     f"(`ambit lab down --name {other}` removes it)")
        return removed
    if etc_netns_created or (st is not None and st.etc_netns_created):
        try:
            topology.ETC_NETNS.rmdir()  # only when empty, and only when the lab created it
        except OSError:
            pass
    for f in ("state.json", "state.lock", "state.tmp", "store.json", "store.lock", "store.tmp",
              "procs.json", "procs.tmp"):
        try:
            (base / f).unlink()
        except FileNotFoundError:
            pass
    # Sockets, node tokens, config and certificate caches (workload keys never outlive the lab),
    # the CA and agent status: a later lab must never start from any of them.
    nodes = [n["name"] for n in st.spec["nodes"]] if st is not None else []
    nodes += [d.name for d in base.glob("node*") if d.is_dir() and d.name not in nodes]
    components.remove_runtime_files(base, nodes)
    if not keep_logs:
        shutil.rmtree(paths.log_dir(base), ignore_errors=True)
        try:
            base.rmdir()
        except OSError:
            pass
    if not quiet:
        progress(f"lab {name!r} removed ({len(removed)} objects)")
    return removed


def status(base: Path | None = None) -> dict[str, Any]:
    base = base or paths.lab_dir()
    st = state.load(base)
    if st is None:
        raise LabError("no lab is up")
    names = LabNames(st.name)
    spec = st.spec
    rt = state.runtime(base)
    store = LabStore(paths.store_path(base))
    ns_labels = {o["metadata"]["name"]: o["metadata"].get("labels", {}) for o in store.list("Namespace")}
    capture = components.capture_status(st, base)
    pods = []
    for p in spec["pods"]:
        pid_info = rt.get(f"pod/{p['namespace']}/{p['name']}", {})
        pods.append({
            "namespace": p["namespace"], "name": p["name"], "node": p["node"], "ip": p["ip"],
            "serviceAccount": p["service_account"], "labels": p["labels"],
            "netns": names.pod_netns(p["namespace"], p["name"]),
            "cgroup": str(names.pod_cgroup(p["node"], p["namespace"], p["name"])),
            "pid": pid_info.get("pid"), "restarts": pid_info.get("restarts", 0),
            "capture": capture.get(f"{p['namespace']}/{p['name']}", "none"),
        })
    return {
        "name": st.name, "labDir": str(base), "logDir": str(paths.log_dir(base)), "capture": st.capture,
        "netns": [names.underlay] + [names.node_netns(n["name"]) for n in spec["nodes"]]
                 + [names.pod_netns(p["namespace"], p["name"]) for p in spec["pods"]],
        "underlay": {"netns": names.underlay, "bridge": "br-ul", "cidr": spec["underlay_cidr"]},
        "nodes": [{"name": n["name"], "netns": names.node_netns(n["name"]), "underlayIP": n["underlay_ip"],
                   "podCIDR": n["pod_cidr"], "gatewayIP": n["gateway_ip"]} for n in spec["nodes"]],
        "namespaces": [{"name": k, "labels": v} for k, v in sorted(ns_labels.items())],
        "pods": pods,
        "waypoints": waypoints.status(base, st),
        "prometheus": prometheus.url(st),
        "tracing": tracing.url(st),
        "dashboard": dashboard.url(st),
        "services": [{"namespace": s["namespace"], "name": s["name"], "vip": s["vip"],
                      "ports": [p["port"] for p in s["ports"]]} for s in spec["services"]],
        "processes": {k: v for k, v in sorted(rt.items())},
        "cgroupRoot": str(names.cgroup_root),
    }


def exec_in_pod(target: str, argv: list[str], base: Path | None = None) -> None:
    """Replace this process with `argv` running in the pod's cgroup and netns (never returns)."""
    st = state.load(base)
    if st is None:
        raise LabError("no lab is up")
    ns, _, name = target.partition("/")
    if not name:
        raise LabError(f"pod must be NAMESPACE/NAME, got {target!r}")
    pod = next((p for p in st.spec["pods"] if p["namespace"] == ns and p["name"] == name), None)
    pod = pod or next(({"node": w["node"]} for w in st.waypoints if w["namespace"] == ns and w["pod"] == name), None)
    if pod is None:
        have = [p["namespace"] + "/" + p["name"] for p in st.spec["pods"]] + \
            [w["namespace"] + "/" + w["pod"] for w in st.waypoints]
        raise LabError(f"no pod {target} in the lab (have: {', '.join(have)})")
    names = LabNames(st.name)
    # Join the cgroup BEFORE `ip netns exec`, which remounts /sys (feasibility §1).
    cgroups.join(names.pod_cgroup(pod["node"], ns, name))
    os.execvp("ip", ["ip", "netns", "exec", names.pod_netns(ns, name), *argv])


def label_namespace(ns: str, assignments: list[str], base: Path | None = None) -> int:
    from controller.kinds.common import label_key_reason, label_value_reason
    set_: dict[str, str] = {}
    remove: list[str] = []
    for a in assignments:
        if a.endswith("-") and "=" not in a:
            k, v = a[:-1], None
        elif "=" in a:
            k, v = a.split("=", 1)
        else:
            raise LabError(f"bad label {a!r}: use KEY=VALUE or KEY-")
        reason = label_key_reason(k) or (label_value_reason(v) if v is not None else None)
        if reason:
            raise LabError(f"bad label {a!r}: {reason}")
        if v is None:
            remove.append(k)
        else:
            set_[k] = v
    if not paths.store_path(base).exists():     # no lab: say so, and leave no lab directory behind
        raise LabError(f"no lab is up (no {paths.store_path(base)}); set AMBIT_LAB_DIR or run `ambit lab up`")
    store = LabStore(paths.store_path(base))
    return store.patch_labels("Namespace", "", ns, set_, remove)


def load_spec(path: str | None, nodes: int | None) -> LabSpec:
    return specmod.load(Path(path), nodes) if path else specmod.default_spec(nodes)


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)
