"""`ambit authz check`: would this request be allowed, and which policy and rule decide?

Nothing here re-implements a decision. The snapshot is translated by the controller's own
`translate` into the resources the data plane receives; a ztunnel `MeshState` is built from them
through its own `apply`; then each hop is decided by the code that decides it in the data plane:

1. the source's ztunnel routes the connection (`ztunnel.routing.decide`): straight to the
   destination pod over HBONE, through the destination's waypoint, refused (no ready endpoint, a
   waypoint with no pod), or passed through (the destination is not in the mesh). A source that is
   not in the mesh sends plaintext to the pod instead;
2. through a waypoint: RequestAuthentication (`waypoint.authn`: a JWT given as a header, e.g.
   `-H "authorization=Bearer <token>"`, is verified against the rules' keys, `jwksUri`s fetched as
   the controller fetches them; an invalid one is the waypoint's 401), then L7 authorization
   (`waypoint.authz.evaluate.policy_set` and `authorize`) with the source's identity, the verified
   end user, the method, path and headers (the Host: `-H host=...`, else what curl sends). A
   non-HTTP client (`--tcp`) is judged as the waypoint judges an opaque tunnel, by the policies'
   L4 view (`waypoint.authz.l4`);
3. at the destination pod: its ztunnel's admission (`ztunnel.admission.admit_hbone` for HBONE,
   with the waypoint's identity and `Forwarded: for=` when it came through one, or
   `admit_plaintext`: PeerAuthentication, then L4 policy with no identity). Plaintext to a pod in
   ingress mode (`ambient.istio.io/bypass-inbound-capture`) never reaches its ztunnel: allowed,
   and said so.

The deciding rule is found by asking the same evaluator about the deciding policy one rule at a
time (a copy of the policy with that rule alone), so it is the evaluator's answer too.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from ambit.configclient.state import ConfigUpdate
from ambit.model import Authorization, MeshSettings, PeerAuthn, RequestAuthn, Service, Workload
from ambit.podannotations import ANN_BYPASS_INBOUND, inbound_bypass
from ambit.zds import PodInfo
from controller.jwks import JwksCache
from controller.translate import Translation, translate
from waypoint.authn import authn_set
from waypoint.authz.evaluate import DENY as L7_DENY
from waypoint.authz.evaluate import Verdict, Waypoint, authorize, policy_set
from waypoint.authz.evaluate import evaluate as l7_evaluate
from waypoint.authz.l4 import l4_policy_set
from waypoint.request import Downstream, EndUser, RequestHead
from ztunnel import admission, authz, routing
from ztunnel.meshstate import MeshState

Obj = dict[str, Any]


class CheckError(ValueError):
    pass


@dataclass
class Hop:
    where: str                  # "waypoint demo/waypoint (L7)", "ztunnel node2 -> demo/echo-v1:8080 (L4)", ...
    allowed: bool
    reason: str
    policy: str = ""            # "AuthorizationPolicy ns/name" or "PeerAuthentication ns/name"
    rule: str = ""              # "spec.rules[1]"


@dataclass
class Path:
    """One way the request can go (one per destination endpoint)."""

    destination: str            # ns/pod that would answer ("" when refused before a pod)
    hops: list[Hop] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return all(h.allowed for h in self.hops)


@dataclass
class Result:
    source: str
    target: str
    request: str
    paths: list[Path]

    @property
    def allowed(self) -> bool:
        return bool(self.paths) and all(p.allowed for p in self.paths)

    def as_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "source": self.source, "target": self.target, "request": self.request,
                "paths": [{"destination": p.destination, "allowed": p.allowed,
                           "hops": [dataclasses.asdict(h) for h in p.hops]} for p in self.paths]}


def mesh_state(tr: Translation, root_namespace: str) -> MeshState:
    """A ztunnel MeshState holding exactly what the controller would send (through `apply`)."""
    cfg = MeshState(root_namespace=root_namespace)
    for t, items in ((MeshSettings.TYPE, tr.mesh_settings), (PeerAuthn.TYPE, tr.peer_authns),
                     (Authorization.TYPE, tr.authorizations), (Workload.TYPE, tr.workloads),
                     (Service.TYPE, tr.services)):
        state = {(r.uid if isinstance(r, Workload) else r.resource_name): r for r in items}
        cfg.apply(ConfigUpdate(t, "authz-check", state, frozenset(), state))
    return cfg


@dataclass(frozen=True)
class Request:
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    tcp: bool = False           # a non-HTTP client: the waypoint relays it as opaque TCP (its L4 view)


def check(objects: list[Obj], src: str, dst: str, request: Request = Request(), *,
          root_namespace: str = "ambit-system", trust_domain: str = "cluster.local",
          cluster_domain: str = "cluster.local") -> Result:
    tr = translate(objects, trust_domain=trust_domain, root_namespace=root_namespace, cluster_domain=cluster_domain)
    if tr.jwks_fetches:     # RequestAuthentication jwksUri: fetched as the controller fetches them
        keys = JwksCache()
        for src, timeout in tr.jwks_fetches.items():
            keys.fetch(src, timeout)
        tr = translate(objects, trust_domain=trust_domain, root_namespace=root_namespace,
                       cluster_domain=cluster_domain, jwks=keys.resolved())
    cfg = mesh_state(tr, root_namespace)
    source = _source(cfg, src)
    dst_ip, dst_port, target = _destination(cfg, dst, cluster_domain)
    req_text = "TCP" if request.tcp else f"{request.method} {request.path}"
    res = Result(f"{source.namespace}/{source.name}", target, req_text, [])
    src_ip = source.ips[0]
    if source.protocol != "HBONE":
        res.paths = _plaintext(cfg, source, src_ip, dst_ip, dst_port, trust_domain)
        return res
    route = routing.decide(cfg, dst_ip, dst_port)
    if route.kind == routing.REFUSE:
        res.paths = [Path("", [Hop(f"ztunnel {source.node} (source)", False, route.reason)])]
    elif route.kind == routing.PASSTHROUGH:
        wl = route.workload
        res.paths = [Path(f"{wl.namespace}/{wl.name}" if wl else f"{dst_ip}", [Hop(
            f"ztunnel {source.node} (source)", True,
            "the destination is not in the mesh: passed through in plaintext, no policy applies")])]
    elif route.waypoint:
        res.paths = _via_waypoint(cfg, objects, source, route, request, root_namespace, trust_domain,
                                  tr.request_authns)
    elif route.service is not None:      # every ready endpoint: policies may differ from pod to pod
        sp = next(p for p in route.service.ports if p.port == dst_port)
        for ep in (e for e in route.service.endpoints if e.ready):
            wl = (cfg.workload(ep.workload_uid) if ep.workload_uid else None) or cfg.lookup_workload(ep.ip)
            if wl is None or wl.protocol != "HBONE":
                res.paths.append(Path(wl.name if wl else ep.ip, [Hop(
                    f"ztunnel {source.node} (source)", True,
                    "the endpoint is not in the mesh: passed through in plaintext, no policy applies")]))
            else:
                res.paths.append(_to_pod(cfg, wl, routing.target_port(sp, ep), source.identity, src_ip, {},
                                         trust_domain))
    else:
        assert route.workload is not None and route.target is not None
        res.paths = [_to_pod(cfg, route.workload, route.target[1], source.identity, src_ip, {}, trust_domain)]
    return res


# -- endpoints of the check -------------------------------------------------------------------------------

def _source(cfg: MeshState, src: str) -> Workload:
    ns, _, name = src.partition("/")
    if not ns or not name:
        raise CheckError(f"source {src!r}: give it as NAMESPACE/POD")
    for w in cfg.view.workloads.values():
        if (w.namespace, w.name) == (ns, name) and w.ips:
            return w
    raise CheckError(f"source {src!r}: no such pod with an address")


def _destination(cfg: MeshState, dst: str, cluster_domain: str) -> tuple[str, int, str]:
    """(ip, port, description) of DST: NAMESPACE/POD[:PORT], NAMESPACE/SERVICE[:PORT],
    SERVICE.NAMESPACE[.svc[.cluster.local]][:PORT] or IP:PORT."""
    host, _, port_text = dst.rpartition(":") if dst.count(":") == 1 else (dst, "", "")
    if port_text and not port_text.isdigit():
        raise CheckError(f"destination {dst!r}: the port must be a number")
    port = int(port_text) if port_text else 0
    svc: Service | None = None
    wl: Workload | None = None
    if "/" in host:
        ns, _, name = host.partition("/")
        wl = next((w for w in cfg.view.workloads.values() if (w.namespace, w.name) == (ns, name) and w.ips), None)
        svc = None if wl else cfg.view.services.get(f"{ns}/{name}")
    elif host.replace(".", "").isdigit():
        svc = cfg.service_by_vip(host)
        wl = None if svc else cfg.lookup_workload(host)
    else:
        parts = host.split(".")
        if len(parts) >= 2:
            svc = cfg.view.services.get(f"{parts[1]}/{parts[0]}")
    if svc is not None:
        if not svc.vips:
            raise CheckError(f"destination {dst!r}: Service {svc.resource_name} has no cluster IP (headless)")
        ports = [p.port for p in svc.ports]
        port = port or (ports[0] if ports else 0)
        if port not in ports:
            raise CheckError(f"destination {dst!r}: Service {svc.resource_name} has no port {port} "
                             f"(it has {', '.join(map(str, ports)) or 'none'})")
        return svc.vips[0], port, f"{svc.hostname}:{port}"
    if wl is not None:
        if not port:
            raise CheckError(f"destination {dst!r}: give the pod's port (NAMESPACE/POD:PORT)")
        return wl.ips[0], port, f"{wl.namespace}/{wl.name}:{port}"
    raise CheckError(f"destination {dst!r}: no such pod or Service")


def _pod_info(w: Workload) -> PodInfo:
    return PodInfo(uid=w.uid, name=w.name, namespace=w.namespace, ip=w.ips[0], node=w.node,
                   service_account=w.service_account, labels=dict(w.labels))


# -- the hops ------------------------------------------------------------------------------------------------

def _to_pod(cfg: MeshState, dest: Workload, port: int, peer_identity: str, src_ip: str, headers: dict[str, str],
            trust_domain: str, peer_ip: str = "") -> Path:
    """The destination ztunnel's HBONE admission (`peer_ip`: the tunnel's TLS peer, the waypoint's
    pod when it came through one; else the source)."""
    pod = _pod_info(dest)
    dest_wl = admission.pod_workload(cfg, pod, trust_domain)
    adm = admission.admit_hbone(cfg, pod, dest_wl, peer_identity, f"{pod.ip}:{port}", headers, peer_ip or src_ip)
    hop = Hop(f"ztunnel {dest.node} -> {dest.namespace}/{dest.name}:{port} (L4, HBONE)", adm.allowed,
              f"{adm.status} {adm.reason}")
    if adm.policy:
        hop.policy = f"AuthorizationPolicy {adm.policy}"
        hop.rule = _l4_rule(cfg, dest_wl, adm.policy, authz.ConnInfo(adm.src_ip or src_ip, peer_identity, pod.ip,
                                                                        port))
    return Path(f"{dest.namespace}/{dest.name}", [hop])


def _plaintext(cfg: MeshState, source: Workload, src_ip: str, dst_ip: str, dst_port: int,
               trust_domain: str) -> list[Path]:
    """A source outside the mesh: plaintext to the pod (a Service VIP is resolved to each endpoint,
    as kube-proxy would), decided by the destination ztunnel's plaintext admission."""
    svc_hit = cfg.lookup_service(dst_ip, dst_port)
    targets: list[tuple[Workload | None, str, int]] = []
    if svc_hit is not None:
        svc, sp = svc_hit
        for ep in svc.endpoints:
            wl = cfg.workload(ep.workload_uid) if ep.workload_uid else None
            targets.append((wl or cfg.lookup_workload(ep.ip), ep.ip, routing.target_port(sp, ep)))
        if not targets:
            return [Path("", [Hop("kube-proxy (source not in the mesh)", False,
                                  f"service {svc.resource_name} has no endpoint")])]
    else:
        targets.append((cfg.lookup_workload(dst_ip), dst_ip, dst_port))
    out = []
    for wl, ip, port in targets:
        if wl is None or wl.protocol != "HBONE":
            name = f"{wl.namespace}/{wl.name}" if wl else ip
            out.append(Path(name, [Hop(f"{name}:{port} (not in the mesh)", True,
                                       "plaintext between pods outside the mesh: no policy applies")]))
            continue
        if inbound_bypass(wl.annotations).enabled:
            out.append(Path(f"{wl.namespace}/{wl.name}", [Hop(
                f"{wl.namespace}/{wl.name}:{port} (ingress mode, not captured)", True,
                f"{ANN_BYPASS_INBOUND}=true: plaintext inbound reaches the app without ztunnel, so no "
                "PeerAuthentication and no ztunnel-enforced AuthorizationPolicy applies")]))
            continue
        pod = _pod_info(wl)
        dest_wl = admission.pod_workload(cfg, pod, trust_domain)
        adm = admission.admit_plaintext(cfg, pod, dest_wl, src_ip, port)
        hop = Hop(f"ztunnel {wl.node} -> {wl.namespace}/{wl.name}:{port} (L4, plaintext)", adm.allowed,
                  f"{adm.status} {adm.reason}")
        if adm.policy:
            if "PeerAuthentication" in adm.reason:
                hop.policy = f"PeerAuthentication {adm.policy}"
            else:
                hop.policy = f"AuthorizationPolicy {adm.policy}"
                hop.rule = _l4_rule(cfg, dest_wl, adm.policy, authz.ConnInfo(src_ip, None, pod.ip, port))
        out.append(Path(f"{wl.namespace}/{wl.name}", [hop]))
    return out


