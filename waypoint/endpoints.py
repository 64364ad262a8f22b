"""Which endpoint a forwarded request (or an opaque tunnel) goes to: sans-IO.

`Forward(service, port, subset)` names a Service port and maybe a DestinationRule subset; this
module turns it into one concrete endpoint: the Service's READY endpoints whose workload carries
every label of the subset, picked round robin per (service, port, subset), as the issue asks
("round robin over ready endpoints"; other load balancers come with issue 12). The endpoint's
port is the Service port's targetPort as that endpoint resolves it (named targetPorts may differ
per pod). The upstream protocol is `h2` for Service ports declared HTTP2 or GRPC (appProtocol or
name prefix), else `http1`.

A request addressed to a workload (no Service) goes on to that workload itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ambit.model import Endpoint, Service, ServicePort, Workload, target_port

H2_PROTOCOLS = ("HTTP2", "GRPC")


@dataclass(frozen=True, slots=True)
class Pick:
    """One upstream: reach `ip:port` through the HBONE peer holding `identity` (its ztunnel)."""

    ip: str
    port: int
    identity: str
    protocol: str = "http1"        # http1 | h2
    workload: str = ""             # "ns/name", for logs
    mesh: bool = True              # False: the workload is not in the mesh (no HBONE)
    # A ServiceEntry endpoint outside the mesh (MESH_EXTERNAL and not a pod its workloadSelector
    # selects, or not a mesh pod): the waypoint dials it itself over TCP (TLS when a DestinationRule
    # originates it); `ip` may be a DNS name.
    plain: bool = False
    # A ServiceEntry endpoint's own `locality` (Istio's WorkloadEntry field), for locality balancing
    # and trafficDistribution; "": a pod's own (its Workload's), or unknown.
    locality: str = ""
    # The CONNECT :authority when it is not this endpoint's own address: a pod of the Service's
    # waypoint (`through_waypoint`) is asked for the Service, `<VIP>:<port>`, and chooses the pod.
    authority: str = ""
    # The HBONE peer to dial when it is not `ip`: a pod of the waypoint this endpoint is bound to
    # (`around`), asked for the endpoint itself; `identity` is then that waypoint's.
    via: str = ""
    # A ServiceEntry endpoint's `weight` (0: unset, which is 1): the cluster's balancer honours it
    # as Envoy's does (waypoint/traffic/cluster.py).
    weight: int = 0

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def service_port(svc: Service, port: int) -> ServicePort | None:
    return next((p for p in svc.ports if p.port == port), None)


def protocol_of(sp: ServicePort | None) -> str:
    return "h2" if sp is not None and sp.protocol in H2_PROTOCOLS else "http1"


def _workload_for(ep: Endpoint, workloads: Mapping[str, Workload], by_ip: Mapping[str, Workload]) -> Workload | None:
    return (workloads.get(ep.workload_uid) if ep.workload_uid else None) or by_ip.get(ep.ip)


def candidates(svc: Service, port: int, subset_labels: Mapping[str, str] | None,
               workloads: Mapping[str, Workload], by_ip: Mapping[str, Workload], ready: bool = True) -> list[Pick]:
    """The ready endpoints of `svc` port `port` (in the subset, if labels are given), in the
    Service's endpoint order; empty when there is none (no healthy upstream: 503 UH). `ready`
    False: the endpoints that are not ready instead (a Service with trafficDistribution counts
    them, as unhealthy, in its locality priorities: waypoint/traffic/locality.py)."""
    sp = service_port(svc, port)
    if sp is None:
        return []
    out: list[Pick] = []
    entry = svc.kind == "ServiceEntry"
    for ep in svc.endpoints:
        if ep.ready != ready:
            continue
        wl = _workload_for(ep, workloads, by_ip) if ep.ip else None
        if subset_labels:
            labels = ep.labels if entry else wl.labels if wl is not None else {}
            if any(labels.get(k) != v for k, v in subset_labels.items()):
                continue
        if entry and ((svc.external and not ep.workload_uid) or wl is None or wl.protocol != "HBONE"):
            out.append(Pick(ep.ip or ep.hostname, target_port(sp, ep), "", protocol_of(sp), "", False, True,
                            ep.locality, weight=ep.weight))
        else:
            pick = _pick(ep.ip, target_port(sp, ep), wl, protocol_of(sp))
            out.append(replace(pick, locality=ep.locality, weight=ep.weight) if ep.locality or ep.weight else pick)
    return out


def through_waypoint(svc: Service, port: int, pods: Iterable[Workload]) -> list[Pick]:
    """`svc` port `port` reached through `pods`, the pods of the waypoint it is bound to (its ready
    ones: ambit/waypointpods.py `ready_waypoint_pods`), as an ingress gateway reaches it: each pod is asked over HBONE for the
    Service's first VIP and `port`, as a client's ztunnel asks, and the waypoint applies the
    Service's routes and policy and chooses its endpoint. Empty when the Service has no VIP (a
    headless one: its clients address pods) or the port is not the Service's."""
    sp = service_port(svc, port)
    if sp is None or not svc.vips:
        return []
    vip = svc.vips[0]
    authority = f"[{vip}]:{port}" if ":" in vip else f"{vip}:{port}"
    return [Pick(w.ips[0], port, w.identity, protocol_of(sp), f"{w.namespace}/{w.name}", authority=authority)
            for w in pods]


def around(pick: Pick, pod: Workload) -> Pick:
    """`pick` reached through `pod`, a pod of the waypoint the endpoint is bound to: its ztunnel
    admits tunnels only from that waypoint (ambit/waypointpods.py `bound_waypoints`), which takes
    tunnels addressed to the pods it fronts and sends them on."""
    return replace(pick, via=pod.ips[0], identity=pod.identity)


def pick_workload(ip: str, port: int, by_ip: Mapping[str, Workload], protocol: str = "http1") -> Pick | None:
    """The workload at `ip` (a request addressed to a pod, not a Service); None if unknown."""
    wl = by_ip.get(ip)
    if wl is None:
        return None
    return _pick(ip, port, wl, protocol)


def _pick(ip: str, port: int, wl: Workload | None, protocol: str) -> Pick:
    mesh = wl is not None and wl.protocol == "HBONE"
    return Pick(ip, port, wl.identity if wl is not None else "", protocol,
                f"{wl.namespace}/{wl.name}" if wl is not None else "", mesh)


def entry_at(services: Iterable[Service], ip: str, port: int, waypoint: str) -> Service | None:
    """The ServiceEntry host bound to `waypoint` that a connection to `ip:port` reaches without its
    VIP (ztunnel sent it here, see ztunnel/routing.py): one of its STATIC endpoints, or an address
    in its CIDRs (most specific first)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    best: tuple[int, Service] | None = None
    for s in services:
        if s.kind != "ServiceEntry" or s.waypoint != waypoint or service_port(s, port) is None:
            continue
        if s.resolution == "STATIC" and any(ep.ip == ip for ep in s.endpoints):
            return s
        for cidr in s.subnets:
            net = ipaddress.ip_network(cidr, strict=False)
            if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, s)
    return best[1] if best else None


def original(ip: str, port: int, svc: Service) -> Pick:
    """A ServiceEntry of resolution NONE: on to the connection's original destination, dialled
    directly (its port's protocol upstream)."""
    return Pick(ip, port, "", protocol_of(service_port(svc, port)), "", False, True)
