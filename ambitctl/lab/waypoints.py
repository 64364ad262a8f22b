"""The lab's waypoint deployments: a waypoint Gateway in the store becomes a pod running a waypoint.

Istio's gateway deployment controller renders a Deployment and a Service per waypoint Gateway; the
lab has no kubelet and no Deployment controller, so the supervisor plays both parts here:
`reconcile(base)` (called from the supervisor's loop whenever the store changes) compares the
waypoint Gateways in the store (class `ambit-waypoint` or `istio-waypoint`) with the waypoints the
lab runs (`LabState.waypoints`) and

- for a new Gateway: picks a node (annotation `lab.ambit.io/node`, else the first node), an address
  in that node's pod CIDR and a VIP, builds the pod (netns, veth on the node bridge, cgroup, hosts
  file), writes its Pod (service account = the Gateway's name, labels
  `gateway.networking.k8s.io/gateway-name: <name>` and `ambit.io/dataplane-mode: none`, so ztunnel
  does not capture it), ServiceAccount and Service (named after the Gateway, port 15008) to the
  store, and adds a `waypoint/<ns>/<name>` process to the state file (the supervisor starts it in
  the pod's netns and cgroup and restarts it if it dies);
- for a deleted Gateway: removes the process (the supervisor stops it), then on the next pass
  kills whatever is left in the pod's cgroup and removes the netns, cgroup, hosts file and the
  store objects. `lab down` removes the same by name (every netns and cgroup of the lab).

An ingress Gateway (class `ambit` or `istio`, docs/ingress.md) is deployed the same way, running the
same binary as that Gateway (`--gateway-class ambit`), with these differences: its Service is a
`LoadBalancer` with the Gateway's listener ports, whose `status.loadBalancer.ingress` the lab fills
with the pod's address (the lab plays the cloud's load balancer: that address is reachable from the
underlay), and the lab's "outside" netns (ambitctl/lab/outside.py) is created with the first one.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from ambit import cgroups
from ambit.dataplane.settings import WATCHDOG_KILL_AFTER
from ambit.gatewayclasses import INGRESS_CLASSES, WAYPOINT_CLASSES
from ambit.labstore import LabStore
from ambit.netns import NETNS_RUN_DIR
from ambitctl.lab import components, outside, paths, state, topology, tracing
from ambitctl.lab.topology import LabNames

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
NODE_ANNOTATION = "lab.ambit.io/node"
FIRST_HOST = 200            # waypoint pod addresses and VIPs are allocated from .200 upwards
HBONE_PORT = 15008


def admin_socket(base: Path, ns: str, name: str) -> Path:
    return base / "waypoints" / f"{ns}.{name}.admin.sock"


def metrics_socket(base: Path, ns: str, name: str) -> Path:
    return base / "waypoints" / f"{ns}.{name}.metrics.sock"


def cache_dir(base: Path, ns: str, name: str) -> Path:
    """The waypoint's config and certificate caches (a cluster keeps them in the pod's emptyDir):
    its restarts serve before the controller answers. Removed with the waypoint's pod."""
    return base / "waypoints" / f"{ns}.{name}.cache"


def gateways(store: LabStore) -> dict[str, dict[str, Any]]:
    """"ns/name" -> Gateway object, for every waypoint or ingress Gateway in the store."""
    out = {}
    for gw in store.list("Gateway"):
        if (gw.get("spec") or {}).get("gatewayClassName") in WAYPOINT_CLASSES + INGRESS_CLASSES:
            md = gw.get("metadata") or {}
            out[f"{md.get('namespace', 'default')}/{md.get('name')}"] = gw
    return out


def _free(cidr: str, used: set[str]) -> str:
    net = ipaddress.ip_network(cidr, strict=False)
    for i in range(FIRST_HOST, net.num_addresses - 1):
        ip = str(net.network_address + i)
        if ip not in used:
            return ip
    raise RuntimeError(f"no free address in {cidr} for a waypoint")


