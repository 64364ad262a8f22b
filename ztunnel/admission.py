"""Whether an inbound connection may reach a pod: the destination ztunnel's decision. Pure.

Two doors into a pod, two sets of checks:

- **HBONE (15008)**: the TLS layer already verified the peer's chain against the trust bundle and
  extracted its SPIFFE id. Here: the CONNECT `:authority` must name *this* pod's IP (a tunnel
  terminated with pod A's certificate must not deliver to pod B); the peer's identity must be in the
  mesh's trust domain or an alias (401); the client address is the TLS peer's, or `Forwarded: for=`
  when the peer is the destination's waypoint (`ztunnel.sourcecheck`; anyone else's header is
  ignored) and, when the config knows the workload at that address, it must be the authenticated
  identity, or the address is a lie (401); a destination **bound to a waypoint** admits only that
  waypoint's identity (403 "bypassed the waypoint", see `bound_waypoints`); then L4
  AuthorizationPolicy with the peer's identity and namespace (403).
- **Plaintext (15006)**: a source address that belongs to a mesh workload is spoofed (401, see
  `ztunnel.sourcecheck`); then PeerAuthentication (STRICT refuses any plaintext, naming the
  PeerAuthentication that made it STRICT), then L4 policy with no identity, so rules that need a
  principal or namespace cannot match.

Statuses are HTTP's, as HBONE answers CONNECT with them: 400 malformed, 401 identity, 403 policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ambit.model import Workload
from ambit.waypointpods import bound_waypoints
from ambit.zds import PodInfo
from ztunnel import authz, sourcecheck
from ztunnel.meshstate import MeshState
from ztunnel.routing import canonical_ip, parse_addr, waypoint_pods

POLICY_HEADER = "ambit-policy"     # response header naming the policy that refused a CONNECT


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    status: int                      # 200 | 400 | 401 | 403
    reason: str
    policy: str = ""                 # "ns/name" of the AuthorizationPolicy / PeerAuthentication that decided
    src_ip: str = ""
    dst_port: int = 0
    src_workload: Workload | None = None
    audit: tuple[str, ...] = ()


def pod_workload(config: MeshState | None, pod: PodInfo, trust_domain: str) -> Workload:
    """The config's workload for a pod this ztunnel serves; if the config does not (yet) know it,
    one made from what the agent told us, so policy still applies by namespace and labels."""
    wl = config.lookup_workload(pod.ip) if config is not None else None
    if wl is not None and wl.namespace == pod.namespace and wl.name == pod.name:
        return wl
    sa = pod.service_account or "default"
    return Workload(uid=pod.uid, name=pod.name, namespace=pod.namespace, ips=[pod.ip], node=pod.node,
                    service_account=sa, identity=f"spiffe://{trust_domain}/ns/{pod.namespace}/sa/{sa}",
                    labels=dict(pod.labels), enrolled=True, protocol="HBONE")


def forwarded_for(value: str | None) -> str | None:
    """The first `for=` address of an RFC 7239 Forwarded header; None if absent.

    Raises ValueError (with the value) when there is a `for=` but it is not an IP address.
    """
    if not value:
        return None
    for element in value.split(","):
        for pair in element.split(";"):
            k, sep, v = pair.strip().partition("=")
            if sep and k.strip().lower() == "for":
                node = v.strip().strip('"')
                if node.startswith("["):
                    node = node[1:node.index("]")] if "]" in node else node
                elif node.count(":") == 1:          # ip:port
                    node = node.split(":", 1)[0]
                try:
                    return canonical_ip(node)
                except ValueError:
                    raise ValueError(f"Forwarded header {value!r}: for={v.strip()!r} is not an IP address") from None
    return None


def waypoint_check(config: MeshState, dest: Workload, port: int, peer_identity: str) -> str:
    """Why a tunnel from `peer_identity` bypassed the waypoint `dest` is bound to ("" if it did not)."""
    bound = bound_waypoints(config.view.services, dest, port)
    if not bound:
        return ""
    allowed = {w.identity for wp in sorted(bound) for w in waypoint_pods(config, wp)}
    if peer_identity in allowed:
        return ""
    return (f"bypassed the waypoint: {dest.namespace}/{dest.name} port {port} is bound to waypoint "
            f"{', '.join(sorted(bound))}, and only its identity may connect ({', '.join(sorted(allowed)) or 'it has no pod'}); "
            f"peer {peer_identity} did not come through it")


def admit_hbone(config: MeshState | None, pod: PodInfo, dest: Workload, peer_identity: str, authority: str,
                headers: Mapping[str, str], tls_peer_ip: str) -> Admission:
    """Decide a CONNECT that arrived on `pod`'s HBONE listener from an authenticated peer."""
    try:
        ip, port = parse_addr(authority)
    except ValueError as e:
        return Admission(False, 400, f"bad :authority: {e}")
    if ip != pod.ip:
        return Admission(False, 400, f":authority {authority} is not pod {pod.namespace}/{pod.name} ({pod.ip})",
                         dst_port=port)
    if config is not None:
        tds = config.trust_domains
        foreign = authz.foreign_trust_domain(peer_identity, tds)
        if foreign is not None:
            return Admission(False, 401, f"peer {peer_identity} is in trust domain {foreign!r}, not the mesh's "
                                         f"{tds.describe()}", src_ip=tls_peer_ip, dst_port=port)
    try:
        claimed = forwarded_for(headers.get("forwarded"))
    except ValueError as e:
        return Admission(False, 400, str(e), dst_port=port)
    src_ip, forwarded = tls_peer_ip, False
    if claimed is not None and claimed != tls_peer_ip and config is not None \
            and peer_identity in sourcecheck.waypoint_identities(config, dest):
        bad = sourcecheck.bad_forwarded_address(claimed, pod.node_ip)
        if bad:
            return Admission(False, 400, f"Forwarded: for={claimed} is {bad}; refusing it as a source address",
                             src_ip=tls_peer_ip, dst_port=port)
        src_ip, forwarded = claimed, True
    src_wl = config.lookup_workload(src_ip) if config is not None else None
    # A waypoint speaks for its clients under its own identity; anyone else must be who the
    # address says (a mesh certificate used from another mesh pod's address is a lie).
    if not forwarded and src_wl is not None and src_wl.protocol == "HBONE" and src_wl.identity != peer_identity:
        return Admission(False, 401, f"source address {src_ip} belongs to {src_wl.identity}, "
                                     f"but the peer authenticated as {peer_identity}",
                         src_ip=src_ip, dst_port=port, src_workload=src_wl)
    if config is None:
        return Admission(True, 200, "no mesh config: no policy", src_ip=src_ip, dst_port=port, src_workload=src_wl)
    bypass = waypoint_check(config, dest, port, peer_identity)
    if bypass:
        return Admission(False, 403, bypass, src_ip=src_ip, dst_port=port, src_workload=src_wl)
    policies = config.policies_for(dest).authorizations
    v = authz.evaluate(policies, dest, authz.ConnInfo(src_ip, peer_identity, pod.ip, port), config.root_namespace,
                       config.trust_domains)
    return Admission(v.allowed, 200 if v.allowed else 403, v.reason, v.policy or "", src_ip, port, src_wl, v.audit)


