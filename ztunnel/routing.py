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
- a **ServiceEntry host** (its VIP, a STATIC endpoint, an address in its CIDRs; see
  `entry_route`): its endpoints by weight, or the original destination for resolution NONE;
  plain TCP for MESH_EXTERNAL. Entries not exported to the source's namespace are ignored. An
  address that is a workload's (a pod's) is never an entry's, as in Istio's ztunnel (workload
  addresses first): a ServiceEntry is a namespace's object, and one claiming another namespace's
  pod (an endpoint, an `addresses` IP or a CIDR over the pod range) would otherwise send every
  namespace's connections to that pod through its own waypoint, or as plain TCP instead of HBONE;
- anything else (a non-mesh pod, an address outside the cluster): **passthrough**, plain TCP
  from the source pod's netns, unless the mesh's `outboundTrafficPolicy` is REGISTRY_ONLY and the
  address is no workload at all: then a `refuse` naming the policy.

A Service's traffic distribution (`trafficDistribution: PreferClose`, ...) narrows its ready
endpoints to the ones closest to the client before the round robin (ztunnel/distribution.py),
unless `internalTrafficPolicy: Local` has already narrowed them to the client's node.

No sockets, no clocks: `decide` reads a `MeshState` (a consistent immutable view between awaits)
and a `RoundRobin` picker; tests drive both directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar

from ambit.dataplane.ports import PORT_HBONE, PORT_INBOUND, PORT_OUTBOUND
from ambit.dataplane.smoothweighted import SmoothWeighted
from ambit.model import Service, ServicePort, Workload
from ambit.waypointpods import ready_waypoint_pods as shared_ready
from ambit.waypointpods import waypoint_pods as shared_pods
from ztunnel.meshstate import MeshState, target_port

PASSTHROUGH, HBONE, REFUSE = "passthrough", "hbone", "refuse"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
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
    # A ServiceEntry's DNS endpoint: `dial` holds its name, which the proxy resolves (from the
    # node, on demand, as Istio ambient's ztunnel does) before it connects.
    resolve: str = ""

    @property
    def authority(self) -> str:
        assert self.target is not None
        return format_addr(*self.target)


@dataclass
class RoundRobin:
    """Per-key round robin. Deterministic (tests) and fair over a ztunnel's connections."""

    _next: dict[str, int] = field(default_factory=dict)
    _weighted: dict[str, SmoothWeighted] = field(default_factory=dict)

    def pick(self, key: str, candidates: Sequence[T]) -> T:
        i = self._next.get(key, 0)
        self._next[key] = i + 1
        return candidates[i % len(candidates)]

    def pick_weighted(self, key: str, candidates: Sequence[T], weights: Sequence[int]) -> T:
        """Smooth weighted round robin: over `sum(weights)` picks, candidate i is chosen
        weights[i] times, interleaved (3 and 1: A A B A; not three to A in a row, which weights
        such as 100 and 100 made a hundred). Equal weights are plain round robin."""
        if len(set(weights)) <= 1:
            return self.pick(key, candidates)
        sw = self._weighted.get(key)
        if sw is None:
            sw = self._weighted[key] = SmoothWeighted()
        return candidates[sw.pick_index(range(len(candidates)), weights)]


def format_addr(ip: str, port: int) -> str:
    """`ip:port`, with IPv6 addresses bracketed (what `:authority` and logs expect)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str:
    """`text` as `ipaddress` writes it; ValueError if it is no IP address (errors are not cached).

    Cached because every connection parses the same few pod addresses two to four times (its
    access line's Telemetry lookup, the CONNECT's :authority, the Forwarded header), and
    `ipaddress.ip_address` is about a dozen Python calls each time (issue 17, round 9)."""
    return str(ipaddress.ip_address(text))


def parse_addr(value: str) -> tuple[str, int]:
    """The inverse of `format_addr`; raises ValueError naming the value when it is no `ip:port`."""
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ValueError(f"{value!r} is not ip:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = canonical_ip(host)
        p = int(port)
    except ValueError:
        raise ValueError(f"{value!r} is not ip:port") from None
    if not 0 < p < 65536:
        raise ValueError(f"{value!r}: port {p} is out of range")
    return ip, p


def waypoint_pods(config: MeshState, waypoint: str) -> list[Workload]:
    """The pods of waypoint Gateway `waypoint` ("ns/name"), in a stable order (ambit/waypointpods.py)."""
    return shared_pods(config.view.workloads.values(), waypoint)


def ready_waypoint_pods(config: MeshState, waypoint: str, pods: list[Workload]) -> list[Workload]:
    """Of `pods`, those that are ready endpoints of the waypoint's own Service (ambit/waypointpods.py)."""
    return shared_ready(config.view.services, waypoint, pods)


