"""The lab's container runtime, for pods started while the lab runs: it creates each sandbox the way
containerd or CRI-O do, and runs the node's CNI chain exactly as they would.

1. The pod object goes into the store first, Pending and without an IP (the kubelet only creates
   sandboxes for pods the API server has).
2. The sandbox: a network namespace and the pod's cgroup.
3. The node's CNI chain, from the first file of the node's CNI configuration directory (where the
   node agent chained `ambit-cni`): each plugin runs with CNI_COMMAND/CNI_CONTAINERID/CNI_NETNS/
   CNI_IFNAME/CNI_ARGS (K8S_POD_*)/CNI_PATH set and its configuration, with the previous result
   as `prevResult`, on stdin. The first plugin, `ambit-lab-veth`, is the lab's network (a veth to
   the node's bridge, the address the lab picked); the runtime runs it in-process, as it is the
   lab's stand-in for the cluster's network plugin. Every other plugin is an executable found in
   CNI_PATH. A failing plugin fails the sandbox: DEL runs for the chain and the sandbox is removed.
4. The app starts, and the pod is reported Running with its IP (the kubelet's status update
   follows the container start): the watch path can only act after that, the plugin before it.

Removing a pod reverses this: the pod leaves the store, DEL runs for the chain in reverse order,
the sandbox goes. `lab down` removes any sandbox left, by name, like every other lab netns.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ambit import cgroups
from ambit.labstore import LabStore
from ambit.netns import preexec_enter
from ambitctl.lab import paths
from ambitctl.lab.topology import NETNS_RUN_DIR, LabNames, pod_network, sh

LAB_NET_TYPE = "ambit-lab-veth"
CNI_VERSION = "1.0.0"
IFNAME = "eth0"


def cni_conf_dir(base: Path, node: str) -> Path:
    return base / node / "cni" / "net.d"


def cni_bin_dir(base: Path, node: str) -> Path:
    return base / node / "cni" / "bin"


def cni_socket(base: Path, node: str) -> Path:
    return base / node / "cni.sock"


def write_network_config(base: Path, node: str) -> Path:
    """The node's network configuration before any mesh component runs (the cluster's network
    plugin writes its own the same way); the node agent chains ambit-cni into it."""
    d = cni_conf_dir(base, node)
    d.mkdir(parents=True, exist_ok=True)
    f = d / "10-ambit-lab.conflist"
    f.write_text(json.dumps({"cniVersion": CNI_VERSION, "name": "ambit-lab", "plugins": [{"type": LAB_NET_TYPE}]},
                            indent=2) + "\n")
    return f


class CniFailed(RuntimeError):
    """A plugin of the chain failed; `error` is the spec's error object it printed."""

    def __init__(self, plugin: str, command: str, error: dict[str, Any]):
        super().__init__(f"CNI {command} {plugin}: code {error.get('code')}: {error.get('msg')}"
                         + (f" ({error['details']})" if error.get("details") else ""))
        self.error = error


