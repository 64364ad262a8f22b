"""The lab spec: which namespaces, nodes, pods and services a lab has.

A spec is YAML that a user can write; `default_spec()` is the built-in demo topology. Parsing
produces plain dataclasses with addresses already allocated, so the topology builder and the store
loader never make allocation decisions of their own (and can't disagree about them).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class SpecError(ValueError):
    pass


@dataclass
class NodeSpec:
    name: str
    index: int
    underlay_ip: str
    pod_cidr: str
    gateway_ip: str          # the node's address on its pod bridge; what pods see as the node IP
    labels: dict[str, str] = field(default_factory=dict)    # `nodeLabels` (e.g. topology zones)


@dataclass
class PodSpec:
    name: str
    namespace: str
    node: str
    service_account: str
    labels: dict[str, str]
    annotations: dict[str, str]
    command: list[str]
    ports: list[dict[str, Any]]
    ip: str = ""
    # Kubernetes-style kubelet probes ("livenessProbe", "readinessProbe", "startupProbe" -> probe):
    # the lab has no kubelet to run them, but their ports are what the node-IP exemption allows.
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class ServicePortSpec:
    port: int
    target_port: int | str
    name: str = ""
    app_protocol: str = ""


@dataclass
class ServiceSpec:
    name: str
    namespace: str
    selector: dict[str, str]
    ports: list[ServicePortSpec]
    vip: str = ""

    @property
    def hostnames(self) -> list[str]:
        n, ns = self.name, self.namespace
        return [f"{n}.{ns}.svc.cluster.local", f"{n}.{ns}.svc", f"{n}.{ns}"]


@dataclass
class LabSpec:
    namespaces: dict[str, dict[str, str]]
    nodes: list[NodeSpec]
    pods: list[PodSpec]
    services: list[ServiceSpec]
    underlay_cidr: str = "10.200.0.0/24"
    service_cidr: str = "10.96.0.0/24"
    trust_domain: str = "cluster.local"
    extra: dict[str, Any] = field(default_factory=dict)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def pod(self, key: str) -> PodSpec:
        for p in self.pods:
            if p.key == key:
                return p
        raise KeyError(key)

    def endpoints(self, svc: ServiceSpec) -> list[PodSpec]:
        return [p for p in self.pods if p.namespace == svc.namespace
                and svc.selector and all(p.labels.get(k) == v for k, v in svc.selector.items())]


DEFAULT_SPEC_YAML = """
nodes: 2
namespaces:
  - name: demo
    labels: {ambit.io/dataplane-mode: ambient}
  - name: legacy
  # default/ runs the seed examples' `myapp` (../shared/examples/istio) for the demo's L7 steps
  - name: default
    labels: {ambit.io/dataplane-mode: ambient}
pods:
  - {name: echo-v1, namespace: demo, node: node1, serviceAccount: echo,
     labels: {app: echo, version: v1}, ports: [{name: http, containerPort: 8080}],
     command: [python, -m, ambitctl.lab.apps.echo, --port, "8080"]}
  - {name: echo-v2, namespace: demo, node: node2, serviceAccount: echo,
     labels: {app: echo, version: v2}, ports: [{name: http, containerPort: 8080}],
     command: [python, -m, ambitctl.lab.apps.echo, --port, "8080"]}
  - {name: client, namespace: demo, node: node1, serviceAccount: client,
     labels: {app: client}, command: [sleep, infinity]}
  - {name: iperf, namespace: demo, node: node2, serviceAccount: iperf,
     labels: {app: iperf}, ports: [{name: iperf, containerPort: 5201}],
     command: [iperf3, -s, -p, "5201"]}
  - {name: client, namespace: legacy, node: node2, serviceAccount: client,
     labels: {app: client}, command: [sleep, infinity]}
  - {name: myapp-v1, namespace: default, node: node1, serviceAccount: myapp, app: echo,
     labels: {app: myapp, version: v1}}
  - {name: myapp-v2, namespace: default, node: node2, serviceAccount: myapp, app: echo,
     labels: {app: myapp, version: v2}}
  - {name: frontend, namespace: default, node: node1, serviceAccount: frontend,
     labels: {app: frontend}, command: [sleep, infinity]}
services:
  - {name: echo, namespace: demo, selector: {app: echo}, ports: [{name: http, port: 8080, targetPort: http}]}
  - {name: iperf, namespace: demo, selector: {app: iperf}, ports: [{name: iperf, port: 5201, targetPort: 5201}]}
  - {name: myapp, namespace: default, selector: {app: myapp}, ports: [{name: http, port: 80, targetPort: http}]}
