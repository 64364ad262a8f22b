"""Per-pod capture exclusions, read from pod annotations (pure, no I/O).

    ambit.io/exclude-outbound-ports       "5432, 6379"        connect()s to these ports go direct
    ambit.io/exclude-outbound-ip-ranges   "10.0.0.0/8,1.2.3.4" connect()s into these ranges go direct
    ambit.io/exclude-inbound-ports        "9100"              inbound to these pod ports skips ztunnel

Lists are comma-separated; blanks and duplicates are ignored. Ambit captures IPv4 only, so IPv6
ranges are accepted and dropped (native IPv6 is never captured: it is already "excluded").
"""

from __future__ import annotations

import ipaddress

ANN_OUT_PORTS = "ambit.io/exclude-outbound-ports"
ANN_OUT_CIDRS = "ambit.io/exclude-outbound-ip-ranges"
ANN_IN_PORTS = "ambit.io/exclude-inbound-ports"


def _items(annotations: dict[str, str], name: str) -> list[str]:
    raw = annotations.get(name, "")
    if not isinstance(raw, str):
        raise ValueError(f"annotation {name}: expected a string, got {type(raw).__name__}")
    return [x.strip() for x in raw.split(",") if x.strip()]


def parse_ports(annotations: dict[str, str], name: str) -> list[int]:
    out: set[int] = set()
    for item in _items(annotations, name):
        try:
            port = int(item, 10)
        except ValueError:
            raise ValueError(f"annotation {name}: {item!r} is not a port number") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"annotation {name}: port {port} is outside 1-65535")
        out.add(port)
    return sorted(out)


def parse_cidrs(annotations: dict[str, str], name: str) -> list[str]:
    out: set[ipaddress.IPv4Network] = set()
    for item in _items(annotations, name):
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"annotation {name}: {item!r} is not an IP address or CIDR range") from None
        if isinstance(net, ipaddress.IPv4Network):
            out.add(net)
    return [str(n) for n in sorted(out)]


def annotations_to_exclusions(annotations: dict[str, str] | None) -> tuple[list[int], list[str], list[int]]:
    """(outbound ports, outbound IPv4 CIDRs, inbound ports) from a pod's annotations.

    Raises ValueError naming the annotation and the bad item, so the agent can report it on the pod.
    """
    ann = annotations or {}
    return (parse_ports(ann, ANN_OUT_PORTS), parse_cidrs(ann, ANN_OUT_CIDRS), parse_ports(ann, ANN_IN_PORTS))
