"""The topology view's graph: per-second rates of Istio's standard metrics in, nodes and edges out.

Pure: no I/O, no clock. Both data sources feed it the same shape, a list of `Rate`s, one per
series (its labels, including the scrape target's `gateway`/`namespace` for waypoints) with the
series' per-second increase: Prometheus answers `rate(...)` queries with exactly that, and the
direct scraper derives it from two scrapes of the components (controller/dashboard/rates.py).

Nodes are workloads (`wl:NS/NAME`), services (`svc:NS/NAME`) and waypoints (`wp:NS/NAME`). Traffic
is drawn the way it flows in ambient mode:
- L4 (ztunnel, `istio_tcp_*`): workload -> service -> workload;
- HTTP through a waypoint (`reporter="waypoint"`): workload -> waypoint -> service -> workload.
An edge carries request (or connection) rate, error rate, p99 latency (HTTP only: Istio's TCP
metrics have no latency), bytes per second and whether every series on it was mutual TLS.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ambit.model import Authorization, PeerAuthn, Service, Workload
from ambit.quantile import histogram_quantile
from controller.translate.index import selector_matches

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
UNKNOWN = "unknown"
MUTUAL_TLS = "mutual_tls"


@dataclass(frozen=True)
class Rate:
    """One series' per-second increase (for a histogram bucket, `labels` has `le`)."""
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class EdgeStats:
    protocol: str = "tcp"                     # http | tcp (http wins when both cross an edge)
    rate: float = 0.0                         # requests/s (http) or connections opened/s (tcp)
    errors: float = 0.0                       # 5xx responses/s, or connections closed with a response flag/s
    closed: float = 0.0                       # tcp: connections closed/s (the error rate's denominator)
    bytes: float = 0.0                        # request + response (sent + received) bytes/s
    mtls: bool = True                         # every series on the edge was mutual TLS
    buckets: dict[float, float] = field(default_factory=dict)   # le -> rate, merged over series

    def add_security(self, policy: str) -> None:
        self.mtls = self.mtls and policy == MUTUAL_TLS

    def json(self) -> dict[str, Any]:
        denom = self.rate if self.protocol == "http" else self.closed
        return {"protocol": self.protocol, "rate": round(self.rate, 4),
                "errorRate": round(self.errors / denom, 4) if denom > 0 else 0.0,
                "p99Ms": _round(histogram_quantile(0.99, self.buckets)), "bytesPerSecond": round(self.bytes, 2),
                "mtls": self.mtls}