"""


def default_spec(nodes: int | None = None) -> LabSpec:
    return parse(yaml.safe_load(DEFAULT_SPEC_YAML), nodes=nodes, source="<default spec>")


def load(path: Path, nodes: int | None = None) -> LabSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse(data, nodes=nodes, source=str(path))


def _err(source: str, path: str, reason: str) -> SpecError:
    return SpecError(f"{source}: {path}: {reason}")


def _name(source: str, path: str, v: Any) -> str:
    if not isinstance(v, str) or not NAME_RE.match(v) or len(v) > 40:
        raise _err(source, path, f"must be a DNS label of at most 40 characters, got {v!r}")
    return v


def _str_map(source: str, path: str, v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise _err(source, path, f"must be a map of strings, got {type(v).__name__}")
    return {k: str(x) for k, x in v.items()}


def _probes(source: str, p: str, pd: dict[str, Any], ports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A pod's probes, Kubernetes-shaped: one handler each (httpGet, tcpSocket, grpc or exec), and a
    port that is a number or one of the pod's named ports."""
    from ambit.probes import PROBE_HANDLERS, PROBE_KINDS
    named = {str(port.get("name")) for port in ports if port.get("name")}
    out: dict[str, dict[str, Any]] = {}
    for kind in PROBE_KINDS:
        probe = pd.get(kind)
        if probe is None:
            continue
        handlers = [h for h in (*PROBE_HANDLERS, "exec") if isinstance(probe, dict) and h in probe]
        if len(handlers) != 1:
            raise _err(source, f"{p}.{kind}", "must be a map with exactly one of httpGet, tcpSocket, grpc, exec")
        h = handlers[0]
        if h != "exec":
            port = (probe[h] or {}).get("port") if isinstance(probe[h], dict) else None
            ok = (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535) or port in named
            if not ok:
                raise _err(source, f"{p}.{kind}.{h}.port", f"must be a port number or a named port of the pod, got {port!r}")
        out[kind] = probe
    return out


