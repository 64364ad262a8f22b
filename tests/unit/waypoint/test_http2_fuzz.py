"""Fuzzing the waypoint's HTTP/2 server (waypoint/http/http2) with hypothesis, without sockets: the
real engine and `H2Server` on a fake transport, over both codecs (libnghttp2, the default, and
the `h2` library), against an origin that answers every request it parses.

What must hold for any bytes a client sends after (or instead of) the preface, cut into reads
anywhere:
- nothing raises out of the protocol callbacks (`data_received`, what the loop runs after it),
  nothing is logged as an internal error (a codec callback or an event handler that raised), no
  read takes more than 2 s (a hang check);
- what the waypoint writes is a sequence of well-formed HTTP/2 frames (its SETTINGS first); a
  connection error ends in a GOAWAY and a closed connection; every response HEADERS decodes and
  says the origin's 200 or a 4xx/5xx of the waypoint's own;
- the streams the connection holds never exceed the concurrency it advertised.
Three budgets, as tests/unit/dataplane/test_hbone_fuzz.py: the unit suite, `-m fuzz`
(`AMBIT_FUZZ_EXAMPLES`), and `python -m tests.unit.waypoint.test_http2_fuzz --cases 20000`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import hpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import fuzzing
from tests.unit.waypoint.fakes import FakeTransport
from tests.unit.waypoint.test_http1_fuzz import Findings, Origin
from tests.unit.waypoint.test_http1_sansio import echo
from waypoint.http.engine import Engine, UpstreamTarget
from waypoint.http.http2 import H2Server
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream, Forward

UNIT_EXAMPLES = 150
LONG_EXAMPLES = fuzzing.fuzz_examples(500)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIO = 0x1, 0x4, 0x8, 0x20
TYPES = [DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION, 0xA,
         0x10, 0xFF]
MAX_STREAMS = 8
CODECS = ["nghttp2", "h2"]


def frame(ftype: int, flags: int, sid: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def drive(chunks: list[bytes], codec: str, turns: int = 4) -> tuple[bytes, bool, list[str], int]:
    """(what the waypoint wrote, whether it closed, findings, most streams held at once)."""
    findings = Findings()
    root = logging.getLogger()
    root.addHandler(findings)
    most = 0

    async def main() -> tuple[bytes, bool]:
        nonlocal most
        asyncio.get_running_loop().set_exception_handler(findings.loop_error)
        origins: list[Origin] = []

        async def connect() -> Any:
            class Plug:
                def attach(self, proto: asyncio.Protocol) -> None:
                    t = FakeTransport(proto)
                    origins.append(Origin(t, echo))
                    proto.connection_made(t)
            return Plug()

        def upstream(fwd: Forward, head: Any, down: Downstream, exclude: frozenset[str] = frozenset()) -> UpstreamTarget:
            return UpstreamTarget(key="origin:80", address="origin:80", connect=connect)

        s = HttpSettings(h2_codec=codec, h2_max_concurrent_streams=MAX_STREAMS, max_header_bytes=4096, max_headers=20,
                         drain_timeout=0)
        engine = Engine(s, lambda h, d: Forward(service="t/x", port=80, route="r"), upstream)  # type: ignore[arg-type]
        server = H2Server(engine, Downstream(source_ip="10.0.0.1"))
        t = FakeTransport(server)
        server.connection_made(t)

        async def settle(n: int = turns) -> None:
            nonlocal most
            for _ in range(n):
                await asyncio.sleep(0)
                for o in origins:
                    if not o.t.closed:
                        o.pump()
                most = max(most, len(server.streams))

        for c in chunks:
            if t.closed:
                break
            t0 = time.process_time()
            server.data_received(c)
            assert time.process_time() - t0 < 2.0, "a read took over 2 s of CPU"
            most = max(most, len(server.streams))
            await settle()
        await settle(30)
        closed = t.closed
        await engine.shutdown()
        return bytes(t.written), closed

    loop = asyncio.new_event_loop()
    try:
        out, closed = loop.run_until_complete(main())
    finally:
        loop.close()
        root.removeHandler(findings)
    return out, closed, findings.seen, most


def check(chunks: list[bytes], codec: str) -> list[tuple[int, int, int, bytes]]:
    """Drive and assert the properties; the waypoint's frames, as (type, flags, stream, payload)."""
    out, closed, findings, most = drive(chunks, codec)
    assert findings == [], findings
    assert most <= MAX_STREAMS, most
    frames, pos = [], 0
    while pos < len(out):
        assert pos + 9 <= len(out), "a frame header cut short"
        n = int.from_bytes(out[pos:pos + 3], "big")
        ftype, flags, sid = out[pos + 3], out[pos + 4], int.from_bytes(out[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        assert n <= 16384, n
        assert pos + 9 + n <= len(out), "a frame cut short"
        frames.append((ftype, flags, sid, out[pos + 9:pos + 9 + n]))
        pos += 9 + n
    assert frames and frames[0][0] == SETTINGS and not frames[0][1] & 1, frames[:1]
    dec = hpack.Decoder()
    dec.max_allowed_table_size = 65536
    block = b""
    for ftype, flags, _sid, payload in frames:
        if ftype in (HEADERS, CONTINUATION):
            block += payload
            if flags & END_HEADERS:
                hdrs = dict(dec.decode(block, raw=True))
                block = b""
                if b":status" in hdrs:
                    st_ = int(hdrs[b":status"])
                    assert st_ == 200 or 400 <= st_ <= 599 or st_ == 100, hdrs
    return frames


# --- strategies --------------------------------------------------------------------------------

sids = st.sampled_from([0, 1, 3, 5, 7, 9, 2, 2**31 - 1])
raw_frames = st.builds(frame, st.sampled_from(TYPES), st.integers(0, 255), sids, st.binary(max_size=48),
                       st.one_of(st.none(), st.none(), st.integers(0, 70_000)))
header_name = st.sampled_from([b":method", b":path", b":authority", b":scheme", b":protocol", b":status", b"host",
                               b"content-length", b"te", b"connection", b"transfer-encoding", b"content-type",
                               b"upgrade", b"x-a", b"Upper", b"", b":", b"cookie", b"grpc-timeout"])
header_value = st.one_of(st.sampled_from([b"GET", b"POST", b"CONNECT", b"OPTIONS", b"HEAD", b"/", b"*", b"/a?b",
                                          b"http", b"https", b"h", b"h:80", b"[::1]:80", b"5", b"0", b"-1", b"x",
                                          b"trailers", b"application/grpc", b"websocket", b"a\x00b", b"a\r\nb",
                                          b"\xff", b" ", b"//x", b"u@h", b"/#f", b"1S", b"v" * 3000]),
                         st.binary(max_size=12))
header_lists = st.lists(st.tuples(header_name, header_value), max_size=7)
good_request = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"/a")]


