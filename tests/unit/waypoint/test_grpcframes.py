"""Counting gRPC length-prefixed messages across arbitrary chunk boundaries (waypoint/http/grpcframes.py)."""

from __future__ import annotations

import random

from waypoint.http.grpcframes import MessageCounter


def msg(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([int(compressed)]) + len(payload).to_bytes(4, "big") + payload


def test_messages_split_anywhere_are_counted_once_each() -> None:
    stream = msg(b"a" * 3) + msg(b"") + msg(b"x" * 70_000, compressed=True) + msg(b"hello")
    for seed in range(50):
        rng = random.Random(seed)
        c, i, seen = MessageCounter(), 0, 0
        while i < len(stream):
            n = rng.choice((1, 2, 3, 4, 5, 6, 17, 4096, 100_000))
            seen += c.feed(stream[i:i + n])
            i += n
        assert (c.count, seen, c.partial) == (4, 4, False)


def test_a_prefix_straddling_chunks_and_a_truncated_stream() -> None:
    c = MessageCounter()
    data = msg(b"abcdef")
    assert c.feed(data[:2]) == 0 and c.partial
    assert c.feed(data[2:7]) == 0 and c.partial
    assert c.feed(data[7:]) == 1 and not c.partial
    assert c.feed(msg(b"zz")[:6]) == 0 and c.partial and c.count == 1     # stream ended mid-message
    many = MessageCounter()
    assert many.feed(b"".join(msg(bytes([i])) for i in range(100))) == 100