def parse(data: Any, nodes: int | None = None, source: str = "<spec>") -> LabSpec:
    """Validate a spec document and allocate every address in it."""
    if not isinstance(data, dict):
        raise _err(source, "(root)", "a lab spec must be a map")
    known = {"nodes", "nodeLabels", "namespaces", "pods", "services", "underlayCIDR", "serviceCIDR", "trustDomain"}
    for k in data:
        if k not in known:
            raise _err(source, k, f"unknown field (known: {', '.join(sorted(known))})")
    n_nodes = nodes if nodes is not None else data.get("nodes", 2)
    if not isinstance(n_nodes, int) or not 1 <= n_nodes <= 16:
        raise _err(source, "nodes", f"must be an integer 1..16, got {n_nodes!r}")
    underlay = ipaddress.ip_network(data.get("underlayCIDR", "10.200.0.0/24"))
    svc_net = ipaddress.ip_network(data.get("serviceCIDR", "10.96.0.0/24"))

    node_specs = []
    for i in range(1, n_nodes + 1):
        node_specs.append(NodeSpec(
            name=f"node{i}", index=i, underlay_ip=str(underlay.network_address + i),
            pod_cidr=f"10.210.{i}.0/24", gateway_ip=f"10.210.{i}.1"))
    node_names = {n.name for n in node_specs}
    node_labels = data.get("nodeLabels") or {}
    if not isinstance(node_labels, dict):
        raise _err(source, "nodeLabels", "must be a map of node name to labels")
    for name, labels in node_labels.items():
        if name not in node_names:
            raise _err(source, f"nodeLabels.{name}", f"no such node {name!r} (have {sorted(node_names)})")
        next(n for n in node_specs if n.name == name).labels = _str_map(source, f"nodeLabels.{name}", labels)

    namespaces: dict[str, dict[str, str]] = {}
    for i, ns in enumerate(data.get("namespaces") or []):
        p = f"namespaces[{i}]"
        if not isinstance(ns, dict):
            raise _err(source, p, "must be a map with name and labels")
        namespaces[_name(source, p + ".name", ns.get("name"))] = _str_map(source, p + ".labels", ns.get("labels"))

    pods: list[PodSpec] = []
    seen: set[str] = set()
    next_host = {n.name: 10 for n in node_specs}
    for i, pd in enumerate(data.get("pods") or []):
        p = f"pods[{i}]"
        if not isinstance(pd, dict):
            raise _err(source, p, "must be a map")
        name = _name(source, p + ".name", pd.get("name"))
        ns = _name(source, p + ".namespace", pd.get("namespace", "default"))
        namespaces.setdefault(ns, {})
        node = pd.get("node", "node1")
        if isinstance(node, int):
            node = f"node{node}"
        if node not in node_names:
            # Pods on nodes that a smaller --nodes count removed fold onto the last node.
            if nodes is not None and isinstance(node, str) and node.startswith("node"):
                node = node_specs[-1].name
            else:
                raise _err(source, p + ".node", f"no such node {node!r} (have {sorted(node_names)})")
        cmd = pd.get("command")
        app = pd.get("app")
        default_ports: list[dict[str, Any]] = []
        if app is not None:
            # `app: httpbin` names one of the lab's sample apps (ambitctl/lab/apps) instead of a command.
            from ambitctl.lab.apps import APPS
            if cmd is not None:
                raise _err(source, p + ".app", "give either app or command, not both")
            if app not in APPS:
                raise _err(source, p + ".app", f"unknown app {app!r} (known: {', '.join(sorted(APPS))})")
            cmd, default_ports = list(APPS[app][0]), [dict(x) for x in APPS[app][1]]
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, (str, int)) for c in cmd):
            raise _err(source, p + ".command", "must be a non-empty list of strings")
        # "python" as the program, or "{python}" anywhere (e.g. in `sh -c` strings), is Ambit's
        # own interpreter, so pods can run the lab's apps without a system-wide install.
        command = [str(c).replace("{python}", sys.executable) for c in cmd]
        if command[0] in ("python", "python3"):
            command[0] = sys.executable
        ports = pd.get("ports") or default_ports
        if not isinstance(ports, list):
            raise _err(source, p + ".ports", "must be a list")
        for j, port in enumerate(ports):
            cp = port.get("containerPort") if isinstance(port, dict) else None
            if not isinstance(cp, int) or not 1 <= cp <= 65535:
                raise _err(source, f"{p}.ports[{j}].containerPort", f"must be a port number, got {cp!r}")
        probes = _probes(source, p, pd, ports)
        key = f"{ns}/{name}"
        if key in seen:
            raise _err(source, p, f"duplicate pod {key}")
        seen.add(key)
        host = next_host[node]
        next_host[node] += 1
        idx = int(node.removeprefix("node"))
        pods.append(PodSpec(
            name=name, namespace=ns, node=node,
            service_account=_name(source, p + ".serviceAccount", pd.get("serviceAccount", "default")),
            labels=_str_map(source, p + ".labels", pd.get("labels")),
            annotations=_str_map(source, p + ".annotations", pd.get("annotations")),
            command=command, ports=ports, ip=f"10.210.{idx}.{host}", probes=probes))

    services: list[ServiceSpec] = []
    for i, sv in enumerate(data.get("services") or []):
        p = f"services[{i}]"
        if not isinstance(sv, dict):
            raise _err(source, p, "must be a map")
        sports = []
        for j, sp in enumerate(sv.get("ports") or []):
            pp = f"{p}.ports[{j}]"
            if not isinstance(sp, dict) or not isinstance(sp.get("port"), int) or not 1 <= sp["port"] <= 65535:
                raise _err(source, pp + ".port", "must be a port number")
            tp = sp.get("targetPort", sp["port"])
            if not isinstance(tp, (int, str)):
                raise _err(source, pp + ".targetPort", "must be a port number or a port name")
            sports.append(ServicePortSpec(port=sp["port"], target_port=tp, name=str(sp.get("name", "")),
                                          app_protocol=str(sp.get("appProtocol", ""))))
        if not sports:
            raise _err(source, p + ".ports", "a service needs at least one port")
        services.append(ServiceSpec(
            name=_name(source, p + ".name", sv.get("name")),
            namespace=_name(source, p + ".namespace", sv.get("namespace", "default")),
            selector=_str_map(source, p + ".selector", sv.get("selector")),
            ports=sports, vip=str(svc_net.network_address + 10 + i)))
        namespaces.setdefault(services[-1].namespace, {})

    return LabSpec(namespaces=namespaces, nodes=node_specs, pods=pods, services=services,
                   underlay_cidr=str(underlay), service_cidr=str(svc_net),
                   trust_domain=str(data.get("trustDomain", "cluster.local")))


def resolve_target_port(svc_port: ServicePortSpec, pod: PodSpec) -> int | None:
    """A named targetPort resolves against the pod's container ports, as kube-proxy does."""
    if isinstance(svc_port.target_port, int):
        return svc_port.target_port
    for p in pod.ports:
        if p.get("name") == svc_port.target_port:
            return int(p["containerPort"])
    if str(svc_port.target_port).isdigit():
        return int(svc_port.target_port)
    return None
