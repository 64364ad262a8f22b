"""networking.istio.io (and networking.ambit.io) ServiceEntry: external (or non-Kubernetes) services
in the mesh's registry.

Field names and rules follow Istio's API reference and its CRD validations. What ztunnel and the
waypoints do with each field is in docs/egress.md; the fields Ambit does not build are refused here
by name with the reason (`subjectAltNames`, endpoint `network`/`serviceAccount`, Unix-socket
endpoints, UDP ports and `resolution: DYNAMIC_DNS`). `workloadSelector` selects pods of the entry's
namespace as its endpoints (controller.translate.entrypods), with Istio's rules: not together with
`endpoints`, no wildcard in its labels.
"""

from __future__ import annotations

import re
from typing import Any

from controller.kinds.common import Cidr, Labels, Port, Strings
from controller.kinds.hostnames import host_reason, is_ip
from controller.kinds.istio_rules import port_name_reason
from controller.kinds.networking import check_entry_export_to
from controller.kinds.schema import Arr, Errors, Int, Map, Obj, Str, join

RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")
LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")
# Istio's port protocols (matched ignoring case, as its protocol.Parse does; "" asks for sniffing,
# which Ambit does by the port name's prefix). The HTTP ones are routed by host at a waypoint the
# ServiceEntry is bound to; the others are carried as bytes.
PROTOCOLS = ("HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "HTTP_PROXY", "MONGO", "REDIS", "MYSQL", "TCP", "TLS")


def _check_protocol(text: str) -> str | None:
    if text.upper() == "UDP":
        return "UDP is not supported by Ambit: the mesh carries TCP only"
    if text and text.upper() not in PROTOCOLS:
        return f"unsupported protocol: {text} (one of {', '.join(PROTOCOLS)}, any case)"
    return None


def _check_host(text: str) -> str | None:
    if text == "*":
        return 'invalid host "*": a ServiceEntry names hosts (a prefix wildcard "*.example.com" at most)'
    if text.startswith("*.") and len(text) > 2:
        return None
    if ":" in text:
        return (f'a host has no port (a request or a DNS query names the host alone, so this one would match '
                f'none): put the port in spec.ports, got "{text}"')
    if "/" in text or " " in text or not text.strip(".") or not _HOST_CHARS.fullmatch(text):
        return f'must be a DNS name such as "api.example.com" or a wildcard "*.example.com", got "{text}"'
    # the rest of Istio's ValidateWildcardDomain (empty or over-long labels, "-" at an end, a
    # wildcard inside the name): "a..b" or "foo.*.com" was taken and named nothing a request has.
    # A trailing dot stays allowed here: the entry's own name is the registry's, DNS answers it.
    return host_reason(text[:-1] if text.endswith(".") else text, ip=True)


# what a DNS name's labels may hold (Istio's ValidateWildcardDomain is stricter: no "_")
_HOST_CHARS = re.compile(r"[A-Za-z0-9._*-]+")


def _check_endpoint_address(text: str) -> str | None:
    if text.startswith("unix://"):
        return "Unix domain socket endpoints are not supported by Ambit: ztunnel dials TCP only"
    return None


ServicePort = Obj({
    "number": Port,
    "protocol": Str(valid=_check_protocol, description="Istio port protocol (any case); HTTP, HTTP2 and GRPC "
                                                       "ports are routed by host at a waypoint."),
    "name": Str(min_len=1, max_len=256, valid=port_name_reason),
    "targetPort": Port,
}, required=("number", "name"))

def _check_locality(text: str) -> str | None:
    """Istio reads an endpoint's locality as region/zone/subzone (`util.ConvertLocality`, at most
    three parts, anything after the second "/" being the subzone); a part that is empty, or one with
    space or control characters, would compare as nobody's locality. "" is unset (proto3's default,
    as Istio reads it): no locality, not an empty part."""
    if text == "":
        return None
    parts = text.split("/")
    if len(parts) > 3 or any(not p or not p.isprintable() or any(c.isspace() for c in p) for p in parts):
        return f"must be region[/zone[/subzone]] (non-empty parts without spaces), got {text!r}"
    return None


WorkloadEntryEndpoint = Obj({
    "address": Str(valid=_check_endpoint_address),
    "ports": Map(Port, max_entries=128),
    "labels": Map(Labels.values, key=Labels.key, max_entries=256),
    "weight": Int(minimum=0, maximum=2**32 - 1),
    "locality": Str(valid=_check_locality, max_len=2048, description="region[/zone[/subzone]]: where the endpoint runs, for "
                                                       "traffic distribution and locality load balancing"),
}, unsupported={
    "network": "network is not supported by Ambit: the mesh is one network",
    "serviceAccount": "serviceAccount is not supported by Ambit: endpoints of a ServiceEntry are not mesh "
                      "workloads with identities (MESH_INTERNAL endpoints that are mesh pods use their pod's)",
})


def _check_selector_key(key: Any) -> str | None:
    """Istio's ValidateAlphaWorkloadSelector: a key may not be empty nor hold a wildcard (it is
    matched literally against pod labels, so "*" would read as "any" and match nothing)."""
    if not isinstance(key, str):
        return f"label keys must be strings, got {key!r}"
    if not key:
        return "empty key is not supported in selector"
    if "*" in key:
        return f'wildcard is not supported in selector: "{key}"'
    return None


def _check_selector_value(text: str) -> str | None:
    if "*" in text:
        return f'wildcard is not supported in selector: "{text}" (labels match exactly)'
    if len(text) > 63:
        return f"must be at most 63 characters (a label value), got {len(text)}"
    return None


EntryWorkloadSelector = Obj({
    "labels": Map(Str(valid=_check_selector_value), key=_check_selector_key, max_entries=256,
                  description="The labels a pod of the entry's namespace must all carry to be one of its "
                              "endpoints; none selects no pod."),
}, description="Pods of the ServiceEntry's namespace that are its endpoints (Istio's networking WorkloadSelector).")


def _check_service_entry(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Istio's CRD validations (x-kubernetes-validations) and pilot's `ValidateServiceEntry` rules
    that make a ServiceEntry ambiguous to route."""
    resolution = value.get("resolution") or "NONE"
    addresses = value.get("addresses") or []
    endpoints = value.get("endpoints") or []
    hosts = value.get("hosts") or []
    if "workloadSelector" in value and "endpoints" in value:
        errs.append((join(path, "workloadSelector"), "only one of workloadSelector or endpoints can be set: the "
                                                     "selected pods are the entry's endpoints"))
    if resolution == "DYNAMIC_DNS":
        errs.append((join(path, "resolution"), "DYNAMIC_DNS is not supported by Ambit: ztunnel has no dynamic "
                                               "forward proxy; use DNS with the host names listed"))
    if resolution not in ("NONE", "STATIC") and any("/" in a for a in addresses):
        errs.append((join(path, "addresses"), "CIDR addresses are allowed only for NONE/STATIC resolution types"))
    if resolution == "NONE" and endpoints:
        errs.append((join(path, "endpoints"), "NONE mode cannot set endpoints"))
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        errs.append((join(path, "endpoints"), "DNS_ROUND_ROBIN mode cannot have multiple endpoints"))
    if resolution == "STATIC" and not endpoints and "workloadSelector" not in value:
        errs.append((join(path, "endpoints"), "STATIC resolution needs endpoints (the addresses to send to) or a "
                                              "workloadSelector (pods of the entry's namespace)"))
    for i, e in enumerate(endpoints):
        addr = e.get("address")
        where = f"{join(path, 'endpoints')}[{i}]"
        if resolution == "STATIC" and (not addr or not is_ip(addr)):
            errs.append((join(where, "address"), f"STATIC resolution needs an IP address, got {addr!r}"))
        if resolution in ("DNS", "DNS_ROUND_ROBIN") and not addr:
            errs.append((join(where, "address"), "required field is missing (a host name or IP to resolve)"))
        elif resolution in ("DNS", "DNS_ROUND_ROBIN") and isinstance(addr, str) and not is_ip(addr) \
                and (addr.startswith("*") or host_reason(addr)):
            errs.append((join(where, "address"), f'endpoint address "{addr}" is not a valid FQDN or an IP address '
                                                 "(Istio refuses it too): it is what ztunnel resolves"))
        names = {p.get("name") for p in value.get("ports") or []}
        for pname in e.get("ports") or {}:
            if pname not in names:
                errs.append((join(join(where, "ports"), str(pname)), f'names no port of the ServiceEntry '
                                                                     f'(ports: {", ".join(sorted(map(str, names)))})'))
    if resolution != "NONE" and len(hosts) > 1:
        for i, p in enumerate(value.get("ports") or []):
            if (p.get("protocol") or "").upper() not in ("HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY", "HTTPS",
                                                         "TLS"):
                errs.append((f"{join(path, 'ports')}[{i}].protocol", "multiple hosts provided with non-HTTP, non-TLS "
                                                                     "ports (nothing tells the hosts apart)"))
                break
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not endpoints:
        for i, h in enumerate(hosts):
            if isinstance(h, str) and h.startswith("*"):
                errs.append((f"{join(path, 'hosts')}[{i}]", f"hosts must be FQDN if no endpoints are provided for "
                                                           f"resolution mode {resolution} (Istio refuses it too): a "
                                                           "wildcard cannot be resolved; list endpoints or use NONE"))
                break
    names_seen: dict[str, int] = {}
    for i, p in enumerate(value.get("ports") or []):
        name = p.get("name")
        if name in names_seen:
            errs.append((f"{join(path, 'ports')}[{i}].name", f'service entry port name "{name}" already defined '
                                                            f"(also ports[{names_seen[name]}]; Istio refuses it too)"))
        names_seen.setdefault(name, i)
    seen: dict[int, int] = {}
    for i, p in enumerate(value.get("ports") or []):
        n = p.get("number")
        if n in seen:
            errs.append((f"{join(path, 'ports')}[{i}].number", f"port number cannot be duplicated (also ports[{seen[n]}])"))
        seen.setdefault(n, i)


# The list bounds are Istio's CRD's (its CEL cost limits): beyond them Istio's API server refuses the
# object, so an entry `ambit apply` accepted would not apply on an Istio cluster.
ServiceEntrySpec = Obj({
    "hosts": Arr(Str(min_len=1, valid=_check_host), min_items=1, max_items=256),
    "addresses": Arr(Cidr, max_items=256),
    "ports": Arr(ServicePort, max_items=256),
    "location": Str(enum=LOCATIONS),
    "resolution": Str(enum=RESOLUTIONS),
    "endpoints": Arr(WorkloadEntryEndpoint, max_items=4096),
    "exportTo": Strings,
    "workloadSelector": EntryWorkloadSelector,
}, required=("hosts",), checks=(_check_service_entry, check_entry_export_to), unsupported={
    "subjectAltNames": "subjectAltNames is not supported by Ambit: MESH_INTERNAL endpoints that are mesh pods are "
                       "verified by their own SPIFFE identity; for TLS origination set subjectAltNames on the "
                       "DestinationRule's tls",
})