@dataclass
class Pod:
    name: str
    namespace: str
    node: str
    ip: str
    service_account: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Runtime:
    def __init__(self, base: Path | None, lab_name: str, nodes: dict[str, dict[str, Any]]):
        """`nodes`: node name -> the lab spec's node (for its gateway and pod CIDR)."""
        self.base = base or paths.lab_dir()
        self.names = LabNames(lab_name)
        self.nodes = nodes
        self.store = LabStore(paths.store_path(self.base))

    @classmethod
    def for_lab(cls, base: Path | None = None) -> Runtime:
        """The runtime of the lab that is up (its state names the lab and its nodes)."""
        from ambitctl.lab import state
        base = base or paths.lab_dir()
        st = state.load(base)
        if st is None:
            raise RuntimeError(f"no lab is up (no state in {base})")
        return cls(base, st.name, {n["name"]: n for n in st.spec["nodes"]})

    def netns(self, pod: Pod) -> Path:
        return NETNS_RUN_DIR / self.names.pod_netns(pod.namespace, pod.name)

    def cgroup(self, pod: Pod) -> Path:
        return self.names.pod_cgroup(pod.node, pod.namespace, pod.name)

    def _object(self, pod: Pod, running: bool) -> dict[str, Any]:
        node = self.nodes[pod.node]
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid, "labels": dict(pod.labels),
                             "annotations": {"lab.ambit.io/netns": str(self.netns(pod)),
                                             "lab.ambit.io/cgroup": str(self.cgroup(pod))}},
                "spec": {"nodeName": pod.node, "serviceAccountName": pod.service_account,
                         "containers": [{"name": "app"}]},
                "status": ({"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
                            "hostIP": node["underlay_ip"]} if running else {"phase": "Pending"})}

    # -- the sandbox ---------------------------------------------------------------------------------
    def create(self, pod: Pod, cni: bool = True) -> None:
        """Steps 1-3 of the module docstring. `cni=False` skips the node's chain
        after the lab's network (the watch path alone, as before the plugin existed)."""
        self._refuse_taken_ip(pod)
        self.store.apply([self._object(pod, running=False)])
        sh("ip", "netns", "add", self.names.pod_netns(pod.namespace, pod.name))
        cgroups.create(self.cgroup(pod))
        try:
            self._chain("ADD", pod, only_lab_net=not cni)
        except BaseException:
            self._chain("DEL", pod, only_lab_net=not cni, check=False)
            self._remove_sandbox(pod)
            self.store.delete([("Pod", pod.namespace, pod.name)])
            raise

    def _refuse_taken_ip(self, pod: Pod) -> None:
        """A node's IPAM never hands out an address in use: a test that names a pod's IP itself
        must not take another pod's (a waypoint's, from .200 up). Two mesh workloads on one IP are
        an ambiguous identity, which ztunnel rejects with the whole config update, and the second
        veth's route takes the first pod's traffic."""
        for o in self.store.list("Pod"):
            meta, status = o.get("metadata") or {}, o.get("status") or {}
            if (meta.get("namespace"), meta.get("name")) == (pod.namespace, pod.name):
                continue
            ips = {p.get("ip") for p in status.get("podIPs") or []} | {status.get("podIP")}
            if pod.ip in ips:
                raise RuntimeError(f"pod {pod.key}: IP {pod.ip} is in use by pod "
                                   f"{meta.get('namespace')}/{meta.get('name')}")

    def start(self, pod: Pod, argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
        """The pod's app, in its cgroup and netns (as the runtime starts a container); then the pod
        is reported Running with its IP, as the kubelet reports status after the container started."""
        p = subprocess.Popen(argv, preexec_fn=preexec_enter(self.netns(pod), self.cgroup(pod)), **popen)
        self.store.apply([self._object(pod, running=True)])
        return p

    def remove(self, pod: Pod, cni: bool = True) -> None:
        self.store.delete([("Pod", pod.namespace, pod.name)])
        cgroups.kill_all(self.cgroup(pod))
        self._chain("DEL", pod, only_lab_net=not cni, check=False)
        self._remove_sandbox(pod)

    def _remove_sandbox(self, pod: Pod) -> None:
        sh("ip", "netns", "del", self.names.pod_netns(pod.namespace, pod.name), check=False)
        cgroups.remove_tree(self.cgroup(pod))

    # -- the CNI chain -------------------------------------------------------------------------------
    def _chain(self, command: str, pod: Pod, only_lab_net: bool, check: bool = True) -> dict[str, Any] | None:
        conf_dir = cni_conf_dir(self.base, pod.node)
        files = sorted(p for p in conf_dir.iterdir() if p.suffix in (".conflist", ".conf", ".json"))
        conflist = json.loads(files[0].read_text())
        plugins = conflist["plugins"]
        if only_lab_net:
            plugins = [p for p in plugins if p.get("type") == LAB_NET_TYPE]
        order = plugins if command == "ADD" else list(reversed(plugins))
        result: dict[str, Any] | None = self._lab_net_result(pod) if command != "ADD" else None
        for plugin in order:
            conf = {"cniVersion": conflist.get("cniVersion", CNI_VERSION), "name": conflist["name"], **plugin}
            if result is not None:
                conf["prevResult"] = result
            try:
                out = self._run_plugin(command, pod, conf)
            except CniFailed:
                if check:
                    raise
                continue
            if command == "ADD":
                result = out
        return result

    def _run_plugin(self, command: str, pod: Pod, conf: dict[str, Any]) -> dict[str, Any] | None:
        if conf["type"] == LAB_NET_TYPE:
            if command == "ADD":
                self._veth_up(pod)
            return self._lab_net_result(pod) if command == "ADD" else None
        bin_dir = cni_bin_dir(self.base, pod.node)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": pod.uid.replace("-", ""), "CNI_NETNS": str(self.netns(pod)),
               "CNI_IFNAME": IFNAME, "CNI_PATH": str(bin_dir),
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name};"
                           f"K8S_POD_INFRA_CONTAINER_ID={pod.uid.replace('-', '')};K8S_POD_UID={pod.uid}"}
        exe = bin_dir / conf["type"]
        p = subprocess.run([str(exe)], input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
        out = json.loads(p.stdout) if p.stdout.strip() else None
        if p.returncode != 0:
            raise CniFailed(conf["type"], command, out or {"code": p.returncode, "msg": p.stderr.decode()[-500:]})
        return out

    def _host_if(self, pod: Pod) -> str:
        return "vc" + hashlib.sha1(pod.key.encode()).hexdigest()[:10]

    def _veth_up(self, pod: Pod) -> None:
        pod_network(self.names.node_netns(pod.node), self.names.pod_netns(pod.namespace, pod.name),
                    self._host_if(pod), pod.ip, self.nodes[pod.node]["gateway_ip"])

    def _lab_net_result(self, pod: Pod) -> dict[str, Any]:
        """The result the lab's network returns, as a bridge plugin's (SPEC.md, "Success")."""
        node = self.nodes[pod.node]
        return {"cniVersion": CNI_VERSION,
                "interfaces": [{"name": "br0"}, {"name": self._host_if(pod)},
                               {"name": "eth0", "sandbox": str(self.netns(pod))}],
                "ips": [{"address": f"{pod.ip}/24", "gateway": node["gateway_ip"], "interface": 2}],
                "routes": [{"dst": "0.0.0.0/0", "gw": node["gateway_ip"]}]}
