"""The lab's "outside": a netns on the underlay that is not in the mesh, where external clients run
(curl to an ingress gateway, as a client on the internet would reach a LoadBalancer address).

    <lab>.outside   out0 <underlay .250>/<prefix> on the underlay bridge; a route to each node's pod
                    CIDR via that node's underlay address (the lab's "load balancer" routes)

It is created with the first ingress gateway (ambitctl/lab/waypoints.py) and removed by `lab down`
with every other netns of the lab (by its name prefix). No agent, no ztunnel, no capture: traffic
from here is plain TCP until it reaches the ingress gateway's listeners.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ambitctl.lab import topology
from ambitctl.lab.topology import LabNames

HOST = 250          # its address on the underlay: .250


def netns(names: LabNames) -> str:
    return f"{names.name}.outside"


def address(spec: dict[str, Any]) -> str:
    net = ipaddress.ip_network(spec.get("underlay_cidr", "10.200.0.0/24"), strict=False)
    return str(net.network_address + HOST)


def ensure(names: LabNames, spec: dict[str, Any]) -> bool:
    """Create the outside netns unless it exists; True when it was created."""
    ns = netns(names)
    if ns in topology.list_netns():
        return False
    prefix = spec.get("underlay_cidr", "10.200.0.0/24").split("/")[1]
    topology.add_underlay_host(names, ns, "out0", "ul-outside", f"{address(spec)}/{prefix}",
                               [(node["pod_cidr"], node["underlay_ip"]) for node in spec["nodes"]])
    return True
