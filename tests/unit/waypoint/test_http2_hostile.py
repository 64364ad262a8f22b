"""Hostile HTTP/2 clients at the waypoint: the engine on loopback, attacked with hand-built frames.

Each case failed on the tree before its fix (docs/security.md, "Hostile requests at the waypoint"):
- a client with a 2 GiB window that never reads made the waypoint buffer whole responses in the
  transport (5 streams of 20 MB: 97 MB);
- a flood of PINGs it never reads grew the transport buffer without bound (the `h2` codec; nghttp2
  has its own flood check);
- streams it resets, or makes us reset (a body longer than its content-length), were not bounded
  by nghttp2 1.52 (only RST_STREAMs count there) nor at all by the `h2` codec, and each cost a
  stream setup and often an upstream connection;
- a PING now and then kept a connection without streams open past the idle timeout.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import hpack
import pytest

from tests.unit.waypoint.harness import Origin, Proxy, RawOrigin, by_header
from waypoint.http.http2 import connection as h2conn
from waypoint.http.settings import HttpSettings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY, ENHANCE_YOUR_CALM = 7, 0xB
CODECS = ["nghttp2", "h2"]


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


def start(origin: Origin, codec: str, **kw: object) -> Proxy:
    return Proxy(by_header({"default": origin.port}), settings=HttpSettings(h2_codec=codec, **kw))  # type: ignore[arg-type]


def dial(p: Proxy, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", p.port))
    return s


def buffered(p: Proxy) -> int:
    """Bytes the engine's downstream transports hold unsent."""
    return p.call(lambda: sum(c.transport.get_write_buffer_size() for c in list(p.engine.conns)  # type: ignore[union-attr]
                              if c.transport is not None and not c.lost))  # type: ignore[return-value]


def read_until_closed(s: socket.socket, limit: float = 10.0) -> tuple[bool, bytes]:
    """(closed by the waypoint, what it sent) after up to `limit` seconds."""
    s.settimeout(limit)
    got = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return True, got
            got += d
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


def goaway_codes(data: bytes) -> list[int]:
    out, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        if data[i + 3] == GOAWAY:
            out.append(int.from_bytes(data[i + 13:i + 17], "big"))
        i += 9 + n
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_a_client_that_never_reads_cannot_make_the_waypoint_buffer_whole_responses(origin: Origin,
                                                                                   codec: str) -> None:
    p = start(origin, codec)
    try:
        s = dial(p, rcvbuf=4096)
        huge = 2**31 - 1
        enc = hpack.Encoder()
        out = PREFACE + frame(4, 0, 0, struct.pack(">HI", 4, huge)) + frame(8, 0, 0, struct.pack(">I", huge - 65535))
        for i in range(4):
            out += frame(1, 5, 1 + 2 * i, enc.encode([(":method", "GET"), (":scheme", "http"),
                                                      (":authority", "a"), (":path", "/big=8000000")]))
        s.sendall(out)
        most = 0
        deadline = time.time() + 4        # the old code buffered the 32 MB within ~1 s
        while time.time() < deadline and most <= 8_000_000:
            most = max(most, buffered(p))
            time.sleep(0.05)
        # each stream holds ~buffer_bytes (256 KiB) and its source is paused; not 4 x 8 MB
        assert most < 4_000_000, f"{most} bytes buffered for a client that reads nothing"
        s.close()
    finally:
        p.close()


