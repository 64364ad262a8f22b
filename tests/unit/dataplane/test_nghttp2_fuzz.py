"""Fuzzing the libnghttp2 codec (ambit/dataplane/nghttp2/connection.py) alone, sans-IO, with
hypothesis: as a server (a client's frames) and as a client (an upstream's frames).

What must hold for any bytes a peer sends: `receive_data` raises nothing but the documented
`h2.exceptions.ProtocolError` (a connection error, with nghttp2's GOAWAY to send), never hangs,
and no callback fails inside nghttp2 (logged as "nghttp2 callback failed"); the events are h2's;
answering them as the waypoint does (`send_headers`, `send_data`, `reset_stream`,
`acknowledge_received_data`) raises nothing but h2's `H2Error`s; after a connection error no more
events come. Three budgets, as tests/unit/dataplane/test_hbone_fuzz.py: the unit suite, `-m fuzz`
(`AMBIT_FUZZ_EXAMPLES`), and `python -m tests.unit.dataplane.test_nghttp2_fuzz --cases 200000`.
"""

from __future__ import annotations

import logging
import random
import struct
import sys
import time
from collections.abc import Iterator

import h2.events
import h2.exceptions
import hpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambit.dataplane.nghttp2 import NgHttp2Connection
from tests.support import fuzzing

UNIT_EXAMPLES = 300
LONG_EXAMPLES = fuzzing.fuzz_examples(800)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS = 0x1, 0x4
TYPES = [*range(10), 0xA, 0xFF]
EVENTS = (h2.events.RequestReceived, h2.events.ResponseReceived, h2.events.InformationalResponseReceived,
          h2.events.TrailersReceived, h2.events.DataReceived, h2.events.StreamEnded, h2.events.StreamReset,
          h2.events.WindowUpdated, h2.events.RemoteSettingsChanged, h2.events.SettingsAcknowledged,
          h2.events.PingAckReceived, h2.events.ConnectionTerminated)
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/p"), (b"te", b"trailers")]


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage() + repr(record.exc_info[1] if record.exc_info else None))


FAILURES = _Failures()
logging.getLogger("ambit.nghttp2").addHandler(FAILURES)


def frame(ftype: int, flags: int, sid: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def new(client: bool) -> NgHttp2Connection:
    c = NgHttp2Connection(client, max_concurrent_streams=8, max_header_list_size=4096, max_header_count=20)
    c.initiate_connection()
    if client:
        c.send_headers(1, REQUEST)
        c.send_data(1, b"hello", end_stream=True)
    c.data_to_send()
    return c


def answer(c: NgHttp2Connection, ev: object) -> None:
    """What the waypoint does with an event; only h2's errors may come out of it."""
    try:
        if isinstance(ev, h2.events.RequestReceived):
            c.send_headers(ev.stream_id, [(b":status", b"200"), (b"x", b"y")])
            c.send_data(ev.stream_id, b"body" * 10)
            c.local_flow_control_window(ev.stream_id)
            c.send_headers(ev.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        elif isinstance(ev, h2.events.DataReceived):
            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            c.reset_stream(ev.stream_id, 8)
        elif isinstance(ev, h2.events.ResponseReceived):
            c.reset_stream(ev.stream_id, 0)
    except h2.exceptions.H2Error:
        pass


def check(chunks: list[bytes], client: bool = False) -> None:
    c = new(client)
    FAILURES.seen.clear()
    dead = False
    for chunk in chunks:
        t0 = time.process_time()
        try:
            events = c.receive_data(chunk)
        except h2.exceptions.ProtocolError:
            dead = True
            c.data_to_send()
            continue
        finally:
            assert time.process_time() - t0 < 2.0, "receive_data took over 2 s of CPU"
        if dead:
            assert events == [], events
        for ev in events:
            assert isinstance(ev, EVENTS), ev
            if isinstance(ev, h2.events.DataReceived):
                assert isinstance(ev.data, bytes) and ev.flow_controlled_length >= len(ev.data)
            answer(c, ev)
        c.data_to_send()
    assert FAILURES.seen == [], FAILURES.seen


# --- strategies --------------------------------------------------------------------------------

raw_frames = st.builds(frame, st.sampled_from(TYPES), st.integers(0, 255), st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1]),
                       st.binary(max_size=48), st.one_of(st.none(), st.none(), st.integers(0, 70_000)))
header_name = st.sampled_from([b":method", b":path", b":authority", b":scheme", b":status", b":protocol", b"host",
                               b"content-length", b"te", b"connection", b"x-a", b"Upper", b"", b":"])
header_value = st.one_of(st.sampled_from([b"GET", b"CONNECT", b"/", b"http", b"h", b"200", b"100", b"101", b"5",
                                          b"-1", b"trailers", b"a\x00b", b"\xff", b"v" * 5000]), st.binary(max_size=8))
