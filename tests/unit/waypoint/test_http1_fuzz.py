"""Fuzzing the waypoint's HTTP/1.1 legs (waypoint/http/http1: `H1Server`, `H1Client`, on
httptools) with hypothesis, without sockets: the real engine on fake transports, as
test_http1_sansio.py drives it, against an origin that answers each request it parses.

What must hold for any bytes a client sends, cut into reads anywhere, and for any bytes an origin
answers with (the package docstring has the rules):
- nothing raises out of the protocol callbacks (`data_received` and what the loop runs after
  it), nothing is logged as an internal error, and no read takes more than 2 s (a hang check);
- what the client gets is a sequence of well-formed HTTP/1.1 responses, each the origin's (its
  200) or a 4xx/5xx of the waypoint's own (502 for an origin's bad response); a connection that
  the waypoint closes was refused (4xx/5xx), ended by the client (`Connection: close`,
  HTTP/1.0), or was answered as far as it was parsed;
- nothing buffers without bound: the requests parsed ahead are at most PIPELINE_DEPTH, the bytes
  held back at most HELD_MAX and one read.
Three budgets, as tests/unit/dataplane/test_hbone_fuzz.py: the unit suite, `-m fuzz`
(`AMBIT_FUZZ_EXAMPLES`), and `python -m tests.unit.waypoint.test_http1_fuzz --cases 20000`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import fuzzing
from tests.unit.waypoint.fakes import FakeTransport
from tests.unit.waypoint.test_http1_sansio import MALFORMED, PIPELINE, OriginConn, echo
from waypoint.http.engine import Engine, UpstreamTarget
from waypoint.http.http1 import H1Server
from waypoint.http.http1.server import HELD_MAX, PIPELINE_DEPTH
from waypoint.http.record import RequestRecord
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream, Forward

UNIT_EXAMPLES = 150
LONG_EXAMPLES = fuzzing.fuzz_examples(500)
SETTINGS = HttpSettings(max_header_bytes=4 * 1024, max_headers=20, drain_timeout=0)
MAX_READ = 4096


class Findings(logging.Handler):
    """Log records at ERROR or above (an internal error: a callback that raised), and exceptions
    the event loop caught from callbacks."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.seen.append(f"{record.name}: {record.getMessage()} {exc!r}")

    def loop_error(self, loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        self.seen.append(f"loop: {ctx.get('message')} {ctx.get('exception')!r}")


class Origin(OriginConn):
    """test_http1_sansio's origin, which also takes what its parser refuses or stops at (an
    upgrade): the requests parsed before are answered; the rest of the bytes are ignored."""

    def pump(self) -> None:
        new = bytes(self.t.written[self._seen:])
        self._seen = len(self.t.written)
        if new and not self.t.closed:
            n = len(self.reqs)
            try:
                self.parser.feed_data(new)
            except httptools.HttpParserUpgrade:
                self.parser = httptools.HttpRequestParser(self)
            except httptools.HttpParserError:
                self.parser = httptools.HttpRequestParser(self)
            for url, body in self.reqs[n:]:
                if self.answer is not None:
                    self.send(self.answer(url, body))


@dataclass
class Run:
    client: FakeTransport
    server: H1Server
    origins: list[Origin] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    max_held: int = 0
    max_exchanges: int = 0

    @property
    def out(self) -> bytes:
        return bytes(self.client.written)


def drive(chunks: list[bytes], answer: Callable[[bytes, bytes], bytes] | None = echo, turns: int = 4) -> Run:
    """`chunks` to one downstream connection, a read at a time, the origin answering each request
    it parses with `answer(url, body)`; everything the properties need, measured on the way."""
    findings = Findings()
    root = logging.getLogger()
    root.addHandler(findings)

    async def main() -> Run:
        asyncio.get_running_loop().set_exception_handler(findings.loop_error)
        run: Run | None = None

        async def connect() -> Any:
            class Plug:
                def attach(self, proto: asyncio.Protocol) -> None:
                    t = FakeTransport(proto)
                    run.origins.append(Origin(t, answer))  # type: ignore[union-attr]
                    proto.connection_made(t)
            return Plug()

        def upstream(fwd: Forward, head: Any, down: Downstream, exclude: frozenset[str] = frozenset()) -> UpstreamTarget:
            return UpstreamTarget(key="origin:80", address="origin:80", connect=connect)

        records: list[RequestRecord] = []
        engine = Engine(SETTINGS, lambda h, d: Forward(service="t/x", port=80, route="r"),
                        upstream, access_log=records.append)  # type: ignore[arg-type]
        server = H1Server(engine, Downstream(source_ip="10.0.0.1"))
        t = FakeTransport(server)
        server.connection_made(t)
        run = Run(t, server, records=records)

        async def settle(n: int = turns) -> None:
            for _ in range(n):
                await asyncio.sleep(0)
                for o in run.origins:
                    if not o.t.closed:
                        o.pump()
                note()

        def note() -> None:
            run.max_held = max(run.max_held, server._held_bytes if server._held is not None else 0)
            run.max_exchanges = max(run.max_exchanges, len(server.queue))

        for c in chunks:
            if t.closed:
                break
            t0 = time.process_time()
            server.data_received(c)
            assert time.process_time() - t0 < 2.0, "a read took over 2 s of CPU"
            note()
            await settle()
        await settle(40)
        server.eof_received()
        await settle(4)
        await engine.shutdown()
        return run

    loop = asyncio.new_event_loop()
    try:
        run = loop.run_until_complete(main())
    finally:
        loop.close()
        root.removeHandler(findings)
    run.findings = findings.seen
    return run


class _Responses:
    """httptools callbacks collecting the statuses of the responses the client got."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.complete = 0
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())

    def on_message_complete(self) -> None:
        self.complete += 1


def responses(out: bytes) -> tuple[list[int], int]:
    """(statuses, how many ended) of what the client got; a malformed response fails the test."""
    r = _Responses()
    try:
        r.parser.feed_data(out)
    except httptools.HttpParserUpgrade:
        pass        # a 101: raw bytes follow
    return r.statuses, r.complete


def check(run: Run, upstream_ok: bool = True, head: bool = False) -> list[int]:
    """`head`: a HEAD request was among them, whose response has a length and no body (which
    a response parser cannot know): the status lines are read without parsing the rest."""
    assert run.findings == [], run.findings
    if head:
        statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", run.out)]
    else:
        statuses, _ = responses(run.out)
    for s in statuses:
        if upstream_ok:     # the echo origin's 200, or the waypoint's own refusal
            assert s in (100, 101, 200) or 400 <= s <= 599 and s != 502, statuses
        else:               # whatever status the origin chose, within HTTP's range
            assert 100 <= s <= 599, statuses
    assert run.max_exchanges <= PIPELINE_DEPTH + 1, run.max_exchanges
    assert run.max_held <= HELD_MAX + MAX_READ + SETTINGS.max_header_bytes, run.max_held
    return statuses


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`fuzzing.split`'s reads, none longer than a transport's read (MAX_READ)."""
    return [b[i:i + MAX_READ] for b in fuzzing.split(data, cuts) for i in range(0, len(b), MAX_READ)]


# --- strategies --------------------------------------------------------------------------------

methods = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"CONNECT", b"DELETE", b"PATCH",
                           b"TRACE", b"PRI", b"get", b"M-SEARCH"])
