"""XXH64, the hash Envoy uses for load balancing: the request's hash key (header, cookie, source
address, query parameter: envoyproxy/envoy:source/common/http/hash_policy.cc, `HashUtil::xxHash64`),
the ring hash's points (`"<address>_<i>"`, ring_hash_lb.cc) and Maglev's permutations (seeds 0
and 1, maglev_lb.cc). Using the same function keeps Ambit's rings shaped like Envoy's.

A pure-Python implementation of the published algorithm (github.com/Cyan4973/xxHash,
doc/xxhash_spec.md), so the waypoint takes no native dependency: hash keys are short (a header
value) and tables are built once per membership change, so its speed is not an issue.
"""

from __future__ import annotations

import struct

_M = (1 << 64) - 1
P1 = 0x9E3779B185EBCA87
P2 = 0xC2B2AE3D27D4EB4F
P3 = 0x165667B19E3779F9
P4 = 0x85EBCA77C2B2AE63
P5 = 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * P2) & _M
    return (_rotl(acc, 31) * P1) & _M


def _merge(acc: int, v: int) -> int:
    acc ^= _round(0, v)
    return (acc * P1 + P4) & _M


def xxh64(data: bytes | str, seed: int = 0) -> int:
    """The 64-bit XXH64 of `data` (a str is hashed as its UTF-8 bytes)."""
    b = data.encode() if isinstance(data, str) else data
    n = len(b)
    i = 0
    if n >= 32:
        v1 = (seed + P1 + P2) & _M
        v2 = (seed + P2) & _M
        v3 = seed & _M
        v4 = (seed - P1) & _M
        while i + 32 <= n:
            a, bb, c, d = struct.unpack_from("<4Q", b, i)
            v1, v2, v3, v4 = _round(v1, a), _round(v2, bb), _round(v3, c), _round(v4, d)
            i += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M
        h = _merge(_merge(_merge(_merge(h, v1), v2), v3), v4)
    else:
        h = (seed + P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        (k,) = struct.unpack_from("<Q", b, i)
        h ^= _round(0, k)
        h = (_rotl(h, 27) * P1 + P4) & _M
        i += 8
    if i + 4 <= n:
        (k,) = struct.unpack_from("<I", b, i)
        h ^= (k * P1) & _M
        h = (_rotl(h, 23) * P2 + P3) & _M
        i += 4
    while i < n:
        h ^= (b[i] * P5) & _M
        h = (_rotl(h, 11) * P1) & _M
        i += 1
    h ^= h >> 33
    h = (h * P2) & _M
    h ^= h >> 29
    h = (h * P3) & _M
    h ^= h >> 32
    return h
