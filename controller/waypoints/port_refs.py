"""Port numbers that match nothing: a Service port confused with its targetPort, or a port the
Service does not have.

A Kubernetes Service maps each of its ports to a targetPort, the port of its pods (`80→8080`).
Which of the two a field names depends on the proxy that reads it:

- a waypoint (and an ingress gateway) sees the Service port the client dialled: a VirtualService
  match's `port`, a route destination's `port.number`, a DestinationRule's `portLevelSettings`
  and the ports of an AuthorizationPolicy bound with `targetRefs` are compared with it (waypoint
  routing/matchers.py, traffic/cluster.py, authz/evaluate.py), and a destination port the
  Service lacks has no endpoints (503);
- ztunnel sees the pod's port a connection arrives on: the ports of an AuthorizationPolicy bound
  by `selector` and the keys of a PeerAuthentication's `portLevelMtls` are compared with it
  (ztunnel/authz.py, ztunnel/admission.py), as in Istio (istio/istio#49098).

Written the other way, the value never matches, silently. Istio's analyzer reports the missing
destination port (IST0101); the rest it accepts without a word. Said only where it is certain: the
hosts and targets are Services (or ServiceEntry hosts) the mesh knows, and for ztunnel every
selected pod is backed by known Services whose targetPorts are resolved and the port is none of the
pods' declared ports.
"""

from __future__ import annotations

from typing import Any

from ambit.model import Endpoint, Service, ServicePort, Workload, target_port
from ambit.policyselect import authz_selects, peer_authn_selects
from controller.translate.index import name_of, ns_of
from controller.translate.policy import target_refs
from controller.translate.routes import Hosts
from controller.validation import object_ref
from controller.waypoints.gateways import is_waypoint, waypoint_for
from controller.waypoints.never_match import rule_effect

Obj = dict[str, Any]
PORT_NOT_FOUND = "PortNotFound"      # the advisory's cause (`ambit analyze` AMB0136)


def _what(s: Service) -> str:
    return f"ServiceEntry host {s.hostname}" if s.kind == "ServiceEntry" else f"Service {s.namespace}/{s.name}"


def _pairs(s: Service) -> str:
    return ", ".join(f"{p.port}→{p.target_port_name or p.target_port or p.port}" for p in s.ports)


def _named(services: list[Service]) -> str:
    return " or ".join(f"{_what(s)} ({_pairs(s)})" for s in services)


def _write(meant: set[int], how: str = "write") -> str:
    if not meant:
        return ""
    ports = sorted(meant)
    return f"; {how} {ports[0]}" if len(ports) == 1 else f"; {how} one of {', '.join(map(str, ports))}"


def _targets(sp: ServicePort, eps: list[Endpoint]) -> set[int] | None:
    """The pod ports `sp` reaches on the endpoints `eps`; None when a named targetPort is not
    resolved for one of them (then nothing is certain)."""
    if not sp.target_port_name:
        return {target_port(sp, ep) for ep in eps}
    out = set()
    for ep in eps:
        own = next((o.target_port for o in ep.ports if o.port == sp.port and o.target_port), 0)
        if not own:
            return None
        out.add(own)
    return out


# -- what a waypoint compares: the Service port ---------------------------------------------------

def _dialled(s: Service) -> bool:
    """Whether clients dial the Service's own ports: not a headless Service (no VIP: its clients
    address the pods, on their ports) nor one without ports."""
    return bool(s.ports) and (bool(s.vips) or s.kind == "ServiceEntry")


def _not_a_service_port(port: int, services: list[Service]) -> tuple[str, set[int]] | None:
    """(what it is not a port of, the Service ports whose targetPort it is) when `port` is no port
    of `services`; None when it is one."""
    if not services or not all(_dialled(s) for s in services) or any(p.port == port for s in services for p in s.ports):
        return None
    meant = {p.port for s in services for p in s.ports
             if port in (_targets(p, s.endpoints) or set()) | {p.target_port or p.port}}
    return f"port {port} is not a port of {_named(services)}", meant