@st.composite
def conversations(draw: st.DrawFn) -> bytes:
    """A client's conversation: the preface, SETTINGS, then streams whose HEADERS hold arbitrary
    fields (often a valid request), with DATA, trailers, resets, and raw frames between them."""
    enc = hpack.Encoder()
    wire = bytearray(PREFACE + frame(SETTINGS, 0, 0, draw(st.sampled_from([b"", b"\x00\x04\x00\x00\x00\x00",
                                                                           b"\x00\x05\x00\x00\x40\x00",
                                                                           b"\x00\x03\x00\x00\x00\x00"]))))
    sid = 1
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["good", "fields", "mixed", "raw", "data", "trailers", "rst", "continuation"]))
        if kind == "raw":
            wire += draw(raw_frames)
            continue
        hdrs = (good_request if kind != "fields" else []) + draw(header_lists)
        if kind == "mixed":
            draw(st.randoms()).shuffle(hdrs)
        try:
            block = enc.encode(hdrs)
        except Exception:   # noqa: BLE001 - the encoder refusing a field is not our finding
            continue
        end = draw(st.booleans())
        if kind == "continuation" and len(block) > 2:
            wire += frame(HEADERS, END_STREAM if end else 0, sid, block[:2]) + frame(CONTINUATION, END_HEADERS, sid, block[2:])
        else:
            wire += frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, block)
        if kind == "data" and not end:
            body = draw(st.binary(max_size=40))
            wire += frame(DATA, END_STREAM if draw(st.booleans()) else 0, sid, body)
        if kind == "trailers" and not end:
            wire += frame(DATA, 0, sid, b"abc") + frame(HEADERS, END_HEADERS | END_STREAM, sid, enc.encode(draw(header_lists)))
        if kind == "rst":
            wire += frame(RST_STREAM, 0, sid, struct.pack(">I", draw(st.sampled_from([0, 8, 0xFFFFFFFF]))))
        if draw(st.booleans()):
            sid += 2
    return bytes(wire)