header_lists = st.lists(st.tuples(header_name, header_value), max_size=8)


@st.composite
def conversations(draw: st.DrawFn, client: bool) -> bytes:
    enc = hpack.Encoder()
    wire = bytearray(b"" if client else PREFACE)
    wire += frame(SETTINGS, 0, 0, draw(st.sampled_from([b"", b"\x00\x04\x7f\xff\xff\xff", b"\x00\x05\x00\x00\x40\x00",
                                                        b"\x00\x01\x00\x00\x00\x00", b"\x00\x02\x00\x00\x00\x01"])))
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            wire += draw(raw_frames)
            continue
        sid = draw(st.sampled_from([1, 1, 3, 5, 2]))
        base = [(b":status", b"200")] if client else REQUEST
        try:
            block = enc.encode((base if draw(st.booleans()) else []) + draw(header_lists))
        except Exception:   # noqa: BLE001 - the encoder refusing a field is not our finding
            continue
        wire += frame(HEADERS, END_HEADERS | (END_STREAM if draw(st.booleans()) else 0), sid, block)
        if draw(st.booleans()):
            wire += frame(DATA, END_STREAM if draw(st.booleans()) else 0, sid, draw(st.binary(max_size=30)))
    return bytes(wire)


def _insert_frame(rng: random.Random, b: bytearray, pos: int) -> None:
    b[pos:pos] = frame(rng.choice(TYPES), rng.randrange(256), rng.choice([0, 1, 3]),
                       bytes(rng.randrange(256) for _ in range(rng.randrange(12))))


MUTATIONS = (fuzzing.before_end(fuzzing.set_byte), _insert_frame, fuzzing.before_end(fuzzing.delete(12)),
             fuzzing.splice(40, longer_than=30), fuzzing.before_end(fuzzing.flip_bit))


def mutate(rng: random.Random, data: bytes) -> bytes:
    return fuzzing.mutate_bytes(rng, data, MUTATIONS, most=5)


# --- properties --------------------------------------------------------------------------------

@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
def test_random_frames(client: bool) -> None:
    @given(st.lists(raw_frames, max_size=12), st.lists(st.integers(0, 2000), max_size=4), st.booleans())
    @fuzzing.unit_budget(UNIT_EXAMPLES)
    def t(frames: list[bytes], cuts: list[int], preface: bool) -> None:
        check(fuzzing.split((PREFACE if preface and not client else b"") + b"".join(frames), cuts), client)
    t()


@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
def test_conversations_and_their_mutations(client: bool) -> None:
    @given(conversations(client), st.integers(0, 2**32), st.booleans(), st.lists(st.integers(0, 4000), max_size=4))
    @fuzzing.unit_budget(UNIT_EXAMPLES)
    def t(wire: bytes, seed: int, mutated: bool, cuts: list[int]) -> None:
        check(fuzzing.split(mutate(random.Random(seed), wire) if mutated else wire, cuts), client)
    t()


@pytest.mark.fuzz
@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
def test_fuzz_nghttp2_long(client: bool) -> None:
    @given(st.one_of(conversations(client), st.lists(raw_frames, max_size=20).map(b"".join)), st.integers(0, 2**32),
           st.booleans(), st.lists(st.integers(0, 8000), max_size=6))
    @fuzzing.fuzz_budget(LONG_EXAMPLES)
    def t(wire: bytes, seed: int, mutated: bool, cuts: list[int]) -> None:
        check(fuzzing.split(mutate(random.Random(seed), wire) if mutated else wire, cuts), client)
    t()


# --- the long local run ---------------------------------------------------------------------------

def _long_cases(rng: random.Random, cuts: random.Random) -> Iterator[tuple[bool, bytes, list[int]]]:
    """(client side, the bytes, where they are cut): a valid conversation of each side, mutated."""
    enc = hpack.Encoder()
    req = enc.encode(REQUEST)
    seeds = [(False, PREFACE + frame(SETTINGS, 0, 0, b"") + frame(HEADERS, END_HEADERS, 1, req)
              + frame(DATA, END_STREAM, 1, b"abc") + frame(PING, 0, 0, bytes(8))
              + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 100))),
             (True, frame(SETTINGS, 0, 0, b"") + frame(HEADERS, END_HEADERS, 1, hpack.Encoder().encode([(b":status", b"200")]))
              + frame(DATA, 0, 1, b"abc") + frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                                  hpack.Encoder().encode([(b"grpc-status", b"0")])))]
    while True:
        client, wire = rng.choice(seeds)
        data = mutate(rng, wire)
        yield client, data, [cuts.randrange(len(data) + 1) for _ in range(cuts.randrange(4))]


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, lambda rng: _long_cases(rng, random.Random(seed + 1)),
                            lambda case: check(fuzzing.split(case[1], case[2]), case[0]))


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=200_000))
