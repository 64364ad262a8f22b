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
    response never reaches B (it did: B got `x-poison`, or a 503 for A's broken 204)."""
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
        assert got_a[0][0] == (200 if target == "/two" else 503)
        assert got_b == [(200, {"content-length": "17"}, b"GET /client-b 0 2")]
    finally:
        origin.release()
        assert p.live_exchanges(5) == 0
        p.close()


@pytest.mark.parametrize("target", ["/s204body", "/s204te", "/status000", "/status600", "/status999",
                                    "/tegzip", "/tegzipchunked"])
def test_an_invalid_upstream_response_is_503_upe_and_its_connection_is_not_reused(
        proxy: Proxy, origin: RawOrigin, target: str) -> None:
    """RFC 9110 §15 (status 100..599), §8.6 (no length in a 204), and only `chunked` as a transfer
    coding (Envoy's codec): relaying them would hand the client an invalid response (an HTTP/2
    client rejects it) or a body whose coding was dropped."""
    out = send(proxy, b"GET %b HTTP/1.1\r\nHost: a\r\n\r\n" % target.encode(), n=1)
    assert responses(out) == [(503, {"content-type": "text/plain", "content-length": str(len(UPE))}, UPE)]
    assert proxy.find(lambda r: r.path == target and r.response_flags == "UPE")
    assert responses(send(proxy, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n", n=1))[0][2] == b"GET /next 0 2"


def test_a_204_with_content_length_0_loses_the_header(proxy: Proxy, origin: RawOrigin) -> None:
    out = send(proxy, b"GET /s204zero HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n", n=2)
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 204") and b"content-length" not in head and b"x-a: 1" in head
    assert responses(out)[1][2] == b"GET /next 0 1"     # a valid 204: its connection is reused