def _used_ips(st: state.LabState, store: LabStore) -> tuple[set[str], set[str]]:
    pods = {p["ip"] for p in st.spec["pods"]} | {w["ip"] for w in st.waypoints}
    for p in store.list("Pod"):
        pods.add((p.get("status") or {}).get("podIP", ""))
    vips = {s["vip"] for s in st.spec["services"]} | {w["vip"] for w in st.waypoints}
    for s in store.list("Service"):
        vips.add((s.get("spec") or {}).get("clusterIP", ""))
    return pods, vips


def _process(base: Path, names: LabNames, w: dict[str, Any], trust_domain: str,
             extra: list[str] | None = None) -> state.ProcSpec:
    ns, name, node = w["namespace"], w["name"], w["node"]
    return state.ProcSpec(
        id=f"waypoint/{ns}/{name}", component="waypoint", node=node,
        netns=str(NETNS_RUN_DIR / names.pod_netns(ns, w["pod"])),
        cgroup=str(names.pod_cgroup(node, ns, w["pod"])),
        argv=[sys.executable, "-m", "waypoint", "--waypoint", f"{ns}/{name}", "--pod-name", w["pod"],
              "--node", node, "--controller", f"unix:{components.controller_socket(base)}",
              "--node-token-file", str(components.node_token_file(base, node)),
              "--trust-domain", trust_domain, *components.controller_tls_args(base, trust_domain),
              "--gateway-class", w["class"],
              "--admin-socket", str(admin_socket(base, ns, name)),
              "--metrics-socket", str(metrics_socket(base, ns, name)), "--report-interval", "3",
              "--config-cache", str(cache_dir(base, ns, name) / "config.json"),
              "--cert-cache", str(cache_dir(base, ns, name) / "certs"),
              "--run-dir", str(base / "run"),
              # one pod per waypoint, restarted in place, and no endpoint propagation to wait out:
              # accepting on after SIGTERM would only delay every stop (a cluster's default is 2 s)
              "--http-drain-accept", "0", "--watchdog-kill-after", f"{WATCHDOG_KILL_AFTER:g}", *(extra or []),
              *shlex.split(os.environ.get(components.WAYPOINT_ARGS_ENV, ""))],
        env={"POD_NAME": w["pod"], "POD_NAMESPACE": ns, "POD_IP": w["ip"], "NODE_NAME": node},
        needs=[str(components.node_token_file(base, node))])


def listener_ports(gw: dict[str, Any]) -> list[int]:
    return sorted({int(ln["port"]) for ln in (gw.get("spec") or {}).get("listeners") or [] if "port" in ln})


def _ingress_service(w: dict[str, Any]) -> dict[str, Any]:
    ns, name = w["namespace"], w["name"]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {GATEWAY_NAME_LABEL: name}},
            "spec": {"selector": {GATEWAY_NAME_LABEL: name}, "clusterIP": w["vip"], "clusterIPs": [w["vip"]],
                     "type": "LoadBalancer",
                     "ports": [{"name": f"port-{p}", "port": p, "targetPort": p, "protocol": "TCP"}
                               for p in w["ports"]]},
            "status": {"loadBalancer": {"ingress": [{"ip": w["ip"]}]}}}


def _store_objects(names: LabNames, w: dict[str, Any]) -> list[dict[str, Any]]:
    ns, name = w["namespace"], w["name"]
    labels = {**w.get("labels", {}), GATEWAY_NAME_LABEL: name, "ambit.io/dataplane-mode": "none",
              "lab.ambit.io/waypoint": "true"}
    if w.get("ingress"):
        return [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}},
            _pod(names, w, labels, [{"name": f"port-{p}", "containerPort": p} for p in w["ports"]]),
            _ingress_service(w),
        ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}},
        _pod(names, w, labels, [{"name": "mesh", "containerPort": HBONE_PORT}]),
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "namespace": ns, "labels": {GATEWAY_NAME_LABEL: name}},
         "spec": {"selector": {GATEWAY_NAME_LABEL: name}, "clusterIP": w["vip"], "clusterIPs": [w["vip"]],
                  "type": "ClusterIP",
                  "ports": [{"name": "mesh", "port": HBONE_PORT, "targetPort": HBONE_PORT, "protocol": "TCP"}]}},
    ]


