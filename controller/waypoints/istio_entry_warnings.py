"""istiod's webhook warnings on ServiceEntries (istio/istio `pkg/config/validation/validation.go`,
`ValidateServiceEntry`), repeated by `ambit apply` and the controller as advisories.

istiod accepts these entries and warns; Ambit accepts and applies them too, so it says what istiod
says and what Ambit then does with the entry (docs/egress.md), where the user looks. The
conditions are istiod's, so that the same YAML gets the same warnings; istiod's other warning on
an entry (a partial wildcard host) is a refusal in Ambit, which cannot expand one.
"""

from __future__ import annotations

from typing import Any

from controller.translate.autoalloc import not_allocated

Obj = dict[str, Any]
# istiod's protocol.Parse(...).IsTCP(): the protocols carried on TCP that are no HTTP (any case)
_TCP = ("TCP", "HTTPS", "TLS", "MONGO", "REDIS", "MYSQL")


def entry_warnings(o: Obj, autoallocate: bool = True) -> list[tuple[str, str]]:
    """(field path, reason) for each istiod warning on ServiceEntry `o`. `autoallocate`: whether
    the controller auto-allocates addresses (PILOT_ENABLE_IP_AUTOALLOCATE, on by default)."""
    spec = o.get("spec") or {}
    out: list[tuple[str, str]] = []
    resolution = spec.get("resolution") or "NONE"
    selector = spec.get("workloadSelector")
    if selector is not None and not (selector or {}).get("labels"):
        out.append(("spec.workloadSelector", "service entry: workload selector specified without labels, will be "
                    "applied to all services in namespace (istiod warns so): Ambit, as Istio's ambient registry, "
                    "selects no pod with it, so the entry's hosts have no endpoint"))
    if not spec.get("addresses"):
        why = not_allocated(o, autoallocate)
        for i, p in enumerate(spec.get("ports") or []):
            if why and (p or {}).get("protocol", "") in ("", "TCP"):
                out.append((f"spec.ports[{i}]", "addresses are required for ports serving TCP (or unset) protocol when "
                            f"IP Autoallocation is not enabled (istiod warns too): {why}, so the entry has no VIP: "
                            "ztunnel takes a connection to this port as the entry's only when it goes to a STATIC "
                            "endpoint's address; one to the address the app resolved the host to is not the "
                            "entry's (passed through, or refused under REGISTRY_ONLY)"))
    if resolution == "NONE" and selector is not None:
        out.append(("spec.workloadSelector", "workloadSelector should not be set when resolution mode is NONE (istiod "
                    "warns too): Ambit reads the entry as STATIC, the selected pods its endpoints, as Istio's ambient "
                    "does; a NONE entry gets no auto-allocated address, so without addresses it has no VIP to "
                    "reach them by"))
    hosts = spec.get("hosts") or []
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and spec.get("addresses") and len(hosts) > 1 and any(
            str((p or {}).get("protocol") or "").upper() in _TCP for p in spec.get("ports") or []):
        out.append(("spec.addresses", "service entry can not have more than one host specified simultaneously with "
                    "address and tcp port (istiod warns too): ztunnel cannot tell the hosts of one connection "
                    f'apart, so the addresses are the first host\'s ("{hosts[0]}") only; give each host its own '
                    "entry and address"))
    return out
