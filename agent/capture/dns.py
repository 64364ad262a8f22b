"""Whether a pod's DNS queries go to ztunnel's DNS proxy: the node default, or the pod's own
annotation (pure, no I/O).

    ambient.istio.io/dns-capture   "true" | "false"   overrides the agent's --dns-capture default

Istio reads the annotation with CheckBooleanAnnotation (Go's strconv.ParseBool); the same spellings
count here ("1", "t", "true", "0", "f", "false" ...), in any case (ambit.podannotations). Any other
value is not a silent no-op: capture follows the node default, and the decision carries a warning
naming the annotation, the value and the reason, which the agent logs and shows in the pod's status.
"""

from __future__ import annotations

from dataclasses import dataclass

from ambit.podannotations import not_boolean, parse_bool

ANN_DNS_CAPTURE = "ambient.istio.io/dns-capture"


@dataclass(frozen=True)
class DnsCapture:
    enabled: bool
    source: str          # "annotation" or "node default"
    warning: str = ""    # set when the annotation was present but not a boolean


def dns_capture(annotations: dict[str, str] | None, node_default: bool) -> DnsCapture:
    raw = (annotations or {}).get(ANN_DNS_CAPTURE)
    if raw is None:
        return DnsCapture(node_default, "node default")
    value = parse_bool(raw)
    if value is not None:
        return DnsCapture(value, "annotation")
    default = "on" if node_default else "off"
    return DnsCapture(node_default, "node default",
                      not_boolean(ANN_DNS_CAPTURE, raw, f"DNS capture follows the node default ({default})"))
