"""Bounds on the consistent-hash tables a waypoint builds (DestinationRule
`loadBalancer.consistentHash`), shared by the controller's validation and the waypoint.

The waypoint builds a table (in Python) when a cluster's endpoints change, on its event loop, at
about 1.3 M entries a second here. Envoy's bounds (a Maglev table under 5000011, a ring of up to
8 M points) would stop it for seconds, so Ambit's are lower: a ring of 131072 points spreads keys
within about 1 % of even over 100 endpoints, and Maglev's default (65537) is under its bound.
A Maglev table's size must be prime: its permutations cover the table only then, and filling a
table of another size never ends.
"""

from __future__ import annotations

MAGLEV_DEFAULT = 65537              # Envoy's table size default
MAX_MAGLEV_TABLE = 131071           # the largest prime below 2**17
RING_DEFAULT = 1024                 # Envoy's minimum_ring_size default (Istio's minimumRingSize)
MAX_RING_SIZE = 131072


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def maglev_size(size: int) -> int:
    """The table size the waypoint uses for a configured `tableSize` (0: the default): the
    default too for one validation refuses (not prime, or over the bound), should one arrive."""
    return size if size and size <= MAX_MAGLEV_TABLE and is_prime(size) else MAGLEV_DEFAULT
