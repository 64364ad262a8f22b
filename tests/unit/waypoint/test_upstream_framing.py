"""Upstream responses that break off or pile up heads, against the real HTTP/1.1 legs on fake
transports (`test_http1_sansio.drive`) and, for HTTP/2 origins, the engine on loopback: what the
client sees must match what the access log says, and an origin must not be able to keep the proxy
parsing heads.

- A malformed body right after the response head (in the same read) is answered 502 `UPE`, Envoy's
  answer to an upstream protocol error before any response byte went downstream, not an empty
  reply under a record that says 200; once the head went out, the response is cut instead.
- The head limit counts one head: 1xx heads (103 Early Hints) before the final head in the same
  read are not its bytes. At most `MAX_INFORMATIONAL` 1xx heads per response (502 `UPE` beyond).
- Bytes on an idle pooled connection close it (logged) and never reach the next request.
"""

from __future__ import annotations

import socket

import pytest

from tests.unit.waypoint.harness import Proxy, RawOrigin, by_header
from tests.unit.waypoint.test_http1_sansio import drive, status_lines
from tests.unit.waypoint.test_upstream_hostile import CODECS, _ScriptedH2, h1_exchange, h2_setup
from waypoint.http.headers import MAX_INFORMATIONAL
from waypoint.http.settings import HttpSettings

