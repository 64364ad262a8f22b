"""Where an outbound connection goes: the route decision, as a pure function of the mesh config.

Given the source workload and the original destination (what the app connected to), decide:

- a **Service VIP** (`vip:port` is a port of a known Service): pick one of its ready endpoints
  (round robin, per Service port and per ztunnel), translate the Service port to the endpoint's
  target port, and continue with that endpoint's address. A Service with no ready endpoint is a
  `Route.refuse` (the app's connection is closed, as kube-proxy would refuse it);
- a destination that **uses a waypoint** (a Service whose `waypoint` is set, which the controller
  leaves set only when the Gateway's waypoint-for covers services; or a mesh workload whose
  `waypoint` is set, i.e. waypoint-for covers workloads): HBONE to one of the waypoint's pods
  (`<waypoint pod ip>:15008`, round robin), expecting the waypoint's identity, with `:authority`
  the *original* destination (`VIP:port`, or `pod ip:port`) so the waypoint knows what was asked
  for. The waypoint's pods never use a waypoint themselves (the controller clears theirs), so
  there is no loop. A waypoint with no pod refuses the connection: skipping it would skip the L7
  policy the destination is bound to;
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
from typing import TypeVar

from ambit.dataplane.ports import PORT_HBONE, PORT_INBOUND, PORT_OUTBOUND
from ambit.model import Endpoint, Service, ServicePort, Workload
from ztunnel.meshstate import MeshState

PASSTHROUGH, HBONE, REFUSE = "passthrough", "hbone", "refuse"
T = TypeVar("T")


@dataclass(frozen=True)
class Route:
    """The decision for one connection.

    `dial` is the TCP address ztunnel connects to (`pod:15008` for HBONE, a waypoint pod's :15008
    through a waypoint); `target` is always the real destination `(ip, port)`: the HBONE `:authority`,
    or the passthrough address itself.
    """

    kind: str                                   # passthrough | hbone | refuse
    dial: tuple[str, int] | None
    target: tuple[str, int] | None
    workload: Workload | None = None            # the destination workload, when known
    service: Service | None = None              # the Service the VIP belonged to, if any
    identity: str = ""                          # expected peer identity (HBONE)
    reason: str = ""                            # why (refusals; notes)
    # Through a waypoint: "ns/name" of the waypoint; `dial` is then a waypoint pod and `workload`
    # that pod's workload (the peer the tunnel is opened to), `target` still the real destination.
    waypoint: str = ""

    @property
    def authority(self) -> str:
        assert self.target is not None
        return format_addr(*self.target)


@dataclass
class RoundRobin:
    """Per-key round robin. Deterministic (tests) and fair over a ztunnel's connections."""

    _next: dict[str, int] = field(default_factory=dict)

    def pick(self, key: str, candidates: Sequence[T]) -> T:
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


GATEWAY_NAME_LABELS = ("gateway.networking.k8s.io/gateway-name", "istio.io/gateway-name")


def waypoint_pods(config: MeshState, waypoint: str) -> list[Workload]:
    """The pods of waypoint Gateway `waypoint` ("ns/name"): HBONE workloads in its namespace
    labelled with its name, in a stable order (round robin over them is then fair)."""
    ns, _, name = waypoint.partition("/")
    out = [w for w in config.view.workloads.values()
           if w.namespace == ns and w.protocol == "HBONE" and w.ips
           and any(w.labels.get(label) == name for label in GATEWAY_NAME_LABELS)]
    return sorted(out, key=lambda w: w.uid)


def via_waypoint(config: MeshState, waypoint: str, original: tuple[str, int], lb: RoundRobin | None,
                 service: Service | None, what: str) -> Route:
    """HBONE to a pod of `waypoint` carrying `original` as the :authority (see the module docstring)."""
    pods = waypoint_pods(config, waypoint)
    if not pods:
        return Route(REFUSE, None, original, service=service, waypoint=waypoint,
                     reason=f"{what} uses waypoint {waypoint}, which has no pod; refusing rather than bypass it")
    wp = (lb or RoundRobin()).pick(f"waypoint:{waypoint}", pods)
    ip = wp.ips[0]
    return Route(HBONE, (ip, PORT_HBONE), original, workload=wp, service=service, identity=wp.identity,
                 waypoint=waypoint)


def decide(config: MeshState, dst_ip: str, dst_port: int, lb: RoundRobin | None = None) -> Route:
    """Route a connection whose original destination is `dst_ip:dst_port`."""
    service: Service | None = None
    hit = config.lookup_service(dst_ip, dst_port)
    if hit is not None:
        service, svc_port = hit
        if service.waypoint:
            return via_waypoint(config, service.waypoint, (dst_ip, dst_port), lb, service,
                                f"service {service.resource_name}")
        ready = [ep for ep in service.endpoints if ep.ready]
        if not ready:
            return Route(REFUSE, None, (dst_ip, dst_port), service=service,
                         reason=f"service {service.resource_name} port {dst_port} has no ready endpoint")
        ep = (lb or RoundRobin()).pick(f"{service.resource_name}:{dst_port}", ready)
        dst_ip, dst_port = ep.ip, target_port(svc_port, ep)
        wl = config.workload(ep.workload_uid) if ep.workload_uid else None
        wl = wl or config.lookup_workload(dst_ip)
    else:
        wl = config.lookup_workload(dst_ip)
        if wl is not None and wl.protocol == "HBONE" and wl.waypoint:
            return via_waypoint(config, wl.waypoint, (dst_ip, dst_port), lb, None,
                                f"workload {wl.namespace}/{wl.name}")
    if wl is not None and wl.protocol == "HBONE":
        return Route(HBONE, (dst_ip, PORT_HBONE), (dst_ip, dst_port), workload=wl, service=service,
                     identity=wl.identity)
    return Route(PASSTHROUGH, (dst_ip, dst_port), (dst_ip, dst_port), workload=wl, service=service)


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
