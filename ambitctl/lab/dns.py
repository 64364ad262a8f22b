"""The lab's cluster DNS: a real resolver standing in for kube-dns (CoreDNS).

    <lab>.dns   dns0 <underlay .251>/<prefix> on the underlay bridge; a route to each node's pod
                CIDR via that node's underlay address; Debian's dnsmasq listening on :53

It answers every Service's name, `NAME.NAMESPACE.svc.cluster.local`, with its VIP (from the lab
spec, the data the pods' hosts files were once made of) and NXDOMAIN for anything else, as a
cluster's DNS does for a name it does not hold (the lab has no internet to forward to). Each pod
gets `/etc/netns/<pod netns>/resolv.conf` as the kubelet writes it (the nameserver, the search
path of its namespace, `ndots:5`), which `ip netns exec` bind-mounts over /etc/resolv.conf, so
short names (`web`, `web.demo`) resolve through the search path as in a cluster.

Why a separate resolver and not the hosts file alone: a pod's DNS query must leave the pod, so
that the DNS proxy (ztunnel's, port 15053 in the pod netns, once capture redirects port 53) has
something to stand in front of, and the names it does not answer itself have a real upstream
(ztunnel's `--dns-upstream`) to be forwarded to.

dnsmasq runs as a lab process (supervised, restarted, in the lab's system cgroup), so `lab down`
kills it with every other process of the lab and removes its netns by the lab's name prefix; the
resolv.conf files go with the rest of /etc/netns/<pod netns>/.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ambit import cgroups
from ambitctl.lab import topology
from ambitctl.lab.spec import LabSpec, PodSpec
from ambitctl.lab.state import ProcSpec
from ambitctl.lab.topology import NETNS_RUN_DIR, LabNames

HOST = 251          # its address on the underlay: .251 (outside is .250, the external host .253/.254)
BINARY = "dnsmasq"
CLUSTER_DOMAIN = "cluster.local"


def netns(names: LabNames) -> str:
    return f"{names.name}.dns"


def address(underlay_cidr: str) -> str:
    """The lab's DNS server: a fixed address on the underlay, reachable from every pod and node."""
    net = ipaddress.ip_network(underlay_cidr, strict=False)
    return str(net.network_address + HOST)


def hosts_file(base: Path) -> Path:
    return base / "dns-hosts"


def records(spec: LabSpec) -> list[tuple[str, str]]:
    """(VIP, FQDN) of every Service with a VIP."""
    return [(s.vip, f"{s.name}.{s.namespace}.svc.{CLUSTER_DOMAIN}") for s in spec.services if s.vip]


def write_hosts(spec: LabSpec, base: Path) -> Path:
    path = hosts_file(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{ip} {name}\n" for ip, name in records(spec)))
    return path


def resolv_conf(spec: LabSpec, namespace: str) -> str:
    """A pod's resolv.conf, as the kubelet writes it for dnsPolicy ClusterFirst."""
    d = CLUSTER_DOMAIN
    return (f"nameserver {address(spec.underlay_cidr)}\n"
            f"search {namespace}.svc.{d} svc.{d} {d}\n"
            "options ndots:5\n")


def write_resolv(spec: LabSpec, names: LabNames, pod: PodSpec) -> None:
    d = topology.ETC_NETNS / names.pod_netns(pod.namespace, pod.name)
    d.mkdir(parents=True, exist_ok=True)
    (d / "resolv.conf").write_text(resolv_conf(spec, pod.namespace))


def build(spec: LabSpec, names: LabNames) -> None:
    """The DNS netns on the underlay, routed to every node's pods. Raises on failure; the caller
    tears the lab down (by name, which takes this netns too)."""
    prefix = spec.underlay_cidr.split("/")[1]
    topology.add_underlay_host(names, netns(names), "dns0", "ul-dns", f"{address(spec.underlay_cidr)}/{prefix}",
                               [(node.pod_cidr, node.underlay_ip) for node in spec.nodes])


def process(spec: LabSpec, names: LabNames, base: Path) -> ProcSpec:
    """dnsmasq in the DNS netns: the Services' names from `hosts_file`, NXDOMAIN for the rest
    (`--local=/#/`: every name is local, none is forwarded), no daemon and no pid file (the
    supervisor runs it), queries logged to its lab log (`ambit lab logs dns`)."""
    cg = cgroups.create(names.component_cgroup(None, "dns"))
    return ProcSpec(
        id="dns", component="dns", netns=str(NETNS_RUN_DIR / netns(names)), cgroup=str(cg),
        argv=[BINARY, "--no-daemon", "--no-resolv", "--no-hosts", f"--addn-hosts={write_hosts(spec, base)}",
              f"--listen-address={address(spec.underlay_cidr)}", "--bind-interfaces", "--port=53",
              "--local=/#/", "--pid-file", "--user=root", "--log-queries", "--log-facility=-"])


def remove(base: Path) -> None:
    hosts_file(base).unlink(missing_ok=True)