GET = [b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n"]
UPE_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def test_an_invalid_chunk_in_the_read_of_the_head_is_502_upe_not_an_empty_reply() -> None:
    """The head and a bad chunk size arrive together: nothing of the response has gone out, so the
    client gets 502 with Envoy's body (it got an empty reply and a closed connection, while the
    access log said 200 UPE), and its connection stays usable."""
    run = drive(GET, answer=None, then=lambda run: [CHUNKED_HEAD + b"ZZ\r\nhello\r\n0\r\n\r\n"])
    assert status_lines(run.out) == [b"502"] and run.out.endswith(UPE_BODY), run.out
    assert [(r.status, r.response_flags, r.detail) for r in run.records] == [(502, "UPE", "protocol error")]
    assert not run.closed and run.origins[0].t.closed


def test_an_invalid_chunk_after_the_head_went_out_cuts_the_response() -> None:
    """Once the head and a chunk went downstream, the response cannot be taken back: the client
    connection is closed without the last chunk, so the client sees a truncated response."""
    run = drive(GET, answer=None, then=lambda run: [CHUNKED_HEAD + b"5\r\nhello\r\n", b"ZZ\r\nxx\r\n"])
    assert status_lines(run.out) == [b"200"] and run.out.endswith(b"5\r\nhello\r\n"), run.out
    assert run.closed
    assert [(r.status, r.response_flags) for r in run.records] == [(200, "UPE")]


def _early_hints(n: int, size: int = 0) -> bytes:
    return b"".join(b"HTTP/1.1 103 Early Hints\r\nlink: </s%d.css>; rel=preload\r\nx-pad: %b\r\n\r\n"
                    % (i, b"p" * size) for i in range(n))


def test_the_head_limit_counts_one_head_not_the_1xx_heads_before_it_in_the_read() -> None:
    """Ten 1.5 KiB 103 heads and the start of the final head in one read: 15 KiB, each head far
    under the 8 KiB limit. The whole read was counted as the final head's: 503 UPE "response
    headers too large"."""
    settings = HttpSettings(max_header_bytes=8 * 1024)
    final = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n"
    run = drive(GET, answer=None, settings=settings,
                then=lambda run: [_early_hints(10, 1500) + final[:20], final[20:] + b"\r\nok"])
    assert status_lines(run.out) == [b"200"] and run.out.endswith(b"\r\n\r\nok"), run.out
    assert [(r.status, r.response_flags) for r in run.records] == [(200, "")]


def test_a_final_head_over_the_limit_after_1xx_heads_is_still_refused() -> None:
    """The recount is of the head under way: an endless one after a 103 is cut at the limit."""
    settings = HttpSettings(max_header_bytes=8 * 1024)
    run = drive(GET, answer=None, settings=settings,
                then=lambda run: [_early_hints(1) + b"HTTP/1.1 200 OK\r\n"]
                + [b"x-h%d: %s\r\n" % (i, b"v" * 20) for i in range(3000)])
    assert status_lines(run.out) == [b"502"]
    assert [(r.status, r.response_flags) for r in run.records] == [(502, "UPE")]


@pytest.mark.parametrize("split", [False, True])
def test_1xx_heads_beyond_the_bound_are_502_upe(split: bool) -> None:
    """`MAX_INFORMATIONAL` 1xx heads pass (dropped), one more is a protocol error, whether they come
    in one read or one a read: an origin cannot keep the proxy parsing 1xx heads for ever."""
    final = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    for n, status in ((MAX_INFORMATIONAL, b"200"), (MAX_INFORMATIONAL + 1, b"502")):
        heads = _early_hints(n)
        reads = [h + b"\r\n\r\n" for h in heads.split(b"\r\n\r\n")[:-1]] if split else [heads]
        run = drive(GET, answer=None, then=lambda run, r=reads: [*r, final])
        assert status_lines(run.out) == [status], (n, run.out)
        assert [r.response_flags for r in run.records] == ["" if status == b"200" else "UPE"]


def _h2_informational(n: int):  # type: ignore[no-untyped-def]
    def answer(conn: _ScriptedH2, sid: int, path: str) -> None:
        for _ in range(n):
            conn.c.send_headers(sid, [(":status", "103"), ("link", "</s.css>; rel=preload")])
        conn.respond(sid, b"ok")
    return answer


@pytest.mark.parametrize("codec", CODECS)
def test_h2_1xx_heads_beyond_the_bound_are_502_upe(codec: str) -> None:
    """The same bound on an h2c origin's informational HEADERS: its stream is reset, 502 UPE."""
    for n, status in ((MAX_INFORMATIONAL, 200), (MAX_INFORMATIONAL + 1, 502)):
        with h2_setup(codec, _h2_informational(n)) as (_, p):
            out = h1_exchange(p, b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 %d " % status), out
            rec = p.find(lambda r: r.path == "/x")[0]
            assert (rec.status, rec.response_flags) == (status, "" if status == 200 else "UPE")


def _one_bad_length() -> object:
    """/slow gets its head at once and its body only when /bad has been answered with a body shorter
    than its content-length (RFC 9113 §8.1.1: malformed, a stream error), on the same connection."""
    slow: list[int] = []

    def answer(conn: _ScriptedH2, sid: int, path: str) -> None:
        if path == "/slow":
            conn.c.send_headers(sid, [(":status", "200"), ("content-length", "2")])
            slow.append(sid)
            return
        conn.c.send_headers(sid, [(":status", "200"), ("content-length", "10")])
        conn.c.send_data(sid, b"hello", end_stream=True)
        conn.c.send_data(slow[0], b"ok", end_stream=True)
    return answer


@pytest.mark.parametrize("codec", CODECS)
def test_an_upstream_content_length_mismatch_resets_only_its_stream(codec: str) -> None:
    """A response body shorter than its content-length is a stream error (RFC 9113 §8.1.1): that
    stream is reset and its request is 502 UPE, and the connection's other streams go on. The `h2`
    codec raised it as a connection error: every stream of the connection failed with it."""
    import socket
    import threading
    with h2_setup(codec, _one_bad_length()) as (o, p):
        slow_out: list[bytes] = []
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
            t = threading.Thread(target=lambda: slow_out.append(_read_response(s)))
            t.start()
            assert _wait(lambda: o.requests)        # /slow reached the origin first
            bad = h1_exchange(p, b"GET /bad HTTP/1.1\r\nhost: a\r\n\r\n")
            t.join(10)
        rec = p.find(lambda r: r.path == "/bad")[0]
        assert rec.response_flags == "UPE", rec
        assert bad.startswith(b"HTTP/1.1 502 ") or rec.status == 200, bad   # (cut, if the head went first)
        assert slow_out and slow_out[0].startswith(b"HTTP/1.1 200 ") and slow_out[0].endswith(b"\r\n\r\nok"), slow_out
        assert p.find(lambda r: r.path == "/slow")[0].response_flags == ""
        assert len(o.requests) == 2


def _read_response(s: object) -> bytes:
    out = b""
    while not out.endswith(b"ok") and len(out) < 4096:
        chunk = s.recv(4096)  # type: ignore[attr-defined]
        if not chunk:
            break
        out += chunk
    return out


def _wait(cond: object, timeout: float = 5.0) -> bool:
    import time
    deadline = time.time() + timeout
    while not cond() and time.time() < deadline:  # type: ignore[operator]
        time.sleep(0.01)
    return bool(cond())  # type: ignore[operator]


IDLE_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.mark.parametrize("stray", [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL", b"\n"],
                         ids=["a-whole-response", "one-byte"])
def test_bytes_on_an_idle_pooled_connection_close_it_and_never_reach_the_next_request(
        stray: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """An origin sends bytes after its response completed, while its connection sits idle in the
    pool: they must never become the next request's response (maybe another client's). The
    connection leaves the pool and closes unread, the next request goes out on a new connection
    and gets its own answer, and the log says why the connection went (an operator chasing
    connection churn to a broken upstream sees it)."""
    o = RawOrigin({"/a": (IDLE_OK, stray)})
    p = Proxy(by_header({"default": o.port}))
    caplog.set_level("INFO", logger="waypoint.http")
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n")
            assert _read_response(s).endswith(b"\r\n\r\nok")
            assert _wait(lambda: p.call(lambda: sum(map(len, p.engine.pools.idle.values()))) == 1)  # type: ignore[union-attr]
            o.release()     # the stray bytes, on the idle connection
            assert _wait(lambda: "on an idle connection" in caplog.text), caplog.text
            assert p.call(lambda: sum(map(len, p.engine.pools.idle.values()))) == 0  # type: ignore[union-attr]
            s.sendall(b"GET /b HTTP/1.1\r\nhost: h\r\n\r\n")
            second = b""
            while not second.endswith(b"GET /b 0 2") and b"EVIL" not in second and len(second) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                second += chunk
        assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"GET /b 0 2"), second
        assert [(c, t) for c, _, t, _ in o.wait_requests(2)] == [(1, "/a"), (2, "/b")]
    finally:
        p.close()
        o.close()