def _via_waypoint(cfg: MeshState, objects: list[Obj], source: Workload, route: routing.Route, request: Request,
                  root_namespace: str, trust_domain: str, request_authns: list[RequestAuthn]) -> list[Path]:
    assert route.target is not None and route.workload is not None
    wp_ns, _, wp_name = route.waypoint.partition("/")
    gw_class = _gateway_class(objects, route.waypoint)
    me = Waypoint(wp_ns, wp_name, gw_class, root_namespace)
    svc = route.service
    down = Downstream(source_identity=source.identity, source_ip=source.ips[0], source_namespace=source.namespace,
                      source_labels=tuple(sorted(source.labels.items())), destination_ip=route.target[0],
                      destination_port=route.target[1], service=svc.resource_name if svc else "",
                      hostname=svc.hostname if svc else "")
    pset = policy_set(cfg.view.authorizations, me)
    if request.tcp:     # relayed as opaque TCP: the L4 view, a head with no method or path (waypoint/app.py)
        pset = l4_policy_set(pset)
        head = RequestHead("", "", f"{route.target[0]}:{route.target[1]}")
        user = None
    else:
        head = RequestHead(request.method, request.path, _authority(request, svc, route.target),
                           headers=[(k.lower(), v) for k, v in request.headers if k.lower() != "host"])
        # RequestAuthentication first (a JWT in an Authorization header or wherever its rules look), as the
        # waypoint does; the verified end user is what requestPrincipals and request.auth.* read
        authn = authn_set(request_authns, me).authenticate(head, down, time.time())
        if authn.reply is not None:
            return [Path("", [Hop(f"waypoint {route.waypoint} (RequestAuthentication)", False,
                                  f"401 {authn.reason.removeprefix('jwt: ')}")])]
        if authn.headers is not None:
            head.headers = authn.headers
        user = authn.user
    _, verdict = authorize(pset, head, down, cfg.trust_domains, user)
    hop = Hop(f"waypoint {route.waypoint} ({'L4, opaque TCP' if request.tcp else 'L7'})", verdict.allowed,
              verdict.reason)
    if verdict.policy and "," not in verdict.policy:
        hop.policy = f"AuthorizationPolicy {verdict.policy}"
        hop.rule = _l7_rule(pset.for_request(down), verdict, head, down, cfg, user)
    if not verdict.allowed:
        return [Path("", [hop])]
    # The waypoint then opens HBONE to an endpoint, as itself, saying who the client was.
    wp_pod = route.workload
    endpoints = [ep for ep in (svc.endpoints if svc else []) if ep.ready]
    if svc is None:
        dest = cfg.lookup_workload(route.target[0])
        targets = [(dest, route.target[1])] if dest else []
    else:
        sp = next(p for p in svc.ports if p.port == route.target[1])
        targets = [((cfg.workload(ep.workload_uid) if ep.workload_uid else None) or cfg.lookup_workload(ep.ip),
                    routing.target_port(sp, ep)) for ep in endpoints]
    if not targets:
        return [Path("", [hop, Hop(f"waypoint {route.waypoint} (upstream)", False, "no ready endpoint")])]
    out = []
    for dest, port in targets:
        if dest is None or dest.protocol != "HBONE":
            out.append(Path(dest.name if dest else "?", [hop, Hop("upstream (not in the mesh)", True,
                                                                    "the waypoint sends plaintext: no policy")]))
            continue
        p = _to_pod(cfg, dest, port, wp_pod.identity, source.ips[0], {"forwarded": f"for={source.ips[0]}"},
                    trust_domain, peer_ip=wp_pod.ips[0])
        p.hops.insert(0, hop)
        out.append(p)
    return out


