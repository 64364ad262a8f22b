"""The HTTP/1.1 legs driven without sockets: the real engine, `H1Server` and `H1Client` on fake
transports, against a scripted origin that parses what the proxy sends it (httptools) and answers
each request with its target and body length. Hostile byte streams on both legs: what must hold is
a 4xx (or a cut upstream) and a closed connection, never a traceback, a hang or unbounded
buffering."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest

from tests.unit.waypoint.fakes import FakeTransport
from waypoint.http.engine import Engine, UpstreamTarget
from waypoint.http.headers import trailer_fields
from waypoint.http.http1 import H1Server
from waypoint.http.http1.server import PIPELINE_DEPTH
from waypoint.http.record import RequestRecord
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream, Forward


def echo(url: bytes, body: bytes) -> bytes:
    out = url + b" " + str(len(body)).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(out), out)


class OriginConn:
    """One upstream connection: parses the proxy's requests; `answer` each one when it is whole
    (None: the test answers by hand through `send`)."""

    def __init__(self, t: FakeTransport, answer: Callable[[bytes, bytes], bytes] | None) -> None:
        self.t, self.answer = t, answer
        self.reqs: list[tuple[bytes, bytes]] = []
        self.parser = httptools.HttpRequestParser(self)
        self._seen = 0
        self._url = self._body = b""

    def on_message_begin(self) -> None:
        self._url = self._body = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.reqs.append((self._url, self._body))

    def pump(self) -> None:
        new = bytes(self.t.written[self._seen:])
        self._seen = len(self.t.written)
        if new and not self.t.closed:
            n = len(self.reqs)
            self.parser.feed_data(new)
            for url, body in self.reqs[n:]:
                if self.answer is not None:
                    self.send(self.answer(url, body))

    def send(self, data: bytes) -> None:
        if not self.t.closed:
            self.t.proto.data_received(data)  # type: ignore[attr-defined]


@dataclass
class Run:
    client: FakeTransport
    server: H1Server
    origins: list[OriginConn] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    closed: bool = False        # the client connection was closed before the engine shut down

    @property
    def out(self) -> bytes:
        return bytes(self.client.written)

    @property
    def upstream_requests(self) -> list[tuple[bytes, bytes]]:
        return [r for o in self.origins for r in o.reqs]


def drive(chunks: list[bytes], *, answer: Callable[[bytes, bytes], bytes] | None = echo,
          settings: HttpSettings | None = None,
          then: Callable[[Run], list[bytes]] | None = None, turns: int = 8, last_turns: int | None = None) -> Run:
    """Feed `chunks` to one downstream connection, a read at a time, letting the loop and the
    origin run `turns` times between reads (0: reads arrive back to back, as on a busy machine)
    and `last_turns` (default `turns`) after the last; `then(run)` may play the origin's part by
    hand afterwards."""

    async def main() -> Run:
        run: Run | None = None

        async def connect() -> Any:
            class Plug:
                def attach(self, proto: asyncio.Protocol) -> None:
                    t = FakeTransport(proto)
                    run.origins.append(OriginConn(t, answer))  # type: ignore[union-attr]
                    proto.connection_made(t)
            return Plug()

        def upstream(fwd: Forward, head: Any, down: Downstream, exclude: frozenset[str] = frozenset()) -> UpstreamTarget:
            return UpstreamTarget(key="origin:80", address="origin:80", connect=connect)

        records: list[RequestRecord] = []
        engine = Engine(dataclasses.replace(settings or HttpSettings(), drain_timeout=0), lambda h, d: Forward(service="t/x", port=80, route="r"),
                        upstream, access_log=records.append)  # type: ignore[arg-type]
        server = H1Server(engine, Downstream(source_ip="10.0.0.1"))
        t = FakeTransport(server)
        server.connection_made(t)
        run = Run(t, server, records=records)

        async def settle(turns: int = turns) -> None:
            for _ in range(turns):
                await asyncio.sleep(0)
                for o in run.origins:
                    o.pump()

        for c in chunks:
            if t.closed:
                break
            server.data_received(c)
            await settle()
        if then is not None:
            for c in then(run):
                run.origins[-1].send(c)
                await settle()
        await settle(turns if last_turns is None else last_turns)
        run.closed = t.closed
        await engine.shutdown()
        return run

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def status_lines(out: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3})", out)


# --- pipelining ---------------------------------------------------------------------------------

PIPELINE = (b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n"
            b"POST /b HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nhello"
            b"POST /c HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n"
            b"GET /d HTTP/1.1\r\nhost: h\r\n\r\n")


def test_pipelined_requests_cut_at_any_byte_are_served_alike() -> None:
    """Four pipelined requests (no body, Content-Length, chunked with an extension and a
    trailer): cut into two reads at every byte, or fed a byte at a time, the origin sees the same
    requests and the client the same responses, in order."""
    whole = drive([PIPELINE])
    assert whole.upstream_requests == [(b"/a", b""), (b"/b", b"hello"), (b"/c", b"abcde"), (b"/d", b"")]
    assert status_lines(whole.out) == [b"200"] * 4 and not whole.closed
    cuts = [[PIPELINE[:i], PIPELINE[i:]] for i in range(1, len(PIPELINE))]
    for chunks in [*cuts, [PIPELINE[i:i + 1] for i in range(len(PIPELINE))]]:
        run = drive(chunks)
        assert (run.out, run.upstream_requests) == (whole.out, whole.upstream_requests), chunks[0]


def _deep(n: int, chunked: bool = False) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    reqs, expect = [], []
    for i in range(n):
        if i % 3 == 1:
            reqs.append(b"POST /p%d HTTP/1.1\r\nhost: h\r\ncontent-length: %d\r\n\r\n%b" % (i, i, b"b" * i))
            expect.append((b"/p%d" % i, b"b" * i))
        elif i % 3 == 2 and chunked:
            reqs.append(b"POST /p%d HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" % i)
            expect.append((b"/p%d" % i, b"abc"))
        else:
            reqs.append(b"GET /p%d HTTP/1.1\r\nhost: h\r\n%b\r\n" % (i, b"\r\n" if i % 4 == 0 else b""))
            expect.append((b"/p%d" % i, b""))
    return b"".join(reqs), expect


def test_a_pipeline_deeper_than_the_parser_goes_is_served_alike_wherever_reads_end() -> None:
    """Past PIPELINE_DEPTH requests the parser stops, and the rest is parsed again from where the
    next request begins (found by llhttp, never guessed): cut into two reads at every byte, the
    origin sees the same requests and the client the same responses; never more than
    PIPELINE_DEPTH exchanges."""
    data, expect = _deep(PIPELINE_DEPTH + 5)
    whole = drive([data], turns=400)
    assert whole.upstream_requests == expect and not whole.closed
    assert status_lines(whole.out) == [b"200"] * len(expect)
    for i in range(1, len(data)):
        run = drive([data[:i], data[i:]], turns=400)
        assert (run.out, run.upstream_requests) == (whole.out, whole.upstream_requests), i


def test_a_deep_pipeline_read_back_to_back_in_small_pieces_is_all_answered() -> None:
    """Reads that arrive before any response is out (a busy machine): the request held back can be
    one whose head began in an earlier read. Its start was then taken as unknown, so the
    connection closed after PIPELINE_DEPTH answers (seen as a reset in a loaded test run)."""
    data, expect = _deep(PIPELINE_DEPTH + 12)
    for step in (7, 13, 37, 50):
        run = drive([data[i:i + step] for i in range(0, len(data), step)], turns=0, last_turns=600)
        assert run.upstream_requests == expect and not run.closed, step
        assert status_lines(run.out) == [b"200"] * len(expect), step


def test_a_deep_pipeline_a_read_of_which_begins_in_a_chunked_body_is_answered_then_closed() -> None:
    """Where a request begins cannot be known after a read that began inside a chunked body:
    the requests queued are answered, in order, then the connection closes (a client retries
    unanswered pipelined requests, RFC 9112 §9.3.2); never a request parsed twice or misread."""
    data, expect = _deep(PIPELINE_DEPTH + 5, chunked=True)
    whole = drive([data], turns=400)
    assert whole.upstream_requests == expect
    closed = 0
    for i in range(1, len(data)):
        run = drive([data[:i], data[i:]], turns=400)
        n = len(run.upstream_requests)
        assert run.upstream_requests == expect[:n] and whole.out.startswith(run.out), i
        if n < len(expect):
            assert run.closed and status_lines(run.out) == [b"200"] * n, i
            closed += 1
    assert closed      # (some cuts do land in a chunked body with the pipeline deep enough)


# --- malformed requests -------------------------------------------------------------------------

HEAD = b"POST /x HTTP/1.1\r\nhost: h\r\n"
MALFORMED = {
    "obs-fold": b"GET / HTTP/1.1\r\nhost: h\r\nx-a: 1\r\n folded\r\n\r\n",
    "cl-and-te": HEAD + b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-cl": HEAD + b"content-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    "cl-list": HEAD + b"content-length: 5, 5\r\n\r\nhello",
    "cl-sign": HEAD + b"content-length: +5\r\n\r\nhello",
    "te-not-chunked-last": HEAD + b"transfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te-twice": HEAD + b"transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk-size-overflow": HEAD + b"transfer-encoding: chunked\r\n\r\n1" + b"0" * 16 + b"\r\n",
    "chunk-without-crlf": HEAD + b"transfer-encoding: chunked\r\n\r\n1\r\naX0\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nhost: h\n\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nhost : h\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nhost: h\r\nx: a\x00b\r\n\r\n",
    "bad-version": b"GET / HTTP/1.9\r\nhost: h\r\n\r\n",
    "ctl-in-target": b"GET /a\x01b HTTP/1.1\r\nhost: h\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    # RFC 9112 §3.2: a 400, not a choice (routing by one Host while a hop behind reads the other)
    "two-hosts": b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
    "two-hosts-http10": b"GET / HTTP/1.0\r\nhost: a\r\nHost: a\r\n\r\n",
    "absolute-form-without-host": b"GET http:///p HTTP/1.1\r\nhost: h\r\n\r\n",
    "absolute-form-bad-port": b"GET http://h:99999/ HTTP/1.1\r\nhost: h\r\n\r\n",
    "absolute-form-bad-scheme": b"GET a:// HTTP/1.1\r\nhost: h\r\n\r\n",
}


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_request_is_400_and_nothing_after_it_is_served(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Request smuggling shapes and unparsable heads: 400, the connection closes, the origin sees
    nothing (not even the valid request pipelined behind), and nothing is logged as an internal
    error. Fed whole and a byte at a time."""
    data = MALFORMED[name] + b"GET /after HTTP/1.1\r\nhost: h\r\n\r\n"
    for chunks in ([data], [data[i:i + 1] for i in range(len(data))]):
        run = drive(chunks)
        assert status_lines(run.out) == [b"400"], run.out
        assert run.client.closed and run.upstream_requests == []
        # one record, the 400's, whether or not the head was whole when the error came (a request
        # cut short in its body is answered by the 400: its record says so, once)
        assert [(r.status, r.response_flags) for r in run.records] == [(400, "DPE")]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_valid_request_then_garbage_gets_its_answer_then_400() -> None:
    run = drive([b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n", b"\x16\x03\x01garbage\r\n\r\n",
                 b"GET /b HTTP/1.1\r\nhost: h\r\n\r\n"])
    assert status_lines(run.out) == [b"200", b"400"] and run.client.closed
    assert run.upstream_requests == [(b"/a", b"")]


