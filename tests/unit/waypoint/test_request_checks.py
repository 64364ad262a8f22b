"""What the engine checks in a request head before anything is decided or forwarded, driven over
loopback with raw HTTP/1.1 bytes and an `h2` client, against real origins (harness.py).

What a user of an Envoy/Istio waypoint relies on (each was a hole found by probing the engine with
hostile requests: /work/notes/audit-waypoint-fuzz.md D1, D4, D6, D7, D8, D13):
- a `#fragment` cannot carry a request past a path rule: 400, nothing forwarded (Envoy's default);
- the path is normalized once, and routing, authorization and the upstream all get that path;
- `Upgrade: h2c` is stripped (the request is served as HTTP/1.1, and the next one on the connection
  is routed again); upgrades other than WebSocket get 403 (WebSocket: test_http1.py);
- more header fields than `max_headers` (100) are refused on HTTP/2 requests (stream reset, before
  the block is kept) and on upstream responses of both protocols (502 UPE), as on HTTP/1.1 requests;
- Host and `:authority` must be a valid authority without userinfo; absolute-form IPv6 keeps its
  brackets;
- a malformed `grpc-timeout` is ignored, never a crash (HTTP/1.1: 500; HTTP/2: an unanswered stream).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from tests.unit.waypoint.harness import H2Origin, Origin, Proxy, by_header
from waypoint.http.settings import HttpSettings
from waypoint.request import Decision, Downstream, LocalReply, RequestHead

pytestmark = pytest.mark.timeout(60)

H2C_UPGRADE = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


@pytest.fixture(scope="module")
def origins() -> Iterator[tuple[Origin, H2Origin]]:
    o, h = Origin(), H2Origin()
    yield o, h
    o.close()
    h.close()


class Seen:
    """The decide of a waypoint with a DENY on /admin (the authorization's place), recording the
    path each request was decided on."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.paths: list[str] = []
        self.base = by_header(ports)

    def __call__(self, head: RequestHead, ds: Downstream) -> Decision:
        self.paths.append(head.path)
        if head.path_only == "/admin" or head.path_only.startswith("/admin/"):
            return LocalReply(403, b"RBAC: access denied", flags="RBAC")
        return self.base(head, ds)


def _proxy(origins: tuple[Origin, H2Origin], codec: str = "nghttp2") -> tuple[Proxy, Seen]:
    o, h = origins
    seen = Seen({"default": o.port, "h2": h.port})
    return Proxy(seen, protocols={h.port: "h2"}, settings=HttpSettings(h2_codec=codec)), seen


@pytest.fixture(scope="module")
def proxy(origins: tuple[Origin, H2Origin]) -> Iterator[tuple[Proxy, Seen]]:
    p, seen = _proxy(origins)
    yield p, seen
    assert p.live_exchanges() == 0
    p.close()


class _Conn:
    """One HTTP/1.1 client connection: send bytes, read whole responses (Content-Length framed)."""

    def __init__(self, p: Proxy) -> None:
        self.s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        self.buf = b""

    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.s.close()

    def _fill(self) -> bool:
        chunk = self.s.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def responses(self, n: int) -> list[tuple[bytes, bytes]]:
        """The (head, body) of the next `n` responses, or of all before the connection closes."""
        out: list[tuple[bytes, bytes]] = []
        while len(out) < n:
            while b"\r\n\r\n" not in self.buf:
                if not self._fill():
                    return out
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            size = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                         if line.lower().startswith(b"content-length:")), 0)
            self.buf = rest
            while len(self.buf) < size and self._fill():
                pass
            out.append((head, self.buf[:size]))
            self.buf = self.buf[size:]
        return out


def _h1(p: Proxy, data: bytes, responses: int = 1) -> list[tuple[bytes, bytes]]:
    """Send `data` on a new connection; the first `responses` responses."""
    with _Conn(p) as c:
        c.s.sendall(data)
        return c.responses(responses)


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def _echoed(body: bytes) -> tuple[str, dict[str, str]]:
    """The path and headers the H1 origin received."""
    got = json.loads(body)
    return got["path"], dict(map(tuple, got["headers"]))