def _as_port(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _mesh_only(gateways: Any) -> bool:
    return not gateways or list(gateways) == ["mesh"]


def _virtual_service(o: Obj, hosts: Hosts) -> list[tuple[str, str, str]]:
    spec, ns, ref, out = o.get("spec") or {}, ns_of(o), object_ref(o), []
    names = [hosts.fqdn(h, ns) for h in spec.get("hosts") or [] if isinstance(h, str)]
    known = [hosts.by_host[h] for h in names if h in hosts.by_host]
    services = known if names and len(known) == len(names) else []
    for section in ("http", "tcp", "tls"):
        for i, r in enumerate(spec.get(section) or []):
            for j, m in enumerate(r.get("match") or []):
                port = _as_port(m.get("port"))
                found = _not_a_service_port(port, services) if port else None
                # a match bound to an ingress gateway compares the gateway's port instead
                if found and _mesh_only(m.get("gateways") or spec.get("gateways")):
                    out.append((ref, f"spec.{section}[{i}].match[{j}].port", (
                        f"{found[0]}: the waypoint matches the port the client dialled, so this match never holds"
                        + _write(found[1]))))
            for j, d in enumerate(r.get("route") or []):
                dest = d.get("destination") or {}
                port = _as_port((dest.get("port") or {}).get("number"))
                svc = hosts.by_host.get(hosts.fqdn(str(dest.get("host", "")), ns))
                found = _not_a_service_port(port, [svc]) if port and svc is not None else None
                if found:
                    what = "request" if section == "http" else "connection"
                    out.append((ref, f"spec.{section}[{i}].route[{j}].destination.port.number", (
                        f"{found[0]}: the proxy sends to a Service port (and maps it to the targetPort itself), so "
                        f"every {what} routed here fails (503, no healthy upstream){_write(found[1])}")))
            mirrors = [(f"spec.{section}[{i}].mirror", r.get("mirror"))] if r.get("mirror") else []
            mirrors += [(f"spec.{section}[{i}].mirrors[{k}].destination", m.get("destination"))
                        for k, m in enumerate(r.get("mirrors") or []) if isinstance(m, dict)]
            for where, dest in mirrors:
                dest = dest if isinstance(dest, dict) else {}
                port = _as_port((dest.get("port") or {}).get("number"))
                svc = hosts.by_host.get(hosts.fqdn(str(dest.get("host", "")), ns))
                found = _not_a_service_port(port, [svc]) if port and svc is not None else None
                if found:
                    out.append((ref, f"{where}.port.number", (
                        f"{found[0]}: the proxy sends the copy to a Service port, so no mirrored copy ever arrives "
                        f"(the requests themselves are unaffected){_write(found[1])}")))
    return out


def _destination_rule(o: Obj, hosts: Hosts) -> list[tuple[str, str, str]]:
    spec = o.get("spec") or {}
    svc = hosts.by_host.get(hosts.fqdn(str(spec.get("host", "")), ns_of(o)))
    if svc is None:
        return []
    policies = [("spec.trafficPolicy", spec.get("trafficPolicy"))]
    policies += [(f"spec.subsets[{k}].trafficPolicy", s.get("trafficPolicy")) for k, s in enumerate(spec.get("subsets") or [])]
    out = []
    for base, p in policies:
        for i, pl in enumerate((p or {}).get("portLevelSettings") or []):
            port = _as_port((pl.get("port") or {}).get("number"))
            found = _not_a_service_port(port, [svc]) if port else None
            if found:
                out.append((object_ref(o), f"{base}.portLevelSettings[{i}].port.number", (
                    f"{found[0]}: a waypoint (and an ingress gateway) picks port-level settings by the Service port "
                    f"it sends to, so this entry is never used{_write(found[1])}")))
    return out


def _route_backends(o: Obj, hosts: Hosts) -> list[tuple[str, str, str]]:
    """An HTTPRoute's or GRPCRoute's Service `backendRefs[].port` the Service does not have (a
    targetPort written for its port, most often): every request sent to that backend fails."""
    ns, out = ns_of(o), []
    for i, rule in enumerate((o.get("spec") or {}).get("rules") or []):
        for j, b in enumerate(rule.get("backendRefs") or []):
            if b.get("group", "") not in ("", "core") or b.get("kind", "Service") != "Service":
                continue
            svc = hosts.by_host.get(hosts.fqdn(str(b.get("name", "")), str(b.get("namespace") or ns)))
            port = _as_port(b.get("port"))
            found = _not_a_service_port(port, [svc]) if port and svc is not None else None
            if found:
                out.append((object_ref(o), f"spec.rules[{i}].backendRefs[{j}].port", (
                    f"{found[0]}: a backendRef names the Service port (the proxy maps it to the targetPort "
                    f"itself), so every request sent to this backend fails{_write(found[1])}")))
    return out


# -- AuthorizationPolicy: either proxy ------------------------------------------------------------

def _policy_ports(spec: Obj) -> list[tuple[str, int, bool]]:
    """(field path, port, negative) of every port value of a policy's rules."""
    out = []
    for i, rule in enumerate(spec.get("rules") or []):
        for j, to in enumerate(rule.get("to") or []):
            op = to.get("operation") or {}
            for field in ("ports", "notPorts"):
                out += [(f"spec.rules[{i}].to[{j}].operation.{field}[{k}]", p, field == "notPorts")
                        for k, v in enumerate(op.get(field) or []) if (p := _as_port(v))]
        for j, w in enumerate(rule.get("when") or []):
            if w.get("key") == "destination.port":
                for field in ("values", "notValues"):
                    out += [(f"spec.rules[{i}].when[{j}].{field}[{k}]", p, field == "notValues")
                            for k, v in enumerate(w.get(field) or []) if (p := _as_port(v))]
    return out


def _policy_targets(o: Obj, tr: Any, gateways: dict[tuple[str, str], Obj]) -> list[Service]:
    """The Services whose requests a targetRefs policy sees at their waypoint; [] unless every target
    is a known Service, or a known waypoint serving Service traffic only."""
    spec, ns = o.get("spec") or {}, ns_of(o)
    targets = [t for _, t in target_refs(spec)]
    by_name = {(s.namespace, s.name): s for s in tr.services if s.kind == "Service"}
    out: list[Service] = []
    for t in targets:
        kind, key = t.get("kind", ""), (t.get("namespace") or ns, t.get("name", ""))
        if kind == "Service" and key in by_name:
            out.append(by_name[key])
        elif kind == "Gateway" and key in gateways and waypoint_for(gateways[key]) == "service":
            out += [s for s in tr.services if s.waypoint == f"{key[0]}/{key[1]}"]
        else:
            return []       # a target not known here: its ports are not known either
    return list({id(s): s for s in out}.values())


def _pod_ports(pod: Obj | None) -> set[int]:
    spec = (pod or {}).get("spec") or {}
    return {int(p["containerPort"]) for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
            for p in c.get("ports") or [] if _as_port(p.get("containerPort"))}


class _Backing:
    """The Service endpoints of each pod (by workload uid, and by IP for endpoints that name no
    pod), indexed once for all selector policies."""

    def __init__(self, tr: Any, pods: dict[tuple[str, str], Obj]) -> None:
        self.pods = pods
        self.workloads: list[Workload] = list(tr.workloads)
        self.by_uid: dict[str, list[tuple[Service, Endpoint]]] = {}
        self.by_ip: dict[str, list[tuple[Service, Endpoint]]] = {}
        for s in tr.services:
            for ep in s.endpoints:
                if ep.workload_uid:
                    self.by_uid.setdefault(ep.workload_uid, []).append((s, ep))
                elif ep.ip:
                    self.by_ip.setdefault(ep.ip, []).append((s, ep))

    def of(self, w: Workload) -> dict[int, tuple[Service, list[Endpoint]]]:
        out: dict[int, tuple[Service, list[Endpoint]]] = {}
        for s, ep in self.by_uid.get(w.uid, []) + [b for ip in w.ips for b in self.by_ip.get(ip, [])]:
            out.setdefault(id(s), (s, []))[1].append(ep)
        return out

    def side(self, selected: list[Workload]) -> tuple[list[Service], set[int], dict[int, set[int]]] | None:
        """(the Services backing the selected pods, every port of those pods, Service port -> the
        pod ports it maps to); None unless each selected pod is backed by a Service and every
        targetPort is resolved."""
        if not selected:
            return None
        services: dict[int, Service] = {}
        pod_ports: set[int] = set()
        maps: dict[int, set[int]] = {}
        for w in selected:
            backing = self.of(w)
            if not backing:
                return None     # a pod no Service fronts: any of its ports may be dialled
            pod_ports |= _pod_ports(self.pods.get((w.namespace, w.name))) | set(w.probe_ports)
            for key, (s, eps) in backing.items():
                services[key] = s
                for sp in s.ports:
                    got = _targets(sp, eps)
                    if got is None:
                        return None
                    pod_ports |= got
                    maps.setdefault(sp.port, set()).update(got)
        return list(services.values()), pod_ports, maps


def _not_a_pod_port(port: int, side: tuple[list[Service], set[int], dict[int, set[int]]]) -> tuple[str, set[int]] | None:
    """(what it is, the pod ports meant) when `port` is a Service port of the pods' Services and no
    port of the pods; None otherwise."""
    services, pod_ports, maps = side
    if port in pod_ports or port not in maps:
        return None
    return f"port {port} is a port of {_named(services)}, not a port of the pods it selects", maps[port]


def _policy(o: Obj, tr: Any, gateways: dict[tuple[str, str], Obj], backing: _Backing,
            root_namespace: str) -> list[tuple[str, str, str]]:
    spec, ns = o.get("spec") or {}, ns_of(o)
    ports = _policy_ports(spec)
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if not ports:
        return []
    if spec.get("targetRef") or spec.get("targetRefs"):
        services = _policy_targets(o, tr, gateways)
        found = {port: _not_a_service_port(port, services) for _, port, _ in ports}
        how = "the waypoint, which enforces a targetRefs policy, compares the Service port the client dialled"
    elif labels:        # (namespace-wide: too many pods to be sure of)
        side = backing.side([w for w in backing.workloads
                             if authz_selects(ns, labels, ns == root_namespace, w.namespace, w.labels)])
        if side is None:
            return []
        found = {port: _not_a_pod_port(port, side) for _, port, _ in ports}
        how = ("ztunnel, which enforces a selector policy, compares the pod's port the connection arrives on "
               "(the targetPort)")
    else:
        return []
    action, out = spec.get("action", "ALLOW"), []
    for path, port, negative in ports:
        if found[port]:
            what, meant = found[port]
            out.append((object_ref(o), path, f"{what}: {how}, so it never matches: "
                                             f"{rule_effect(action, negative)}{_write(meant)}"))
    return out


def _peer_authn(o: Obj, backing: _Backing, root_namespace: str) -> list[tuple[str, str, str]]:
    spec = o.get("spec") or {}
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    keys = [(k, p) for k in (spec.get("portLevelMtls") or {}) if (p := _as_port(k))]
    if not labels or not keys:
        return []
    ns = ns_of(o)
    side = backing.side([w for w in backing.workloads
                         if peer_authn_selects(ns, labels, root_namespace, w.namespace, w.labels)])
    out = []
    for key, port in keys if side is not None else []:
        found = _not_a_pod_port(port, side)
        if found:
            out.append((object_ref(o), f"spec.portLevelMtls[{key}]", (
                f"{found[0]}: ztunnel applies portLevelMtls by the pod's port the connection arrives on (the "
                f"targetPort), as Istio does, so this mode never applies{_write(found[1], 'key it by')}")))
    return out


def port_mismatches(good: list[Obj], tr: Any, hosts: Hosts, root_namespace: str) -> list[tuple[str, str, str]]:
    """(object ref, field path, why) for each port value of the valid objects that names a port the
    proxy comparing it never sees: a targetPort where the Service port is compared (a waypoint), a
    Service port where the pod's is (ztunnel), or a port the Service does not have."""
    gateways = {(ns_of(g), name_of(g)): g for g in good if is_waypoint(g)}
    backing = _Backing(tr, {(ns_of(p), name_of(p)): p for p in good if p.get("kind") == "Pod"})
    out = []
    for o in good:
        kind = o.get("kind")
        if kind == "VirtualService":
            out += _virtual_service(o, hosts)
        elif kind == "DestinationRule":
            out += _destination_rule(o, hosts)
        elif kind in ("HTTPRoute", "GRPCRoute"):
            out += _route_backends(o, hosts)
        elif kind == "AuthorizationPolicy":
            out += _policy(o, tr, gateways, backing, root_namespace)
        elif kind == "PeerAuthentication":
            out += _peer_authn(o, backing, root_namespace)
    return out
