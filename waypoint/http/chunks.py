"""Holding a request body in memory (before the upstream connects, for a retry, for a shadow).

A client may send its body as 1-byte HTTP/2 DATA frames (or 1-byte HTTP/1.1 chunks). Kept one by
one, each costs ~40 bytes of Python (a bytes object and its slot in the list): a 1 MiB retry
buffer held ~40 MB, and a stream's window of them waiting for the upstream as much again.
"""

from __future__ import annotations

from collections import deque

SMALL_CHUNK = 4096      # chunks under this join a small last one; larger ones are kept as they are


def keep(chunks: list[bytes] | deque[bytes], data: bytes) -> None:
    """Append `data` to a held body, joined to the last chunk when both are small, so the held
    body costs about its bytes however it was cut. One length test for a full-size chunk."""
    if len(data) < SMALL_CHUNK and chunks and len(chunks[-1]) < SMALL_CHUNK:
        chunks[-1] = chunks[-1] + data      # (a new object: the same chunk may be held twice)
    else:
        chunks.append(data)