targets = st.one_of(st.sampled_from([b"/", b"/a?b=c", b"*", b"http://h/x", b"http://u@h/", b"/%2e%2e/x", b"/a#f",
                                     b"//x", b"h:80", b"/" + b"a" * 5000, b"http://[::1]:8/", b"/a/../../b"]),
                    st.binary(min_size=1, max_size=30).filter(lambda b: b" " not in b and b"\r" not in b and b"\n" not in b))
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1"])
header_names = st.sampled_from([b"host", b"Host", b"content-length", b"transfer-encoding", b"connection",
                                b"upgrade", b"expect", b"content-type", b"te", b"x-a", b"cookie", b"trailer",
                                b"x-forwarded-for", b"", b" host", b"host ", b"x\x00y", b"keep-alive"])
header_values = st.one_of(
    st.sampled_from([b"h", b"h:80", b"", b"chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"5", b"0",
                     b"-1", b"5, 5", b"+5", b"18446744073709551616", b"close", b"keep-alive", b"Upgrade",
                     b"websocket", b"h2c", b"100-continue", b"application/grpc", b"trailers", b"a\x00b", b"a\tb",
                     b" x ", b"\xff\xfe", b"v" * 5000, b"[::1]", b"h:99999", b"a b"]),
    st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b))


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.binary(max_size=40))
        size = draw(st.sampled_from([b"%x" % len(data), b"%X" % len(data), b"%x;ext=1" % len(data),
                                     b"0" * 20 + b"%x" % len(data), b"%x " % len(data), b"ffffffffffffffff",
                                     b"-1", b"%x" % (len(data) + 1)]))
        out += size + b"\r\n" + data + b"\r\n"
    out += b"0\r\n"
    out += b"".join(b"%b: %b\r\n" % (draw(header_names), draw(header_values)) for _ in range(draw(st.integers(0, 2))))
    return out + b"\r\n"


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    line = b"%b %b %b\r\n" % (draw(methods), draw(targets), draw(versions))
    headers = [(b"host", b"h")] if draw(st.booleans()) else []
    headers += draw(st.lists(st.tuples(header_names, header_values), max_size=5))
    body = b""
    framing = draw(st.sampled_from(["none", "cl", "te", "both", "fold"]))
    if framing in ("cl", "both"):
        body = draw(st.binary(max_size=60))
        headers.append((b"content-length", b"%d" % (len(body) + draw(st.sampled_from([0, 0, 0, -1, 1, 1000])))))
    if framing in ("te", "both"):
        headers.append((b"transfer-encoding", b"chunked"))
        body = draw(chunked_body())
    head = b"".join(b"%b: %b\r\n" % h for h in headers)
    if framing == "fold":
        head += b"x-fold: a\r\n  folded\r\n"
    return line + head + b"\r\n" + body


