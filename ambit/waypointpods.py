"""Which pods run a waypoint, and which of them are ready: shared by everything that sends to one.

A waypoint Gateway ("ns/name") runs as HBONE workloads in its namespace labelled with its name
(`gateway.networking.k8s.io/gateway-name`, or Istio's `istio.io/gateway-name`). ztunnel sends the
traffic of the Services bound to it there (ztunnel/routing.py) and trusts `Forwarded: for=` only
from them (ztunnel/sourcecheck.py); an ingress gateway sends its requests for such a Service there
too (waypoint/app.py), because the Service's pods accept tunnels only from their waypoint. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ambit.model import Service, Workload, target_port

GATEWAY_NAME_LABELS = ("gateway.networking.k8s.io/gateway-name", "istio.io/gateway-name")


def waypoint_pods(workloads: Iterable[Workload], waypoint: str) -> list[Workload]:
    """The pods of waypoint Gateway `waypoint` ("ns/name"): HBONE workloads with an address in its
    namespace labelled with its name, in a stable order (round robin over them is then fair)."""
    ns, _, name = waypoint.partition("/")
    out = [w for w in workloads
           if w.namespace == ns and w.protocol == "HBONE" and w.ips
           and any(w.labels.get(label) == name for label in GATEWAY_NAME_LABELS)]
    return sorted(out, key=lambda w: w.uid)


def ready_waypoint_pods(services: Mapping[str, Service], waypoint: str, pods: list[Workload]) -> list[Workload]:
    """Of `pods`, those that are ready endpoints of the waypoint's own Service (named after its
    Gateway): during a rolling update of the waypoint's Deployment, its new pod is a workload as
    soon as it runs, before its process listens or holds a certificate, and tunnels sent to it
    then fail. The Service's EndpointSlices carry the pod's readiness (its /healthz/ready probe).
    All of `pods` when none is ready or the Service is not known (yet): a waypoint pod enforces
    the policy itself, so this is a choice of pod, never of whether policy applies."""
    svc = services.get(waypoint)
    if svc is None:
        return pods
    uids = {ep.workload_uid for ep in svc.endpoints if ep.ready and ep.workload_uid}
    ips = {ep.ip for ep in svc.endpoints if ep.ready}
    ready = [w for w in pods if w.uid in uids or w.ips[0] in ips]
    return ready or pods



def bound_waypoints(services: Mapping[str, Service], dest: Workload, port: int) -> set[str]:
    """The waypoints ("ns/name") that traffic to `dest` on `port` must come through.

    The pod's own waypoint (set only when its Gateway serves workloads), and the waypoint of each of
    its Services (set only when the Gateway serves services) whose ports map to `port` on this
    pod. A Service port is reached through a VIP, which the source ztunnel routes to the waypoint;
    so a tunnel to the pod's target port that did not come from the waypoint went around it, by
    dialling the pod's IP directly. Ports no waypointed Service exposes stay reachable directly
    (as Istio's waypoint-for: service leaves them). ztunnel admits a tunnel to `dest` only from
    these waypoints' pods (ztunnel/admission.py); a proxy sending to `dest` goes through one of
    them unless it is one (waypoint/app.py)."""
    out = {dest.waypoint} if dest.waypoint else set()
    ip = dest.ips[0] if dest.ips else ""
    for name in dest.services:
        svc = services.get(name)
        if svc is None or not svc.waypoint or svc.waypoint in out:
            continue
        eps = [ep for ep in svc.endpoints if ep.ip in dest.ips or ep.ip == ip]
        for sp in svc.ports:
            ports = {target_port(sp, ep) for ep in eps} or {sp.target_port or sp.port}
            if port in ports:
                out.add(svc.waypoint)
                break
    return out