def _h2(port: int, streams: list[list[tuple[bytes, bytes]]]) -> dict[int, object]:
    """Each header list as one stream (ids 1, 3, ...) on one h2c connection, sent as given (the
    client validates nothing). Per stream: (status, body) or ("reset", error code)."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))
    c.initiate_connection()
    ids = [1 + 2 * i for i in range(len(streams))]
    for sid, headers in zip(ids, streams, strict=True):
        c.send_headers(sid, headers, end_stream=True)
    done: dict[int, object] = {}
    status: dict[int, int] = {}
    body: dict[int, bytes] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(c.data_to_send())
        while len(done) < len(ids):
            data = s.recv(65536)
            assert data, f"connection closed; done {done}"
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status[ev.stream_id] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body[ev.stream_id] = body.get(ev.stream_id, b"") + ev.data
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    done[ev.stream_id] = (status[ev.stream_id], body.get(ev.stream_id, b""))
                elif isinstance(ev, h2.events.StreamReset):
                    done[ev.stream_id] = ("reset", ev.error_code)
            s.sendall(c.data_to_send())
    return done


def _get(path: bytes, *extra: tuple[bytes, bytes], authority: bytes = b"app") -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", authority), (b":path", path), *extra]


# --- D1: a fragment in the request target ----------------------------------------------------------

@pytest.mark.parametrize("target", [b"/admin#x", b"/admin#", b"/public#/../admin", b"http://app/admin#x"])
def test_a_fragment_in_the_target_is_400_and_never_decided_or_forwarded(proxy: tuple[Proxy, Seen],
                                                                        origins: tuple[Origin, H2Origin],
                                                                        target: bytes) -> None:
    """`/admin#x` matched no rule on /admin and went upstream, where the origin dropped the fragment
    and served /admin. Envoy (and now the waypoint) answers 400."""
    p, seen = proxy
    before, decided = origins[0].requests, len(seen.paths)
    [(head, body)] = _h1(p, b"GET " + target + b" HTTP/1.1\r\nHost: app\r\n\r\n")
    assert _status(head) == 400
    assert origins[0].requests == before and len(seen.paths) == decided


@pytest.mark.parametrize("codec", ["nghttp2", "h2"])
def test_a_fragment_in_an_h2_path_is_400(origins: tuple[Origin, H2Origin], codec: str) -> None:
    p, seen = _proxy(origins, codec)
    try:
        got = _h2(p.port, [_get(b"/admin#x"), _get(b"/public")])
        assert got[1][0] == 400 and got[3][0] == 200     # type: ignore[index]
        assert seen.paths == ["/public"]
    finally:
        p.close()


# --- D7: one normalized path for routing, authorization and the upstream ---------------------------

@pytest.mark.parametrize(("target", "path"), [
    (b"/admin/%2e%2e/public", "/public"), (b"/admin/../public?q=/../x", "/public?q=/../x"),
    (b"/admin\\..\\public", "/public"), (b"/%70ublic/./x", "/public/x"), (b"/a%2fb", "/a%2Fb"),
])
def test_the_path_is_normalized_once_and_the_upstream_gets_that_path(proxy: tuple[Proxy, Seen], target: bytes,
                                                                    path: str) -> None:
    """Authorization judged `/admin/%2e%2e/public` to be /public, but the origin got it raw and a
    backend that routes on the raw path served /admin/ content. Now every stage sees one path."""
    p, seen = proxy
    [(head, body)] = _h1(p, b"GET " + target + b" HTTP/1.1\r\nHost: app\r\n\r\n")
    assert _status(head) == 200
    assert seen.paths[-1] == path and _echoed(body)[0] == path
    assert p.find(lambda r: r.path == path)


def test_a_dot_segment_cannot_reach_a_denied_path(proxy: tuple[Proxy, Seen], origins: tuple[Origin, H2Origin]) -> None:
    p, seen = proxy
    before = origins[0].requests
    [(head, body)] = _h1(p, b"GET /public/%2E%2E/admin/x HTTP/1.1\r\nHost: app\r\n\r\n")
    assert _status(head) == 403 and seen.paths[-1] == "/admin/x" and origins[0].requests == before


@pytest.mark.parametrize("codec", ["nghttp2", "h2"])
def test_h2_paths_are_normalized_for_every_stage_too(origins: tuple[Origin, H2Origin], codec: str) -> None:
    p, seen = _proxy(origins, codec)
    try:
        got = _h2(p.port, [_get(b"/admin/%2e%2e/public"), _get(b"/x/../admin")])
        status, body = got[1]   # type: ignore[misc]
        assert status == 200 and _echoed(body)[0] == "/public"
        assert got[3][0] == 403     # type: ignore[index]
        assert seen.paths == ["/public", "/admin"]
    finally:
        p.close()


# --- D6: upgrades ----------------------------------------------------------------------------------

def test_an_h2c_upgrade_is_stripped_and_the_connection_stays_http1(proxy: tuple[Proxy, Seen]) -> None:
    """Passed on, `Upgrade: h2c` let an h2c-capable backend answer 101 and turn the client's
    connection into HTTP/2 straight to it: every later request skipped routing and authorization.
    Envoy drops the h2c headers and serves the request as HTTP/1.1; so does the waypoint, and the
    requests after it (pipelined in the same write, or sent later) are each decided."""
    p, seen = proxy
    decided = len(seen.paths)
    first = b"GET /first HTTP/1.1\r\nHost: app\r\n" + H2C_UPGRADE + b"\r\n"
    got = _h1(p, first + b"GET /second HTTP/1.1\r\nHost: app\r\n\r\n" + b"GET /admin HTTP/1.1\r\nHost: app\r\n\r\n",
              responses=3)
    assert [_status(h) for h, _ in got] == [200, 200, 403]
    path, headers = _echoed(got[0][1])
    assert path == "/first" and not {"upgrade", "http2-settings", "connection"} & set(headers)
    assert _echoed(got[1][1])[0] == "/second"
    assert seen.paths[decided:] == ["/first", "/second", "/admin"]
    with _Conn(p) as c:     # the next request sent once the first is answered
        c.s.sendall(first)
        [(head, _)] = c.responses(1)
        assert _status(head) == 200 and b"connection: close" not in head.lower()
        c.s.sendall(b"GET /admin HTTP/1.1\r\nHost: app\r\n\r\n")
        assert [_status(h) for h, _ in c.responses(1)] == [403]


@pytest.mark.parametrize("value", [b"foo", b"h2c, websocket", b"TLS/1.0"])
def test_an_upgrade_other_than_websocket_is_403_and_not_forwarded(proxy: tuple[Proxy, Seen],
                                                                  origins: tuple[Origin, H2Origin],
                                                                  value: bytes) -> None:
    p, _ = proxy
    before = origins[0].requests
    [(head, _)] = _h1(p, b"GET /up HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: " + value + b"\r\n\r\n")
    assert _status(head) == 403 and origins[0].requests == before


def test_an_h2c_upgrade_with_a_body_is_refused_not_half_forwarded(proxy: tuple[Proxy, Seen],
                                                                  origins: tuple[Origin, H2Origin]) -> None:
    p, _ = proxy
    before = origins[0].requests
    [(head, _)] = _h1(p, b"POST /up HTTP/1.1\r\nHost: app\r\n" + H2C_UPGRADE + b"Content-Length: 4\r\n\r\nbody")
    assert _status(head) == 400 and origins[0].requests == before


# --- D8: header-field counts -----------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["nghttp2", "h2"])
def test_an_h2_request_with_too_many_header_fields_is_reset(origins: tuple[Origin, H2Origin], codec: str) -> None:
    """HTTP/1.1 refused more than 100 headers with 431; HTTP/2 took any number: 1600 copies of one
    HPACK-indexed header (1.6 KB on the wire) held 267 KiB per stream while the upstream was slow.
    Now the stream is reset (Envoy: RST_STREAM, http2.too_many_headers) and nothing is forwarded."""
    p, seen = _proxy(origins, codec)
    before = origins[0].requests
    try:
        many = [(b"x-h%d" % i, b"v") for i in range(150)]
        same = [(b"x-same", b"v")] * 1600
        got = _h2(p.port, [_get(b"/many", *many), _get(b"/same", *same), _get(b"/few", *many[:90])])
        assert got[1] == ("reset", h2.errors.ErrorCodes.INTERNAL_ERROR)
        assert got[3] == ("reset", h2.errors.ErrorCodes.INTERNAL_ERROR)
        assert got[5][0] == 200     # type: ignore[index]
        assert seen.paths == ["/few"] and origins[0].requests == before + 1
    finally:
        p.close()


@pytest.mark.parametrize("codec", ["nghttp2", "h2"])
def test_an_upstream_response_with_too_many_header_fields_is_502_upe(origins: tuple[Origin, H2Origin],
                                                                    codec: str) -> None:
    """5000 response headers were relayed as they came; Envoy's max_headers_count holds for
    upstream responses too. HTTP/1.1 and h2c origins alike: 502 UPE, and 90 headers still pass."""
    p, _ = _proxy(origins, codec)
    try:
        for to in (b"default", b"h2"):
            for n, want in ((150, 502), (90, 200)):
                [(head, body)] = _h1(p, b"GET /headers=%d HTTP/1.1\r\nHost: app\r\nx-to: %s\r\n\r\n" % (n, to))
                assert _status(head) == want, (to, n, head)
                if want == 502:
                    assert body.endswith(b"reset reason: protocol error")
                    assert p.find(lambda r, n=n: r.path == f"/headers={n}" and r.response_flags == "UPE")
    finally:
        p.close()


# --- D13: the authority ----------------------------------------------------------------------------

@pytest.mark.parametrize("host", [b"a b", b"app/x", b"app/../x", b"user@app", b"app#x", b"[", b"app:99999999999",
                                  b"app:65536", b"app:8a", b"[::1"])
def test_an_invalid_host_is_400_and_not_forwarded(proxy: tuple[Proxy, Seen], origins: tuple[Origin, H2Origin],
                                                  host: bytes) -> None:
    """RFC 9112 §3.2: a Host with an invalid value gets 400. Each of these became the upstream's Host."""
    p, _ = proxy
    before = origins[0].requests
    [(head, _)] = _h1(p, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert _status(head) == 400 and origins[0].requests == before


@pytest.mark.parametrize("host", [b"app", b"app:8080", b"10.0.0.1:80", b"[::1]:8080", b"[fe80::1]", b"app."])
def test_a_valid_host_is_forwarded_as_sent(proxy: tuple[Proxy, Seen], host: bytes) -> None:
    p, _ = proxy
    [(head, body)] = _h1(p, b"GET /h HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert _status(head) == 200 and _echoed(body)[1]["host"] == host.decode()


def test_absolute_form_keeps_ipv6_brackets_and_refuses_userinfo(proxy: tuple[Proxy, Seen]) -> None:
    p, _ = proxy
    [(head, body)] = _h1(p, b"GET http://[::1]:8080/h?q=1 HTTP/1.1\r\nHost: app\r\n\r\n")
    assert _status(head) == 200 and _echoed(body) [0] == "/h?q=1"
    assert _echoed(body)[1]["host"] == "[::1]:8080"
    [(head, _)] = _h1(p, b"GET http://user:pw@app/h HTTP/1.1\r\nHost: app\r\n\r\n")
    assert _status(head) == 400


@pytest.mark.parametrize("codec", ["nghttp2", "h2"])
def test_an_h2_authority_with_userinfo_resets_its_stream(origins: tuple[Origin, H2Origin], codec: str) -> None:
    """RFC 9113 §8.3.1: :authority MUST NOT carry userinfo; nghttp2 lets `@` through."""
    p, seen = _proxy(origins, codec)
    try:
        got = _h2(p.port, [_get(b"/u", authority=b"user@app"), _get(b"/ok", authority=b"[::1]:80")])
        assert got[1] == ("reset", h2.errors.ErrorCodes.PROTOCOL_ERROR) and got[3][0] == 200   # type: ignore[index]
        assert seen.paths == ["/ok"]
    finally:
        p.close()


# --- D4: grpc-timeout ------------------------------------------------------------------------------

def test_a_malformed_grpc_timeout_is_ignored_over_http1(proxy: tuple[Proxy, Seen]) -> None:
    """`grpc-timeout: ²S` passed str.isdigit() and int() raised: a traceback and 500."""
    p, _ = proxy
    [(head, body)] = _h1(p, b"POST /pkg.Svc/M HTTP/1.1\r\nHost: app\r\ncontent-type: application/grpc\r\n"
                            b"grpc-timeout: \xb2S\r\ncontent-length: 7\r\n\r\n\x00\x00\x00\x00\x02hi")
    assert _status(head) == 200 and _echoed(body)[0] == "/pkg.Svc/M"


@pytest.mark.parametrize("codec", ["nghttp2", "h2"])
def test_a_malformed_grpc_timeout_is_ignored_over_http2(origins: tuple[Origin, H2Origin], codec: str) -> None:
    """Over HTTP/2 the same exception left the stream unanswered until the stream idle timeout."""
    p, _ = _proxy(origins, codec)
    try:
        grpc = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        got = _h2(p.port, [[(b":method", b"POST"), *_get(b"/pkg.Svc/M", *grpc, (b"grpc-timeout", v))[1:]]
                           for v in (b"\xb2S", b"1\xb3S", b"+1S")])
        assert [got[i][0] for i in (1, 3, 5)] == [200, 200, 200]    # type: ignore[index]
    finally:
        p.close()


class _Broken:
    """A tracing hook that fails: stands for any bug inside `Exchange.start`."""

    def server(self, *a: object) -> None:
        raise RuntimeError("bug")


def test_a_failure_inside_start_ends_the_h2_stream_at_once(origins: tuple[Origin, H2Origin]) -> None:
    p, _ = _proxy(origins)
    try:
        p.call(lambda: setattr(p.engine, "tracing", _Broken()))
        got = _h2(p.port, [_get(b"/x")])
        assert got[1][0] == 500     # type: ignore[index]
        assert p.live_exchanges() == 0
    finally:
        p.close()
