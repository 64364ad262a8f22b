"""The iptables capture mode: the way Istio's in-pod mode captures, kept as Ambit's comparison baseline.

In the pod netns (nat table):

    OUTPUT     -p tcp -j AMBIT_OUTPUT
    OUTPUT     -p udp --dport 53 -j AMBIT_OUTPUT
    AMBIT_OUTPUT      RETURN for ztunnel's sockets (their cgroups; or the delivery mark), loopback,
                      the pod's own IP, excluded ports and ranges; with DNS capture on, port 53
                      (UDP and TCP) REDIRECT --to-ports 15053 (ztunnel's DNS proxy); else TCP
                      REDIRECT --to-ports 15001
    PREROUTING -p tcp -j AMBIT_PREROUTING
    AMBIT_PREROUTING  RETURN for lo, the node IP (kubelet probes), ztunnel's ports (15008 ...)
                      and excluded inbound ports; else REDIRECT --to-ports 15006. Empty for a pod
                      in ingress mode (ambient.istio.io/bypass-inbound-capture), as Istio leaves
                      out its inbound REDIRECT: plaintext goes to the app, HBONE to ztunnel's
                      15008 listener, which needs no rule

ztunnel then finds the original destination with getsockopt(SOL_IP, SO_ORIGINAL_DST), answered by
conntrack: the same call the eBPF mode answers with ambit_origdst; conntrack also gives a
redirected DNS reply its original resolver as source. Only chains named AMBIT_* and
the two jumps into them are ours, so removal is exact. `rules()` is pure; `apply`/`remove` run
iptables-restore / iptables inside the pod netns with nsenter.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.capture.constants import (
    AMBIT_MARK,
    AMBIT_MARK_MASK,
    PORT_DNS,
    PORT_INBOUND,
    PORT_OUTBOUND,
    ZTUNNEL_PORTS,
)

CHAIN_OUT = "AMBIT_OUTPUT"
CHAIN_IN = "AMBIT_PREROUTING"
DNS_QUERY_PORT = 53
# (parent chain, match, our chain): the jumps into our chains. The UDP jump is there whether or not
# the pod's DNS capture is on (the chain decides), so a change of the flag is one chain rewrite.
JUMPS = (("OUTPUT", ("-p", "tcp"), CHAIN_OUT), ("PREROUTING", ("-p", "tcp"), CHAIN_IN),
         ("OUTPUT", ("-p", "udp", "--dport", str(DNS_QUERY_PORT)), CHAIN_OUT))


@dataclass(frozen=True)
class IptablesPlan:
    pod_ip: str
    node_ip: str
    # Every ztunnel of the node (two during a surge roll): paths relative to the cgroup2 root,
    # for `-m cgroup --path`.
    ztunnel_cgroups: tuple[str, ...]
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()
    exclude_inbound_ports: tuple[int, ...] = ()
    probe_ports: tuple[int, ...] = ()   # node-IP packets pass uncaptured only to these
    dns_capture: bool = False           # port 53 (UDP, TCP) to ztunnel's DNS proxy on 15053
    bypass_inbound: bool = False        # ingress mode: no inbound REDIRECT at all


def rules(plan: IptablesPlan) -> str:
    """iptables-restore input (nat table) that (re)defines both AMBIT_ chains.

    Declaring a chain in `--noflush` mode flushes it first, so applying this again replaces the
    old rules in one transaction: enrol refreshes never leave a window without capture.
    """
    mark = f"{AMBIT_MARK:#x}/{AMBIT_MARK_MASK:#x}"
    out = [
        "*nat",
        f":{CHAIN_OUT} - [0:0]",
        f":{CHAIN_IN} - [0:0]",
        f"-A {CHAIN_OUT} -m mark --mark {mark} -j RETURN",
    ]
    for cg in plan.ztunnel_cgroups:
        out.append(f"-A {CHAIN_OUT} -m cgroup --path {cg} -j RETURN")
    out += [
        f"-A {CHAIN_OUT} -d 127.0.0.0/8 -j RETURN",
        f"-A {CHAIN_OUT} -d {plan.pod_ip}/32 -j RETURN",
    ]
    out += [f"-A {CHAIN_OUT} -p {proto} --dport {p} -j RETURN" for p in plan.exclude_outbound_ports
            for proto in (("tcp", "udp") if p == DNS_QUERY_PORT else ("tcp",))]
    out += [f"-A {CHAIN_OUT} -d {c} -j RETURN" for c in plan.exclude_outbound_cidrs]
    if plan.dns_capture:    # Istio's rules, after the same exemptions as TCP (lo: 127/8, own IP)
        out += [f"-A {CHAIN_OUT} -p {proto} --dport {DNS_QUERY_PORT} -j REDIRECT --to-ports {PORT_DNS}"
                for proto in ("udp", "tcp")]
    out.append(f"-A {CHAIN_OUT} -p tcp -j REDIRECT --to-ports {PORT_OUTBOUND}")
    if not plan.bypass_inbound:     # ingress mode: the chain stays, empty, so a flip is one rewrite
        out += _inbound_rules(plan)
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def _inbound_rules(plan: IptablesPlan) -> list[str]:
    """AMBIT_PREROUTING: plaintext TCP to the pod IP goes to ztunnel's 15006, but for loopback,
    probes from the node IP, ztunnel's own ports and excluded ports."""
    out = [f"-A {CHAIN_IN} -i lo -j RETURN"]
    # The baseline has no host-side guard (ambit_tc_host is eBPF), so a spoofed node IP is not
    # told apart here; the exemption is at least limited to the probe ports.
    out += [f"-A {CHAIN_IN} -s {plan.node_ip}/32 -p tcp --dport {p} -j RETURN" for p in plan.probe_ports]
    out += [f"-A {CHAIN_IN} -p tcp --dport {p} -j RETURN" for p in ZTUNNEL_PORTS]
    out += [f"-A {CHAIN_IN} -p tcp --dport {p} -j RETURN" for p in plan.exclude_inbound_ports]
    out.append(f"-A {CHAIN_IN} -p tcp -d {plan.pod_ip}/32 -j REDIRECT --to-ports {PORT_INBOUND}")
    return out