def via_waypoint(config: MeshState, waypoint: str, original: tuple[str, int], lb: RoundRobin | None,
                 service: Service | None, what: str) -> Route:
    """HBONE to a (ready) pod of `waypoint` carrying `original` as the :authority (see the module
    docstring)."""
    pods = waypoint_pods(config, waypoint)
    if not pods:
        return Route(REFUSE, None, original, service=service, waypoint=waypoint,
                     reason=f"{what} uses waypoint {waypoint}, which has no pod; refusing rather than bypass it")
    wp = (lb or RoundRobin()).pick(f"waypoint:{waypoint}", ready_waypoint_pods(config, waypoint, pods))
    ip = wp.ips[0]
    return Route(HBONE, (ip, PORT_HBONE), original, workload=wp, service=service, identity=wp.identity,
                 waypoint=waypoint)


def decide(config: MeshState, dst_ip: str, dst_port: int, lb: RoundRobin | None = None,
           src_namespace: str | None = None, src_node: str | None = None, src_uid: str | None = None) -> Route:
    """Route a connection whose original destination is `dst_ip:dst_port`, opened by a pod in
    `src_namespace` (None: every ServiceEntry is visible, whatever its exportTo) on node
    `src_node` (None: a Service's `internalTrafficPolicy: Local` is not narrowed to a node), whose
    workload uid is `src_uid` (None: a Service's traffic distribution is not applied; with both
    given, only the closest ready endpoints are candidates: ztunnel/distribution.py)."""
    service: Service | None = None
    hit = _visible(config.lookup_service(dst_ip, dst_port), src_namespace)
    pod = config.lookup_workload(dst_ip)
    if pod is not None and hit is not None and hit[0].kind == "ServiceEntry":
        hit = None      # a pod's address is the pod's, whatever a ServiceEntry claims (see below)
    entry = None if hit is not None or pod is not None else \
        _visible(config.lookup_entry(dst_ip, dst_port), src_namespace)
    if hit is not None or entry is not None:
        service, svc_port = hit or entry  # type: ignore[misc]
        if service.waypoint:
            return via_waypoint(config, service.waypoint, (dst_ip, dst_port), lb, service,
                                f"{_what(service)} {service.resource_name}")
        if service.kind == "ServiceEntry":
            return entry_route(config, service, svc_port, (dst_ip, dst_port), lb, vip=hit is not None,
                               src=(src_uid, src_node))
        ready = [ep for ep in service.endpoints if ep.ready]
        if service.node_local and src_node is not None:
            ready = [ep for ep in ready if ep.node == src_node]
            if not ready:
                return Route(REFUSE, None, (dst_ip, dst_port), service=service,
                             reason=f"service {service.resource_name} has internalTrafficPolicy Local and no "
                                    f"ready endpoint on node {src_node or '(unknown)'}")
        elif service.traffic_distribution and src_uid is not None and src_node is not None and len(ready) > 1:
            ready = config.closest_endpoints(service, ready, src_uid, src_node)
        if not ready:
            return Route(REFUSE, None, (dst_ip, dst_port), service=service,
                         reason=f"service {service.resource_name} port {dst_port} has no ready endpoint")
        ep = (lb or RoundRobin()).pick(f"{service.resource_name}:{dst_port}", ready)
        dst_ip, dst_port = ep.ip, target_port(svc_port, ep)
        wl = config.workload(ep.workload_uid) if ep.workload_uid else None
        wl = wl or config.lookup_workload(dst_ip)
    else:
        wl = pod
        if wl is not None and wl.protocol == "HBONE" and wl.waypoint:
            return via_waypoint(config, wl.waypoint, (dst_ip, dst_port), lb, None,
                                f"workload {wl.namespace}/{wl.name}")
        if wl is None and registry_only(config):
            return Route(REFUSE, None, (dst_ip, dst_port), reason=not_registered(dst_ip, dst_port))
    if wl is not None and wl.protocol == "HBONE":
        return Route(HBONE, (dst_ip, PORT_HBONE), (dst_ip, dst_port), workload=wl, service=service,
                     identity=wl.identity)
    return Route(PASSTHROUGH, (dst_ip, dst_port), (dst_ip, dst_port), workload=wl, service=service)


