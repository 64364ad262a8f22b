"""Pods and Services into Workloads and Services: enrolment, identity, VIPs and endpoints."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from ambit import enrolment
from ambit.model import Endpoint, Service, ServicePort, Workload, spiffe_id
from ambit.probes import probe_ports
from ambit.topology import LOCALITY_LABEL, TOPOLOGY_LABELS
from ambit.waypointpods import GATEWAY_NAME_LABELS
from controller.translate.blame import TranslationBug, blame
from controller.translate.distribution import traffic_distribution
from controller.translate.index import (
    CGROUP_ANNOTATION,
    NETNS_ANNOTATION,
    SERVICE_NAME_LABEL,
    Index,
    first_label,
    labels_of,
    md,
    name_of,
    namespace_waypoint,
    ns_of,
    selector_matches,
    waypoint_ref,
)
from controller.translate.memo import REMADE, REUSED, TRANSLATED, PodFacts, TranslationMemo, WorkloadEntry
from controller.translate.waypoints import workload_waypoint
from controller.validation import FieldError, object_ref

Obj = dict[str, Any]


def pod_ips(pod: Obj) -> list[str]:
    status = pod.get("status") or {}
    ips = [p["ip"] for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return ips


def is_running(pod: Obj) -> bool:
    """Pods that can take traffic: Running with an address, and not being deleted."""
    return ((pod.get("status") or {}).get("phase") == "Running" and bool(pod_ips(pod))
            and not md(pod).get("deletionTimestamp"))


def has_sandbox(pod: Obj) -> bool:
    """Pods that are workloads of the mesh: Running or Pending with an address, not being deleted
    (`ambit.enrolment.SANDBOX_PHASES`); only Running ones are Service endpoints (`is_running`)."""
    return ((pod.get("status") or {}).get("phase") in enrolment.SANDBOX_PHASES and bool(pod_ips(pod))
            and not md(pod).get("deletionTimestamp"))


def pod_ready(pod: Obj) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return True     # the lab does not model readiness: a running pod is ready


def is_enrolled(pod: Obj, ns_labels: dict[str, str]) -> bool:
    """Ambient capture applies (the rule itself is ambit.enrolment's, shared with the agent)."""
    return enrolment.is_enrolled(labels_of(pod), ns_labels, bool((pod.get("spec") or {}).get("hostNetwork")))


def service_account(pod: Obj) -> str:
    spec = pod.get("spec") or {}
    return spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"


def container_port(pod: Obj, name: str) -> int:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == name:
                return int(p["containerPort"])
    return 0


def port_protocol(port: Obj) -> str:
    """HTTP, HTTP2, GRPC or TCP, from appProtocol or Istio's port-name convention (http-web, grpc)."""
    app = (port.get("appProtocol") or "").lower()
    table = {"http": "HTTP", "http2": "HTTP2", "kubernetes.io/h2c": "HTTP2", "h2c": "HTTP2", "grpc": "GRPC",
             "grpc-web": "HTTP"}
    if app:
        return table.get(app, "TCP")
    name = (port.get("name") or "").lower()
    prefix = name.split("-", 1)[0]
    return table.get(prefix, "TCP")


def _service_ports(svc: Obj) -> list[ServicePort]:
    out = []
    for p in (svc.get("spec") or {}).get("ports") or []:
        if (p.get("protocol") or "TCP") != "TCP":
            continue
        target = p.get("targetPort", p["port"])
        named = isinstance(target, str) and not target.isdigit()
        out.append(ServicePort(port=int(p["port"]), target_port=0 if named else int(target), name=p.get("name", ""),
                               protocol=port_protocol(p), target_port_name=target if named else ""))
    return out


def _resolve_for_pod(ports: list[ServicePort], pod: Obj | None) -> list[ServicePort]:
    out = []
    for sp in ports:
        tp = container_port(pod, sp.target_port_name) if (pod is not None and sp.target_port_name) else sp.target_port
        out.append(ServicePort(sp.port, tp, sp.name, sp.protocol, sp.target_port_name))
    return out


def translate_services(idx: Index, cluster_domain: str) -> list[Service]:
    pods = _PodLookups(idx)
    slices: dict[tuple[str, str], list[Obj]] = {}
    for s in idx.kind("EndpointSlice"):
        svc_name = labels_of(s).get(SERVICE_NAME_LABEL)
        if svc_name:
            slices.setdefault((ns_of(s), svc_name), []).append(s)

    out = []
    for svc in idx.kind("Service"):
        with blame(svc):
            spec = svc.get("spec") or {}
            if spec.get("type") == "ExternalName":
                continue
            name, ns = name_of(svc), ns_of(svc)
            vips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None"]
            ports = _service_ports(svc)
            named = any(p.target_port_name for p in ports)
            if (ns, name) in slices:
                endpoints = _endpoints_from_slices(slices[(ns, name)], ports, named, pods)
            else:
                selector = spec.get("selector") or {}
                endpoints = _endpoints_from_selector(selector, _candidates(selector, pods.by_label().get(ns, {})),
                                                     ports, named, bool(spec.get("publishNotReadyAddresses")))
            if named:   # the Service-level number: the first endpoint's resolution, for display and simple callers
                for sp in ports:
                    for ep in endpoints:
                        resolved = next((p.target_port for p in ep.ports if p.port == sp.port and p.target_port), 0)
                        if resolved:
                            sp.target_port = resolved
                            break
            out.append(Service(
                name=name, namespace=ns, hostname=f"{name}.{ns}.svc.{cluster_domain}", vips=vips, ports=ports,
                endpoints=endpoints,
                waypoint=waypoint_ref(labels_of(svc), ns, fallback=namespace_waypoint(idx, ns)),
                node_local=spec.get("internalTrafficPolicy") == "Local",
                traffic_distribution=traffic_distribution(svc, idx.namespaces.get(ns)),
            ))
    return out


class _PodLookups:
    """The pods as Services look them up, each built on first use: with EndpointSlices (a
    cluster's usual case) a Service needs neither, and building them read every pod again."""

    def __init__(self, idx: Index) -> None:
        self._idx = idx
        self._by_label: dict[str, dict[tuple[str, str], list[Obj]]] | None = None
        self._by_uid: dict[str, Obj] | None = None

    def by_label(self) -> dict[str, dict[tuple[str, str], list[Obj]]]:
        """Running pods by namespace and label: a selector's candidates are the pods that carry its
        rarest label, not the whole namespace (200 Services over 2,000 pods: 400,000 label checks)."""
        if self._by_label is None:
            self._by_label = {}
            for pod in self._idx.kind("Pod"):
                if is_running(pod):
                    mine = self._by_label.setdefault(ns_of(pod), {})
                    for kv in labels_of(pod).items():
                        mine.setdefault(kv, []).append(pod)
        return self._by_label

    def by_uid(self) -> dict[str, Obj]:
        if self._by_uid is None:
            self._by_uid = {md(p).get("uid"): p for p in self._idx.kind("Pod") if md(p).get("uid")}
        return self._by_uid


def _candidates(selector: dict[str, str], by_label: dict[tuple[str, str], list[Obj]]) -> list[Obj]:
    """The running pods (in namespace order) that carry the selector's rarest label: every pod it
    selects is among them."""
    lists = [by_label.get(kv, []) for kv in selector.items()]
    return min(lists, key=len) if lists else []


def _endpoints_from_selector(selector: dict[str, str], pods: list[Obj], ports: list[ServicePort],
                             named: bool, publish_not_ready: bool = False) -> list[Endpoint]:
    """Endpoints from the Service's selector (no EndpointSlices: the lab, or a cluster whose
    slices have not arrived), ready as the EndpointSlice controller marks them: a running pod is
    ready when its Ready condition is, or always with `publishNotReadyAddresses`."""
    if not selector:
        return []       # a Service without selector has endpoints only through EndpointSlices
    out = []
    for pod in pods:
        if selector_matches(selector, labels_of(pod)):
            out.append(Endpoint(workload_uid=md(pod).get("uid", ""), ip=pod_ips(pod)[0],
                                node=(pod.get("spec") or {}).get("nodeName", ""),
                                ready=publish_not_ready or pod_ready(pod),
                                ports=_resolve_for_pod(ports, pod) if named else []))
    return out


def _endpoints_from_slices(slices: list[Obj], ports: list[ServicePort], named: bool,
                           pods: _PodLookups) -> list[Endpoint]:
    out: dict[str, Endpoint] = {}
    pods_by_uid = pods.by_uid() if named else {}
    for s in slices:
        if s.get("addressType") == "FQDN":
            continue
        slice_ports = {p.get("name", ""): p.get("port") for p in s.get("ports") or []}
        for e in s.get("endpoints") or []:
            ref = e.get("targetRef") or {}
            uid = ref.get("uid", "") if ref.get("kind", "Pod") == "Pod" else ""
            ready = (e.get("conditions") or {}).get("ready") is not False
            eports: list[ServicePort] = []
            if named:
                for sp in ports:
                    tp = slice_ports.get(sp.name) or (container_port(pods_by_uid[uid], sp.target_port_name)
                                                      if uid in pods_by_uid and sp.target_port_name else sp.target_port)
                    eports.append(ServicePort(sp.port, int(tp or 0), sp.name, sp.protocol, sp.target_port_name))
            for addr in e.get("addresses") or []:
                out.setdefault(addr, Endpoint(workload_uid=uid, ip=addr, node=e.get("nodeName", ""), ready=ready,
                                              ports=eports))
    return list(out.values())


def node_localities(idx: Index) -> dict[str, str]:
    """Node name -> "region/zone/subzone" from its well-known topology labels, as Istio reads them
    (for locality load balancing, waypoint/traffic/locality.py); "" parts where a label is
    missing, no entry when the node has none of them."""
    out = {}
    for node in idx.kind("Node"):
        labels = labels_of(node)
        parts = [labels.get(k, "") for k in TOPOLOGY_LABELS]
        if any(parts):
            out[name_of(node)] = "/".join(parts)
    return out


def pod_locality(pod: Obj, nodes: dict[str, str]) -> str:
    """The pod's locality: its `istio-locality` label, else its node's; "" when unknown."""
    own = labels_of(pod).get(LOCALITY_LABEL, "")
    if own:
        r, _, rest = own.partition(".")
        z, _, s = rest.partition(".")
        return f"{r}/{z}/{s}"
    return nodes.get((pod.get("spec") or {}).get("nodeName", ""), "")


def pod_facts(pod: Obj, ns_labels: dict[str, str], trust_domain: str) -> PodFacts:
    """What the pod's Workload takes from the pod, its namespace's labels and the trust domain."""
    meta, ns = md(pod), ns_of(pod)
    sa = service_account(pod)
    labels = labels_of(pod)
    enrolled = is_enrolled(pod, ns_labels)
    annotations = meta.get("annotations") or {}
    own = labels.get(LOCALITY_LABEL, "")
    gateway = first_label(labels, GATEWAY_NAME_LABELS)
    return PodFacts(
        uid=meta.get("uid") or f"{ns}/{meta.get('name')}", endpoint_uid=meta.get("uid", ""), name=meta.get("name", ""), namespace=ns,
        ips=tuple(pod_ips(pod)), node=(pod.get("spec") or {}).get("nodeName", ""),
        service_account=sa, identity=spiffe_id(trust_domain, ns, sa),
        enrolled=enrolled, waypoint=waypoint_ref(labels, ns, fallback=waypoint_ref(ns_labels, ns)),
        protocol="HBONE" if enrolled else "TCP",
        probe_ports=tuple(probe_ports(pod)), netns=annotations.get(NETNS_ANNOTATION, ""),
        cgroup=annotations.get(CGROUP_ANNOTATION, ""),
        own_locality=pod_locality(pod, {}) if own else "", gateway=f"{ns}/{gateway}" if gateway else "")


def make_workload(pod: Obj, f: PodFacts, services: dict[str, list[int]], locality: str, waypoint: str,
                  protocol: str) -> Workload:
    """A Workload of its own (no container shared with another) from the pod, its facts and what
    it shares with the snapshot."""
    return Workload(
        uid=f.uid, name=f.name, namespace=f.namespace, ips=list(f.ips), node=f.node,
        service_account=f.service_account, identity=f.identity, labels=labels_of(pod), enrolled=f.enrolled,
        waypoint=waypoint, protocol=protocol, services={k: list(v) for k, v in sorted(services.items())},
        annotations=dict(md(pod).get("annotations") or {}), probe_ports=list(f.probe_ports), netns=f.netns,
        cgroup=f.cgroup, locality=locality)


def _backed(services: list[Service]) -> tuple[dict[str, dict[str, list[int]]], dict[tuple[str, str], dict[str, list[int]]]]:
    """The Services each endpoint backs, with their ports: by workload uid, and by (namespace, IP)
    for endpoints that name no pod."""
    by_uid: dict[str, dict[str, list[int]]] = {}
    by_ip: dict[tuple[str, str], dict[str, list[int]]] = {}
    for svc in services:
        key = f"{svc.namespace}/{svc.name}"
        ports = [p.port for p in svc.ports]     # one list per Service: make_workload copies it
        for ep in svc.endpoints:
            target = by_uid.setdefault(ep.workload_uid, {}) if ep.workload_uid else by_ip.setdefault(
                (svc.namespace, ep.ip), {})
            target[key] = ports
    return by_uid, by_ip


def translate_workloads(idx: Index, services: list[Service], trust_domain: str,
                        gateways: Mapping[str, str] | None = None,
                        admits: Callable[[str, str], bool] = lambda wp, ns: True,
                        refused: dict[tuple[str, str], list[str]] | None = None,
                        memo: TranslationMemo | None = None,
                        errors: list[FieldError] | None = None) -> list[Workload]:
    """The Workload of every pod with a sandbox. `gateways` (waypoint Gateways, "ns/name" -> what
    they serve, `waypoints.waypoint_gateways`) and `admits` make each use-waypoint reference
    effective (`waypoints.workload_waypoint`); a reference the waypoint does not admit is dropped
    and noted in `refused` ((namespace, waypoint) -> pod names). `memo`: a `TranslationMemo` to reuse
    the last translation's Workloads from (only for a `Validated` snapshot: see its module).
    `errors`: where a pod left out for another's uid or mesh address goes (`Claims`)."""
    by_uid, by_ip = _backed(services)
    claims = Claims()
    gateways = gateways or {}
    out = []
    nodes = node_localities(idx)
    namespaces = idx.namespaces
    pod: Obj = {}
    try:
        for pod in idx.kind("Pod"):
            held = memo.workload(pod, namespaces, trust_domain) if memo is not None else None
            if held is not None:
                f, namespace = held.facts, held.namespace
            elif has_sandbox(pod):
                namespace = namespaces.get(ns_of(pod))
                f = pod_facts(pod, labels_of(namespace) if namespace else {}, trust_domain)
            else:
                continue
            backed_ip = by_ip.get((f.namespace, f.ips[0])) if by_ip else None
            backed_uid = by_uid.get(f.endpoint_uid) or {}
            services_of = {**backed_ip, **backed_uid} if backed_ip else backed_uid
            locality = f.own_locality or nodes.get(f.node, "")
            if f.gateway in gateways or f.waypoint in gateways:
                waypoint, waypoint_pod, not_admitted = workload_waypoint(f.gateway, f.waypoint, f.namespace,
                                                                         gateways, admits)
                if not_admitted and refused is not None:
                    refused.setdefault((f.namespace, f.waypoint), []).append(f.name)
            else:       # what workload_waypoint gives for a reference to no waypoint Gateway
                waypoint, waypoint_pod = f.waypoint, False
            protocol = "HBONE" if waypoint_pod else f.protocol
            w = held.workload if held is not None else None
            # Equal dicts have the same keys, so the same order once sorted (make_workload).
            if (w is not None and w.services == services_of and w.locality == locality
                    and w.waypoint == waypoint and w.protocol == protocol):
                if _conflict(claims, w, errors):
                    continue
                out.append(w)
                if memo is not None:
                    memo.keep(pod, held, REUSED)
                continue
            wl = make_workload(pod, f, services_of, locality, waypoint, protocol)
            if _conflict(claims, wl, errors):
                continue        # not kept in the memo either: it holds this snapshot's Workloads
            out.append(wl)
            if memo is not None:
                memo.keep(pod, WorkloadEntry(namespace, trust_domain, f, wl), TRANSLATED if held is None else REMADE)
    except TranslationBug:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised, with the pod named (as `blame`)
        raise TranslationBug(object_ref(pod), e) from e
    return out


class Claims:
    """The uids and mesh addresses of the Workloads taken so far (oldest pod first, as translated),
    to leave out the later of two that the data plane could not tell apart: two pods of one uid
    (a Workload's name: the config server refuses a snapshot holding a name twice, so no change
    anywhere in the mesh would be served), and two mesh (HBONE) pods of one address (ztunnel
    refuses the update: which identity answers for it?). The older keeps what it has: a pod
    written later cannot take another's identity by claiming its uid or address. Plain TCP
    workloads may share an address (host-network pods share their node's)."""

    def __init__(self) -> None:
        self.by_uid: dict[str, Workload] = {}
        self.by_ip: dict[str, Workload] = {}

    def take(self, w: Workload) -> FieldError | None:
        """Take `w`'s uid and addresses; or, when another holds one, the error that leaves it out."""
        ref = f"Pod/{w.namespace}/{w.name}"
        holder = self.by_uid.get(w.uid)
        if holder is not None:
            return FieldError(ref, "metadata.uid", f'"{w.uid}" is already the uid of Pod {holder.namespace}/'
                                                   f"{holder.name}: this pod is not applied")
        ips = [str(ipaddress.ip_address(ip)) for ip in w.ips] if w.protocol == "HBONE" else []
        for ip in ips:
            other = self.by_ip.get(ip)
            if other is not None:
                return FieldError(ref, "status.podIPs", f"{ip} is already the address of mesh Pod {other.namespace}/"
                                                        f"{other.name}: inbound traffic to it would have two "
                                                        "identities, so this pod is not applied")
        self.by_uid[w.uid] = w
        self.by_ip.update((ip, w) for ip in ips)
        return None


def _conflict(claims: Claims, w: Workload, errors: list[FieldError] | None) -> bool:
    e = claims.take(w)
    if e is not None and errors is not None:
        errors.append(e)
    return e is not None
