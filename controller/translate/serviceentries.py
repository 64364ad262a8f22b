"""ServiceEntries into registry Services: one per host, as Istio's ztunnel has them.

Each host of a ServiceEntry becomes a `Service` named by the host (so the metrics' and the access
log's destination_service is the host), with `kind` "ServiceEntry". Its single-IP `addresses` are
VIPs (ztunnel load-balances a connection to `VIP:port` over the endpoints), its CIDR addresses are
`subnets` (matched by prefix, for resolution NONE/STATIC). Endpoints keep their weight and labels;
a DNS endpoint keeps its name, resolved by ztunnel when it dials (see ztunnel.routing).

Why ztunnel resolves, not the controller: Istio ambient resolves DNS ServiceEntries on demand in
ztunnel, from the node that opens the connection. The answer then follows the record's TTL and the
node's view of DNS (split-horizon resolvers, per-node caches), and a name that stops resolving
fails that connection rather than freezing a stale address into every ztunnel's config.

An entry with `workloadSelector` has the selected pods of its namespace as endpoints
(controller.translate.entrypods), whatever its resolution: NONE is read as STATIC for it, as
Istio's ambient balances the entry's VIP over the pods it selects (its validation only warns).

An entry without `addresses` gets one auto-allocated VIP per host (controller.translate.autoalloc,
as Istio's `status.addresses`): unlike user `addresses`, which are the first host's, each host's
Service carries its own, so a connection to it (and the DNS proxy's answer for it) names one host.
"""

from __future__ import annotations

from typing import Any

from ambit.model import Endpoint, Service, ServicePort
from controller.kinds.hostnames import is_ip
from controller.translate.autoalloc import Allocation
from controller.translate.blame import blame
from controller.translate.distribution import traffic_distribution
from controller.translate.entrypods import EntryPods, entry_selector, pod_endpoint
from controller.translate.index import (
    Index,
    age_key,
    labels_of,
    name_of,
    namespace_waypoint,
    ns_of,
    waypoint_ref,
)
from controller.translate.workloads import port_protocol
from controller.validation import FieldError

Obj = dict[str, Any]

# Istio port protocol -> the ServicePort protocol ztunnel and waypoints use (HTTP-aware or bytes).
_PROTOCOLS = {"HTTP": "HTTP", "HTTP_PROXY": "HTTP", "HTTP2": "HTTP2", "GRPC": "GRPC", "GRPC-WEB": "HTTP"}


def _is_subnet(address: str) -> bool:
    if "/" not in address:
        return False
    bits = address.rsplit("/", 1)[1]
    return not (bits == "32" and ":" not in address or bits == "128")


def export_to(spec: Obj, namespace: str) -> list[str]:
    """Istio's exportTo: "." is the ServiceEntry's own namespace, "*" everyone (also the default,
    an empty list here), "~" no one."""
    out = [namespace if e == "." else e for e in spec.get("exportTo") or []]
    return [] if "*" in out else out or []


def _ports(spec: Obj) -> list[ServicePort]:
    return [ServicePort(port=int(p["number"]), target_port=int(p.get("targetPort") or 0), name=p.get("name", ""),
                        protocol=_PROTOCOLS.get(p["protocol"].upper(), "TCP") if p.get("protocol")
                        else port_protocol({"name": p.get("name", "")}))
            for p in spec.get("ports") or []]


def _endpoint(e: Obj, ports: list[ServicePort]) -> Endpoint:
    address = e.get("address") or ""
    own = e.get("ports") or {}
    eports = [ServicePort(p.port, int(own[p.name]), p.name, p.protocol) for p in ports if p.name in own]
    ip = is_ip(address)
    return Endpoint(workload_uid="", ip=address if ip else "", hostname="" if ip else address,
                    ports=eports, weight=int(e.get("weight") or 0), labels=dict(e.get("labels") or {}),
                    locality=str(e.get("locality") or ""))


def _address_conflicts(se: Obj, taken: dict[str, str]) -> list[FieldError]:
    """An address of the entry that is already another Service's VIP (or an older entry's)."""
    out = []
    for i, a in enumerate((se.get("spec") or {}).get("addresses") or []):
        vip = a if _is_subnet(a) else a.split("/")[0]
        if vip in taken:
            out.append(FieldError(f"ServiceEntry/{ns_of(se)}/{name_of(se)}", f"spec.addresses[{i}]",
                                  f"{vip} is already the address of {taken[vip]}: a connection to it could not tell "
                                  "the two apart, so this ServiceEntry is not applied (none of it)"))
    return out


def _host_conflicts(se: Obj, held: dict[str, str]) -> list[FieldError]:
    """A host of the entry whose registry Service (named `ns/host`) another Service of its
    namespace already is: a Kubernetes Service of that name (it comes first, as in Istio, so an
    entry cannot squat a Service's name), or an older entry's host. Two Services of one name cannot both be served."""
    out = []
    ns = ns_of(se)
    for i, h in enumerate((se.get("spec") or {}).get("hosts") or []):
        holder = held.get(f"{ns}/{h}")
        if holder is not None:
            out.append(FieldError(f"ServiceEntry/{ns}/{name_of(se)}", f"spec.hosts[{i}]",
                                  f'"{h}" is already {holder} in namespace {ns}: the registry holds one service '
                                  "per name in a namespace, so this ServiceEntry is not applied (none of it)"))
    return out