def _pod(names: LabNames, w: dict[str, Any], labels: dict[str, str], ports: list[dict[str, Any]]) -> dict[str, Any]:
    ns, name, pod = w["namespace"], w["name"], w["pod"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": ns, "labels": labels,
                         "annotations": {"lab.ambit.io/netns": str(topology.NETNS_RUN_DIR / names.pod_netns(ns, pod)),
                                         "lab.ambit.io/cgroup": str(names.pod_cgroup(w["node"], ns, pod))}},
            "spec": {"nodeName": w["node"], "serviceAccountName": name,
                     "containers": [{"name": "gateway" if w.get("ingress") else "waypoint", "ports": ports}]},
            "status": {"phase": "Running", "podIP": w["ip"], "podIPs": [{"ip": w["ip"]}], "hostIP": w["host_ip"]}}


def _store_keys(w: dict[str, Any]) -> list[tuple[str, str, str]]:
    ns, name = w["namespace"], w["name"]
    return [("Pod", ns, w["pod"]), ("Service", ns, name), ("ServiceAccount", ns, name)]


def _build_pod(names: LabNames, node: dict[str, Any], w: dict[str, Any]) -> None:
    nns, pns = names.node_netns(node["name"]), names.pod_netns(w["namespace"], w["pod"])
    host_if = f"vw{w['ip'].rsplit('.', 1)[1]}"
    topology.sh("ip", "netns", "add", pns)
    # the address may be a removed gateway's: pod_network's gratuitous ARP tells the node and the
    # pods on its bridge the new MAC (ambitctl/lab/garp.py)
    topology.pod_network(nns, pns, host_if, w["ip"], node["gateway_ip"])
    cgroups.create(names.pod_cgroup(node["name"], w["namespace"], w["pod"]))
    d = topology.ETC_NETNS / pns
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts").write_text(f"127.0.0.1 localhost\n{w['ip']} {w['pod']}\n")


def _remove_pod(names: LabNames, w: dict[str, Any]) -> None:
    cg = names.pod_cgroup(w["node"], w["namespace"], w["pod"])
    if cg.exists():
        cgroups.kill_all(cg)
    pns = names.pod_netns(w["namespace"], w["pod"])
    if pns in topology.list_netns():
        topology.sh("ip", "netns", "del", pns, check=False)     # takes the veth pair with it
    shutil.rmtree(topology.ETC_NETNS / pns, ignore_errors=True)
    if cg.exists():
        cgroups.remove_tree(cg)


