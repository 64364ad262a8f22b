"""`ambit describe pod|service`: what the mesh does with one pod or Service, as `istioctl x describe`.

Nothing here decides anything itself. The snapshot (the lab's store or the cluster's objects) is
translated by the controller's own `translate`, so the workload, its identity, its waypoint, the
WaypointRoutes of its Services (which name the VirtualServices, HTTPRoutes and DestinationRules
that contributed) and the policies are exactly what the data plane receives. Which
AuthorizationPolicies and PeerAuthentications apply to a pod is answered by ztunnel's own
`MeshState.policies_for` and `authz.peer_authn`; the waypoint-scoped (targetRefs) policies are those
whose refs name the Service or its waypoint Gateway. Certificate state comes from the ztunnel on
the pod's node, as it reported it to the controller's debug API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ambit.podannotations import ANN_BYPASS_INBOUND, inbound_bypass
from ambitctl.authzcheck import mesh_state
from controller.translate import Translation
from ztunnel import authz as zauthz


class NotFound(LookupError):
    pass


@dataclass
class Description:
    kind: str
    namespace: str
    name: str
    facts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, **self.facts}


def _routes_for(tr: Translation, services: list[str]) -> list[dict[str, Any]]:
    out = []
    for wr in tr.waypoint_routes:
        if wr.service in services:
            out.append({"host": wr.hostname, "service": wr.service, "waypoint": wr.waypoint or None,
                        "sources": list(wr.sources), "http_routes": len(wr.http), "tcp_routes": len(wr.tcp),
                        "tls_routes": len(wr.tls),
                        "subsets": [s.name for s in wr.subsets]})
    return out


def _targets(a: Any, services: list[str], waypoints: set[str]) -> bool:
    for r in a.target_refs:
        kind, name, ns = r.get("kind", ""), r.get("name", ""), r.get("namespace") or a.namespace
        if kind == "Service" and f"{ns}/{name}" in services:
            return True
        if kind == "Gateway" and f"{ns}/{name}" in waypoints:
            return True
    return False


def _policy(a: Any, where: str) -> dict[str, Any]:
    return {"ref": f"AuthorizationPolicy/{a.namespace}/{a.name}", "action": a.action, "scope": a.scope,
            "enforced_by": where, "rules": len(a.rules), "l7": bool(a.has_l7)}


def _waypoint_policies(tr: Translation, services: list[str], waypoints: set[str]) -> list[dict[str, Any]]:
    return [_policy(a, "waypoint") for a in tr.authorizations
            if a.scope == "waypoint" and _targets(a, services, waypoints)]


def describe_pod(tr: Translation, namespace: str, name: str, root_namespace: str = "ambit-system",
                 certs: list[dict[str, Any]] | None = None) -> Description:
    ws = [w for w in tr.workloads if w.namespace == namespace and w.name == name]
    if not ws:
        raise NotFound(f"pod {namespace}/{name} not found (or it has no IP yet, so the mesh does not know it)")
    w = ws[0]
    services = sorted(w.services)
    svc_waypoints = {s.waypoint for s in tr.services if f"{s.namespace}/{s.name}" in services and s.waypoint}
    waypoints = {x for x in {w.waypoint, *svc_waypoints} if x}
    cfg = mesh_state(tr, root_namespace)
    pol = cfg.policies_for(w)
    pa = zauthz.peer_authn(pol.peer_authns, w, 0, root_namespace)
    d = Description("Pod", namespace, name)
    d.facts = {
        "enrolled": w.enrolled, "protocol": w.protocol, "node": w.node, "ips": list(w.ips),
        "service_account": w.service_account, "identity": w.identity,
        "waypoint": {"workload": w.waypoint or None,
                     "services": {s: x for s in services for t in tr.services
                                  if f"{t.namespace}/{t.name}" == s for x in [t.waypoint or None]}},
        "services": services,
        "routes": _routes_for(tr, services),
        "authorization_policies": [_policy(a, "ztunnel") for a in pol.authorizations]
                                  + _waypoint_policies(tr, services, waypoints),
        "peer_authentication": {"mode": pa.mode, "decided_by": f"PeerAuthentication/{pa.policy}" if pa.policy else "default (PERMISSIVE)",
                                "policies": [f"PeerAuthentication/{p.namespace}/{p.name}" for p in pol.peer_authns]},
        "certificate": _cert(w.identity, certs),
    }
    if w.enrolled and inbound_bypass(w.annotations).enabled:
        d.facts["inbound_bypass"] = (f"{ANN_BYPASS_INBOUND}=true (ingress mode): plaintext inbound reaches the app "
                                     "without ztunnel; mTLS and the ztunnel policies above cover HBONE only")
    return d


def _cert(identity: str, certs: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if certs is None:
        return None                      # not asked (no debug API)
    for c in certs:
        if c.get("identity") in (identity, identity.removeprefix("spiffe://")):
            return {k: c.get(k) for k in ("identity", "state", "serial", "not_before", "not_after", "last_error")}
    return {"identity": identity, "state": "none held by the node's ztunnel (fetched on first use)"}


def describe_service(tr: Translation, namespace: str, name: str, root_namespace: str = "ambit-system") -> Description:
    ss = [s for s in tr.services if s.namespace == namespace and s.name == name]
    if not ss:
        raise NotFound(f"service {namespace}/{name} not found")
    s = ss[0]
    key = f"{namespace}/{name}"
    cfg = mesh_state(tr, root_namespace)
    by_uid = {w.uid: w for w in tr.workloads}
    pods, ztunnel_policies = [], {}
    for e in s.endpoints:
        w = by_uid.get(e.workload_uid)
        pods.append({"pod": f"{w.namespace}/{w.name}" if w else e.workload_uid, "ip": e.ip, "node": e.node,
                     "ready": e.ready, "enrolled": bool(w and w.enrolled),
                     "locality": e.locality or (w.locality if w else "")})
        if w is not None:
            for a in cfg.policies_for(w).authorizations:
                ztunnel_policies[(a.namespace, a.name)] = _policy(a, "ztunnel")
    d = Description("Service", namespace, name)
    d.facts = {
        "hostname": s.hostname, "vips": list(s.vips),
        "ports": [{"port": p.port, "target_port": p.target_port or p.target_port_name, "protocol": p.protocol}
                  for p in s.ports],
        "waypoint": s.waypoint or None, "endpoints": pods, "balancing": _balancing(s),
        "routes": _routes_for(tr, [key]),
        "authorization_policies": list(ztunnel_policies.values())
                                  + _waypoint_policies(tr, [key], {s.waypoint} if s.waypoint else set()),
    }
    return d


def _balancing(s: Any) -> str:
    """Which endpoints a client of Service `s` reaches: what ztunnel (and its waypoint) apply."""
    if s.node_local:
        return "internalTrafficPolicy Local: the client's node only (ztunnel)"
    if s.traffic_distribution == "PreferSameZone":
        return "PreferSameZone: the client's zone, then region, then any (ztunnel; the waypoint from its own zone)"
    if s.traffic_distribution == "PreferSameNode":
        return ("PreferSameNode: the client's node, then subzone, zone, region, then any "
                "(ztunnel; the waypoint from its own node)")
    return "every ready endpoint"


def format_description(d: Description) -> str:
    f = d.facts
    lines = [f"{d.kind}: {d.namespace}/{d.name}"]
    if d.kind == "Pod":
        lines += [f"  mesh:       {'enrolled (ambient, ' + f['protocol'] + ')' if f['enrolled'] else 'NOT enrolled (plain ' + f['protocol'] + ')'}",
                  f"  node:       {f['node']}   IPs: {', '.join(f['ips'])}",
                  f"  identity:   {f['identity']} (service account {f['service_account']})"]
        wp = f["waypoint"]
        via = [f"{s} -> {w}" for s, w in wp["services"].items() if w]
        lines.append(f"  waypoint:   {wp['workload'] or 'none for the pod'}"
                     + (f"; services: {', '.join(via)}" if via else ""))
        lines.append(f"  services:   {', '.join(f['services']) or 'none'}")
    else:
        lines += [f"  host:       {f['hostname']}   VIPs: {', '.join(f['vips']) or 'None (headless)'}",
                  "  ports:      " + (", ".join(f"{p['port']}->{p['target_port']}/{p['protocol']}" for p in f["ports"]) or "-"),
                  f"  waypoint:   {f['waypoint'] or 'none'}",
                  f"  balancing:  {f['balancing']}",
                  "  endpoints:  " + (", ".join(f"{e['pod']} ({e['ip']}{', ' + e['locality'] if e['locality'] else ''}"
                                                f"{'' if e['enrolled'] else ', not enrolled'})"
                                                for e in f["endpoints"]) or "none")]
    lines.append("  routes:" if f["routes"] else "  routes:     none (plain Service load balancing)")
    for r in f["routes"]:
        lines.append(f"    {r['host']}: {r['http_routes']} HTTP / {r['tcp_routes']} TCP / {r['tls_routes']} TLS routes"
                     + (f", subsets {', '.join(r['subsets'])}" if r["subsets"] else "")
                     + (f" (waypoint {r['waypoint']})" if r["waypoint"] else " (NO waypoint: not applied)"))
        lines += [f"      from {src}" for src in r["sources"]]
    pols = f["authorization_policies"]
    lines.append("  authorization:" if pols else "  authorization: none (allow all)")
    for p in pols:
        lines.append(f"    {p['ref']}: {p['action']}, {p['scope']} scope, {p['rules']} rules"
                     f"{', L7' if p['l7'] else ''}, enforced by {p['enforced_by']}")
    if "peer_authentication" in f:
        pa = f["peer_authentication"]
        lines.append(f"  mTLS:       {pa['mode']} (decided by {pa['decided_by']})")
    if "inbound_bypass" in f:
        lines.append(f"  inbound:    NOT captured: {f['inbound_bypass']}")
    if d.kind == "Pod":
        c = f.get("certificate")
        if c is None:
            lines.append("  certificate: unknown (the controller's debug API was not reached)")
        else:
            lines.append(f"  certificate: {c.get('state')}" + (f", expires {c['not_after']}" if c.get("not_after") else "")
                         + (f", serial {c['serial'][:16]}" if c.get("serial") else "")
                         + (f", last error: {c['last_error']}" if c.get("last_error") else ""))
    return "\n".join(lines)