# --- unbounded buffering ------------------------------------------------------------------------

def _endless(prefix: bytes, line: Callable[[int], bytes], n: int = 3000) -> list[bytes]:
    return [prefix] + [line(i) for i in range(n)]


def test_endless_request_trailers_are_431_not_buffered() -> None:
    """Trailers count against the same limits as the head: a client that sends trailer lines
    without end (or one endless trailer) gets 431 and a closed connection, not a waypoint that
    buffers them all."""
    head = b"POST /t HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
    settings = HttpSettings(max_header_bytes=8 * 1024, max_headers=50)
    for chunks in (_endless(head, lambda i: b"x-t%d: %s\r\n" % (i, b"v" * 20)),           # many
                   _endless(head + b"x-t: ", lambda i: b"v" * 100)):                      # one long
        run = drive(chunks, settings=settings, answer=None)
        assert status_lines(run.out) == [b"431"], run.out[:200]
        assert run.client.closed
        assert len(b"".join(chunks)) > 10 * settings.max_header_bytes     # (far more was sent)


def test_request_trailers_within_the_limits_go_through() -> None:
    body = b"1\r\na\r\n0\r\n" + b"".join(b"x-t%d: %s\r\n" % (i, b"v" * 50) for i in range(40)) + b"\r\n"
    data = b"POST /t HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n" + body
    for chunks in ([data], [data[i:i + 7] for i in range(0, len(data), 7)]):
        run = drive(chunks, settings=HttpSettings(max_header_bytes=4 * 1024, max_headers=50))
        assert status_lines(run.out) == [b"200"] and run.upstream_requests == [(b"/t", b"a")]