def test_a_ping_flood_that_is_never_read_is_cut(origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `h2` codec answers every PING; nghttp2 ends such a session itself (its 1,000 queued ACKs)."""
    monkeypatch.setattr(h2conn, "MAX_UNREAD_BYTES", 64 * 1024)      # (1 MiB would take longer to reach)
    p = start(origin, "h2")
    try:
        assert ping_flood(p), "a PING flood never read was answered into an unbounded buffer"
    finally:
        p.close()


def ping_flood(p: Proxy) -> bool:
    """PINGs on a connection that reads nothing: was it cut?"""
    s = dial(p, rcvbuf=4096)
    try:
        s.sendall(PREFACE + frame(4, 0, 0, b""))
        pings = frame(6, 0, 0, b"12345678") * 1000
        for _ in range(1000):       # up to 1M PINGs: 17 MB of ACKs, far past the kernel's buffers
            try:
                s.sendall(pings)
            except OSError:
                return True
        return read_until_closed(s, 10)[0]
    finally:
        s.close()


def _rapid(enc: hpack.Encoder, sid: int) -> bytes:
    head = enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")])
    return frame(1, 4, sid, head) + frame(3, 0, sid, struct.pack(">I", 8))     # HEADERS, RST_STREAM(CANCEL)


def _bad_length(enc: hpack.Encoder, sid: int) -> bytes:
    head = enc.encode([(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/"),
                       ("content-length", "1")])
    return frame(1, 4, sid, head) + frame(0, 1, sid, b"xx")        # a body over its content-length


def _bad_head(enc: hpack.Encoder, sid: int) -> bytes:
    head = enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("X-Up", "1")])
    return frame(1, 5, sid, head)       # an uppercase field name: malformed, reset before it is a request


@pytest.mark.parametrize("codec,attack", [("h2", _rapid), ("nghttp2", _bad_length), ("h2", _bad_length),
                                          ("nghttp2", _bad_head)],
                         ids=["rapid-reset-h2", "made-you-reset-nghttp2", "made-you-reset-h2", "malformed-head-nghttp2"])
def test_streams_the_client_resets_or_makes_us_reset_are_bounded(origin: Origin, codec: str, attack: object) -> None:
    p = start(origin, codec)
    try:
        closed, got = reset_attack(p, attack)
        assert closed and ENHANCE_YOUR_CALM in goaway_codes(got), (closed, goaway_codes(got))
        assert p.live_exchanges() == 0
    finally:
        p.close()


def reset_attack(p: Proxy, attack: object) -> tuple[bool, bytes]:
    """Send 2,000 streams built by `attack` on one connection: (closed by the waypoint, what it sent)."""
    s = dial(p)
    enc = hpack.Encoder()
    s.sendall(PREFACE + frame(4, 0, 0, b""))
    try:
        for i in range(2000):
            s.sendall(attack(enc, 1 + 2 * i))  # type: ignore[operator]
    except OSError:
        pass
    try:
        return read_until_closed(s)
    finally:
        s.close()


@pytest.mark.parametrize("codec", CODECS)
def test_pings_do_not_keep_a_connection_without_streams_past_the_idle_timeout(origin: Origin, codec: str) -> None:
    p = start(origin, codec, idle_timeout=0.5)
    try:
        s = dial(p)
        s.sendall(PREFACE + frame(4, 0, 0, b""))
        s.settimeout(0.2)
        got = b""
        closed = False
        deadline = time.time() + 6
        while time.time() < deadline and not closed:
            try:
                s.sendall(frame(6, 0, 0, b"keepaliv"))
                d = s.recv(65536)
                closed = not d
                got += d
            except TimeoutError:
                pass
            except OSError:
                closed = True
        assert 0 in goaway_codes(got), "a connection without streams outlived its idle timeout"
        s.close()
    finally:
        p.close()


class _StuckH2Origin:
    """An h2c origin that opens a 2 GiB window for every stream and then reads nothing."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            huge = 2**31 - 1
            c.sendall(frame(4, 0, 0, struct.pack(">HI", 4, huge)) + frame(8, 0, 0, struct.pack(">I", huge - 65535))
                      + frame(4, 1, 0, b""))
            self.conns.append(c)

    def close(self) -> None:
        self.srv.close()
        for c in self.conns:
            c.close()


def test_an_upstream_that_never_reads_cannot_make_the_waypoint_buffer_a_whole_upload() -> None:
    stuck = _StuckH2Origin()
    p = Proxy(by_header({"default": stuck.port}), protocols={stuck.port: "h2"})
    try:
        s = dial(p)
        size = 64_000_000
        s.sendall(b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % size)
        s.setblocking(False)
        chunk = b"u" * 65536
        sent, most = 0, 0
        deadline = time.time() + 4        # the old code took the 64 MB within ~1 s
        while time.time() < deadline and sent < size and most <= 16_000_000:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
            most = max(most, p.call(lambda: sum(c.transport.get_write_buffer_size()  # type: ignore[union-attr]
                                                for cs in p.engine.pools.h2.values()  # type: ignore[union-attr]
                                                for c in cs if c.transport is not None)))  # type: ignore[arg-type]
        assert most < 4_000_000, f"{most} bytes of an upload buffered for an upstream that reads nothing"
        assert sent < size, "the client was never paused"
        s.close()
    finally:
        p.close()
        stuck.close()


@pytest.mark.parametrize("codec", CODECS)
def test_a_body_sent_as_tiny_or_empty_data_frames_is_held_at_about_its_size(codec: str) -> None:
    """Held for a retry while the upstream has not answered: 20,000 1-byte DATA frames (and
    20,000 empty ones, which the `h2` codec reports) used to be 20,000 (40,000) list entries."""
    held = RawOrigin()
    p = Proxy(by_header({"default": held.port}), settings=HttpSettings(h2_codec=codec))
    try:
        s = dial(p)
        enc = hpack.Encoder()
        head = enc.encode([(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/hold/up")])
        s.sendall(PREFACE + frame(4, 0, 0, b"") + frame(1, 4, 1, head)
                  + (frame(0, 0, 1, b"x") + frame(0, 0, 1, b"")) * 20_000)

        def held_body() -> tuple[int, int]:
            xs = list(p.engine.exchanges)  # type: ignore[union-attr]
            return (len(xs[0].replay or ()), xs[0].replay_bytes) if xs else (0, 0)

        deadline = time.time() + 10
        while time.time() < deadline and held_body()[1] < 20_000:
            time.sleep(0.05)
        chunks, size = p.call(held_body)  # type: ignore[misc]
        assert size == 20_000
        assert chunks <= 20, f"a 20,000-byte body held as {chunks} chunks"
        s.close()
    finally:
        p.close()
        held.close()


@pytest.mark.parametrize("codec", CODECS)
def test_a_stream_over_the_concurrency_limit_is_refused_alone(codec: str) -> None:
    """Sent before the client has our SETTINGS (so it may not know the limit). The `h2` codec ended
    the connection; nghttp2 refuses the stream (and ends the connection once the limit is acked)."""
    held = RawOrigin()
    p = Proxy(by_header({"default": held.port}), settings=HttpSettings(h2_codec=codec, h2_max_concurrent_streams=4))
    try:
        s = dial(p)
        enc = hpack.Encoder()
        out = PREFACE + frame(4, 0, 0, b"")
        for i in range(5):
            out += frame(1, 5, 1 + 2 * i, enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "a"),
                                                      (":path", "/hold/x")]))
        s.sendall(out)
        held.wait_requests(4)
        held.release()
        s.settimeout(5)
        got, answered = b"", set()
        refused = False
        while len(answered) < 4:
            d = s.recv(65536)
            assert d, "the connection was closed"
            got += d
            i = 0
            while i + 9 <= len(got):
                n = int.from_bytes(got[i:i + 3], "big")
                if i + 9 + n > len(got):
                    break
                ftype, sid = got[i + 3], int.from_bytes(got[i + 5:i + 9], "big")
                if ftype == 3 and sid == 9:
                    refused = int.from_bytes(got[i + 9:i + 13], "big") == 7      # REFUSED_STREAM
                elif ftype == 1:
                    answered.add(sid)
                i += 9 + n
        assert answered == {1, 3, 5, 7} and refused and not goaway_codes(got)
        s.close()
    finally:
        p.close()
        held.close()


def queued(p: Proxy) -> int:
    """Response bytes the engine's downstream HTTP/2 connections hold queued on their streams."""
    return p.call(lambda: sum(st.out_bytes for c in list(p.engine.conns)  # type: ignore[union-attr]
                              for st in list(getattr(c, "streams", {}).values())))  # type: ignore[return-value]


@pytest.mark.parametrize("codec", CODECS)
def test_many_zero_window_streams_hold_about_the_connection_budget(origin: Origin, codec: str) -> None:
    """A client that opens many streams with a window of 0 and reads nothing: what the connection
    holds queued is bounded by its budget (plus a read per stream), not streams x `buffer_bytes`.
    Before, each stream held up to two `buffer_bytes` (~350 MiB for 1,024 streams)."""
    p = start(origin, codec)
    try:
        s = dial(p)
        enc = hpack.Encoder()
        out = PREFACE + frame(4, 0, 0, struct.pack(">HI", 4, 0))      # SETTINGS_INITIAL_WINDOW_SIZE = 0
        streams = 64
        for i in range(streams):
            out += frame(1, 5, 1 + 2 * i, enc.encode([(":method", "GET"), (":scheme", "http"),
                                                      (":authority", "a"), (":path", "/big=2000000")]))
        s.sendall(out)
        most, still = 0, 0
        while still < 20:                   # until it stops growing (a second without a new peak)
            now = queued(p)
            still = 0 if now > most else still + 1
            most = max(most, now)
            time.sleep(0.05)
        # the old code held ~24 MB here; now the 1 MiB budget and what was in flight when it was hit
        assert most < 4_000_000, f"{most} bytes queued for {streams} zero-window streams"
        s.close()
    finally:
        p.close()


@pytest.mark.parametrize("codec", CODECS)
def test_streams_paused_by_the_connection_budget_finish_once_the_client_reads(origin: Origin, codec: str) -> None:
    """The budget pauses streams, it must never strand them: a client that opens its windows late
    gets every response whole."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    p = start(origin, codec)
    try:
        s = dial(p)
        s.settimeout(20)
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.local_settings = h2.settings.Settings(client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        c.initiate_connection()
        size, sids = 700_000, [1 + 2 * i for i in range(16)]
        for sid in sids:
            c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "a"),
                                 (":path", f"/big={size}")], end_stream=True)
        s.sendall(c.data_to_send())
        time.sleep(1)                       # the responses pile up against the closed windows
        c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        c.increment_flow_control_window(2**30)
        s.sendall(c.data_to_send())
        got = dict.fromkeys(sids, 0)
        ended: set[int] = set()
        while len(ended) < len(sids):
            data = s.recv(1 << 20)
            assert data, f"connection closed with {len(ended)} of {len(sids)} responses ended"
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    got[ev.stream_id] += len(ev.data)
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended.add(ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    raise AssertionError(f"stream {ev.stream_id} reset")
            s.sendall(c.data_to_send())
        assert got == dict.fromkeys(sids, size)
        s.close()
    finally:
        p.close()