def reconcile(base: Path) -> tuple[list[str], bool]:
    """One pass: (what it did, for the supervisor's log; whether a removal is still pending, so the
    caller runs it again once the process is stopped). See the module docstring."""
    store = LabStore(paths.store_path(base))
    wanted = gateways(store)
    did: list[str] = []
    current = state.load(base)
    if current is None:
        return did, False
    if not any(w.get("removing") for w in current.waypoints) \
            and {f"{w['namespace']}/{w['name']}" for w in current.waypoints} == set(wanted) \
            and all(w["ports"] == listener_ports(wanted[f"{w['namespace']}/{w['name']}"])
                    for w in current.waypoints if w.get("ingress")):
        return did, False           # nothing to do: do not touch the state file
    with state.editing(base) as st:
        names = LabNames(st.name)
        keep = []
        for w in st.waypoints:
            key = f"{w['namespace']}/{w['name']}"
            if w.get("removing"):
                _remove_pod(names, w)
                shutil.rmtree(cache_dir(base, w["namespace"], w["name"]), ignore_errors=True)
                store.delete(_store_keys(w))
                did.append(f"removed waypoint {key} (pod {w['pod']}, {w['ip']})")
                continue
            if key not in wanted:
                w["removing"] = True
                st.processes = [p for p in st.processes if p.id != f"waypoint/{key}"]
                did.append(f"stopping waypoint {key}")
            keep.append(w)
        st.waypoints = keep
        running = {f"{w['namespace']}/{w['name']}" for w in st.waypoints}
        for w in st.waypoints:      # an ingress Gateway's listener ports changed: its Service follows
            key = f"{w['namespace']}/{w['name']}"
            if w.get("ingress") and key in wanted and w["ports"] != listener_ports(wanted[key]):
                w["ports"] = listener_ports(wanted[key])
                store.apply([_ingress_service(w)])
                did.append(f"ingress {key}: Service ports {w['ports']}")
        for key, gw in sorted(wanted.items()):
            if key in running:
                continue
            ns, name = key.split("/", 1)
            nodes = st.spec["nodes"]
            want_node = ((gw.get("metadata") or {}).get("annotations") or {}).get(NODE_ANNOTATION) or nodes[0]["name"]
            node = next((n for n in nodes if n["name"] == want_node), None)
            if node is None:
                did.append(f"waypoint {key}: annotation {NODE_ANNOTATION}={want_node!r} names no node; not started")
                continue
            pods, vips = _used_ips(st, store)
            w = {"namespace": ns, "name": name, "pod": f"{name}-0", "node": node["name"],
                 "ip": _free(node["pod_cidr"], pods), "vip": _free(st.spec.get("service_cidr", "10.96.0.0/24"), vips),
                 "host_ip": node["underlay_ip"], "class": gw["spec"]["gatewayClassName"]}
            if w["class"] in INGRESS_CLASSES:
                w["ingress"], w["ports"] = True, listener_ports(gw)
                # its pods carry spec.infrastructure.labels, as in a cluster: Istio Gateways select them
                w["labels"] = dict((gw["spec"].get("infrastructure") or {}).get("labels") or {})
                if outside.ensure(names, st.spec):
                    did.append(f"created the outside netns {outside.netns(names)} ({outside.address(st.spec)})")
            try:
                _build_pod(names, node, w)
            except Exception:
                _remove_pod(names, w)
                raise
            admin_socket(base, ns, name).parent.mkdir(parents=True, exist_ok=True)
            store.apply(_store_objects(names, w))
            st.waypoints.append(w)
            st.processes.append(_process(base, names, w, st.spec.get("trust_domain", "cluster.local"),
                                         [*tracing.waypoint_args(st), "--workers", str(st.waypoint_workers)]))
            did.append(f"started {'ingress gateway' if w.get('ingress') else 'waypoint'} {key}: pod {w['pod']} on "
                       f"{w['node']}, {w['ip']}, VIP {w['vip']}")
            if (gw["spec"].get("infrastructure") or {}).get("parametersRef"):
                # `ambit apply` warned already; the supervisor's log says it again where the pod starts
                did.append(f"{key}: spec.infrastructure.parametersRef not applied: the lab runs gateways as "
                           "processes, not Deployments (its overlays apply in a cluster only)")
        pending = any(w.get("removing") for w in st.waypoints)
    return did, pending


def status(base: Path, st: state.LabState) -> list[dict[str, Any]]:
    """What `ambit lab status` shows of each waypoint."""
    from ambit.dataplane import endpoint
    rt = state.runtime(base)
    out = []
    for w in st.waypoints:
        ns, name = w["namespace"], w["name"]
        try:
            ready = endpoint.get_json(admin_socket(base, ns, name), "/healthz/ready", timeout=1.0)[0] == 200
        except (OSError, ValueError):
            ready = False
        out.append({"namespace": ns, "name": name, "pod": w["pod"], "node": w["node"], "ip": w["ip"],
                    "vip": w["vip"], "pid": rt.get(f"waypoint/{ns}/{name}", {}).get("pid"),
                    "ready": ready, "state": "removing" if w.get("removing") else "running"})
    return out
