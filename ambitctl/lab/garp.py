"""Gratuitous ARP: a new pod announces its address on its node's bridge, as the CNI bridge plugin
does when it sets up a pod's interface.

Why: the lab gives a re-created pod its old address (a waypoint deleted and applied again is
10.210.1.200 both times), with a new veth and so a new MAC. Every netns on the node's bridge that
talked to the old pod still holds the old MAC in its neighbour table, and ztunnel dials from
inside the client pod's netns: its SYNs went to a MAC no port has, until the kernel's neighbour
state machine re-probed (reachable time, then DELAY and PROBE), which took longer than the 10 s
dial timeout. The first requests after the re-creation failed (`HBONE connect: timed out`).
A gratuitous ARP updates the entries that exist (Linux overrides an existing entry for a
gratuitous ARP even with `arp_accept` off) and creates none.
"""

from __future__ import annotations

import ipaddress
import socket

from ambit.netns import socket_in

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def frame(mac: bytes, ip: str) -> bytes:
    """An Ethernet broadcast ARP request whose sender and target address are both `ip` (the
    "gratuitous" form `arping -U` sends)."""
    if len(mac) != 6:
        raise ValueError(f"a MAC address is 6 bytes, not {len(mac)}")
    addr = ipaddress.IPv4Address(ip).packed
    arp = (b"\x00\x01"              # hardware type: Ethernet
           b"\x08\x00"              # protocol type: IPv4
           b"\x06\x04"              # address lengths
           b"\x00\x01"              # operation: request
           + mac + addr + b"\x00" * 6 + addr)
    return BROADCAST + mac + ETH_P_ARP.to_bytes(2, "big") + arp


def announce(netns: str, ifname: str, ip: str, count: int = 2) -> None:
    """Send `count` gratuitous ARPs for `ip` out of `ifname` in `netns` (two, as CNI plugins
    send more than one: the first can go out before the bridge port forwards)."""
    with socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        mac = s.getsockname()[4]
        data = frame(mac, ip)
        for _ in range(count):
            s.send(data)
