"""What a listener does when `accept()` fails for want of resources.

Out of descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM), `accept()` fails while
the listener stays readable and the connection stays in the backlog. Retrying at once spins a core
(and logs at every turn); taking it for a closed listener stops accepting for good. Both of
Ambit's own accept loops (the waypoint supervisor's hand-off, the ZDS socket) wait
`ACCEPT_RETRY_DELAY` instead, as asyncio's servers do (`asyncio.constants.ACCEPT_RETRY_DELAY`).
"""

from __future__ import annotations

import errno

OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
ACCEPT_RETRY_DELAY = 1.0

# Times each of this process's accept loops paused so, by loop (`hbone_handoff`: the waypoint
# supervisor's HBONE listener; `zds`: ztunnel's socket for the agent); a loop adds its key at 0 when
# it starts. Exported as `ambit_accept_backoffs_total{listener}` (docs/observability.md).
BACKOFFS: dict[str, int] = {}


def out_of_resources(e: OSError) -> bool:
    """Does `e` mean "not now" (wait and accept again) rather than "this listener is done"?"""
    return e.errno in OUT_OF_RESOURCES