def _round(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(v, 3)


def wl_id(ns: str, name: str) -> str:
    return f"wl:{ns}/{name}"


def svc_id(ns: str, name: str) -> str:
    return f"svc:{ns}/{name}"


def wp_id(ns: str, name: str) -> str:
    return f"wp:{ns}/{name}"


@dataclass
class Mesh:
    """What the controller's translation says about the mesh (for nodes without traffic, waypoints
    and policies); empty when the view has no translation yet."""
    workloads: list[Workload] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    authorizations: list[Authorization] = field(default_factory=list)
    peer_authns: list[PeerAuthn] = field(default_factory=list)
    root_namespace: str = "ambit-system"

    def waypoint_workloads(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(ns, pod name) -> (ns, Gateway name) for every waypoint pod."""
        return {(w.namespace, w.name): (w.namespace, w.labels[GATEWAY_NAME_LABEL])
                for w in self.workloads if GATEWAY_NAME_LABEL in w.labels}


def _workload_name(labels: dict[str, str], side: str) -> tuple[str, str]:
    return (labels.get(f"{side}_workload_namespace") or UNKNOWN, labels.get(f"{side}_workload") or UNKNOWN)


def _service(labels: dict[str, str]) -> tuple[str, str] | None:
    name = labels.get("destination_service_name") or ""
    if not name or name == UNKNOWN:
        return None
    return (labels.get("destination_service_namespace") or labels.get("destination_workload_namespace") or UNKNOWN,
            name)


def build(rates: list[Rate], mesh: Mesh | None = None) -> dict[str, Any]:
    """`{"nodes": [...], "edges": [...]}`: the JSON the page draws (see module docstring)."""
    mesh = mesh or Mesh()
    waypoint_pods = mesh.waypoint_workloads()
    edges: dict[tuple[str, str], EdgeStats] = defaultdict(EdgeStats)
    nodes: dict[str, dict[str, Any]] = {}

    def node(nid: str) -> None:
        if nid not in nodes:
            kind, _, rest = nid.partition(":")
            ns, _, name = rest.partition("/")
            nodes[nid] = {"id": nid, "kind": {"wl": "workload", "svc": "service", "wp": "waypoint"}[kind],
                          "namespace": ns, "name": name}

    def path(labels: dict[str, str]) -> list[str]:
        src, dst, svc = _workload_name(labels, "source"), _workload_name(labels, "destination"), _service(labels)
        # an ingress gateway reports as Istio's gateways (reporter="source", its own pod the
        # source): it is drawn as its Gateway, as waypoint pods are
        src_gw = waypoint_pods.get(src)
        hops = [wp_id(*src_gw) if src_gw is not None else wl_id(*src)]
        if labels.get("reporter") == "waypoint":
            # the scrape target's labels name the waypoint: `gateway` (the lab's, the direct
            # scraper's), else the pod (a cluster Prometheus's usual `namespace`/`pod` relabelling)
            ns = labels.get("namespace") or UNKNOWN
            gw = (ns, labels["gateway"]) if labels.get("gateway") else waypoint_pods.get(
                (ns, labels.get("pod", "")), (ns, UNKNOWN))
            hops.append(wp_id(*gw))
        if svc is not None:
            hops.append(svc_id(*svc))
        hops.append(wl_id(*dst))
        return hops

    def touches_waypoint(labels: dict[str, str]) -> bool:
        return any(_workload_name(labels, s) in waypoint_pods for s in ("source", "destination"))

    # L4: one reporter per flow, so a connection is not counted twice: the source ztunnel's when
    # there is one (a plaintext client outside the mesh has only the destination's).
    tcp_keys_by_reporter: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for r in rates:
        if r.name.startswith("istio_tcp_"):
            tcp_keys_by_reporter[r.labels.get("reporter", "")].add(_flow_key(r.labels))

    for r in rates:
        lb = r.labels
        if r.name.startswith("istio_tcp_"):
            if touches_waypoint(lb):
                continue        # ztunnel <-> waypoint legs: the waypoint's HTTP metrics describe these requests
            rep = lb.get("reporter", "")
            if rep == "destination" and _flow_key(lb) in tcp_keys_by_reporter["source"]:
                continue
            if rep not in ("source", "destination"):
                continue
        elif not r.name.startswith("istio_request") and not r.name.startswith("istio_response"):
            continue
        hops = path(lb)
        for h in hops:
            node(h)
        for a, b in zip(hops, hops[1:], strict=False):
            _account(edges[(a, b)], r)

    for w in mesh.workloads:            # every known workload, with or without traffic
        gw = waypoint_pods.get((w.namespace, w.name))
        node(wp_id(*gw) if gw else wl_id(w.namespace, w.name))
    for wid in list(nodes):            # waypoint pods appear as their Gateway, never as workloads
        n = nodes[wid]
        if n["kind"] == "workload" and (n["namespace"], n["name"]) in waypoint_pods:
            del nodes[wid]
    services = {(s.namespace, s.name): s for s in mesh.services}
    workloads = {(w.namespace, w.name): w for w in mesh.workloads}
    for n in nodes.values():
        n["policies"] = policies_for(n, mesh, workloads)
        if n["kind"] == "service":
            svc = services.get((n["namespace"], n["name"]))
            n["waypoint"] = svc.waypoint if svc else ""
        if n["kind"] == "workload":
            w = workloads.get((n["namespace"], n["name"]))
            n["node"] = w.node if w else ""
            n["waypoint"] = w.waypoint if w else ""
            n["inMesh"] = bool(w and w.enrolled)
    out_edges = [{"source": a, "target": b, **st.json()} for (a, b), st in sorted(edges.items())
                 if a in nodes and b in nodes]
    return {"nodes": sorted(nodes.values(), key=lambda n: n["id"]), "edges": out_edges}


def _flow_key(lb: dict[str, str]) -> tuple[str, ...]:
    return (*_workload_name(lb, "source"), *_workload_name(lb, "destination"), *(_service(lb) or ("", "")))


def _account(st: EdgeStats, r: Rate) -> None:
    lb, v, name = r.labels, r.value, r.name
    st.add_security(lb.get("connection_security_policy", UNKNOWN))
    if name == "istio_requests_total":
        st.protocol = "http"
        st.rate += v
        code = lb.get("response_code", "")
        if code.startswith("5") or code == "0":
            st.errors += v
    elif name == "istio_request_duration_milliseconds_bucket":
        st.protocol = "http"
        le = float(lb.get("le", "+Inf"))
        st.buckets[le] = st.buckets.get(le, 0.0) + v
    elif name in ("istio_request_bytes_sum", "istio_response_bytes_sum"):
        st.bytes += v
    elif name == "istio_tcp_connections_opened_total":
        if st.protocol != "http":
            st.rate += v
    elif name == "istio_tcp_connections_closed_total":
        st.closed += v
        if lb.get("response_flags", "-") not in ("-", ""):
            st.errors += v
    elif name in ("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"):
        st.bytes += v


def policies_for(n: dict[str, Any], mesh: Mesh,
                 workloads: dict[tuple[str, str], Workload] | None = None) -> list[dict[str, str]]:
    """The AuthorizationPolicies and PeerAuthentications that apply to a node, as the translation
    scoped them: mesh-wide (root namespace), the node's namespace, a selector matching a workload's
    labels, or targetRefs naming a waypoint's Gateway or a Service."""
    out: list[dict[str, str]] = []
    ns, name, kind = n["namespace"], n["name"], n["kind"]
    labels: dict[str, str] = {}
    if kind == "workload":
        if workloads is None:
            workloads = {(w.namespace, w.name): w for w in mesh.workloads}
        w = workloads.get((ns, name))
        labels = w.labels if w else {}
    for a in mesh.authorizations:
        why = ""
        if a.scope == "waypoint":
            for ref in a.target_refs:
                rkind, rname = ref.get("kind", ""), ref.get("name", "")
                rns = ref.get("namespace") or a.namespace
                if rns == ns and rname == name and ((rkind == "Gateway" and kind == "waypoint")
                                                      or (rkind == "Service" and kind == "service")):
                    why = f"targetRef {rkind}"
        elif kind == "workload":
            if a.scope == "global":
                why = "mesh-wide"
            elif a.namespace == ns and a.scope == "namespace":
                why = "namespace"
            elif a.namespace == ns and a.scope == "workload" and selector_matches(a.selector, labels):
                why = "selector"
        if why:
            out.append({"kind": "AuthorizationPolicy", "name": f"{a.namespace}/{a.name}", "action": a.action,
                        "scope": why})
    if kind == "workload":
        for p in mesh.peer_authns:
            why = ""
            if p.root and not p.selector:
                why = "mesh-wide"
            elif p.namespace == ns and not p.selector:
                why = "namespace"
            elif p.namespace == ns and selector_matches(p.selector, labels):
                why = "selector"
            if why:
                out.append({"kind": "PeerAuthentication", "name": f"{p.namespace}/{p.name}", "action": p.mode,
                            "scope": why})
    return out
