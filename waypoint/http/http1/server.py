"""The downstream HTTP/1.x connection: requests in order, responses framed for the client, bad
input refused, upgrades switched to a raw relay (the package docstring has the rules)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from waypoint.http.exchange import BODY_LENGTH, BODY_NONE, BODY_STREAM, Exchange
from waypoint.http.headers import (
    H2C,
    TUNNELLED_UPGRADES,
    is_grpc_type,
    known_authorities,
    upgrade_value,
    valid_authority,
)
from waypoint.http.http1.boundary import request_start
from waypoint.http.http1.client import H1Client
from waypoint.http.http1.wire import FLUSH_NOW, Refuse, check_transfer_encoding, encode_head, reason_phrase
from waypoint.http.legs import Headers
from waypoint.http.record import RequestRecord
from waypoint.normalize import FragmentInPath, plain_target, request_path
from waypoint.request import Downstream, LocalReply, RequestHead

if TYPE_CHECKING:
    from waypoint.http.engine import Engine

log = logging.getLogger("waypoint.http")


_LOST = httptools.HttpRequestParser(None)     # a lost connection's parser: holds no protocol
# An idle connection's request queue and pause reasons: shared empties, so a connection held
# between requests keeps no empty deque (~0.7 KB) and no empty set (~0.2 KB) (docs/performance.md,
# round 10). The queue is made on a request and dropped when the last response is out.
_NO_QUEUE: tuple[()] = ()
# the request headers `on_headers_complete` reads; the rest only count towards the size limit
_HEAD_FIELDS = frozenset(("host", "transfer-encoding", "content-length", "content-type", "expect"))
_NO_REASONS: frozenset[str] = frozenset()
# Requests parsed ahead of the one being answered are at most PIPELINE_DEPTH - 1: the parser stops
# on the next one, and its bytes and those after it are held raw (reading pauses once they pass
# HELD_MAX) until a response is out (Envoy parses none ahead; one read of tiny requests made
# thousands of exchanges).
PIPELINE_DEPTH = 8
HELD_MAX = 64 * 1024
# RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request line; more than
# this many bytes of them (CR, LF) between two requests are refused, and they never count as
# activity for the idle timeout (a client cannot hold a connection with them).
MAX_BLANK = 8
# llhttp's reason for bytes after a request that ends the connection (`Connection: close`, HTTP/1.0)
_AFTER_CLOSE = "Data after `Connection: close`"
_QUIET = (0, "")    # `_error` when the connection is to close after the queued responses, with no error


def _found(at: int) -> int | None:
    """`request_start`'s answer as `_locate`'s: None for not found."""
    return at if at >= 0 else None


class _Overrun(Exception):
    """Raised from `on_headers_complete`: PIPELINE_DEPTH requests are queued; stop parsing here."""


def _drop(data: bytes) -> None:
    """Bytes that will never be parsed (after an error, or after a request that ends the connection)."""


class H1Server(asyncio.Protocol):
    """One downstream HTTP/1.x connection (see the module docstring)."""

    _h2c = False        # the request just parsed asked for h2c, stripped: plain HTTP/1.1 follows it

    def __init__(self, engine: Engine, downstream: Downstream, scheme: str = "http") -> None:
        self.engine = engine
        self.settings = engine.settings
        self.downstream = downstream
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        # Made on data; dropped again between keep-alive requests (see `data_received`).
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] | tuple[()] = _NO_QUEUE   # [0] is being answered; the rest wait
        self.parsing: Exchange | None = None    # whose body the parser is reading
        self.closing = False                    # no more requests: close after the current response
        self.lost = False
        self._pause_reasons = _NO_REASONS
        self._write_paused = False
        # Where bytes go instead of the parser (None: to the parser): an upgrade's wait for its
        # answer and its raw relay, pipelined bytes held back, bytes after an error.
        self._divert: Callable[[bytes], None] | None = None
        # Message starts and ends parsed so far: even between two messages, odd inside one. A read
        # notes it first, so what a read held (and where it began) is known afterwards.
        self._marks = 0
        # What a fresh parser needs to be where this one is, after the last read (stamped with
        # `_marks`): the bytes of the head in progress, or how many body bytes are left (a
        # Content-Length body); None: unknown (a chunked body). Used to find where a request begins.
        self._carry: tuple[int, bytearray | int] | None = None
        self._held: list[bytes] | None = None   # raw bytes beyond PIPELINE_DEPTH requests
        self._held_bytes = 0
        # An error to answer once the requests before it are answered (then close); `_QUIET`: close.
        self._error: tuple[int, str] | None = None
        self._blank = 0                         # bytes of empty lines since the last request began
        self._blank_marks = -1
        # the head being parsed
        self._in_head = False
        self._head_start = 0.0
        self._head_bytes = 0        # -1: the head began in the read being parsed
        self._url = b""
        self._headers: Headers = []
        # read for every request or field: bound once per connection, not looked up each time
        self._max_headers = self.settings.max_headers
        self._max_head = self.settings.max_header_bytes
        self._loop = engine.loop        # (no bound method kept: one object less per connection)
        self._trailers: Headers | None = None
        self._trailer_bytes = 0
        # Bytes read since a chunk's size line with no chunk data after it: after the last chunk's,
        # that is the trailer section, which counts against `max_header_bytes` as a head does.
        # None: not there; -1: the size line came in this read (which held body bytes too).
        self._tail: int | None = None
        # the response being sent
        self._chunked = False
        self._keep_alive = True
        self._continued = False
        self._head_request = False
        # upgrade
        self._upgrade_buf: list[bytes] | None = None
        self._upload: Exchange | None = None    # an upgrade request whose Content-Length body follows
        self._upload_left = 0
        self._raw: Exchange | None = None
        self.last = 0.0
        self._wbuf: list[bytes] = []    # written in one go at the end of the loop iteration
        self._wbuf_bytes = 0
        self._flush_handle: asyncio.Handle | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.engine.track(self)
        self.last = self._loop.time()

    def data_received(self, data: bytes) -> None:
        if self.lost:
            return
        divert = self._divert
        if divert is not None:
            divert(data)
            return
        if self.closing and not self.queue and self.parsing is None:
            return
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        marks = self._marks
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.last = self._loop.time()
            self._upgrade_wait(data[e.args[0]:])
            if self._h2c:       # parse what follows as HTTP/1.1, in a later callback (no recursion)
                self._h2c = False
                self.engine.loop.call_soon(self._parse_on)
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Overrun):
                self._overrun(data, marks)
            elif isinstance(cause, Refuse):
                self._bad(cause.status, str(cause))
            else:
                log.error("HTTP/1 server callback failed", exc_info=cause)
                self._bad(500, "internal error")
            return
        except httptools.HttpParserError as e:
            if str(e) == _AFTER_CLOSE:      # RFC 9112 §9.6: what follows such a request is ignored
                self._ignore_rest()
            else:
                self._bad(400, f"malformed request: {e}")
            return
        if self.parsing is None:
            if self._in_head:
                self._count_head(data, marks)
            elif self._marks == marks:      # nothing but empty lines
                self._blank_read(len(data))
            else:
                self.last = self._loop.time()
                self._carry = None
                if not self.closing and parser.should_keep_alive():
                    # Between two keep-alive requests the parser holds nothing the next one needs:
                    # a held connection keeps none (~0.9 KB), and the next data makes a fresh one
                    # (~0.2 µs). After a `Connection: close` request it stays, so that data after
                    # it is refused.
                    self.parser = None
        else:
            self.last = self._loop.time()
            self._in_body(data)

    def eof_received(self) -> bool:
        if self._raw is not None:
            self._raw_eof_from_client()
            return True
        self.closing = True
        if self._held is not None:      # pipelined bytes held back: never parsed now
            self._held = None
            self._divert = _drop
        cut = self.parsing or (self._upload if self._upload_left else None)
        self.parsing = self._upload = None
        q = self.queue
        while len(q) > 1:       # pipelined behind the one being answered: the connection closes first
            q.pop().request_abort("DC")  # type: ignore[union-attr]
        if cut is not None and not cut.done:    # the request was cut short: nothing to answer
            cut.request_abort("DC")
            return False
        # A FIN from an HTTP/1 client is a disconnect, as Envoy's HTTP connection manager takes it
        # (no half-close on HTTP/1): the request in flight ends with DC and response code 0, and
        # is not answered. A client that timed out (curl -m, a deadline) closes its socket, which
        # ztunnel carries as the tunnel's half-close; counting the late response as its status
        # would show a client timeout as a success on every dashboard.
        for ex in list(q):
            ex.request_abort("DC")  # type: ignore[union-attr]
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.engine.conns.discard(self)
        self.parser = _LOST     # the parser holds our callbacks: a cycle per connection
        self._divert = self._held = None
        raw = self._raw
        if raw is not None:
            self._raw = None
            up = raw.up
            if up is not None:
                up.abort()
            raw.raw_end()
            raw.raw_end()
            return
        for ex in list(self.queue):
            ex.request_abort("DC")
        self.queue = _NO_QUEUE

    def pause_writing(self) -> None:
        self._write_paused = True
        ex = self._raw or (self.queue[0] if self.queue else None)
        if ex is not None:
            ex.response_pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        ex = self._raw or (self.queue[0] if self.queue else None)
        if ex is not None:
            ex.response_resume()

    # --- what a read left in progress -----------------------------------------------------------

    def _count_head(self, data: bytes, marks: int) -> None:
        """The read ended inside a head: count its bytes against `max_header_bytes` (only the
        head's own: a read may begin with a body or other requests), and carry them."""
        n = self._head_bytes
        if n < 0:       # the head began in this read
            at = self._locate(data, marks, (self._marks - marks + 1) // 2)
            if at is not None:
                part = bytearray(data[at:])
                self._carry = (self._marks, part)
                n = len(part)
            else:       # where is unknown (the read began in a chunked body): its parsed bytes
                self._carry = None
                n = len(self._url) + sum(len(k) + len(v) + 4 for k, v in self._headers)
        else:
            carry = self._carry
            if carry is not None and carry[0] == marks and isinstance(carry[1], bytearray):
                carry[1].extend(data)
            n += len(data)
        self._head_bytes = n
        if n > self.settings.max_header_bytes:
            self._bad(431, "request headers too large")

    def _in_body(self, data: bytes) -> None:
        """The read ended inside a body or its trailers."""
        tail = self._tail
        if tail is not None:
            self._carry = None
            # the read that holds the last chunk's size line also holds body bytes: of it, only
            # the trailer fields parsed so far count
            self._tail = tail = tail + len(data) if tail >= 0 else self._trailer_bytes if self._trailers else 0
            if tail > self.settings.max_header_bytes:
                self._bad(431, "request trailers too large")
            return
        ex = self.parsing
        self._carry = None
        if ex is not None and ex.body == BODY_LENGTH and not ex.done and not ex.resp_ended:
            cl = ex.head.header("content-length")
            if cl is not None and cl.isdigit():
                self._carry = (self._marks, int(cl) - ex.record.bytes_received)

    def _blank_read(self, n: int) -> None:
        """A read held only empty lines (CR, LF) between requests: a few are allowed, more are
        refused; none of them keep the connection from its idle timeout."""
        if self._blank_marks != self._marks:
            self._blank_marks, self._blank = self._marks, 0
        self._blank += n
        if self._blank > MAX_BLANK:
            self._bad(400, "too many empty lines before a request")
        elif self.parser is not None and not self.closing and self.parser.should_keep_alive():
            self.parser = None

    def _locate(self, data: bytes, marks: int, n: int) -> int | None:
        """Where in `data` (a read that began when `_marks` was `marks`) the n-th request that
        began in it begins; None when that cannot be known. n = 0 is the request whose head the
        read began inside: a negative offset, into the head bytes carried from earlier reads."""
        if not marks & 1:               # the read began between two messages
            return _found(request_start(data, n))
        carry = self._carry
        if carry is None or carry[0] != marks:
            return None
        kept = carry[1]
        if isinstance(kept, int):       # it began with the rest of a Content-Length body
            at = request_start(memoryview(data)[kept:], n) if n else -1
            return kept + at if at >= 0 else None
        if n == 0:                      # it began inside the head of the request in question
            return -len(kept)
        at = request_start(bytes(kept) + data, n + 1)   # it began inside a head: parse from its start
        return at - len(kept) if at >= 0 else None

    # --- pipelining: at most PIPELINE_DEPTH requests parsed ---------------------------------------

    def _overrun(self, data: bytes, marks: int) -> None:
        """PIPELINE_DEPTH requests are queued and the parser stopped on the next one: keep its
        bytes and those after it for when a response is out."""
        at = self._locate(data, marks, (self._marks - marks + 1) // 2)
        self._marks += 1        # the request held back begins again, in a fresh parser
        self.parser = None
        if at is None:
            # Where the held-back request begins is unknown (this read began in a chunked body):
            # answer those queued, then close; a client retries unanswered pipelined requests
            # (RFC 9112 §9.3.2).
            log.info("HTTP/1 pipeline from %s deeper than %d requests: closing after those queued",
                     self.downstream.source_ip, PIPELINE_DEPTH)
            self._error = _QUIET
            self._divert = _drop
            self._pause("error")
            return
        self._held, self._held_bytes = [], 0
        self._divert = self._hold
        if at < 0:      # its head began in an earlier read: the carried bytes are its start
            carry = self._carry
            assert carry is not None and isinstance(carry[1], bytearray)
            self._hold(bytes(carry[1][at:]) + data)
        else:
            self._hold(data[at:])

    def _hold(self, data: bytes) -> None:
        held = self._held
        if held is None:
            return
        held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > HELD_MAX:
            self._pause("pipeline")

    def _release_held(self) -> None:
        """A response is out and fewer than PIPELINE_DEPTH requests are queued: parse what was
        held back (it begins at a message boundary)."""
        held, self._held = self._held, None
        self._divert = None
        self._resume("pipeline")
        if held:
            self.data_received(b"".join(held))

    # --- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._marks += 1
        self._in_head = True
        self._head_start = self._loop.time()
        self._head_bytes = -1
        self._url = b""
        self._headers = []
        self._trailers = None
        self._tail = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        k, v = name.decode("latin-1").lower(), value.decode("latin-1")
        if not self._in_head:
            self._trailer(k, v)
            return
        headers = self._headers
        headers.append((k, v))
        if len(headers) > self._max_headers:
            raise Refuse(431, f"more than {self._max_headers} request headers")

    def _trailer(self, k: str, v: str) -> None:
        """A trailer field: the trailer section has the head's limits, on its parsed size too."""
        if self._trailers is None:
            self._trailers = []
            self._trailer_bytes = 0
        self._trailers.append((k, v))
        self._trailer_bytes += len(k) + len(v) + 4
        if len(self._trailers) > self.settings.max_headers:
            raise Refuse(431, f"more than {self.settings.max_headers} request trailers")
        if self._trailer_bytes > self.settings.max_header_bytes:
            raise Refuse(431, "request trailers too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        headers = self._headers
        # one pass over the headers for everything the head needs (this runs for every request)
        size = len(self._url)
        host = cl = ctype = te = None
        expect = False
        for k, v in headers:
            size += len(k) + len(v) + 4
            if k not in _HEAD_FIELDS:   # most headers: one set test (§65)
                continue
            if k == "host":
                if host is not None:    # RFC 9112 §3.2: MUST be answered 400, never resolved by choosing
                    raise Refuse(400, "more than one host header")
                host = v
            elif k == "transfer-encoding":
                te = v if te is None else f"{te}, {v}"
            elif k == "content-length":
                if cl is None:
                    cl = v
            elif k == "content-type":
                if ctype is None:
                    ctype = v
            elif k == "expect" and v.lower() == "100-continue":
                expect = True
        if size > self._max_head:
            raise Refuse(431, "request headers too large")
        if te is not None:      # refused before anything goes upstream (llhttp checks it after this)
            check_transfer_encoding(te)
        p = self.parser
        method = p.get_method().decode("latin-1")
        version = p.get_http_version()
        url = self._url.decode("latin-1")
        authority = host or ""
        if host is not None and host not in known_authorities and not valid_authority(host):   # RFC 9112 §3.2: 400
            raise Refuse(400, "invalid host header")
        if plain_target(url) is None:   # (a plain origin-form target is already checked and normalized)
            if not url.startswith("/") and url != "*" and "://" in url:   # absolute-form (RFC 9112 §3.2.2)
                authority, url = _absolute_form(self._url)
            try:
                url = request_path(url)     # normalized once, for routing, authorization and upstream
            except FragmentInPath as e:
                raise Refuse(400, str(e)) from None
        if not authority and version == "1.1":     # RFC 9112 §3.2: a client MUST send Host
            raise Refuse(400, "missing host header")
        body = BODY_STREAM if te else (BODY_LENGTH if cl not in (None, "0") else BODY_NONE)
        upgrade = p.should_upgrade() and method != "CONNECT" and self._tunnel(headers, body)
        if upgrade and body is not BODY_NONE and te:
            # llhttp reads no body after an upgrade head: a Content-Length body is counted out
            # by hand (`_upgrade_data`), a chunked one cannot be
            raise Refuse(501, "an upgrade request with a chunked body is not supported")
        q = self.queue
        if q is _NO_QUEUE:
            q = self.queue = deque()
        elif len(q) >= PIPELINE_DEPTH:
            raise _Overrun
        expect = expect and version == "1.1"
        grpc = ctype is not None and is_grpc_type(ctype)
        head = RequestHead(method, url, authority, self.scheme, headers, version, grpc)
        ex = Exchange(self.engine, self, head, self.downstream, body=body, upgrade=upgrade, expect_continue=expect)
        ex.keep_alive = p.should_keep_alive()
        self.parsing = ex
        q.append(ex)  # type: ignore[union-attr]
        self.engine.exchanges.add(ex)
        if upgrade and body is not BODY_NONE:
            self._upload, self._upload_left = ex, int(cl)  # type: ignore[arg-type]
            self.parsing = None     # its body is not the parser's: no request end at the message end
        if method == "CONNECT":
            ex.keep_alive = False
            if len(q) == 1:
                self._refuse_connect(ex)
            return
        if len(q) == 1:
            self._begin(ex)

    def on_body(self, body: bytes) -> None:
        self._tail = None
        ex = self.parsing
        if ex is not None:
            ex.request_data(body)

    def on_chunk_header(self) -> None:
        self._tail = -1

    def on_chunk_complete(self) -> None:
        self._tail = None

    def on_message_complete(self) -> None:
        self._marks += 1
        ex, self.parsing = self.parsing, None
        if ex is not None:
            ex.request_end(self._trailers)
            if ex.done:                 # answered before its body ended; the body is now read
                self._after(ex)

    # --- writing: one write per loop iteration ---------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queue `data`; what a response produces in one callback chain (head, body, end) goes
        out in one syscall (the kernel's per-write cost dominates a proxied request)."""
        if self.lost:
            return
        self._wbuf.append(data)
        self._wbuf_bytes += len(data)
        if self._wbuf_bytes >= FLUSH_NOW:      # bulk: let the transport's backpressure see it now
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.engine.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        buf, self._wbuf, self._wbuf_bytes = self._wbuf, [], 0
        t = self.transport
        if buf and t is not None and not self.lost and not t.is_closing():
            t.write(buf[0] if len(buf) == 1 else b"".join(buf))

    # --- DownLeg ------------------------------------------------------------------------------------

    def _tunnel(self, headers: Headers, body: str) -> bool:
        """An upgrade request: tunnel it (WebSocket), serve it as plain HTTP/1.1 (h2c, stripped),
        or refuse it (403, Envoy's `upgrade_failed`); waypoint/http/headers.py has why."""
        value = upgrade_value(headers)
        if value in TUNNELLED_UPGRADES:
            return True
        if value != H2C:
            raise Refuse(403, "upgrade failed")
        if body != BODY_NONE:   # httptools skips the body of an upgrade request: it cannot be relayed
            raise Refuse(400, "h2c upgrade request with a body")
        self._h2c = True
        return False

    def _begin(self, ex: Exchange) -> None:
        self._chunked = False
        self._continued = False
        self._keep_alive = ex.keep_alive and not self.closing and not self.engine.draining
        self._head_request = ex.head.method == "HEAD"
        ex.start()

    def _refuse_connect(self, ex: Exchange) -> None:
        """CONNECT (a tunnel through the waypoint) is not supported, wherever it is in a pipeline."""
        self._chunked = self._continued = self._head_request = False
        self._keep_alive = False
        ex.reply(LocalReply(405, b"CONNECT is not supported", reason="CONNECT"))

    def send_continue(self) -> None:
        self._continued = True
        if self.transport is not None and not self.lost:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def send_head(self, status: int, headers: Headers, end: bool) -> None:
        ex = self.queue[0] if self.queue else None
        version = ex.head.version if ex is not None else "1.1"
        if status == 101:
            self._keep_alive = False
            self._write(encode_head(b"HTTP/1.1 101 Switching Protocols\r\n", headers))
            return
        has_len = False
        out = []
        for h in headers:       # one pass: drop Connection (ours is set below), note a length
            k = h[0]
            if k == "connection":
                continue
            if k == "content-length":
                has_len = True
            out.append(h)
        no_body = self._head_request or status in (204, 304) or 100 <= status < 200
        if ex is not None and (ex.upgrade or not ex.keep_alive):
            self._keep_alive = False    # (a refused upgrade: the client's next bytes are unframed)
        if not has_len and not no_body:
            if end:
                out.append(("content-length", "0"))
            elif version == "1.1":
                out.append(("transfer-encoding", "chunked"))
                self._chunked = True
            else:
                self._keep_alive = False    # HTTP/1.0: the body ends when the connection does
        elif has_len and status == 204:     # RFC 9110 §8.6: never in a 204
            out = [h for h in out if h[0] != "content-length"]
        keep = self._keep_alive and not self.closing
        if not keep:
            out.append(("connection", "close"))
        elif version == "1.0":
            out.append(("connection", "keep-alive"))
        self._keep_alive = keep
        self._write(encode_head(b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status)), out))

    def send_data(self, data: bytes) -> None:
        if self.lost or not data or self._head_request:
            return
        if self._chunked:
            self._write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._write(data)

    def send_end(self, trailers: Headers | None) -> None:
        if self._chunked and not self.lost:
            self._write(encode_head(b"0\r\n", trailers or []))
            self._chunked = False

    def send_reset(self) -> None:
        """A response already started cannot be taken back: abort the connection (the client
        sees a truncated response, not a complete wrong one)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def retract_head(self) -> bool:
        """Take back the response head `send_head` queued, if none of it has been written: an
        upstream failure in the same read as its head can then still be answered (502/503)
        rather than cut. Only the error path calls it, so `send_head` notes nothing: the head
        is the last queued write (nothing of its body went, and a flush empties the queue)."""
        buf = self._wbuf
        if self.lost or not buf or not buf[-1].startswith(b"HTTP/1.1 ") or buf[-1].startswith(b"HTTP/1.1 1"):
            return False
        self._wbuf_bytes -= len(buf.pop())
        self._chunked = False
        return True

    def pause_request(self) -> None:
        self._pause("backpressure")

    def resume_request(self) -> None:
        self._resume("backpressure")

    def exchange_done(self, ex: object) -> None:
        if self.lost:
            return
        assert isinstance(ex, Exchange)
        if ex.upgraded:                 # both raw sides are done
            self._close()
            if isinstance(ex.up, H1Client):
                ex.up._close()
            return
        if ex is self.parsing:
            # Answered before the request body ended. If the client waits for 100 Continue that
            # never came, it may never send the body: close. Otherwise read the rest of the body
            # and drop it (closing with unread bytes makes the kernel send RST, and the client
            # may lose the response); on_message_complete moves on.
            if ex.expect_continue and not self._continued:
                self._keep_alive = False
                self._after(ex)
            return
        self._after(ex)

    def _after(self, ex: Exchange) -> None:
        """The response of `ex` is out: next request, or close."""
        q = self.queue
        if not q or q[0] is not ex:
            return
        q.popleft()  # type: ignore[union-attr]
        if not q:
            self.queue = _NO_QUEUE
        self.last = self._loop.time()
        if self.closing or not self._keep_alive:
            self._close()
            return
        self._resume("backpressure")
        if self.queue:
            if self._held is not None:
                self._release_held()
            nxt = self.queue[0]
            if nxt.head.method == "CONNECT":
                self._refuse_connect(nxt)
            else:
                self._begin(nxt)
        elif self._error is not None:   # a bad request followed the ones now answered
            self._send_error()
        else:
            if self._in_head:           # a pipelined head's time starts when it is its turn
                self._head_start = self.last
            h = self._flush_handle
            if h is not None:   # the response is whole and nothing follows it: write it now,
                h.cancel()      # not from a handle at the end of the loop iteration
                self._flush()

    # --- errors and timeouts --------------------------------------------------------------------

    def _bad(self, status: int, reason: str) -> None:
        """Refuse what the client sent. The requests before the bad one are answered first, in
        order (RFC 9112 §9.3.2, as Envoy and nginx do), then the error, then the connection
        closes; nothing after it is parsed."""
        if self._error is not None:
            return
        peer = self.downstream.source_ip or (self.transport.get_extra_info("peername") if self.transport else "")
        # from outside the mesh (an ingress's client) malformed bytes are the internet's routine
        # noise (scanners): info, or every scanner would write warnings; the access log has each
        (log.info if self.downstream.edge else log.warning)("HTTP/1 %d to %s: %s", status, peer, reason)
        self._error = (status, reason)
        self._in_head = False
        self._held = None
        self._divert = _drop
        self._pause("error")
        parsing, self.parsing = self.parsing, None
        q = self.queue
        if parsing is None or parsing.done:
            self._refused_record(status, reason)
            if parsing is not None:     # answered already; the rest of its body was being dropped
                self._error = _QUIET
                self._after(parsing)
        else:
            # The error is in this request's body or trailers: the error answers it, so its own
            # record says so (one access line and one count per request, as Envoy's).
            parsing.record.status = status
            parsing.record.detail = reason
            if parsing is q[0] and parsing.resp_started:    # its response is going out: cut it
                self.send_reset()
            else:
                q.remove(parsing)  # type: ignore[union-attr]
                if not q:
                    self.queue = _NO_QUEUE
            parsing.request_abort("DPE")
        if not self.queue:
            self._send_error()

    def _refused_record(self, status: int, reason: str) -> None:
        """The access-log record of a request refused before it became an exchange."""
        rec = RequestRecord("", self._url.decode("latin-1")[:256], "", "HTTP/1.1", self.downstream,
                            status=status, response_flags="DPE", detail=reason)
        try:
            self.engine.access_log(rec)
            self.engine.stats(rec)
        except Exception:
            log.exception("access-log sink failed")

    def _send_error(self) -> None:
        """The pending error's response (if any), then close."""
        status, reason = self._error or _QUIET
        self._error = _QUIET
        if status and self.transport is not None and not self.lost and not self.transport.is_closing():
            body = reason.encode()
            self._write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                        b"connection: close\r\n\r\n%b" % (status, reason_phrase(status), len(body), body))
        self._close()

    def _ignore_rest(self) -> None:
        """Bytes after a request that ends the connection: answer it (and those before it), then
        close; the bytes are not parsed (RFC 9112 §9.6)."""
        self._divert = _drop
        self._pause("closing")

    def check(self, now: float) -> None:
        """The engine's sweeper: slow heads, idle keep-alive connections, stalled requests."""
        if self.lost:
            return
        s = self.settings
        if self._in_head and not self.queue:
            # (a pipelined head waits for its turn: the clock starts then, in `_after`)
            if now - self._head_start > s.header_timeout:
                self._bad(408, "request header timeout")
        elif self.queue:
            if self.queue[0].done:      # reading the unwanted rest of a body
                if now - self.last > s.stream_idle_timeout:
                    self._close()
            else:
                self.queue[0].check(now)
        elif self._raw is None and now - self.last > s.idle_timeout:
            self._close()

    def shutdown(self) -> None:
        """Drain (the engine is `draining`): a request being answered closes the connection after
        its response, which says `Connection: close`; so does the next request of an idle one
        (`_begin`). An idle connection is not closed now, as Envoy's drain does not: the client
        may be sending its next request at this instant, and a close would fail that request
        where the drain meant to answer it and move the client on. The drain's end closes it."""
        if self.queue or self._raw is not None:
            self.closing = True

    def _close(self) -> None:
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """The drain is over: cut what is still open. An idle connection has nothing to cut and
        ends with a FIN; a request still in flight is reset."""
        if not self.queue and self._raw is None and not self._in_head:
            self._close()
        elif self.transport is not None:
            self.transport.abort()

    def _pause(self, why: str) -> None:
        t = self.transport
        if not self._pause_reasons and t is not None and not self.lost and not t.is_closing():
            t.pause_reading()
        self._pause_reasons = self._pause_reasons | {why}

    def _resume(self, why: str) -> None:
        if why not in self._pause_reasons:
            return
        self._pause_reasons = self._pause_reasons - {why}
        if not self._pause_reasons and self.transport is not None and not self.lost:
            self.transport.resume_reading()

    # --- upgrade: raw relay after 101 -----------------------------------------------------------

    def _upgrade_wait(self, rest: bytes) -> None:
        """llhttp stops after an upgrade head: its Content-Length body, if any, goes upstream as
        the request body; what follows waits (reading paused) for the answer."""
        self._upgrade_buf = []
        self._divert = self._upgrade_data
        if rest or not self._upload_left:
            self._upgrade_data(rest)

    def _upgrade_data(self, data: bytes) -> None:
        left = self._upload_left
        if left:
            body, data = data[:left], data[left:]
            self._upload_left = left = left - len(body)
            ex = self._upload
            if ex is not None:
                if body:
                    ex.request_data(body)
                if not left:
                    self._upload = None
                    ex.request_end(None)
                    if ex.done:         # answered before its body ended
                        self._after(ex)
            if left:
                return
        if self._upgrade_buf is not None:
            if data:
                self._upgrade_buf.append(data)
            self._pause("upgrade")

    def _parse_on(self) -> None:
        """After a stripped h2c upgrade: what followed it is parsed as HTTP/1.1 after all."""
        buf, self._upgrade_buf = self._upgrade_buf or [], None
        self._divert = None     # (`_upgrade_wait` diverted reads to the upgrade's buffer)
        self._resume("upgrade")
        for data in buf:
            self.data_received(data)

    def start_raw(self, ex: Exchange) -> None:
        """The upstream answered 101: from now on bytes pass untouched both ways."""
        self._raw = ex
        self.queue = _NO_QUEUE
        self.parsing = self._upload = None
        self._upload_left = 0
        self._divert = self._raw_from_client
        buf, self._upgrade_buf = self._upgrade_buf or [], None
        for data in buf:
            self._raw_from_client(data)
        self._resume("upgrade")

    def _raw_from_client(self, data: bytes) -> None:
        ex = self._raw
        if ex is None:
            return
        ex.record.bytes_received += len(data)
        up = ex.up
        if isinstance(up, H1Client):
            up.raw_write(data)

    def _raw_eof_from_client(self) -> None:
        ex = self._raw
        if ex is not None and isinstance(ex.up, H1Client):
            ex.up.raw_write_eof()
        if ex is not None:
            ex.raw_end()

    def raw_write(self, data: bytes) -> None:
        if self._raw is not None:
            self._raw.record.bytes_sent += len(data)
        self._write(data)

    def raw_write_eof(self) -> None:
        self._flush()
        t = self.transport
        if t is not None and not self.lost and t.can_write_eof():
            t.write_eof()

    def raw_close(self) -> None:
        self._close()


def _absolute_form(target: bytes) -> tuple[str, str]:
    """(authority, path) of an absolute-form target; IPv6 hosts keep their brackets. A target with
    userinfo (RFC 9110 §4.2.4) or a fragment is refused, as is a host `valid_authority` refuses."""
    try:
        u = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise Refuse(400, "malformed request target") from None
    if not u.host or u.userinfo or b"#" in target:
        raise Refuse(400, "malformed request target")
    host = u.host.decode("latin-1")
    authority = (f"[{host}]" if ":" in host else host) + (f":{u.port}" if u.port else "")
    if not valid_authority(authority):
        raise Refuse(400, "malformed request target")
    return authority, (u.path or b"/").decode("latin-1") + ("?" + u.query.decode("latin-1") if u.query else "")
