"""Per-subscriber scoping: which resources each subscriber receives (sans-IO, pure).

The rules, and why (N is the node the stream *authenticated* as when the server has an
authenticator, see controller.configserver.auth; a claimed name never widens a view):

* agent (node N) -- Workloads whose node is N, nothing else is narrowed. The agent only captures
  pods on its own node; a cluster-wide pod list would make every agent churn on every pod event.
* ztunnel (node N) -- everything. Outbound routing needs every remote pod (its IPs, identity and
  whether it speaks HBONE or must get plain passthrough), every Service, and authorization and
  PeerAuthentication must never be missing for a pod that was just scheduled here (a missing
  DENY is a hole). Sending remote pods in a slimmer form was considered and rejected: each
  node's copy of a pod would get its own version, multiplying encoding work by the node count,
  for savings of a few fields.
* waypoint W ("ns/name") -- every Service (its routes send to backends anywhere in the mesh, not only
  to the Services it fronts, and a backend bound to another waypoint is reached through that one:
  waypoint/app.py `_via_waypoint`; Istio's waypoints get every Service too; which tunnels W admits
  is its own check, `Service.waypoint == W`), every Workload (it routes to the
  ones behind it and resolves its clients, wherever they run, for telemetry and sourceLabels), the
  Authorizations that can apply to them (mesh-wide ones and those in the namespaces of what it
  fronts), and every PeerAuthn; the Telemetries that can apply to it: mesh-wide ones (root
  namespace, `scope` global) and those in its own namespace and the namespaces of the Services it
  fronts (targetRefs to its Gateway or those Services; namespace-wide ones for its own namespace).
* ztunnel -- every Telemetry: it resolves one per workload on its node, which can be in any namespace.
* IngressGateway (ns/name) -- to the pods of that gateway only (they subscribe as waypoint ns/name):
  it carries its listeners' TLS keys. Such a gateway gets every Service, as it routes to any.
* ClientCredential (ns/name) -- to the waypoints and gateways of namespace ns only: it carries a
  Secret's private key, which never leaves its namespace (Istio lets a proxy read the Secrets of its
  own namespace). ztunnel and agents never get one.
* any type without a rule here -- everything (safe default for types added later; add a rule
  when a type has a natural owner, e.g. routes attached to a waypoint's Services).

Scoping only filters, it never copies or edits resources: a resource then has one version for all
subscribers, computed once per snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from ambit.configclient.node import NodeInfo
from ambit.model import (
    Authorization,
    ClientCredential,
    IngressGateway,
    MeshSettings,
    PeerAuthn,
    Resource,
    Service,
    TelemetryPolicy,
    Workload,
)

Snapshot = Mapping[str, Sequence[Resource]]

# The order in which one update's deltas go out on a stream. The mesh settings (trust domains) come
# first, as every admission depends on them. Policy comes before what it protects
# and pods before the Services whose endpoints name them, so a client never applies a Service
# whose endpoints it cannot resolve, nor a new pod without its policy.
TYPE_ORDER: tuple[str, ...] = (MeshSettings.TYPE, PeerAuthn.TYPE, Authorization.TYPE, Workload.TYPE, Service.TYPE)


def type_rank(type_url: str) -> tuple[int, str]:
    try:
        return (TYPE_ORDER.index(type_url), "")
    except ValueError:
        return (len(TYPE_ORDER), type_url)


def scope_key(node: NodeInfo) -> tuple[str, ...]:
    """Subscribers with equal keys receive equal views, so the server computes a view once per key."""
    if node.kind == "agent":
        return ("agent", node.name)
    if node.kind == "waypoint":
        return ("waypoint", node.waypoint)
    return (node.kind,)


def workloads_by_node(workloads: Sequence[Resource]) -> dict[str, list[Resource]]:
    """Workloads by node, in snapshot order: every agent's Workload view in one pass (filtering
    10,000 workloads once per agent is 100 passes on 100 nodes)."""
    out: dict[str, list[Resource]] = {}
    for w in workloads:
        out.setdefault(cast(Workload, w).node, []).append(w)
    return out


def scope(node: NodeInfo, type_url: str, snapshot: Snapshot,
          by_node: Mapping[str, list[Resource]] | None = None) -> list[Resource]:
    """The resources of `type_url` that `node` receives, given the whole `snapshot` (type -> list).

    The whole snapshot is passed because some views depend on other types (a waypoint's
    Workloads are the ones backing its Services). `by_node`: `workloads_by_node` of the
    snapshot's Workloads, when the caller keeps it for all agents.
    """
    if node.kind == "agent" and type_url == Workload.TYPE and by_node is not None:
        return list(by_node.get(node.name, ()))
    resources = list(snapshot.get(type_url, ()))
    if type_url == IngressGateway.TYPE:
        return [g for g in resources if node.kind == "waypoint" and g.resource_name == node.waypoint]
    if type_url == ClientCredential.TYPE:
        ns = node.waypoint.split("/", 1)[0] if node.kind == "waypoint" else None
        return [c for c in resources if cast(ClientCredential, c).namespace == ns]
    if type_url == Authorization.TYPE and node.kind != "waypoint":
        # CUSTOM (external authorization) is enforced by waypoints and ingress gateways only (the
        # validator refuses it without targetRefs); ztunnel, and an older one NACKing the action it
        # does not know, never needs it. Nor a dry-run (istio.io/dry-run) policy, which nothing
        # enforces and only a waypoint reports (Istio's control plane gives its ztunnel none).
        resources = [a for a in resources
                     if cast(Authorization, a).action != "CUSTOM" and not cast(Authorization, a).dry_run]
    if node.kind == "agent":
        if type_url == Workload.TYPE:
            return [w for w in resources if cast(Workload, w).node == node.name]
        return resources
    if node.kind == "waypoint":
        return _waypoint_scope(node.waypoint, type_url, resources, snapshot)
    return resources


def _waypoint_scope(waypoint: str, type_url: str, resources: list[Resource], snapshot: Snapshot) -> list[Resource]:
    if type_url == Service.TYPE:
        return resources        # a waypoint's (and an ingress gateway's) routes send to any Service
    if type_url not in (Workload.TYPE, Authorization.TYPE, TelemetryPolicy.TYPE):
        return resources
    services = [cast(Service, s) for s in snapshot.get(Service.TYPE, ()) if cast(Service, s).waypoint == waypoint]
    if type_url == TelemetryPolicy.TYPE:
        tns = {s.namespace for s in services} | {waypoint.split("/")[0]}
        return [t for t in resources
                if cast(TelemetryPolicy, t).scope == "global" or cast(TelemetryPolicy, t).namespace in tns]
    backing = {ep.workload_uid for s in services for ep in s.endpoints}
    fronted_workloads = [cast(Workload, w) for w in snapshot.get(Workload.TYPE, ())
                         if cast(Workload, w).waypoint == waypoint or cast(Workload, w).uid in backing]
    if type_url == Workload.TYPE:
        # Every workload, as ztunnels get them: the waypoint resolves its *clients* too (source
        # workload, canonical service and labels for metrics, access logs and sourceLabels
        # matches), and a client can be anywhere in the mesh.
        return resources
    # Policies bound to the waypoint Gateway live in its namespace; GatewayClass-bound ones in the
    # root namespace (the waypoint decides whether its class is the one named).
    namespaces = {s.namespace for s in services} | {w.namespace for w in fronted_workloads} | {waypoint.split("/")[0]}
    return [a for a in resources
            if cast(Authorization, a).scope == "global" or cast(Authorization, a).namespace in namespaces
            or any(r.get("kind") == "GatewayClass" for r in cast(Authorization, a).target_refs)]