def _set_special(rng: random.Random, b: bytearray, pos: int) -> None:
    if b:
        b[min(pos, len(b) - 1)] = rng.choice(b"\x00\r\n :;\t\x7f\xff0aZ")


def _insert_special(rng: random.Random, b: bytearray, pos: int) -> None:
    b[pos:pos] = rng.choice([b"\r\n", b"\n", b"\r\n\r\n", b"\x00", b"transfer-encoding: chunked\r\n",
                             b"content-length: 3\r\n", b"0\r\n\r\n", b"GET / HTTP/1.1\r\nhost: h\r\n\r\n",
                             b"a" * 3000])


def _insert_hex(rng: random.Random, b: bytearray, pos: int) -> None:
    b[pos:pos] = b"%x" % rng.choice([0, 1, 15, 2**31, 2**63, 2**64 - 1])


def mutate(rng: random.Random, data: bytes) -> bytes:
    def pipelined(_rng: random.Random, b: bytearray, _pos: int) -> None:
        b += data       # the same again

    return fuzzing.mutate_bytes(rng, data, (_set_special, _insert_special, fuzzing.delete(16),
                                            fuzzing.splice(64, longer_than=4), fuzzing.flip_bit, _insert_hex,
                                            pipelined), most=4)


# --- responses an origin may send ------------------------------------------------------------------

@st.composite
def origin_responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([b"200", b"204", b"304", b"100", b"103", b"101", b"000", b"999", b"2000", b"-1",
                                   b"500", b"abc"]))
    line = b"%b %b %b\r\n" % (draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"ICY"])), status,
                              draw(st.sampled_from([b"OK", b"", b"\xff"])))
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=5))
    framing = draw(st.sampled_from(["cl", "te", "eof", "both", "cl0"]))
    body = draw(st.binary(max_size=60))
    if framing in ("cl", "both"):
        headers.append((b"content-length", b"%d" % (len(body) + draw(st.sampled_from([0, 0, -1, 1])))))
    if framing == "cl0":
        headers.append((b"content-length", draw(st.sampled_from([b"0", b"00", b"0x0", b" 0", b"1"]))))
    if framing in ("te", "both"):
        headers.append((b"transfer-encoding", b"chunked"))
        body = draw(chunked_body())
    return line + b"".join(b"%b: %b\r\n" % h for h in headers) + b"\r\n" + body


