"""HTTP/1.1 framing under hostile or broken peers, over loopback sockets: the real engine between
raw clients and a `RawOrigin` that misbehaves on purpose (the waypoint fuzz audit's defects).

What must hold: a request's bytes go upstream whole or not at all; an upstream connection whose
framing is in doubt (bytes after a response, a body where none may be, an unsent request body) is
never reused, so one client's traffic never becomes another's; the requests before a bad one are
answered, in order, before its error; a client cannot make the waypoint hold unbounded state
(pipelining, empty lines) or refuse it for bytes that are not its head's.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import httptools
import pytest

from tests.unit.waypoint.harness import Proxy, RawOrigin, by_header
from waypoint.http.http1.server import PIPELINE_DEPTH
from waypoint.http.settings import HttpSettings

pytestmark = pytest.mark.timeout(60)

TWO = (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
       b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-poison: yes\r\n\r\nPOISONED")
CANNED: dict[str, bytes | tuple[bytes, bytes]] = {
    "/two": TWO,                                                        # a second, unsolicited response
    "/extra": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA-BYTES",
    "/s204smuggle": b"HTTP/1.1 204 No Content\r\n\r\n" + TWO[40:],
    "/s204body": b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello",
    "/s204zero": b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nx-a: 1\r\n\r\n",
    "/s204te": b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "/s304body": b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\nhello",
    "/status000": b"HTTP/1.1 000 Weird\r\ncontent-length: 2\r\n\r\nok",
    "/status600": b"HTTP/1.1 600 Weird\r\ncontent-length: 2\r\n\r\nok",
    "/status999": b"HTTP/1.1 999 Weird\r\ncontent-length: 2\r\n\r\nok",
    "/tegzip": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nbody-until-close",
    "/tegzipchunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    # a response whose head and first chunk go out now, the rest once released
    "/trickle": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n", b"6\r\nsecond\r\n0\r\n\r\n"),
}
UPE = b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"


@pytest.fixture
def origin() -> Iterator[RawOrigin]:
    o = RawOrigin(CANNED)
    yield o
    o.release()
    o.close()


def proxy_for(origin: RawOrigin, **settings: float) -> Proxy:
    return Proxy(by_header({"default": origin.port}), settings=HttpSettings(**settings))  # type: ignore[arg-type]


@pytest.fixture
def proxy(origin: RawOrigin) -> Iterator[Proxy]:
    p = proxy_for(origin, stream_idle_timeout=3.0)
    yield p
    origin.release()
    assert p.live_exchanges(5) == 0
    p.close()


def connect(p: Proxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read(s: socket.socket, until: Callable[[bytes], bool] | None = None, timeout: float = 5) -> bytes:
    """What the proxy sends until it closes (or `until(what came so far)`, or `timeout`)."""
    s.settimeout(timeout)
    out = b""
    while until is None or not until(out):
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
    return out


def send(p: Proxy, data: bytes, n: int = 0) -> bytes:
    """Send `data` on a new connection; what comes back until the proxy closes it (or `n`
    responses came, on a connection kept open)."""
    with connect(p) as s:
        s.sendall(data)
        return read(s, until=(lambda o: len(responses(o)) >= n) if n else None)


class _Responses:
    def __init__(self) -> None:
        self.got: list[tuple[int, dict[str, str], bytes]] = []

    def on_message_begin(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = b""

    def on_header(self, k: bytes, v: bytes) -> None:
        self.headers[k.decode().lower()] = v.decode()

    def on_body(self, b: bytes) -> None:
        self.body += b

    def on_message_complete(self) -> None:
        self.got.append((self.p.get_status_code(), self.headers, self.body))


def responses(out: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The complete responses in `out`, in order."""
    r = _Responses()
    r.p = httptools.HttpResponseParser(r)  # type: ignore[attr-defined]
    try:
        r.p.feed_data(out)  # type: ignore[attr-defined]
    except httptools.HttpParserError:
        pass
    return r.got


def statuses(out: bytes) -> list[int]:
    return [s for s, _, _ in responses(out)]


