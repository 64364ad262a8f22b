"""Fuzzing the gRPC message counter (waypoint/http/grpcframes.py) with hypothesis: a body of
length-prefixed messages (any flags, lengths up to 2^32 - 1 announced) cut into chunks anywhere,
or arbitrary bytes. What must hold: `feed` never raises, counts exactly the messages whose last
byte was seen (a reference count over the whole body), says `partial` exactly when the body ends
inside one, and keeps at most a prefix's 4 bytes. (gRPC-Web is not gRPC here: headers.py.)"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import fuzzing
from waypoint.http.grpcframes import MessageCounter

UNIT_EXAMPLES = 400
LONG_EXAMPLES = fuzzing.fuzz_examples(3000)


def reference(body: bytes) -> tuple[int, bool]:
    """(whole messages, ends inside one) of `body`, read in one go."""
    n, i = 0, 0
    while i < len(body):
        if len(body) - i < 5:
            return n, True
        length = struct.unpack(">I", body[i + 1:i + 5])[0]
        if len(body) - i - 5 < length:
            return n, True
        i += 5 + length
        n += 1
    return n, False


messages = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=8).map(
    lambda ms: b"".join(struct.pack(">BI", f, len(m)) + m for f, m in ms))
bodies = st.one_of(messages, st.binary(max_size=200), st.tuples(messages, st.binary(max_size=9)).map(b"".join))


def check(body: bytes, cuts: list[int]) -> None:
    c = MessageCounter()
    pos, total = 0, 0
    for cut in sorted({x % (len(body) + 1) for x in cuts}) + [len(body)]:
        total += c.feed(memoryview(body)[pos:cut] if cut % 2 else body[pos:cut])
        pos = cut
        assert len(c._prefix) < 5
    assert (c.count, c.partial) == reference(body) and total == c.count


@given(bodies, st.lists(st.integers(0, 400), max_size=6))
@fuzzing.unit_budget(UNIT_EXAMPLES, too_slow_ok=False)
def test_any_body_cut_anywhere_is_counted_as_in_one_go(body: bytes, cuts: list[int]) -> None:
    check(body, cuts)


@pytest.mark.fuzz
@given(bodies, st.lists(st.integers(0, 400), max_size=10))
@fuzzing.fuzz_budget(LONG_EXAMPLES, health_checks=True)
def test_fuzz_grpc_frames_long(body: bytes, cuts: list[int]) -> None:
    check(body, cuts)
