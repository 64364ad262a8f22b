"""What a listener does when `accept()` fails for want of resources.

Out of descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM), `accept()` fails while
the listener stays readable and the connection stays in the backlog. Retrying at once spins a core
(and logs at every turn); taking it for a closed listener stops accepting for good. Both of
Ambit's own accept loops (the waypoint supervisor's hand-off, the ZDS socket) wait
`ACCEPT_RETRY_DELAY` instead, as asyncio's servers do (`asyncio.constants.ACCEPT_RETRY_DELAY`).

`peer_key(address)` is what one peer is for a bound per source address, the same for every
listener that has one: the controller's accept gate (controller/fairness.py) and the data plane's
pending-handshake cap (ambit/dataplane/hbone/limits.py, `PendingHandshakes`).
"""

from __future__ import annotations

import errno
import ipaddress

OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
ACCEPT_RETRY_DELAY = 1.0

# Times each of this process's accept loops paused so, by loop (`hbone_handoff`: the waypoint
# supervisor's HBONE listener; `zds`: ztunnel's socket for the agent); a loop adds its key at 0 when
# it starts. Exported as `ambit_accept_backoffs_total{listener}` (docs/observability.md).
BACKOFFS: dict[str, int] = {}


def out_of_resources(e: OSError) -> bool:
    """Does `e` mean "not now" (wait and accept again) rather than "this listener is done"?"""
    return e.errno in OUT_OF_RESOURCES


def peer_key(address: str) -> str:
    """What one peer is, for a bound per source: its IPv4 address, or the /64 of its IPv6 address (a
    host is given a whole /64 and picks any address in it at will, so a bound per IPv6 address
    holds nothing). An IPv4-mapped IPv6 address (`::ffff:10.0.0.7`, how a dual-stack listener sees
    an IPv4 client) is its IPv4 address. Anything that is not an IP is its own key."""
    if ":" not in address:
        return address      # IPv4 as the kernel writes it (or not an IP): itself, without parsing
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))
