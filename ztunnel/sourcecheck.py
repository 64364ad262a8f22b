"""Which source address an inbound connection may claim. Pure.

An address is worth something to policy (`ipBlocks`) and to the app (it sees it as its peer), so
it must be evidence, not a claim. Two ways to claim one, two rules:

* **Plaintext from a mesh workload's address.** A mesh (HBONE) workload's outbound traffic is
  captured and leaves over HBONE from its own address; plaintext carrying that source address is
  somebody else's packet (a pod that added the address, IP_TRANSPARENT, a legacy pod configured
  with it). It is refused outright (`plaintext_source`), so it can never be granted what the mesh
  workload would get. The one exception is a port or range the source pod itself excludes from
  capture (`ambit.io/exclude-outbound-ports` / `-ip-ranges`): that traffic really does arrive in
  plaintext. It is admitted as plaintext, but its address is marked unverified, so `ipBlocks`
  cannot prove an ALLOW (and a DENY that uses them still applies); see `ztunnel.authz`.
* **`Forwarded: for=` on an HBONE CONNECT.** Only a peer the mesh trusts to speak for others may
  set the source address: the waypoint of the destination (Istio's ztunnel trusts the same). Its
  pods are known from config: the workloads labelled `gateway.networking.k8s.io/gateway-name`
  with the waypoint's name in the waypoint's namespace, whose identity the peer must hold. From any
  other peer the header is ignored and the TLS peer's own address is used (a normal source
  ztunnel dials from inside the source pod, so that address is the pod's). Even a trusted
  forwarder may not claim loopback, unspecified, multicast or link-local addresses, the
  destination pod's own address (the app would see itself, and a transparent bind to it would
  loop), nor the node's address (ztunnel's own, which probes come from).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ambit.model import Workload
from ambit.waypointpods import GATEWAY_NAME_LABELS
from ztunnel.meshstate import MeshState

# The capture exclusions (agent/capture/exclusions.py parses them for the agent; only the two
# outbound ones matter here, and only to recognise traffic the source itself sends in plaintext).
ANN_OUT_PORTS = "ambit.io/exclude-outbound-ports"
ANN_OUT_CIDRS = "ambit.io/exclude-outbound-ip-ranges"


@dataclass(frozen=True, slots=True)
class PlaintextSource:
    refuse: str = ""           # non-empty: refuse the connection, with this reason
    verified: bool = True      # False: the address is a claim (see ztunnel.authz)
    note: str = ""             # why an exception applied, for the log


def _excluded_ports(value: str) -> set[int]:
    out: set[int] = set()
    for part in value.replace(";", ",").split(","):
        part = part.strip()
        if part.isdigit():
            out.add(int(part))
    return out


def _in_ranges(ip: str, value: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for part in value.split(","):
        try:
            net = ipaddress.ip_network(part.strip(), strict=False)
        except ValueError:
            continue
        if addr.version == net.version and addr in net:
            return True
    return False


def sends_plaintext_to(src: Workload, dst_ip: str, dst_port: int) -> bool:
    """Does `src` exclude `dst_ip:dst_port` from outbound capture (so it really sends plaintext)?"""
    ann = src.annotations or {}
    return (dst_port in _excluded_ports(ann.get(ANN_OUT_PORTS, ""))
            or _in_ranges(dst_ip, ann.get(ANN_OUT_CIDRS, "")))


def is_mesh_workload(wl: Workload | None) -> bool:
    return wl is not None and wl.protocol == "HBONE"


def plaintext_source(src_wl: Workload | None, src_ip: str, dst_ip: str, dst_port: int) -> PlaintextSource:
    """Decide what a plaintext connection from `src_ip` (the config's workload there: `src_wl`)
    to `dst_ip:dst_port` may claim; see the module docstring."""
    if not is_mesh_workload(src_wl):
        return PlaintextSource()
    assert src_wl is not None
    who = f"{src_wl.namespace}/{src_wl.name} ({src_wl.identity})"
    if sends_plaintext_to(src_wl, dst_ip, dst_port):
        return PlaintextSource(verified=False, note=f"{who} excludes {dst_ip}:{dst_port} from capture; "
                                                    "its address is not trusted for ipBlocks")
    return PlaintextSource(refuse=f"plaintext from {src_ip}, the address of mesh workload {who}: "
                                  "mesh workloads arrive over HBONE, so this source address is spoofed")


# --- Forwarded ---------------------------------------------------------------------------------------

def waypoint_identities(config: MeshState, dest: Workload) -> set[str]:
    """Identities of the pods of the waypoint(s) that front `dest` (its own, and its Services')."""
    waypoints = {dest.waypoint} if dest.waypoint else set()
    for svc_name in dest.services:
        svc = config.view.services.get(svc_name)
        if svc is not None and svc.waypoint:
            waypoints.add(svc.waypoint)
    if not waypoints:
        return set()
    return {w.identity for w in _gateway_pods(config.view.workloads.values(), waypoints)}


def _gateway_pods(workloads: Iterable[Workload], gateways: set[str]) -> Iterable[Workload]:
    for w in workloads:
        if w.protocol != "HBONE":
            continue
        for label in GATEWAY_NAME_LABELS:
            name = w.labels.get(label)
            if name and f"{w.namespace}/{name}" in gateways:
                yield w
                break


def bad_forwarded_address(ip: str, node_ip: str = "") -> str:
    """Why `ip` may not be claimed as a source address, or "" if it may. `node_ip` is the address
    ztunnel and the kubelet speak from (whose traffic is exempt from capture for probes): claiming
    it would borrow that exemption's standing. The destination's own address may be claimed (so
    it is not asked for): a pod that calls its own Service through the waypoint, which picked that
    same pod, is a hairpin whose source really is the destination (the waypoint took the address
    from the TLS peer it verified), as Istio's ztunnel accepts it."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped             # ::ffff:127.0.0.1 is loopback too
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_unspecified:
        return "the unspecified address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.is_link_local:
        return "a link-local address"
    if node_ip and ip == node_ip:
        return "the node's address (ztunnel's own)"
    return ""
