"""Building a real MeshState for routing/admission tests, through its own `apply` (no stream)."""

from __future__ import annotations

from ambit.configclient import ConfigUpdate
from ambit.model import Authorization, Endpoint, MeshSettings, PeerAuthn, Service, ServicePort, Workload
from ztunnel.meshstate import MeshState

TD = "cluster.local"


def wl(name: str, ip: str, ns: str = "demo", sa: str = "", node: str = "node1", enrolled: bool = True,
       labels: dict[str, str] | None = None, services: dict[str, list[int]] | None = None) -> Workload:
    sa = sa or name
    return Workload(uid=f"uid-{ns}-{name}", name=name, namespace=ns, ips=[ip], node=node, service_account=sa,
                    identity=f"spiffe://{TD}/ns/{ns}/sa/{sa}", labels=labels or {"app": name}, enrolled=enrolled,
                    protocol="HBONE" if enrolled else "TCP", services=services or {})


def svc(name: str, vip: str, endpoints: list[Workload], port: int = 80, target: int = 8080, ns: str = "demo",
        ready: dict[str, bool] | None = None, waypoint: str = "", by_ip: bool = False) -> Service:
    """`by_ip`: endpoints without a workload uid (an EndpointSlice entry without a targetRef)."""
    return Service(name=name, namespace=ns, hostname=f"{name}.{ns}.svc.cluster.local", vips=[vip],
                   ports=[ServicePort(port, target, "http")],
                   endpoints=[Endpoint("" if by_ip else w.uid, w.ips[0], w.node, ready=(ready or {}).get(w.name, True))
                              for w in endpoints],
                   waypoint=waypoint)


def config(workloads: list[Workload] = (), services: list[Service] = (), auths: list[Authorization] = (),
           pas: list[PeerAuthn] = (), root_namespace: str = "ambit-system",
           mesh: MeshSettings | None = None) -> MeshState:
    cfg = MeshState(root_namespace=root_namespace)
    for t, items, key in ((MeshSettings.TYPE, [mesh] if mesh else [], lambda r: r.resource_name),
                          (PeerAuthn.TYPE, pas, lambda r: r.resource_name),
                          (Authorization.TYPE, auths, lambda r: r.resource_name),
                          (Workload.TYPE, workloads, lambda r: r.uid),
                          (Service.TYPE, services, lambda r: r.resource_name)):
        state = {key(r): r for r in items}
        cfg.apply(ConfigUpdate(t, "v1", state, frozenset(), state))
    return cfg
