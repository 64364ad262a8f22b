"""XXH64, the hash Envoy uses for load balancing: the request's hash key (header, cookie, source
address, query parameter: envoyproxy/envoy:source/common/http/hash_policy.cc, `HashUtil::xxHash64`),
the ring hash's points (`"<address>_<i>"`, ring_hash_lb.cc) and Maglev's permutations (seeds 0
and 1, maglev_lb.cc). Using the same function keeps Ambit's rings shaped like Envoy's.

The `xxhash` package (the reference C implementation, github.com/ifduyue/python-xxhash) computes
it; this module only fixes the str encoding (UTF-8) that every caller wants.
"""

from __future__ import annotations

import xxhash


def xxh64(data: bytes | str, seed: int = 0) -> int:
    """The 64-bit XXH64 of `data` (a str is hashed as its UTF-8 bytes)."""
    return xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data, seed)