def _authority(request: Request, svc: Service | None, target: tuple[str, int]) -> str:
    """The Host a client sends: `-H host=...` when given (hosts/notHosts match it whole, as the
    waypoint does), else what curl sends for the Service's name, `name:port`, without `:80`."""
    given = [v for k, v in request.headers if k.lower() in ("host", ":authority")]
    if given:
        return given[-1]
    host = svc.hostname if svc else target[0]
    return host if target[1] == 80 else f"{host}:{target[1]}"


def _gateway_class(objects: list[Obj], waypoint: str) -> str:
    """The waypoint Gateway's class (a GatewayClass-bound policy names it)."""
    ns, _, name = waypoint.partition("/")
    for o in objects:
        md = o.get("metadata") or {}
        if o.get("kind") == "Gateway" and md.get("name") == name and (md.get("namespace") or "default") == ns:
            return str((o.get("spec") or {}).get("gatewayClassName") or "ambit-waypoint")
    return "ambit-waypoint"


# -- the deciding rule -----------------------------------------------------------------------------------------

def _l4_rule(cfg: MeshState, dest: Workload, policy: str, conn: authz.ConnInfo) -> str:
    p = next((a for a in cfg.view.authorizations if a.resource_name == policy), None)
    if p is None:
        return ""
    for i, r in enumerate(p.rules):
        one = dataclasses.replace(p, rules=[r])
        v = authz.evaluate([one], dest, conn, cfg.root_namespace, cfg.trust_domains)
        if (p.action == authz.DENY and not v.allowed) or (p.action == authz.ALLOW and v.allowed and v.policy):
            return f"spec.rules[{i}]"
    return ""


def _l7_rule(policies: tuple[Authorization, ...], verdict: Verdict, head: RequestHead, down: Downstream,
             cfg: MeshState, user: EndUser | None = None) -> str:
    p = next((a for a in policies if a.resource_name == verdict.policy), None)
    if p is None:
        return ""
    for i, r in enumerate(p.http_rules):
        one = dataclasses.replace(p, http_rules=[r])
        v = l7_evaluate([one], head, down, cfg.trust_domains, user)
        if (p.action == L7_DENY and not v.allowed) or (p.action != L7_DENY and v.allowed and v.policy):
            return f"spec.rules[{i}]"
    return ""
