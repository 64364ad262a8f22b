"""Build and tear down the lab's kernel objects: netns, veths, bridges, routes, cgroups.

Everything the lab creates is named from one prefix (the lab name and a dot), so teardown works by
*enumerating what exists with that prefix* rather than trusting a state file. That is what makes
`lab down` safe after a crash, a Ctrl-C during `up`, or a SIGKILLed agent.

Layout (default name "ambit", 2 nodes):

    ambit.ul      underlay netns, bridge br-ul (L2 only)
    ambit.node1   ul0 10.200.0.1/24 on the underlay; br0 10.210.1.1/24 for its pods; ip_forward
    ambit.demo.client   eth0 10.210.1.11/24, default via 10.210.1.1; veth peer on node1's br0
    ambit.dns     dns0 10.200.0.251/24 on the underlay: the cluster DNS (ambitctl/lab/dns.py)
    cgroups       <cg2>/ambit-lab/{supervisor,system,node1/{agent,ztunnel,pods/<ns>.<pod>}}
    services      VIPs in 10.96.0.0/24, DNAT'ed in every node netns (the lab's kube-proxy)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ambit import cgroups
from ambit.netns import NETNS_RUN_DIR
from ambitctl.lab import garp
from ambitctl.lab.spec import LabSpec, PodSpec, resolve_target_port

ETC_NETNS = Path("/etc/netns")
BPF_PIN_ROOT = Path("/sys/fs/bpf/ambit")


class TopologyError(RuntimeError):
    pass


# A lab's name prefixes every netns ("NAME.node1", "NAME.demo.echo-v1"), its cgroup ("NAME-lab") and
# its BPF pins ("/sys/fs/bpf/ambit/NAME"); teardown removes what starts with "NAME.". A dot in the
# name made `lab down --name a` remove lab "a.b"'s netns too, and a "/" reached outside the cgroup
# and pin directories; a long one failed only at the first pod's `ip netns add`.
LAB_NAME_MAX = 40
_LAB_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def check_lab_name(name: str) -> None:
    """Refuse a lab name that cannot prefix the lab's netns, cgroup and pin names unambiguously."""
    if not _LAB_NAME.fullmatch(name or ""):
        raise TopologyError(f"lab name {name!r}: use lower-case letters, digits and '-', starting and ending "
                            "with a letter or digit (it prefixes every netns, cgroup and BPF pin of the lab)")
    if len(name) > LAB_NAME_MAX:
        raise TopologyError(f"lab name {name[:20]}...: {len(name)} characters, at most {LAB_NAME_MAX} (its pods' "
                            "netns names, NAME.NAMESPACE.POD, must stay within the kernel's 255)")


@dataclass(frozen=True)
class LabNames:
    """Every kernel-visible name of one lab, derived from its name."""

    name: str = "ambit"

    @property
    def underlay(self) -> str:
        return f"{self.name}.ul"

    def node_netns(self, node: str) -> str:
        return f"{self.name}.{node}"

    def pod_netns(self, namespace: str, pod: str) -> str:
        return f"{self.name}.{namespace}.{pod}"

    @property
    def cgroup_root(self) -> Path:
        return cgroups.find_cgroup2_mount() / f"{self.name}-lab"

    def node_cgroup(self, node: str) -> Path:
        return self.cgroup_root / node

    def pod_cgroup(self, node: str, namespace: str, pod: str) -> Path:
        return self.cgroup_root / node / "pods" / f"{namespace}.{pod}"

    def component_cgroup(self, node: str | None, component: str) -> Path:
        return self.cgroup_root / (node or "system") / component

    @property
    def bpf_pin_base(self) -> Path:
        return BPF_PIN_ROOT / self.name

    def owns_netns(self, ns: str) -> bool:
        return ns.startswith(f"{self.name}.")


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; failures raise with the command and its stderr, which is what a user needs."""
    p = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise TopologyError(f"{' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def ipn(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "-n", ns, *args, check=check)


def in_netns(ns: str, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check, input=input)


def sysctls(ns: str, values: dict[str, str]) -> None:
    in_netns(ns, "sysctl", "-q", "-w", *[f"{k}={v}" for k, v in values.items()])


# Load tests exhaust the default ephemeral range (feasibility §1), so the lab widens it over all of
# ztunnel's ports, and reserves them so that the kernel never hands one out as an ephemeral port.
# 15053 (the DNS proxy's) too: ztunnel's UDP socket there has SO_REUSEPORT, so a client socket with
# SO_REUSEPORT of the same uid (dig, as root in the lab) could be given 15053 beside it; its query,
# redirected to 127.0.0.1:15053, then went to itself, and dig read its own query as the answer.
RESERVED_PORTS = "15000-15021,15053"
POD_SYSCTLS = {
    "net.ipv4.tcp_tw_reuse": "1",
    "net.ipv4.ip_local_port_range": "1024 65000",
    "net.ipv4.ip_local_reserved_ports": RESERVED_PORTS,
    "net.ipv4.ping_group_range": "0 2147483647",
}


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def bridge_mac(netns: str, bridge: str) -> str:
    """A fixed, locally administered MAC for a lab bridge, derived from its netns and name."""
    h = hashlib.sha1(f"{netns}/{bridge}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


def add_bridge(netns: str, bridge: str) -> None:
    """A bridge whose MAC is set, never inherited.

    Why: a Linux bridge without an assigned address takes the lowest MAC among its ports and
    recomputes it whenever a port joins or leaves. A node's br0 is the pods' gateway, so a pod
    started or removed beside another (the CNI tests start and remove pods two at a time) could
    change the gateway's MAC under a pod that had just resolved it: that pod's frames then went to
    an address no port owns, were flooded and dropped, and its new connection stalled until the
    neighbour entry expired. An assigned address (NET_ADDR_SET) is kept for the bridge's life,
    as CNI's bridge plugin and Docker do."""
    ipn(netns, "link", "add", bridge, "type", "bridge")
    ipn(netns, "link", "set", bridge, "address", bridge_mac(netns, bridge))
    ipn(netns, "link", "set", bridge, "up")


