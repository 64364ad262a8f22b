"""Core Kubernetes kinds the translation reads. Only the fields Ambit uses are checked; the rest of
these large objects passes through (the API server has already validated them in a cluster)."""

from __future__ import annotations

import ipaddress

from controller.kinds.common import IP, Labels, Name, Port
from controller.kinds.schema import Arr, Bool, Errors, Int, IntOrStr, Map, Obj, Str, join


def _check_cluster_ip(text: str) -> str | None:
    if text in ("None", ""):
        return None
    reason = IP.valid(text) if IP.valid else None
    return reason and f'must be an IP address or "None", got "{text}"'


ClusterIP = Str(valid=_check_cluster_ip)

ContainerPort = Obj({"name": Str(), "containerPort": Port, "protocol": Str(enum=("TCP", "UDP", "SCTP"))},
                    open=True, required=("containerPort",))

def _unique_pod_ips(status: dict, path: str, errs: Errors) -> None:
    """Each address once in `podIPs`, as the API server requires: a pod listing one twice claimed
    that address twice, and ztunnel refused every Workload's update with it."""
    seen: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int] = {}
    for i, p in enumerate(status.get("podIPs") or []):
        if not p.get("ip"):
            continue
        ip = ipaddress.ip_address(p["ip"])      # "::1" and "0::1" are one address
        if ip in seen:
            errs.append((f"{join(path, 'podIPs')}[{i}].ip", f"duplicate address {p['ip']} (also podIPs[{seen[ip]}])"))
        seen.setdefault(ip, i)


PodBody = Obj({
    "spec": Obj({
        "nodeName": Str(),
        # the pod's identity (spiffe://.../sa/NAME): a name the API server would take, or the
        # Workload's certificate could not be issued and ztunnel refused every Workload update
        "serviceAccountName": Name, "serviceAccount": Name,
        "hostNetwork": Bool(),
        "containers": Arr(Obj({"name": Str(), "ports": Arr(ContainerPort)}, open=True)),
    }, open=True),
    "status": Obj({
        "phase": Str(),
        "podIP": IP,
        "podIPs": Arr(Obj({"ip": IP}, open=True)),
        "conditions": Arr(Obj({"type": Str(), "status": Str()}, open=True)),
    }, open=True, checks=(_unique_pod_ips,)),
}, open=True)

def _unique_ports(spec: dict, path: str, errs: Errors) -> None:
    """A port (and protocol) or a port name at most once, as the API server requires: two entries
    for one TCP port would leave which target port it reaches to chance, and ztunnel refuses the
    Service (every Service's update with it)."""
    ports: dict[tuple[int, str], int] = {}
    names: dict[str, int] = {}
    for i, p in enumerate(spec.get("ports") or []):
        where = f"{join(path, 'ports')}[{i}]"
        key = (p["port"], p.get("protocol") or "TCP")
        if key in ports:
            errs.append((f"{where}.port", f"duplicate port {key[0]}/{key[1]} (also ports[{ports[key]}])"))
        ports.setdefault(key, i)
        name = p.get("name") or ""
        if name and name in names:
            errs.append((f"{where}.name", f'duplicate port name "{name}" (also ports[{names[name]}])'))
        names.setdefault(name, i)


ServiceBody = Obj({
    "spec": Obj({
        "type": Str(),
        "clusterIP": ClusterIP,
        "clusterIPs": Arr(ClusterIP),
        "selector": Labels,
        "ports": Arr(Obj({
            "name": Str(), "port": Port, "protocol": Str(enum=("TCP", "UDP", "SCTP")),
            "targetPort": IntOrStr(int_schema=Port, str_schema=Str(min_len=1)),
            "appProtocol": Str(), "nodePort": Int(minimum=0, maximum=65535),
        }, open=True, required=("port",))),
        "publishNotReadyAddresses": Bool(),
    }, open=True, checks=(_unique_ports,)),
}, open=True)

EndpointSliceBody = Obj({
    "addressType": Str(enum=("IPv4", "IPv6", "FQDN")),
    "endpoints": Arr(Obj({
        "addresses": Arr(Str(min_len=1), min_items=1),
        "conditions": Obj({"ready": Bool(), "serving": Bool(), "terminating": Bool()}, open=True),
        "nodeName": Str(),
        "targetRef": Obj({"kind": Str(), "name": Str(), "namespace": Str(), "uid": Str()}, open=True),
    }, open=True, required=("addresses",))),
    "ports": Arr(Obj({"name": Str(), "port": Port, "protocol": Str(), "appProtocol": Str()}, open=True)),
}, open=True, required=("addressType",))

NodeBody = Obj({
    "status": Obj({"addresses": Arr(Obj({"type": Str(), "address": Str()}, open=True))}, open=True),
}, open=True)

NamespaceBody = Obj({}, open=True)
# Secrets: only `kubernetes.io/tls` ones are read (an ingress listener's certificateRefs).
SecretBody = Obj({"type": Str(), "data": Map(Str()), "stringData": Map(Str())}, open=True)
ServiceAccountBody = Obj({}, open=True)
# ConfigMaps: `ca.crt` is read (an ingress Gateway's spec.tls.frontend caCertificateRefs), and a
# Gateway's parameter overlays (controller/waypoints/params.py).
ConfigMapBody = Obj({"data": Map(Str())}, open=True)

__all__ = ["PodBody", "ServiceBody", "EndpointSliceBody", "NodeBody", "NamespaceBody", "ServiceAccountBody", "SecretBody",
           "ConfigMapBody"]