def _insert_frame(rng: random.Random, b: bytearray, pos: int) -> None:
    b[pos:pos] = frame(rng.choice(TYPES), rng.randrange(256), rng.choice([0, 1, 3, 5]),
                       bytes(rng.randrange(256) for _ in range(rng.randrange(12))))


def _after_preface(rng: random.Random, b: bytearray) -> int:
    return rng.randrange(len(PREFACE), len(b) + 1) if len(b) > len(PREFACE) else rng.randrange(len(b) + 1)


MUTATIONS = (fuzzing.before_end(fuzzing.set_byte), _insert_frame, fuzzing.before_end(fuzzing.delete(12)),
             fuzzing.splice(40, longer_than=30, start=len(PREFACE)), fuzzing.before_end(fuzzing.flip_bit))


def mutate(rng: random.Random, data: bytes) -> bytes:
    return fuzzing.mutate_bytes(rng, data, MUTATIONS, most=4, at=_after_preface)


# --- properties --------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
def test_random_frames_after_the_preface(codec: str) -> None:
    @given(st.lists(raw_frames, max_size=10), st.lists(st.integers(0, 2000), max_size=4), st.booleans())
    @fuzzing.unit_budget(UNIT_EXAMPLES // 2)
    def t(frames: list[bytes], cuts: list[int], preface: bool) -> None:
        check(fuzzing.split((PREFACE if preface else b"") + b"".join(frames), cuts), codec)
    t()


@pytest.mark.parametrize("codec", CODECS)
def test_conversations_with_arbitrary_fields(codec: str) -> None:
    @given(conversations(), st.lists(st.integers(0, 4000), max_size=4))
    @fuzzing.unit_budget(UNIT_EXAMPLES // 2)
    def t(wire: bytes, cuts: list[int]) -> None:
        check(fuzzing.split(wire, cuts), codec)
    t()


@pytest.mark.parametrize("codec", CODECS)
def test_mutated_conversations(codec: str) -> None:
    @given(conversations(), st.integers(0, 2**32), st.lists(st.integers(0, 4000), max_size=4))
    @fuzzing.unit_budget(UNIT_EXAMPLES // 2)
    def t(wire: bytes, seed: int, cuts: list[int]) -> None:
        check(fuzzing.split(mutate(random.Random(seed), wire), cuts), codec)
    t()


@pytest.mark.fuzz
@pytest.mark.parametrize("codec", CODECS)
def test_fuzz_h2_long(codec: str) -> None:
    @given(st.one_of(conversations(), st.lists(raw_frames, max_size=16).map(lambda fs: PREFACE + b"".join(fs))),
           st.integers(0, 2**32), st.booleans(), st.lists(st.integers(0, 8000), max_size=6))
    @fuzzing.fuzz_budget(LONG_EXAMPLES)
    def t(wire: bytes, seed: int, mutated: bool, cuts: list[int]) -> None:
        check(fuzzing.split(mutate(random.Random(seed), wire) if mutated else wire, cuts), codec)
    t()


# --- the long local run ---------------------------------------------------------------------------

def _seeds() -> list[bytes]:
    base = PREFACE + frame(SETTINGS, 0, 0, b"")
    get = hpack.Encoder().encode(good_request)      # (an encoder each: each seed is a connection)
    post = hpack.Encoder().encode([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h"),
                                   (b":path", b"/p"), (b"content-length", b"3")])
    return [base + frame(HEADERS, END_HEADERS | END_STREAM, 1, get) + frame(PING, 0, 0, bytes(8)),
            base + frame(HEADERS, END_HEADERS, 1, post) + frame(DATA, 0, 1, b"ab") + frame(DATA, END_STREAM, 1, b"c")
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000)),
            base + frame(HEADERS, 0, 3, post[:3]) + frame(CONTINUATION, END_HEADERS, 3, post[3:])
            + frame(RST_STREAM, 0, 3, struct.pack(">I", 8)) + frame(GOAWAY, 0, 0, bytes(8))]


def _long_cases(rng: random.Random) -> Iterator[tuple[bytes, str, list[int]]]:
    """(the bytes, the codec, where they are cut): a seed conversation, mutated."""
    seeds = _seeds()
    while True:
        data = mutate(rng, rng.choice(seeds))
        yield data, rng.choice(CODECS), [rng.randrange(len(data) + 1) for _ in range(rng.randrange(4))]


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, lambda case: check(fuzzing.split(case[0], case[2]), case[1]))


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=20_000, setup=lambda: logging.basicConfig(level=logging.CRITICAL)))
