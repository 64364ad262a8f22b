"""Fuzzing the HBONE frame parser and CONNECT handling (hypothesis).

What must hold for any input from a peer: `receive_data` never raises, never hangs, and never
hands out a tunnel that is not a valid CONNECT with an `:authority`; after a connection error it
parses nothing more; the events are well-formed. Three budgets:
- the unit suite: a few hundred examples each (a few seconds);
- `-m fuzz`: `AMBIT_FUZZ_EXAMPLES` examples each (default 3,000, bounded so CI runs it too);
- a long local run: `python -m tests.unit.dataplane.test_hbone_fuzz --cases 1000000` (random
  mutation of valid conversations, no shrinking; reports cases/s and any crash with its input).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator

import hpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone.connection import (
    ConnectionClosed,
    ConnectRequest,
    Data,
    HBONEConnection,
    PingAck,
    StreamEnded,
    StreamReset,
    WindowAvailable,
)
from tests.support import fuzzing

UNIT_EXAMPLES = 300
LONG_EXAMPLES = fuzzing.fuzz_examples(3000)
TYPES = [f.DATA, f.HEADERS, f.PRIORITY, f.RST_STREAM, f.SETTINGS, f.PUSH_PROMISE, f.PING, f.GOAWAY,
         f.WINDOW_UPDATE, f.CONTINUATION, 0xA, 0xFF]


def new_server() -> HBONEConnection:
    s = HBONEConnection(client_side=False)
    s.initiate()
    s.bytes_to_send()
    return s


def check(chunks: list[bytes], conn: HBONEConnection | None = None) -> HBONEConnection:
    """Feed `chunks`; assert the invariants. Any exception is a finding."""
    s = conn or new_server()
    fatal_seen = False
    for chunk in chunks:
        t0 = time.process_time()
        evs = s.receive_data(chunk)
        assert time.process_time() - t0 < 2.0, "receive_data took over 2 s of CPU"
        if fatal_seen:
            assert evs == [], "events after a connection error"
        for ev in evs:
            assert isinstance(ev, (ConnectRequest, Data, StreamEnded, StreamReset, WindowAvailable,
                                   ConnectionClosed, PingAck)), ev
            if isinstance(ev, ConnectRequest):
                assert ev.headers.get(":method") == "CONNECT" and ev.authority, ev
                assert ev.stream_id % 2 == 1
            if isinstance(ev, Data):
                assert len(ev.data) > 0
            if isinstance(ev, ConnectionClosed) and ev.fatal:
                fatal_seen = True
        s.bytes_to_send()
        assert s.open_streams <= s.max_concurrent_streams + 1
    return s


def frame(ftype: int, flags: int, sid: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return f.pack_header(n, ftype, flags, sid) + payload


def headers_block(enc: hpack.Encoder, headers: list[tuple[str, str]]) -> bytes:
    return enc.encode(headers)


# --- strategies --------------------------------------------------------------------------------

small_sid = st.integers(min_value=0, max_value=12)
raw_frames = st.builds(
    frame,
    st.sampled_from(TYPES),
    st.integers(min_value=0, max_value=255),
    small_sid,
    st.binary(max_size=64),
    st.one_of(st.none(), st.integers(min_value=0, max_value=70_000)),
)
header_name = st.sampled_from([":method", ":authority", ":protocol", ":path", ":scheme", "forwarded",
                               "traceparent", "x-a", "Upper", "te", "connection", ""])
header_value = st.one_of(
    st.sampled_from(["CONNECT", "GET", "10.0.0.2:8080", "[::1]:80", "websocket", "trailers", "", "a" * 300]),
    st.text(max_size=40),
)
header_lists = st.lists(st.tuples(header_name, header_value), max_size=8)


@given(st.lists(raw_frames, max_size=12), st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
       st.booleans())
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_frame_parser_survives_arbitrary_frames(frames: list[bytes], cuts: list[int], preface: bool) -> None:
    wire = (f.PREFACE if preface else b"") + b"".join(frames)
    check(fuzzing.split(wire, cuts))


@given(st.lists(header_lists, min_size=1, max_size=4), st.booleans(), st.booleans())
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_connect_handling_survives_arbitrary_headers(lists: list[list[tuple[str, str]]], end_stream: bool,
                                                     data_after: bool) -> None:
    enc = hpack.Encoder()
    wire = bytearray(f.PREFACE + frame(f.SETTINGS, 0, 0, b""))
    for i, hdrs in enumerate(lists):
        sid = 1 + 2 * i
        try:
            block = headers_block(enc, hdrs)
        except Exception:   # noqa: BLE001 - the encoder refusing a header is not our finding
            continue
        wire += frame(f.HEADERS, f.END_HEADERS | (f.END_STREAM if end_stream else 0), sid, block)
        if data_after:
            wire += frame(f.DATA, 0, sid, b"hello")
    check([bytes(wire)])


@pytest.mark.fuzz
@given(st.lists(raw_frames, max_size=24), st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
       st.booleans())
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_frame_parser_long(frames: list[bytes], cuts: list[int], preface: bool) -> None:
    test_frame_parser_survives_arbitrary_frames.hypothesis.inner_test(frames, cuts, preface)


@pytest.mark.fuzz
@given(st.lists(header_lists, min_size=1, max_size=6), st.booleans())
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_connect_handling_long(lists: list[list[tuple[str, str]]], end_stream: bool) -> None:
    test_connect_handling_survives_arbitrary_headers.hypothesis.inner_test(lists, end_stream, True)


# --- the long local run: random mutation of valid conversations ----------------------------------------

def _seed_conversations() -> list[bytes]:
    enc = hpack.Encoder()
    seeds = []
    base = f.PREFACE + frame(f.SETTINGS, 0, 0, b"") + frame(f.SETTINGS, 1, 0, b"")
    req = headers_block(enc, [(":method", "CONNECT"), (":authority", "10.0.0.2:8080"),
                              ("forwarded", "for=10.0.0.1"), ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-00")])
    seeds.append(base + frame(f.HEADERS, f.END_HEADERS, 1, req) + frame(f.DATA, 0, 1, b"x" * 100)
                 + frame(f.DATA, f.END_STREAM, 1, b"") + frame(f.WINDOW_UPDATE, 0, 0, (1000).to_bytes(4, "big")))
    seeds.append(base + frame(f.HEADERS, 0, 1, req[:5]) + frame(f.CONTINUATION, f.END_HEADERS, 1, req[5:])
                 + frame(f.RST_STREAM, 0, 1, (8).to_bytes(4, "big")) + frame(f.PING, 0, 0, bytes(8)))
    seeds.append(base + frame(f.DATA, f.PADDED, 1, b"\x03abc\x00\x00\x00")
                 + frame(f.GOAWAY, 0, 0, bytes(8) + b"bye") + frame(f.PRIORITY, 0, 3, bytes(5)))
    return seeds


def _insert_frame(rng: random.Random, b: bytearray, pos: int) -> None:
    b[pos:pos] = frame(rng.choice(TYPES), rng.randrange(256), rng.randrange(8),
                       bytes(rng.randrange(256) for _ in range(rng.randrange(16))))


MUTATIONS = (fuzzing.set_byte, fuzzing.insert_random(16), fuzzing.delete(32), _insert_frame,
             fuzzing.splice(64, longer_than=24, start=24), fuzzing.flip_bit)


def mutate(rng: random.Random, data: bytes) -> bytes:
    return fuzzing.mutate_bytes(rng, data, MUTATIONS, most=6)


def _frames(wire: bytes) -> list[bytes]:
    """`wire` cut into its frames, sorted: the codec answers SETTINGS and PING in an order that
    depends on what one read held (both orders are valid HTTP/2), so only the set is compared."""
    out, pos = [], 0
    while pos < len(wire):
        end = pos + f.HEADER_LEN + int.from_bytes(wire[pos:pos + 3], "big")
        out.append(wire[pos:end])
        pos = end
    return sorted(out)


# (stream window, connection window): HTTP/2's smallest for one of them, so that a burst overruns
# that one alone
WINDOWS = ((f.DEFAULT_WINDOW, 16 * f.DEFAULT_WINDOW), (16 * f.DEFAULT_WINDOW, f.DEFAULT_WINDOW))


def _fed(chunks: list[bytes], windows: tuple[int, int]) -> tuple[list[object], list[bytes]]:
    """Events (consecutive DATA of one stream joined, payloads as bytes) and the frames to send."""
    s = HBONEConnection(client_side=False, stream_window=windows[0], connection_window=windows[1])
    s.initiate()
    s.bytes_to_send()
    out: list[object] = []
    for chunk in chunks:
        for ev in s.receive_data(chunk):
            if isinstance(ev, Data):
                last = out[-1] if out else None
                if isinstance(last, Data) and last.stream_id == ev.stream_id:
                    out[-1] = Data(ev.stream_id, bytes(last.data) + bytes(ev.data))
                    continue
                ev = Data(ev.stream_id, bytes(ev.data))
            out.append(ev)
    return out, _frames(s.bytes_to_send())


def _valid_conversation(rng: random.Random) -> bytes:
    """A client's valid HBONE conversation: a few CONNECTs, then DATA (plain, padded, empty, ending
    the stream) interleaved across them, with PINGs, a WINDOW_UPDATE and now and then a reset."""
    enc = hpack.Encoder()
    wire = bytearray(f.PREFACE + frame(f.SETTINGS, 0, 0, b""))
    sids = [1 + 2 * i for i in range(rng.randint(1, 4))]
    for sid in sids:
        wire += frame(f.HEADERS, f.END_HEADERS, sid, headers_block(enc, [(":method", "CONNECT"),
                                                                        (":authority", f"10.0.0.{sid}:80")]))
    open_ = list(sids)
    for _ in range(rng.randint(1, 12)):
        if not open_:
            break
        sid, r = rng.choice(open_), rng.random()
        payload = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 9, 100, 1500))))
        if r < 0.6:
            wire += frame(f.DATA, 0, sid, payload)
        elif r < 0.7:
            wire += frame(f.DATA, f.PADDED, sid, bytes([3]) + payload + bytes(3))
        elif r < 0.8:
            wire += frame(f.DATA, f.END_STREAM, sid, payload)
            open_.remove(sid)
        elif r < 0.85:
            wire += frame(f.RST_STREAM, 0, sid, (8).to_bytes(4, "big"))
            open_.remove(sid)
        elif r < 0.9:
            wire += frame(f.PING, 0, 0, bytes(rng.randrange(256) for _ in range(8)))
        elif r < 0.95:      # a peer ignoring our windows: 80 KiB where a window may allow 64
            wire += b"".join(frame(f.DATA, 0, sid, bytes(f.DEFAULT_MAX_FRAME)) for _ in range(5))
        else:
            wire += frame(f.WINDOW_UPDATE, 0, 0, (1000).to_bytes(4, "big"))
    return bytes(wire)


def test_whole_reads_and_short_reads_agree_on_valid_and_mutated_conversations() -> None:
    """`receive_data` has a fast path for whole, unpadded DATA frames inside one read
    (docs/performance.md §36); fed 8 bytes at a time it never takes it. Both must say the same:
    the same events in the same order and the same frames back, valid input or not."""
    rng = random.Random(36)
    seeds = _seed_conversations()
    compared = 0
    cases = [_valid_conversation(rng) for _ in range(250)] + [mutate(rng, rng.choice(seeds)) for _ in range(500)]
    for data, windows in ((d, w) for d in cases for w in WINDOWS):
        # reads shorter than a frame header never take the fast path
        (events, frames), (events1, frames1) = (_fed([data], windows),
                                                _fed([data[i:i + 8] for i in range(0, len(data), 8)], windows))
        assert events == events1, data
        if any(isinstance(ev, ConnectionClosed) and ev.fatal for ev in events):
            # A connection error drops what the codec had queued in that read (its answers to
            # earlier frames of the same read), so only the GOAWAY itself must agree.
            assert [fr for fr in frames if fr[3] == f.GOAWAY] == [fr for fr in frames1 if fr[3] == f.GOAWAY], data
        else:
            assert frames == frames1, data
            compared += 1
    assert compared > 400, "too few conversations survived to compare their output"


def _long_cases(rng: random.Random) -> Iterator[tuple[bytes, list[int]]]:
    """Mutated seed conversations, each cut into up to four reads."""
    seeds = _seed_conversations()
    while True:
        data = mutate(rng, rng.choice(seeds))
        yield data, [rng.randrange(len(data) + 1) for _ in range(rng.randrange(4))]


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, lambda case: check(fuzzing.split(*case)))


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=1_000_000))


@pytest.mark.parametrize("name", [b":authority", b"forwarded"])
def test_non_utf8_header_value_is_a_stream_error_not_a_crash(name: bytes) -> None:
    """Regression (found by the long run): h2 raised UnicodeDecodeError out of receive_data. A
    malformed request is a stream error (RFC 9113 §8.1.1): RST_STREAM PROTOCOL_ERROR, no tunnel,
    and the connection's other streams go on (a bad :authority is libnghttp2's finding, a value
    that is not UTF-8 elsewhere is ours)."""
    enc = hpack.Encoder()
    hdrs = {b":method": b"CONNECT", b":authority": b"10.0.0.2:80"}
    hdrs[name] = b"\x94\xff"
    block = enc.encode(list(hdrs.items()))
    good = enc.encode([(b":method", b"CONNECT"), (b":authority", b"10.0.0.3:80")])
    s = new_server()
    evs = s.receive_data(f.PREFACE + frame(f.SETTINGS, 0, 0, b"") + frame(f.HEADERS, f.END_HEADERS, 1, block)
                         + frame(f.HEADERS, f.END_HEADERS, 3, good))
    assert [(e.stream_id, e.authority) for e in evs if isinstance(e, ConnectRequest)] == [(3, "10.0.0.3:80")]
    assert not s.dead and not s.is_open(1) and s.is_open(3)
    wire = s.bytes_to_send()
    rst = f.pack_header(4, f.RST_STREAM, 0, 1) + f.PROTOCOL_ERROR.to_bytes(4, "big")
    assert rst in wire