def test_an_endless_upstream_response_head_is_cut_off() -> None:
    """An origin that sends header lines without end: the waypoint stops at `max_header_bytes`
    (502 UPE to the client, as for any malformed response, and the upstream connection closed),
    as it does for a client's head."""
    settings = HttpSettings(max_header_bytes=8 * 1024)
    run = drive([b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"], answer=None, settings=settings,
                then=lambda run: _endless(b"HTTP/1.1 200 OK\r\n", lambda i: b"x-h%d: %s\r\n" % (i, b"v" * 20)))
    assert status_lines(run.out) == [b"502"], run.out[:200]
    assert run.origins[0].t.closed
    assert [r.response_flags for r in run.records] == ["UPE"]


def test_endless_upstream_response_trailers_are_cut_off() -> None:
    """The same for the response's trailers: the response already started, so the client
    connection is cut (a truncated response, not a complete wrong one)."""
    settings = HttpSettings(max_header_bytes=8 * 1024)
    start = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
    for line in (lambda i: b"x-t%d: %s\r\n" % (i, b"v" * 20), lambda i: b"v" * 100):
        prefix = start if line(0).startswith(b"x-") else start + b"x-t: "
        run = drive([b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"], answer=None, settings=settings,
                    then=lambda run, p=prefix, ln=line: _endless(p, ln))
        assert run.origins[0].t.closed and run.client.closed
        assert not run.out.endswith(b"0\r\n\r\n")        # the response is not ended as if whole
        assert [r.response_flags for r in run.records] == ["UPE"]


def test_upstream_response_headers_and_trailers_within_the_limit_go_through() -> None:
    """Within both limits: 8 KiB, and 100 fields (99 here, and Transfer-Encoding)."""
    settings = HttpSettings(max_header_bytes=8 * 1024)
    many = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 50) for i in range(99))
    resp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n" + many + b"\r\n2\r\nok\r\n0\r\n" + many + b"\r\n"
    for step in (len(resp), 5):
        run = drive([b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"], answer=None, settings=settings,
                    then=lambda run, s=step: [resp[i:i + s] for i in range(0, len(resp), s)])
        assert status_lines(run.out) == [b"200"] and run.out.count(b"x-h98: ") == 2
        assert not run.closed and [r.response_flags for r in run.records] == [""]


def test_upstream_trailer_fields_that_frame_a_message_are_not_relayed() -> None:
    """Regression (found by test_http1_fuzz): trailer fields were relayed as they came, and a
    trailer `Transfer-Encoding` or `Connection: close` made the client's parser (llhttp) end its
    keep-alive connection after that response, refusing the next one ("Data after `Connection:
    close`"); a trailer `Content-Length` (which an HTTP/2 upstream may send; llhttp refuses it
    from an HTTP/1.1 one) was a framing error there. RFC 9110 §6.5.1: such fields are not
    trailers; they are dropped, the others are relayed."""
    assert trailer_fields([("content-length", "5"), ("grpc-status", "0"), ("te", "x"), ("upgrade", "y")]) == \
        [("grpc-status", "0")]
    trailers = b"transfer-encoding: h\r\nconnection: close\r\nhost: x\r\nx-t: 1\r\n"
    resp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n" + trailers + b"\r\n"
    run = drive([b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n", b"GET /b HTTP/1.1\r\nhost: h\r\n\r\n"],
                answer=lambda url, body: resp)
    assert run.upstream_requests == [(b"/a", b""), (b"/b", b"")] and not run.closed
    got: list[list[tuple[bytes, bytes]]] = []

    class Client:
        def on_message_begin(self) -> None:
            got.append([])

        def on_header(self, name: bytes, value: bytes) -> None:
            got[-1].append((name.lower(), value))

    httptools.HttpResponseParser(Client()).feed_data(run.out)      # both responses, on one connection
    assert len(got) == 2
    for fields in got:
        assert (b"x-t", b"1") in fields
        assert not {b"connection", b"content-length", b"host"} & {k for k, _ in fields}
        assert [v for k, v in fields if k == b"transfer-encoding"] == [b"chunked"]


@pytest.mark.parametrize("status", [b"100 Continue", b"102 Processing", b"104 Upload Resumption", b"199 X"])
@pytest.mark.parametrize("framing", [b"content-length: 10", b"transfer-encoding: chunked"])
def test_an_upstream_1xx_with_a_body_is_502_not_relayed_headless(status: bytes, framing: bytes) -> None:
    """Regression (found by test_http1_fuzz): a 1xx has no content (RFC 9110 §15.2), but llhttp
    reads one its Content-Length announces, and those bytes went to the client before any
    response head (the 1xx head is dropped): the client read them as the start of the response.
    A 1xx that announces a body is a protocol error, as a 204 that does: 502 UPE."""
    body = b"0123456789" if framing.startswith(b"content") else b"a\r\n0123456789\r\n0\r\n\r\n"
    resp = b"HTTP/1.1 " + status + b"\r\n" + framing + b"\r\n\r\n" + body
    run = drive([b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n"], answer=lambda url, b: resp)
    assert run.out.startswith(b"HTTP/1.1 502 "), run.out
    assert [(r.status, r.response_flags) for r in run.records] == [(502, "UPE")]
    ok = b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    run = drive([b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n"], answer=lambda url, b: ok)
    assert run.out.startswith(b"HTTP/1.1 200 OK\r\n") and run.out.endswith(b"\r\n\r\nok"), run.out


def test_shutdown_leaves_no_dial_pending() -> None:
    """A dial still in progress when the waypoint shuts down is cancelled and awaited: one left
    pending when the loop closed was an error from inside asyncio (seen as an unraisable warning)."""
    async def main() -> list[asyncio.Task[object]]:
        never = asyncio.Event()

        async def connect() -> Any:
            await never.wait()

        def upstream(fwd: Forward, head: Any, down: Downstream, exclude: frozenset[str] = frozenset()) -> UpstreamTarget:
            return UpstreamTarget(key="origin:80", address="origin:80", connect=connect)

        engine = Engine(dataclasses.replace(HttpSettings(), drain_timeout=0),
                        lambda h, d: Forward(service="t/x", port=80, route="r"), upstream)  # type: ignore[arg-type]
        server = H1Server(engine, Downstream(source_ip="10.0.0.1"))
        t = FakeTransport(server)
        server.connection_made(t)
        server.data_received(b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)
        await engine.shutdown()
        return [x for x in asyncio.all_tasks() if x is not asyncio.current_task() and not x.done()]
    assert asyncio.run(main()) == []