def build(spec: LabSpec, names: LabNames) -> None:
    """Create every netns, link, address, route and cgroup of the lab. Raises on any failure;
    the caller tears down (the teardown is by name, so a half-built lab is removed as well)."""
    ul = names.underlay
    sh("ip", "netns", "add", ul)
    ipn(ul, "link", "set", "lo", "up")
    add_bridge(ul, "br-ul")
    prefix = spec.underlay_cidr.split("/")[1]
    cg_root = names.cgroup_root
    cgroups.create(cg_root)
    _enable_controllers(cg_root)
    for comp in ("supervisor", "system"):
        cgroups.create(cg_root / comp)

    for node in spec.nodes:
        nns = names.node_netns(node.name)
        sh("ip", "netns", "add", nns)
        ipn(nns, "link", "set", "lo", "up")
        ipn(nns, "link", "add", "ul0", "type", "veth", "peer", "name", f"ul-{node.name}", "netns", ul)
        ipn(ul, "link", "set", f"ul-{node.name}", "master", "br-ul")
        ipn(ul, "link", "set", f"ul-{node.name}", "up")
        ipn(nns, "addr", "add", f"{node.underlay_ip}/{prefix}", "dev", "ul0")
        ipn(nns, "link", "set", "ul0", "up")
        add_bridge(nns, "br0")
        ipn(nns, "addr", "add", f"{node.gateway_ip}/24", "dev", "br0")
        sysctls(nns, {"net.ipv4.ip_forward": "1", **POD_SYSCTLS})
        for other in spec.nodes:
            if other.name != node.name:
                ipn(nns, "route", "add", other.pod_cidr, "via", other.underlay_ip)
        for comp in ("agent", "ztunnel", "pods"):
            cgroups.create(names.node_cgroup(node.name) / comp)

    for i, pod in enumerate(spec.pods):
        add_pod(spec, names, pod, i)
    install_service_rules(spec, names)


def add_underlay_host(names: LabNames, ns: str, ifname: str, peer: str, address: str,
                      routes: list[tuple[str, str]]) -> None:
    """A netns that is a host on the underlay (the outside, the cluster DNS): `ifname` with
    `address` (CIDR form) on the underlay bridge through `peer`, and `routes` (destination, via),
    the nodes' pod CIDRs through their underlay addresses. A failure removes the netns."""
    try:
        sh("ip", "netns", "add", ns)
        ipn(ns, "link", "set", "lo", "up")
        ipn(ns, "link", "add", ifname, "type", "veth", "peer", "name", peer, "netns", names.underlay)
        ipn(names.underlay, "link", "set", peer, "master", "br-ul")
        ipn(names.underlay, "link", "set", peer, "up")
        ipn(ns, "addr", "add", address, "dev", ifname)
        ipn(ns, "link", "set", ifname, "up")
        for dst, via in routes:
            ipn(ns, "route", "add", dst, "via", via)
    except Exception:
        sh("ip", "netns", "del", ns, check=False)
        raise


def add_pod(spec: LabSpec, names: LabNames, pod: PodSpec, index: int) -> None:
    node = spec.node(pod.node)
    nns, pns = names.node_netns(node.name), names.pod_netns(pod.namespace, pod.name)
    sh("ip", "netns", "add", pns)
    pod_network(nns, pns, f"vp{index}", pod.ip, node.gateway_ip)
    cgroups.create(names.pod_cgroup(node.name, pod.namespace, pod.name))
    write_hosts(spec, names, pod)