def _run(netns_path: str | Path, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={netns_path}", *argv], input=stdin, capture_output=True, text=True)


def apply(netns_path: str | Path, plan: IptablesPlan) -> None:
    r = _run(netns_path, ["iptables-restore", "--noflush", "-w"], rules(plan))
    if r.returncode != 0:
        raise RuntimeError(f"iptables-restore in {netns_path} failed: {r.stderr.strip()}")
    for parent, match, chain in JUMPS:
        jump = [parent, *match, "-j", chain]
        if _run(netns_path, ["iptables", "-w", "-t", "nat", "-C", *jump]).returncode != 0:
            r = _run(netns_path, ["iptables", "-w", "-t", "nat", "-A", *jump])
            if r.returncode != 0:
                raise RuntimeError(f"iptables -A {parent} -j {chain} in {netns_path} failed: {r.stderr.strip()}")


def remove(netns_path: str | Path) -> None:
    """Remove our jumps and chains; absent ones are fine (idempotent)."""
    for parent, match, chain in JUMPS:
        for _ in range(16):   # duplicates, if something ever added the jump twice
            if _run(netns_path, ["iptables", "-w", "-t", "nat", "-D", parent, *match, "-j", chain]).returncode:
                break
    for chain in (CHAIN_OUT, CHAIN_IN):
        _run(netns_path, ["iptables", "-w", "-t", "nat", "-F", chain])
        _run(netns_path, ["iptables", "-w", "-t", "nat", "-X", chain])


def present(netns_path: str | Path) -> bool:
    """Whether any AMBIT_ chain exists in the pod's nat table."""
    r = _run(netns_path, ["iptables-save", "-t", "nat"])
    return any(line.startswith(f":{c} ") for c in (CHAIN_OUT, CHAIN_IN) for line in r.stdout.splitlines())
