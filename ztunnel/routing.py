"""Where an outbound connection goes: the route decision, as a pure function of the mesh config.

Given the source workload and the original destination (what the app connected to), decide:

- a **Service VIP** (`vip:port` is a port of a known Service): pick one of its ready endpoints
  (round robin, per Service port and per ztunnel), translate the Service port to the endpoint's
  target port, and continue with that endpoint's address. A Service with no ready endpoint is a
  `Route.refuse` (the app's connection is closed, as kube-proxy would refuse it). Waypoints are not
  routed to yet: the decision reports the Service's waypoint so the caller can log it;
- a **mesh workload** (an enrolled pod, protocol HBONE): HBONE to `<pod ip>:15008` with
  `:authority <pod ip>:<port>`, expecting the pod's SPIFFE identity as the TLS peer. Never
  plaintext: a mesh destination is reached over mTLS or not at all;
- anything else (a non-mesh pod, an address outside the cluster): **passthrough**, plain TCP
  from the source pod's netns.

No sockets, no clocks: `decide` reads a `MeshState` (a consistent immutable view between awaits)
and a `RoundRobin` picker; tests drive both directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ambit.dataplane.ports import PORT_HBONE, PORT_INBOUND, PORT_OUTBOUND
from ambit.model import Endpoint, Service, ServicePort, Workload
from ztunnel.meshstate import MeshState

PASSTHROUGH, HBONE, REFUSE = "passthrough", "hbone", "refuse"


@dataclass(frozen=True)
class Route:
    """The decision for one connection.

    `dial` is the TCP address ztunnel connects to (`pod:15008` for HBONE); `target` is the real
    destination `(ip, port)` (the HBONE `:authority`, or the passthrough address itself).
    """

    kind: str                                   # passthrough | hbone | refuse
    dial: tuple[str, int] | None
    target: tuple[str, int] | None
    workload: Workload | None = None            # the destination workload, when known
    service: Service | None = None              # the Service the VIP belonged to, if any
    identity: str = ""                          # expected peer identity (HBONE)
    reason: str = ""                            # why (refusals; notes such as an ignored waypoint)

    @property
    def authority(self) -> str:
        assert self.target is not None
        return format_addr(*self.target)


@dataclass
class RoundRobin:
    """Per-key round robin. Deterministic (tests) and fair over a ztunnel's connections."""

    _next: dict[str, int] = field(default_factory=dict)

    def pick(self, key: str, candidates: Sequence[Endpoint]) -> Endpoint:
        i = self._next.get(key, 0)
        self._next[key] = i + 1
        return candidates[i % len(candidates)]


def format_addr(ip: str, port: int) -> str:
    """`ip:port`, with IPv6 addresses bracketed (what `:authority` and logs expect)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_addr(value: str) -> tuple[str, int]:
    """The inverse of `format_addr`; raises ValueError naming the value when it is no `ip:port`."""
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ValueError(f"{value!r} is not ip:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = str(ipaddress.ip_address(host))
        p = int(port)
    except ValueError:
        raise ValueError(f"{value!r} is not ip:port") from None
    if not 0 < p < 65536:
        raise ValueError(f"{value!r}: port {p} is out of range")
    return ip, p


def target_port(svc_port: ServicePort, ep: Endpoint) -> int:
    """The endpoint's port for a Service port: the endpoint's own resolution of a named targetPort
    wins; a Service without targetPort means the same number as the Service port."""
    for p in ep.ports:
        if p.port == svc_port.port and p.target_port:
            return p.target_port
    return svc_port.target_port or svc_port.port


def decide(config: MeshState, dst_ip: str, dst_port: int, lb: RoundRobin | None = None) -> Route:
    """Route a connection whose original destination is `dst_ip:dst_port`."""
    service: Service | None = None
    note = ""
    hit = config.lookup_service(dst_ip, dst_port)
    if hit is not None:
        service, svc_port = hit
        ready = [ep for ep in service.endpoints if ep.ready]
        if not ready:
            return Route(REFUSE, None, (dst_ip, dst_port), service=service,
                         reason=f"service {service.resource_name} port {dst_port} has no ready endpoint")
        ep = (lb or RoundRobin()).pick(f"{service.resource_name}:{dst_port}", ready)
        if service.waypoint:
            note = f"service {service.resource_name} has waypoint {service.waypoint}; waypoints are not routed yet"
        dst_ip, dst_port = ep.ip, target_port(svc_port, ep)
        wl = config.workload(ep.workload_uid) if ep.workload_uid else None
        wl = wl or config.lookup_workload(dst_ip)
    else:
        wl = config.lookup_workload(dst_ip)
    if wl is not None and wl.protocol == "HBONE":
        return Route(HBONE, (dst_ip, PORT_HBONE), (dst_ip, dst_port), workload=wl, service=service,
                     identity=wl.identity, reason=note)
    return Route(PASSTHROUGH, (dst_ip, dst_port), (dst_ip, dst_port), workload=wl, service=service, reason=note)


# The ports ztunnel listens on inside every enrolled pod's netns (outbound, inbound plaintext, HBONE).
LISTENER_PORTS = frozenset({PORT_OUTBOUND, PORT_INBOUND, PORT_HBONE})


def loops_back(ip: str, port: int, local_ips: Collection[str]) -> bool:
    """Would connecting to `ip:port` land on one of ztunnel's own listeners?

    `local_ips` are the addresses whose netns holds such listeners: the pods this ztunnel serves
    (outbound), or the destination pod (inbound, where delivery always goes to the pod itself).
    Loopback and unspecified addresses count too. Every path refuses such a destination: otherwise
    one connection to a pod's own :15006 makes ztunnel deliver to itself until it runs out of fds.
    """
    if port not in LISTENER_PORTS:
        return False
    if ip in local_ips:
        return True
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    if mapped is not None:
        addr = mapped
        if str(addr) in local_ips:
            return True
    return addr.is_loopback or addr.is_unspecified