# The destination_service of connections REGISTRY_ONLY refuses (Istio's name for where they go).
BLACKHOLE = "BlackHoleCluster"


def registry_only(config: MeshState) -> bool:
    mesh = config.view.mesh
    return mesh is not None and mesh.outbound_traffic_policy == "REGISTRY_ONLY"


def not_registered(ip: str, port: int) -> str:
    return (f"outboundTrafficPolicy REGISTRY_ONLY: {format_addr(ip, port)} is not a mesh workload, Service "
            "or ServiceEntry")


def _what(service: Service) -> str:
    return "ServiceEntry host" if service.kind == "ServiceEntry" else "service"


def _visible(hit: tuple[Service, ServicePort] | None, namespace: str | None) -> tuple[Service, ServicePort] | None:
    """exportTo: an entry not exported to the source's namespace is as good as absent."""
    if hit is None or namespace is None or hit[0].visible_to(namespace):
        return hit
    return None


def entry_route(config: MeshState, service: Service, svc_port: ServicePort, original: tuple[str, int],
                lb: RoundRobin | None, vip: bool, src: tuple[str | None, str | None] = (None, None)) -> Route:
    """A connection to a ServiceEntry host (not bound to a waypoint).

    Resolution NONE, or a connection straight to one of its endpoints or into its CIDR: the
    original destination. STATIC / DNS through a VIP: one of the endpoints, by weight, on its port.
    MESH_EXTERNAL is plain TCP from the pod (an external server speaks no HBONE); MESH_INTERNAL
    endpoints that are mesh pods get HBONE to their identity, as any mesh pod does, and so do the
    pods a `workloadSelector` selects, whatever the location (Istio's ambient reads none).
    A DNS endpoint's name is resolved by the proxy when it dials (`Route.resolve`). `src`: the
    client's (workload uid, node), for the entry's traffic distribution (its annotation)."""
    pod_ep = False      # a pod the entry selects (workloadSelector): a mesh workload, whatever `location`
    if service.resolution == "NONE" or not vip:
        ip, port = original
        hostname = ""
    else:
        ready = [ep for ep in service.endpoints if ep.ready]
        if not ready:
            return Route(REFUSE, None, original, service=service,
                         reason=f"ServiceEntry host {service.hostname} port {svc_port.port} has no endpoint")
        if service.traffic_distribution and src[0] is not None and src[1] is not None and len(ready) > 1:
            ready = config.closest_endpoints(service, ready, src[0], src[1])
        ep = (lb or RoundRobin()).pick_weighted(f"{service.resource_name}:{svc_port.port}", ready,
                                                [e.weight or 1 for e in ready])
        ip, port, hostname = ep.ip, target_port(svc_port, ep), ep.hostname
        pod_ep = bool(ep.workload_uid)
    if hostname and not ip:
        return Route(PASSTHROUGH, (hostname, port), (hostname, port), service=service, resolve=hostname)
    wl = config.lookup_workload(ip)
    external = service.external and not pod_ep
    if wl is not None and wl.protocol == "HBONE" and not external:
        return Route(HBONE, (ip, PORT_HBONE), (ip, port), workload=wl, service=service, identity=wl.identity)
    return Route(PASSTHROUGH, (ip, port), (ip, port), workload=wl if not external else None,
                 service=service)


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