def translate_service_entries(idx: Index, services: list[Service], errors: list[FieldError],
                              allocation: Allocation | None = None,
                              applied: set[tuple[str, str]] | None = None) -> list[Service]:
    """The registry Services of every ServiceEntry. An entry with an address that is already
    another Service's VIP (or an older entry's: creationTimestamp, then namespace and name, as
    Istio's registry lets the oldest keep a host, so a new entry cannot take one from a running
    entry) is not applied at all and reported: ztunnel could not tell which one a connection to it means, and an entry applied
    without one of its addresses would be half-applied. One verdict everywhere: `ambit apply`
    refuses it, the controller leaves it out and writes Accepted=False on it (controller.sources.kube).
    `allocation`: the auto-allocated VIPs of entries without `addresses` (never an address another
    Service or entry holds: autoalloc reserves those). `applied` gets the (namespace, name) of
    each entry applied."""
    taken = {vip: s.resource_name for s in services for vip in s.vips}
    held = {s.resource_name: f"the name of Service {s.resource_name}" for s in services}
    auto = allocation.vips if allocation is not None else {}
    pods = EntryPods(idx)
    for key, vips in auto.items():
        for vip in vips.values():
            taken[vip] = f"ServiceEntry {key[0]}/{key[1]}"
    out: list[tuple[tuple[str, str], Service]] = []
    for se in sorted(idx.kind("ServiceEntry"), key=age_key):      # the oldest keeps an address or host
        with blame(se):
            spec, ns = se.get("spec") or {}, ns_of(se)
            conflicts = _address_conflicts(se, taken) + _host_conflicts(se, held)
            if conflicts:
                errors.extend(conflicts)
                continue
            if applied is not None:
                applied.add((ns, name_of(se)))
            resolution = spec.get("resolution") or "NONE"
            if resolution == "DNS_ROUND_ROBIN":     # one endpoint (or the host): the same to ztunnel
                resolution = "DNS"
            selector = entry_selector(spec)
            if selector is not None and resolution == "NONE":
                resolution = "STATIC"       # the selected pods are where its VIP goes
            addresses = list(spec.get("addresses") or [])
            for a in addresses:
                taken[a if _is_subnet(a) else a.split("/")[0]] = f"ServiceEntry {ns}/{name_of(se)}"
            ports = _ports(spec)
            waypoint = waypoint_ref(labels_of(se), ns, fallback=namespace_waypoint(idx, ns))
            selected = [] if selector is None else [pod_endpoint(p, ports) for p in pods.selected(ns, selector)]
            # a host listed twice is one host (Istio's registry keys its services by host)
            hosts = list(dict.fromkeys(spec.get("hosts") or []))
            for h in hosts:
                held[f"{ns}/{h}"] = f"a host of ServiceEntry {ns}/{name_of(se)}"
            for i, host in enumerate(hosts):
                endpoints: list[Endpoint]
                if selector is not None:
                    endpoints = list(selected)
                elif resolution == "NONE":
                    endpoints = []
                elif spec.get("endpoints"):
                    endpoints = [_endpoint(e, ports) for e in spec["endpoints"]]
                elif resolution == "DNS" and not host.startswith("*"):
                    endpoints = [Endpoint(workload_uid="", ip="", hostname=host)]
                else:
                    endpoints = []      # a wildcard has no address to resolve: connections to it are refused
                mine = addresses if i == 0 else []      # an address means one host to ztunnel: the first
                if not addresses and host in auto.get((ns, name_of(se)), {}):
                    mine = [auto[(ns, name_of(se))][host]]      # auto-allocated: each host its own
                out.append(((ns, name_of(se)), Service(
                    name=host, namespace=ns, hostname=host,
                    vips=[a.split("/")[0] for a in mine if not _is_subnet(a)],
                    subnets=[a for a in mine if _is_subnet(a)],
                    ports=[ServicePort(p.port, p.target_port, p.name, p.protocol) for p in ports],
                    endpoints=endpoints, waypoint=waypoint, kind="ServiceEntry",
                    location=spec.get("location") or "MESH_EXTERNAL", resolution=resolution,
                    export_to=export_to(spec, ns),
                    traffic_distribution="" if resolution == "NONE" else
                    traffic_distribution(se, idx.namespaces.get(ns), spec_field=False),
                )))
    return [svc for _, svc in sorted(out, key=lambda t: t[0])]     # (by namespace and name, as before)


def selecting(entries: list[Service]) -> list[Service]:
    """The entries' Services whose endpoints are pods (a workloadSelector's), with only those
    endpoints: what the pods' Workloads list among the Services they back."""
    out = []
    for s in entries:
        pods = [ep for ep in s.endpoints if ep.workload_uid]
        if pods:
            out.append(Service(name=s.name, namespace=s.namespace, hostname=s.hostname, ports=s.ports,
                               endpoints=pods, kind=s.kind))
    return out


def expand_entry_targets(policies: list[Any], idx: Index, applied: set[tuple[str, str]]) -> None:
    """A policy's (AuthorizationPolicy, RequestAuthentication, Telemetry) `targetRefs` naming a
    ServiceEntry bind it, at the entry's waypoint, to each of the entry's hosts: the refs become
    Service refs to the hosts' registry Services (named by host), which is how waypoints bind
    (waypoint/binding.py, ambit/telemetry.py). In place. Only `applied` entries count: one left
    out for a clash binds nothing, not the host's older entry that holds it (the advisories say so)."""
    hosts = {(ns_of(se), name_of(se)): list(dict.fromkeys((se.get("spec") or {}).get("hosts") or []))
             for se in idx.kind("ServiceEntry") if (ns_of(se), name_of(se)) in applied}
    for p in policies:
        if not any(r.get("kind") == "ServiceEntry" for r in p.target_refs):
            continue
        refs = []
        for r in p.target_refs:
            if r.get("kind") != "ServiceEntry":
                refs.append(r)
                continue
            ns = p.namespace    # a target in another namespace is refused by validation (as Istio)
            refs += [{"group": "", "kind": "Service", "name": h, "namespace": ns} for h in hosts.get((ns, r.get("name")), [])]
        p.target_refs = refs