# --- properties --------------------------------------------------------------------------------

@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=4))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    check(drive(split(data, cuts)), head=b"HEAD" in data)


@given(st.lists(requests(), min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=5))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_generated_requests_split_anywhere(reqs: list[bytes], cuts: list[int]) -> None:
    data = b"".join(reqs)
    check(drive(split(data, cuts)), head=b"HEAD" in data)


SEEDS = [PIPELINE, *MALFORMED.values(),
         b"GET /ws HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\ncontent-length: 3\r\n\r\nabc",
         b"POST /c HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\nabcd",
         b"GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
         b"GET /after HTTP/1.1\r\nhost: h\r\n\r\n",
         b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\nhost: h\r\n\r\n",
         b"\r\n\r\nGET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\nGET /x HTTP/1.1\r\nhost: h\r\n\r\n",
         b"".join(b"GET /p%d HTTP/1.1\r\nhost: h\r\n\r\n" % i for i in range(PIPELINE_DEPTH + 3))]


@given(st.sampled_from(SEEDS), st.integers(0, 2**32), st.lists(st.integers(0, 10_000), max_size=5))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_mutated_valid_requests(seed: bytes, rng_seed: int, cuts: list[int]) -> None:
    data = mutate(random.Random(rng_seed), seed)
    check(drive(split(data, cuts)), head=b"HEAD" in data)


REQ = b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n"


@given(st.one_of(origin_responses(), st.binary(max_size=200)), st.integers(0, 2**32), st.booleans(),
       st.sampled_from([REQ, b"HEAD /h HTTP/1.1\r\nhost: h\r\n\r\n",
                        b"POST /p HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\nab",
                        b"GET /ws HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"]))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_any_origin_response(resp: bytes, rng_seed: int, mutated: bool, req: bytes) -> None:
    """Whatever the origin answers: the client gets its response, a 502 or a cut connection;
    never an exception; the client's next request never gets the rest of this response."""
    wire = mutate(random.Random(rng_seed), resp) if mutated else resp
    run = drive([req, REQ], answer=lambda url, body: wire)
    check(run, upstream_ok=False, head=req.startswith(b"HEAD"))


@pytest.mark.fuzz
@given(st.one_of(st.sampled_from(SEEDS), st.lists(requests(), min_size=1, max_size=6).map(b"".join)),
       st.integers(0, 2**32), st.booleans(), st.lists(st.integers(0, 20_000), max_size=8))
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_requests_long(data: bytes, rng_seed: int, mutated: bool, cuts: list[int]) -> None:
    data = mutate(random.Random(rng_seed), data) if mutated else data
    check(drive(split(data, cuts)), head=b"HEAD" in data)


@pytest.mark.fuzz
@given(st.one_of(origin_responses(), st.binary(max_size=400)), st.integers(0, 2**32), st.booleans())
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_origin_responses_long(resp: bytes, rng_seed: int, mutated: bool) -> None:
    wire = mutate(random.Random(rng_seed), resp) if mutated else resp
    check(drive([REQ, REQ], answer=lambda url, body: wire), upstream_ok=False)


# --- the long local run ---------------------------------------------------------------------------

ORIGIN_SEEDS = [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody"]


def _long_cases(rng: random.Random) -> Iterator[tuple[str, bytes, list[int]]]:
    """("origin", a mutated response, no cuts) or ("client", mutated requests, where they are cut)."""
    while True:
        if rng.random() < 0.3:
            yield "origin", mutate(rng, rng.choice(ORIGIN_SEEDS)), []
        else:
            data = mutate(rng, rng.choice(SEEDS))
            yield "client", data, [rng.randrange(len(data) + 1) for _ in range(rng.randrange(4))]


def _check_case(case: tuple[str, bytes, list[int]]) -> None:
    side, data, cuts = case
    if side == "origin":
        check(drive([REQ, REQ], answer=lambda url, body: data), upstream_ok=False)
    else:
        check(drive(split(data, cuts)), head=b"HEAD" in data)


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, _check_case)


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=20_000, setup=lambda: logging.basicConfig(level=logging.CRITICAL)))