def pod_network(nns: str, pns: str, host_if: str, ip: str, gateway: str) -> None:
    """A pod's eth0: a veth to its node's bridge, its address and default route (the lab's network;
    ambitctl/lab/runtime.py runs it as the first plugin of a node's CNI chain)."""
    ipn(nns, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", pns)
    ipn(nns, "link", "set", host_if, "master", "br0")
    ipn(nns, "link", "set", host_if, "up")
    ipn(pns, "link", "set", "lo", "up")
    ipn(pns, "addr", "add", f"{ip}/24", "dev", "eth0")
    ipn(pns, "link", "set", "eth0", "up")
    ipn(pns, "route", "add", "default", "via", gateway)
    sysctls(pns, POD_SYSCTLS)
    garp.announce(pns, "eth0", ip)      # its old address's neighbours learn the new MAC (garp.py)


def write_hosts(spec: LabSpec, names: LabNames, pod: PodSpec) -> None:
    """`ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts, and resolv.conf over
    /etc/resolv.conf. As the kubelet's, the hosts file names only the pod itself: Service names
    come from the cluster DNS (ambitctl/lab/dns.py), so a pod's lookups leave the pod as queries."""
    from ambitctl.lab import dns
    d = ETC_NETNS / names.pod_netns(pod.namespace, pod.name)
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts").write_text(f"127.0.0.1 localhost\n{pod.ip} {pod.name}\n")
    dns.write_resolv(spec, names, pod)


def install_service_rules(spec: LabSpec, names: LabNames) -> None:
    """The lab's kube-proxy: DNAT service VIPs to endpoints in every node netns.

    This stands in for the cluster's kube-proxy, which a mesh does not replace: non-mesh clients
    reach services through it. Enrolled pods never put a VIP on the wire (connect4 rewrites to
    ztunnel first), so these rules only ever see non-mesh traffic and ztunnel passthrough.
    """
    lines = ["*nat", ":AMBIT-LAB-SVC - [0:0]",
             "-A PREROUTING -j AMBIT-LAB-SVC", "-A OUTPUT -j AMBIT-LAB-SVC"]
    for svc in spec.services:
        eps = spec.endpoints(svc)
        for sp in svc.ports:
            targets = [(p.ip, resolve_target_port(sp, p)) for p in eps]
            targets = [(ip, port) for ip, port in targets if port]
            for k, (ip, port) in enumerate(targets):
                left = len(targets) - k
                stat = f"-m statistic --mode random --probability {1 / left:.6f} " if left > 1 else ""
                lines.append(f"-A AMBIT-LAB-SVC -d {svc.vip}/32 -p tcp --dport {sp.port} {stat}"
                             f"-j DNAT --to-destination {ip}:{port}")
    lines.append("COMMIT")
    for node in spec.nodes:
        in_netns(names.node_netns(node.name), "iptables-restore", "--noflush", input="\n".join(lines) + "\n")


def _enable_controllers(cg: Path) -> None:
    # Not required for BPF; memory/pids let the supervisor report usage. Best effort.
    try:
        avail = (cg.parent / "cgroup.subtree_control").read_text().split()
        for c in ("memory", "pids", "cpu"):
            if c in avail:
                (cg / "cgroup.subtree_control").write_text(f"+{c}\n")
    except OSError:
        pass


def teardown(names: LabNames) -> list[str]:
    """Remove everything of this lab that exists, in dependency order. Returns what it removed."""
    removed: list[str] = []
    cg_root = names.cgroup_root
    # 1. processes: everything the lab ran lives in its cgroup tree.
    if cg_root.exists():
        cgroups.kill_all(cg_root)
    # 2. BPF pins: unpinning drops the last reference to links and programs (even if the agent was
    #    SIGKILLed), which detaches them from cgroups and netdevs.
    pin_base = names.bpf_pin_base
    if pin_base.exists():
        try:
            from agent.capture import purge  # the agent's own purge knows its layout
            for node_dir in sorted(pin_base.iterdir()):
                purge(node_dir)
        except ImportError:
            pass
        shutil.rmtree(pin_base, ignore_errors=True)
        removed.append(str(pin_base))
        try:
            BPF_PIN_ROOT.rmdir()
        except OSError:
            pass
    # 3. netns (pods first, then nodes, then the underlay). Deleting a netns destroys its veths,
    #    qdiscs, TC programs and iptables rules with it.
    for ns in list_netns():
        if names.owns_netns(ns) and ns != names.underlay:
            sh("ip", "netns", "del", ns, check=False)
            removed.append(f"netns {ns}")
    if names.underlay in list_netns():
        sh("ip", "netns", "del", names.underlay, check=False)
        removed.append(f"netns {names.underlay}")
    # 4. /etc/netns entries (hosts and resolv.conf files).
    if ETC_NETNS.exists():
        for d in ETC_NETNS.iterdir():
            if names.owns_netns(d.name):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
    # 5. cgroups, deepest first.
    if cg_root.exists():
        cgroups.kill_all(cg_root)
        cgroups.remove_tree(cg_root)
        removed.append(str(cg_root))
    return removed