def wait_for(cond: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            return False
        time.sleep(0.01)
    return True


def pending(p: Proxy) -> int:
    """Requests waiting for an upstream HTTP/1.1 connection."""
    return p.call(lambda: sum(q.live for keys in p.engine.pools.queues.values() for q in keys.values()))  # type: ignore


def exchanges(p: Proxy) -> int:
    return p.call(lambda: len(p.engine.exchanges))  # type: ignore


# --- D2: an upgrade request's body ----------------------------------------------------------------

def test_an_upgrade_requests_body_goes_upstream_and_the_next_client_on_its_connection_is_intact(
        proxy: Proxy, origin: RawOrigin) -> None:
    """The body after an `Upgrade` head (not upgraded: answered 200) is the request's body: it is
    sent, so the pooled connection stays in step and the next client's request on it arrives whole
    (it used to lose its first bytes to the origin, which was still reading the body)."""
    a = send(proxy, b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                    b"Content-Length: 4\r\n\r\nxxxx")
    assert statuses(a) == [200]
    assert origin.wait_requests(1)[0][1:] == ("POST", "/up", b"xxxx")
    b = send(proxy, b"GET /client-b HTTP/1.1\r\nHost: a\r\n\r\n", n=1)
    assert [body for _, _, body in responses(b)] == [b"GET /client-b 0 1"]     # its own answer, on connection 1
    assert origin.wait_requests(2)[1] == (1, "GET", "/client-b", b"")


def test_an_upgrade_request_with_a_chunked_body_is_refused_before_going_upstream(
        proxy: Proxy, origin: RawOrigin) -> None:
    out = send(proxy, b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n4\r\nxxxx\r\n0\r\n\r\n")
    assert statuses(out) == [501]
    assert origin.requests == [] and b"".join(origin.raw.values()) == b""


# --- D5, D14: bytes after a response, bodies where none may be, invalid status codes -----------------

@pytest.mark.parametrize("target", ["/two", "/extra", "/s204smuggle", "/s304body"])
def test_bytes_after_a_complete_response_never_answer_the_next_request(
        proxy: Proxy, origin: RawOrigin, target: str) -> None:
    """The response is delivered, the connection that sent more is closed; the pipelined next
    request gets its own answer, from a fresh connection."""
    out = send(proxy, b"GET %b HTTP/1.1\r\nHost: a\r\n\r\nGET /victim HTTP/1.1\r\nHost: a\r\n\r\n" % target.encode(),
               n=2)
    got = responses(out)
    assert b"POISONED" not in out and len(got) == 2
    assert got[0][0] == (304 if target == "/s304body" else 204 if "204" in target else 200)
    assert got[1][2] == b"GET /victim 0 2"         # the origin's answer to it, on a second connection


@pytest.mark.parametrize("target", ["/two", "/s204body"])
def test_another_clients_request_queued_for_the_connection_gets_its_own_response(
        origin: RawOrigin, target: str) -> None:
    """One connection for the cluster: client B waits for A's. What the origin sent after A's
    response never reaches B (it did: B got `x-poison`, or a 502 for A's broken 204)."""
    p = proxy_for(origin, pool_max_connections=1)
    try:
        with connect(p) as a, connect(p) as b:
            a.sendall(b"GET /hold%b HTTP/1.1\r\nHost: a\r\n\r\n" % target.encode())
            assert origin.wait_requests(1)
            b.sendall(b"GET /client-b HTTP/1.1\r\nHost: a\r\n\r\n")
            assert wait_for(lambda: pending(p) == 1)
            origin.release()
            got_a = responses(read(a, until=lambda o: len(responses(o)) == 1))
            got_b = responses(read(b, until=lambda o: len(responses(o)) == 1))
        assert got_a[0][0] == (200 if target == "/two" else 502)
        assert got_b == [(200, {"content-length": "17"}, b"GET /client-b 0 2")]
    finally:
        origin.release()
        assert p.live_exchanges(5) == 0
        p.close()


@pytest.mark.parametrize("target", ["/s204body", "/s204te", "/status000", "/status600", "/status999",
                                    "/tegzip", "/tegzipchunked"])
def test_an_invalid_upstream_response_is_502_upe_and_its_connection_is_not_reused(
        proxy: Proxy, origin: RawOrigin, target: str) -> None:
    """RFC 9110 §15 (status 100..599), §8.6 (no length in a 204), and only `chunked` as a transfer
    coding (Envoy's codec): relaying them would hand the client an invalid response (an HTTP/2
    client rejects it) or a body whose coding was dropped."""
    out = send(proxy, b"GET %b HTTP/1.1\r\nHost: a\r\n\r\n" % target.encode(), n=1)
    assert responses(out) == [(502, {"content-type": "text/plain", "content-length": str(len(UPE))}, UPE)]
    assert proxy.find(lambda r: r.path == target and r.response_flags == "UPE")
    assert responses(send(proxy, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n", n=1))[0][2] == b"GET /next 0 2"


def test_a_204_with_content_length_0_loses_the_header(proxy: Proxy, origin: RawOrigin) -> None:
    out = send(proxy, b"GET /s204zero HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n", n=2)
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 204") and b"content-length" not in head and b"x-a: 1" in head
    assert responses(out)[1][2] == b"GET /next 0 1"     # a valid 204: its connection is reused


# --- D9: Transfer-Encoding ------------------------------------------------------------------------

@pytest.mark.parametrize(("te", "status"), [("gzip", 501), ("xchunked", 501), ("identity", 501),
                                            ("gzip, chunked", 501), ("chunked, gzip", 400),
                                            ("chunked;x=1", 400), ("chunked,", 400)])
def test_a_transfer_encoding_other_than_chunked_is_refused_before_anything_goes_upstream(
        proxy: Proxy, origin: RawOrigin, te: str, status: int) -> None:
    """With a pooled connection idle (where the head used to be written before the refusal), the
    origin receives nothing: 501 for a coding the waypoint does not implement (Envoy's answer;
    `gzip, chunked` was re-chunked with the gzip coding dropped), 400 when the framing itself is
    broken (RFC 9112 §6.3)."""
    assert statuses(send(proxy, b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n", n=1)) == [200]
    before = bytes(origin.raw[1])
    out = send(proxy, b"POST /delete-everything HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %b\r\n\r\n"
                      b"5\r\nhello\r\n0\r\n\r\n" % te.encode())
    assert statuses(out) == [status]
    time.sleep(0.1)
    assert bytes(origin.raw[1]) == before and len(origin.raw) == 1
    assert [t for _, _, t, _ in origin.requests] == ["/warm"]


# --- D3: the requests before a bad one are answered first ----------------------------------------

@pytest.mark.parametrize("data", [
    b"GET /1 HTTP/1.0\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nX",
    b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_bytes_after_a_request_that_ends_the_connection_are_ignored_after_its_response(
        proxy: Proxy, origin: RawOrigin, data: bytes) -> None:
    """RFC 9112 §9.6: the response, then the close; what followed is never parsed or served (it
    used to abort the request in flight: no response at all)."""
    got = responses(send(proxy, data))
    assert [(s, b) for s, _, b in got] == [(200, b"GET /1 0 1")] and got[0][1]["connection"] == "close"
    assert [t for _, _, t, _ in origin.requests] == ["/1"]


@pytest.mark.parametrize(("data", "status"), [
    (b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
    (b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\nHost: a\r\nHost: x\r\n\r\n", 400),
    (b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n"
     b"Transfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
])
def test_a_bad_pipelined_request_is_answered_after_those_before_it(
        proxy: Proxy, origin: RawOrigin, data: bytes, status: int) -> None:
    """Their responses in order, then the error, then the close (as Envoy and nginx; it used to be
    a close with nothing, though the origin had run the first requests)."""
    got = responses(send(proxy, data))
    n = len(got) - 1
    assert [s for s, _, _ in got] == [200] * n + [status] and n >= 1
    assert [t for _, _, t, _ in origin.requests] == [f"/{i}" for i in range(1, n + 1)]
    assert "connection" not in got[0][1] and got[-1][1]["connection"] == "close"


def test_a_bad_request_while_one_is_in_flight_waits_for_its_response(proxy: Proxy, origin: RawOrigin) -> None:
    with connect(proxy) as s:
        s.sendall(b"GET /hold/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert origin.wait_requests(1)
        s.sendall(b"GET /2 HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        time.sleep(0.2)
        origin.release()
        got = responses(read(s))
    assert [(st, b) for st, _, b in got] == [(200, b"GET /hold/1 0 1"),
                                              (400, b"malformed request: Invalid header token")]


def test_a_bad_request_after_a_response_that_is_streaming_lets_it_finish(proxy: Proxy, origin: RawOrigin) -> None:
    """The response being sent is complete, then the 400 (a later request's error used to reset
    the connection and truncate it)."""
    with connect(proxy) as s:
        s.sendall(b"GET /trickle HTTP/1.1\r\nHost: a\r\n\r\n")
        first = read(s, until=lambda o: b"first" in o)
        s.sendall(b"GET /2 HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        time.sleep(0.2)
        origin.release()
        got = responses(first + read(s))
    assert [(st, b) for st, _, b in got] == [(200, b"firstsecond"), (400, b"malformed request: Invalid header token")]


def test_a_pipelined_head_times_out_only_once_it_is_its_turn(origin: RawOrigin) -> None:
    """A partial head behind a request in flight: the in-flight response, then 408 (the head
    timeout used to close the connection under the request in flight, with nothing sent)."""
    p = proxy_for(origin, header_timeout=0.5)
    try:
        with connect(p) as s:
            s.sendall(b"GET /hold/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHo")
            assert origin.wait_requests(1)
            time.sleep(1.2)         # over the head timeout: the head waits for its turn
            origin.release()
            got = responses(read(s))
        assert [(st, b) for st, _, b in got] == [(200, b"GET /hold/1 0 1"), (408, b"request header timeout")]
    finally:
        p.close()


# --- D10, D15: head and trailer limits count the head's and the trailers' own bytes ----------------

def test_a_head_cut_by_a_read_after_a_long_body_is_not_too_large(proxy: Proxy, origin: RawOrigin) -> None:
    """A 70 kB body and the start of the next head in one write: the body is not the head's (it
    was counted as such: 431, and the POST's response lost)."""
    with connect(proxy) as s:
        s.sendall(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70000 + b"GET /2 HTTP/1.1\r\nHo")
        assert origin.wait_requests(1)
        s.sendall(b"st: a\r\n\r\n")
        got = responses(read(s, until=lambda o: len(responses(o)) == 2))
    assert [(st, b) for st, _, b in got] == [(200, b"POST /1 70000 1"), (200, b"GET /2 0 1")]


def test_request_trailers_over_the_limit_are_431_when_they_come_in_one_read(proxy: Proxy, origin: RawOrigin) -> None:
    """The same limit as a head's: a 70 kB trailer section in the read of the last chunk (it was
    not counted: 200)."""
    out = send(proxy, b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
                      b"X-T: " + b"a" * 70000 + b"\r\n\r\n")
    assert statuses(out) == [431]
    assert proxy.find(lambda r: r.status == 431 and r.detail == "request trailers too large")


# --- D11: pipelining is bounded ------------------------------------------------------------------

def test_a_deep_pipeline_is_parsed_a_few_requests_ahead_and_freed_when_the_client_goes(origin: RawOrigin) -> None:
    """1500 pipelined requests behind one the origin holds: at most PIPELINE_DEPTH become
    exchanges (each read's requests all did: thousands), and when the client goes, only the one
    in flight is left (the half-close rule: it may still be answered)."""
    p = proxy_for(origin, stream_idle_timeout=2.0)
    try:
        with connect(p) as s:
            s.sendall(b"GET /hold/x HTTP/1.1\r\nHost: a\r\n\r\n" * 1500)
            assert origin.wait_requests(1)
            seen = []
            for _ in range(30):         # until the count settles
                seen.append(exchanges(p))
                if seen[-3:] == [seen[-1]] * 3 and len(seen) > 3:
                    break
                time.sleep(0.05)
            assert seen[-1] == PIPELINE_DEPTH
        assert wait_for(lambda: exchanges(p) <= 1)
        origin.release()
        assert p.live_exchanges(5) == 0
    finally:
        p.close()


def test_a_client_that_closes_while_waiting_is_a_downstream_disconnect(origin: RawOrigin) -> None:
    """A client gives up (a timeout) and closes its socket; through ztunnel that arrives as the
    tunnel's half-close. Envoy ends the request there: response code 0, flag DC, upstream reset.
    Answering it later and recording the origin's 200 made client timeouts count as successes."""
    p = proxy_for(origin, stream_idle_timeout=60.0)
    try:
        with connect(p) as s:
            s.sendall(b"GET /hold/gone HTTP/1.1\r\nHost: a\r\n\r\n")
            assert origin.wait_requests(1)
            s.shutdown(socket.SHUT_WR)
            assert p.live_exchanges(5) == 0        # ended at the FIN, not when the origin answers
            origin.release()
            s.settimeout(5)
            assert s.recv(65536) == b""
        [rec] = p.find(lambda r: r.path == "/hold/gone")
        assert (rec.status, rec.response_flags) == (0, "DC")
    finally:
        p.close()


def test_requests_held_back_from_a_deep_pipeline_are_all_answered_in_order(proxy: Proxy, origin: RawOrigin) -> None:
    """With bodies, written at once and in small pieces (reads that end inside heads and bodies)."""
    reqs = [b"POST /p%d HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%b" % (i, i, b"b" * i) if i % 2 else
            b"GET /p%d HTTP/1.1\r\nHost: a\r\nX-Pad: %b\r\n\r\n" % (i, b"p" * i) for i in range(60)]
    data = b"".join(reqs)
    expect = [f"{'POST' if i % 2 else 'GET'} /p{i} {i if i % 2 else 0}" for i in range(60)]
    for step in (len(data), 37):
        with connect(proxy) as s:
            for i in range(0, len(data), step):
                s.sendall(data[i:i + step])
            got = responses(read(s, until=lambda o: len(responses(o)) == 60))
        assert [b.decode().rsplit(" ", 1)[0] for _, _, b in got] == expect


# --- D12: CONNECT ---------------------------------------------------------------------------------

def test_a_pipelined_connect_is_405_like_a_first_one(proxy: Proxy, origin: RawOrigin) -> None:
    out = send(proxy, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nCONNECT app:80 HTTP/1.1\r\nHost: app:80\r\n\r\n")
    assert statuses(out) == [200, 405]
    assert [(m, t) for _, m, t, _ in origin.requests] == [("GET", "/first")]


# --- D16: empty lines between requests ------------------------------------------------------------

def test_a_few_empty_lines_before_a_request_are_ignored_more_are_refused(proxy: Proxy, origin: RawOrigin) -> None:
    """RFC 9112 §2.2 (at least one empty line is ignored); a client sending only empty lines
    gets 400 (it held the connection for ever)."""
    with connect(proxy) as s:
        s.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\r\n")
        assert statuses(read(s, until=lambda o: len(responses(o)) == 1)) == [200]
        s.sendall(b"\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        assert statuses(read(s, until=lambda o: len(responses(o)) == 1)) == [200]
        for _ in range(5):
            s.sendall(b"\r\n")
            time.sleep(0.05)
        assert statuses(read(s)) == [400]


def test_empty_lines_do_not_keep_an_idle_connection_open(origin: RawOrigin) -> None:
    """They are not activity: the idle timeout runs from the last response (each byte of them
    used to restart it)."""
    p = proxy_for(origin, idle_timeout=0.5)
    try:
        with connect(p) as s:
            s.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
            assert statuses(read(s, until=lambda o: len(responses(o)) == 1)) == [200]
            closed = False
            for _ in range(8):          # a byte of an empty line every 0.4 s, 8 in all: not refused
                try:
                    s.sendall(b"\r")
                except OSError:
                    closed = True
                if closed or closed_within(s, 0.4):
                    closed = True
                    break
            assert closed
    finally:
        p.close()


def closed_within(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