def admit_plaintext(config: MeshState | None, pod: PodInfo, dest: Workload, src_ip: str, port: int) -> Admission:
    """Decide a plaintext connection captured on `pod`'s inbound listener (no identity)."""
    src_wl = config.lookup_workload(src_ip) if config is not None else None
    if config is None:
        return Admission(True, 200, "no mesh config: no policy", src_ip=src_ip, dst_port=port, src_workload=src_wl)
    source = sourcecheck.plaintext_source(src_wl, src_ip, pod.ip, port)
    if source.refuse:
        return Admission(False, 401, source.refuse, "", src_ip, port, src_wl)
    policies = config.policies_for(dest)
    pa = authz.peer_authn(policies.peer_authns, dest, port, config.root_namespace)
    if pa.mode == authz.STRICT:
        return Admission(False, 401, f"plaintext refused: PeerAuthentication {pa.policy} requires mTLS "
                                     f"(STRICT) for {dest.namespace}/{dest.name} port {port}",
                         pa.policy or "", src_ip, port, src_wl)
    v = authz.evaluate(policies.authorizations, dest,
                       authz.ConnInfo(src_ip, None, pod.ip, port, src_ip_verified=source.verified),
                       config.root_namespace)
    return Admission(v.allowed, 200 if v.allowed else 403, v.reason, v.policy or "", src_ip, port, src_wl, v.audit)
