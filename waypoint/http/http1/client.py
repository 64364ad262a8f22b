"""The upstream HTTP/1.1 connection: one exchange at a time, pooled between them (pool.py) when
nothing about its framing is in doubt (the package docstring has the rules)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httptools

from waypoint.http.exchange import BODY_LENGTH, BODY_NONE, BODY_STREAM, Exchange
from waypoint.http.headers import MAX_INFORMATIONAL
from waypoint.http.http1.wire import Refuse, encode_head
from waypoint.http.legs import Headers
from waypoint.request import RequestHead

if TYPE_CHECKING:
    from waypoint.http.http1.server import H1Server
    from waypoint.http.pool import Pools

log = logging.getLogger("waypoint.http")


# methods a request may be sent again with (RFC 9110 §9.2.2): repeating them changes nothing
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))

# request headers `bind` does not copy as they are: one set test per ordinary header (§65)
_NOT_COPIED = frozenset(("host", "te", "cookie", "content-length"))
_FRAMING = frozenset(("content-length", "transfer-encoding"))   # the response fields that frame its body
_LOST = httptools.HttpResponseParser(None)     # a lost connection's parser: holds no protocol


class H1Client(asyncio.Protocol):
    """One upstream HTTP/1.1 connection; serves one exchange at a time (see the module docstring)."""

    def __init__(self, pools: Pools, key: str) -> None:
        self.pools = pools
        self.key = key
        self._max_head = pools.settings.max_header_bytes
        self._max_headers = pools.settings.max_headers
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.lost = False
        self.reused = False
        self.requests = 0
        self.idle_since = 0.0
        self.drained = False          # past maxConnectionDuration: closed when its response ends (pool.py)
        self._req_done = False        # the whole request was written
        self._resp_bytes = 0
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._in_head = True
        self._head_bytes = 0
        self._tail: int | None = None     # the trailer section's bytes, as H1Server counts them
        self._trailer_bytes = 0           # its parsed fields' bytes
        self._informational = False
        self._n1xx = 0                # 1xx heads of the response to request number `_n1xx_of`
        self._n1xx_of = 0
        self._eof_body = False        # response body delimited by connection close
        self._chunked = False
        self._paused = False
        self._raw: H1Server | None = None
        self._head_request = False

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.lost:
            return
        if self._raw is not None:
            self._raw.raw_write(data)
            return
        ex = self.ex
        if ex is None:
            self._idle_data(data)
            return
        self._resp_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            rest = data[e.args[0]:]
            server = ex.down
            if not ex.upgrade or not hasattr(server, "start_raw"):    # only an HTTP/1 client can follow
                self._fail("UPE", "unexpected 101")
                return
            ex.response_head(101, self._headers)
            self._raw = server  # type: ignore[assignment]
            server.start_raw(ex)  # type: ignore[attr-defined]
            if rest:
                server.raw_write(rest)  # type: ignore[attr-defined]
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, Refuse):
                log.info("upstream %s sent an invalid response: %s", self.key, cause)
            else:
                log.error("HTTP/1 client callback failed", exc_info=cause)
            self._fail("UPE", "protocol error")
            return
        except httptools.HttpParserError as e:
            log.info("upstream %s sent a malformed response: %s", self.key, e)
            self._fail("UPE", "protocol error")
            return
        if self.pools.held is self:     # the response ended in this read, and nothing came after it
            self.pools.release(self)
            return
        # A head (or trailer section) without end is refused as a client's is (H1Server): its
        # lines would be buffered here, and httptools buffers one endless line on its own. Only
        # reads that end inside the head are counted: most heads end in their first read, which
        # then costs nothing here.
        if self._in_head:
            if self.ex is not None:
                self._head_bytes += len(data)
                if self._head_bytes > self._max_head and not self._head_fits(data):
                    log.info("upstream %s sent response headers over %d bytes", self.key, self._max_head)
                    self._fail("UPE", "response headers too large")
        elif self._tail is not None:
            # (the read with the last chunk's size line holds body bytes too: of it, only the
            # trailer fields parsed so far count)
            self._tail = self._tail + len(data) if self._tail >= 0 else self._trailer_bytes if self._trailers else 0
            if self._tail > self._max_head:
                log.info("upstream %s sent response trailers over %d bytes", self.key, self._max_head)
                self._fail("UPE", "response trailers too large")

    def _idle_data(self, data: bytes) -> None:
        """Bytes on an idle connection (pooled, or not yet given a request): no request is waiting
        for them, so the server is broken or confused, and kept they would be read as the next
        request's response, maybe another client's. The connection leaves the pool now and is
        closed, unread, as Envoy closes an upstream HTTP/1.1 connection that receives data with no
        request active; the next request gets another connection. Only this branch pays for it."""
        log.info("upstream %s sent %d bytes on an idle connection: closed, unread", self.key, len(data))
        self.pools.forget(self)
        self._close(abort=True)

    def _head_fits(self, data: bytes) -> bool:
        """The read put the head under way over the limit, counted whole: recount only that
        head's own bytes. 1xx heads (103 Early Hints) have no body, so when one ended in this
        read the head under way began after its blank line (a final head's end would have left
        the head): the 1xx heads before it are not its bytes. Only an over-limit read gets here."""
        i, j = data.rfind(b"\n\r\n"), data.rfind(b"\n\n")
        end = max(i + 3 if i >= 0 else 0, j + 2 if j >= 0 else 0)
        if end:
            self._head_bytes = len(data) - end
        return self._head_bytes <= self._max_head

    def eof_received(self) -> bool:
        if self._raw is not None:
            self._raw.raw_write_eof()
            ex = self.ex
            if ex is not None:
                ex.raw_end()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection_lost()
        self.parser = _LOST     # the parser holds our callbacks: a cycle per connection

    def _connection_lost(self) -> None:
        self.lost = True
        self.pools.closed(self)
        if self._raw is not None:
            raw, self._raw = self._raw, None
            raw.raw_close()
            if self.ex is not None:
                self.ex.raw_end()
                self.ex.raw_end()
            return
        ex = self.ex
        if ex is None:
            return
        if self._eof_body and not self._in_head:
            self._complete()
            return
        # A reused connection closed before any response byte: most likely the server closed it
        # idle as we reused it, but it may have read (and applied) the request. Sent again only
        # when that is harmless, an idempotent method (RFC 9110 §9.2.2); Envoy never resends.
        self._fail("UC", "connection termination",
                   retryable=self.reused and self._resp_bytes == 0 and ex.up_head is not None
                   and ex.up_head.method in IDEMPOTENT)

    def pause_writing(self) -> None:
        if self._raw is not None:
            self._raw.pause_request()
        elif self.ex is not None:
            self.ex.request_pause()

    def resume_writing(self) -> None:
        if self._raw is not None:
            self._raw.resume_request()
        elif self.ex is not None:
            self.ex.request_resume()

    # --- binding an exchange --------------------------------------------------------------------

    def bind(self, ex: Exchange, head: RequestHead, reused: bool) -> None:
        """Write the request head; the body follows through `send_data`/`send_end`."""
        self.ex = ex
        self.reused = reused
        self.requests += 1
        self._req_done = False
        self._resp_bytes = 0
        self._headers, self._trailers = [], None
        self._in_head, self._informational, self._eof_body = True, False, False
        self._head_request = head.method == "HEAD"
        out: Headers = [("host", head.authority)]
        cookies = []
        for k, v in head.headers:
            if k in _NOT_COPIED:
                if k == "cookie":
                    cookies.append(v)
                elif k == "content-length" and ex.body == BODY_LENGTH:
                    out.append((k, v))
                continue
            if k[:1] == ":":
                continue
            out.append((k, v))
        if cookies:
            out.append(("cookie", "; ".join(cookies)))
        self._chunked = ex.body == BODY_STREAM
        if self._chunked:
            out.append(("transfer-encoding", "chunked"))
        elif ex.body == BODY_LENGTH and not any(k == "content-length" for k, _ in out):
            self._chunked = True
            out.append(("transfer-encoding", "chunked"))
        if ex.body == BODY_NONE and head.method in ("POST", "PUT", "PATCH"):
            out.append(("content-length", "0"))
        first = f"{head.method} {head.path} HTTP/1.1\r\n".encode("latin-1")
        self.transport.write(encode_head(first, out))  # type: ignore[union-attr]
        ex.bind(self)

    # --- UpLeg ----------------------------------------------------------------------------------

    def send_data(self, data: bytes) -> None:
        t = self.transport
        if t is None or self.lost or not data:
            return
        if self._chunked:
            t.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            t.write(data)

    def send_end(self, trailers: Headers | None) -> None:
        if self._chunked and self.transport is not None and not self.lost:
            self.transport.write(b"0\r\n\r\n")
        self._req_done = True

    def abort(self) -> None:
        self.ex = None
        self._close(abort=True)

    def pause_response(self) -> None:
        if not self._paused and self.transport is not None and not self.lost:
            self._paused = True
            self.transport.pause_reading()

    def resume_response(self) -> None:
        if self._paused and self.transport is not None and not self.lost:
            self._paused = False
            self.transport.resume_reading()

    # --- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.ex is None:     # bytes after a complete response: never another request's response
            raise Refuse(502, "data after a complete response")
        self._headers, self._trailers = [], None
        self._in_head = True
        self._head_bytes, self._tail = 0, None

    def on_header(self, name: bytes, value: bytes) -> None:
        item = (name.decode("latin-1").lower(), value.decode("latin-1"))
        if self._in_head:
            # (counted once the head is complete, `on_headers_complete`: a head is at most one
            # read, and a per-field check cost ~50 bytecodes per response)
            self._headers.append(item)
            return
        if self._trailers is None:
            self._trailers, self._trailer_bytes = [], 0
        fields = self._trailers
        self._trailer_bytes += len(item[0]) + len(item[1]) + 4
        if self._trailer_bytes > self._max_head:
            raise Refuse(502, f"response trailers over {self._max_head} bytes")
        fields.append(item)
        if len(fields) > self._max_headers:     # Envoy's max_headers_count holds upstream too: 502 UPE
            raise Refuse(502, f"more than {self._max_headers} response trailer fields")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if len(self._headers) > self._max_headers:     # Envoy's max_headers_count holds upstream too: 502 UPE
            raise Refuse(502, f"more than {self._max_headers} response header fields")
        status = self.parser.get_status_code()
        ex = self.ex
        if status < 200 or status > 599:
            if status < 100 or status > 599:    # RFC 9110 §15: three digits, 100 to 599
                raise Refuse(502, f"status code {status}")
            # 100 Continue (already answered downstream) and 1xx: dropped, at most MAX_INFORMATIONAL
            # of them per response; 101: no message end, HttpParserUpgrade follows
            if status != 101:
                self._no_content(status)      # (llhttp reads a 1xx's Content-Length body: it went downstream headless)
            self._informational = True
            if self._n1xx_of != self.requests:      # (counted here, not reset per request in `bind`)
                self._n1xx_of, self._n1xx = self.requests, 0
            self._n1xx += 1
            if self._n1xx > MAX_INFORMATIONAL:
                raise Refuse(502, f"more than {MAX_INFORMATIONAL} informational (1xx) responses")
            return
        framed = False
        for k, v in self._headers:
            if k not in _FRAMING:       # most fields: one set test
                continue
            if k == "content-length":
                framed = True
                break
            if v.lower() != "chunked":      # only `chunked` is read, as Envoy's codec: never a coding dropped
                raise Refuse(502, f"transfer-encoding {v[:64]!r}")
            framed = True       # (no break: a second Transfer-Encoding may name another coding)
        if framed:
            if status == 204:
                self._no_content(status)
            self._eof_body = False
        else:
            self._eof_body = status != 204 and status != 304 and not self._head_request
        if ex is not None:
            ex.response_head(status, self._headers)
        if self._head_request:
            self._complete()

    def _no_content(self, status: int) -> None:
        """A 204 or a 1xx has no body and no length (RFC 9110 §8.6, §15.2, §15.3.5):
        `content-length: 0` is dropped; a length or a Transfer-Encoding that says otherwise is a
        protocol error (Envoy)."""
        for k, v in self._headers:
            if k == "transfer-encoding" or (k == "content-length" and int(v) != 0):
                raise Refuse(502, f"{status} response with {k}: {v[:64]}")
        self._headers = [h for h in self._headers if h[0] != "content-length"]

    def on_body(self, body: bytes) -> None:
        self._tail = None
        if self.ex is not None:
            self.ex.response_data(body)

    def on_chunk_header(self) -> None:
        self._tail = -1

    def on_chunk_complete(self) -> None:
        self._tail = None

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.ex is not None:
            self._complete()

    # --- the end of a response ------------------------------------------------------------------

    def _complete(self) -> None:
        """The response ended. A connection that can be reused goes back to the pool at the end of
        the read (`data_received`), once nothing came after the response in it: bytes after a
        complete response close the connection (Envoy: "extraneous data after response
        complete"), never becoming the response of the next request bound to it, maybe another
        client's. Meanwhile the pool counts it as a connection about to be free, so a request the
        ending starts (the next pipelined one) waits for it rather than opening another."""
        ex, self.ex = self.ex, None
        trailers = self._trailers
        if self._paused:
            self.resume_response()
        if (not self.lost and self._req_done and not self._eof_body and not self._head_request
                and self.parser.should_keep_alive()):
            self.pools.held = self
        else:
            self._close()
        if ex is not None:
            ex.response_end(trailers)

    def _fail(self, flags: str, reason: str, retryable: bool = False) -> None:
        if self.pools.held is self:
            self.pools.held = None
        ex, self.ex = self.ex, None
        self._close(abort=True)
        if ex is not None:
            ex.upstream_reset(flags, reason, retryable=retryable)

    def _close(self, abort: bool = False) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.abort() if abort else t.close()

    @property
    def usable(self) -> bool:
        return not self.lost and self.ex is None and self.transport is not None and not self.transport.is_closing()

    # --- raw relay after 101 --------------------------------------------------------------------

    def raw_write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def raw_write_eof(self) -> None:
        t = self.transport
        if t is not None and not self.lost and t.can_write_eof():
            t.write_eof()
