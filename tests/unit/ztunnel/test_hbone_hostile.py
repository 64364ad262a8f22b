"""Hostile HBONE peers, sans-IO: the plain `h2` library (or raw frames) as the attacker against our
server-side `HBONEConnection`, with an injected clock. The lab counterpart is
tests/lab/test_hbone_hostile.py."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from ambit.dataplane import tls
from ambit.dataplane.hbone import HBONEConnectError
from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone.connection import (
    ConnectionClosed,
    ConnectRequest,
    HBONEConnection,
    StreamReset,
)
from ambit.dataplane.hbone.limits import ConnLimiter, ResetBudget
from tests.unit.dataplane.test_hbone import CLIENT, Mesh, echo
from tests.unit.dataplane.test_hbone_sansio import Pair
from ztunnel import routing
from ztunnel.limits import ProxyLimits

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Attacker:
    """An h2 client speaking to our server endpoint in memory."""

    def __init__(self, **server_kw) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.s = HBONEConnection(client_side=False, **server_kw)
        self.s.initiate()
        self.events: list = []
        self.h2_events: list = []
        self.pump()

    def pump(self) -> None:
        for _ in range(100):
            a = self.h2.data_to_send()
            if a:
                self.events += self.s.receive_data(a)
            b = self.s.bytes_to_send()
            if b:
                try:
                    self.h2_events += self.h2.receive_data(b)
                except h2.exceptions.ProtocolError:
                    pass
            if not a and not b:
                return

    def connect(self, authority: str = "10.0.0.2:8080") -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
        return sid

    def raw(self, data: bytes) -> list:
        evs = self.s.receive_data(data)
        self.events += evs
        return evs

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        got = [e for e in self.h2_events if isinstance(e, h2.events.ConnectionTerminated)]
        return got[0] if got else None


# --- header floods ---------------------------------------------------------------------------------

def test_settings_advertise_stream_and_header_limits() -> None:
    a = Attacker()
    remote = a.h2.remote_settings
    assert remote.max_concurrent_streams == 100
    assert remote.max_header_list_size == 64 * 1024


def test_huge_headers_frame_is_refused_on_its_frame_header() -> None:
    a = Attacker()
    # Only the 9-byte header of a 1 MiB HEADERS frame: refused before a byte of it is buffered.
    evs = a.raw(f.pack_header(MiB, f.HEADERS, 0, 1))
    [closed] = [e for e in evs if isinstance(e, ConnectionClosed)]
    assert closed.fatal and closed.error_code == f.ENHANCE_YOUR_CALM
    a.pump()
    assert a.goaway() is not None and a.goaway().error_code == f.ENHANCE_YOUR_CALM
    assert a.s.dead and a.raw(bytes(1000)) == []        # nothing more is parsed


def test_endless_continuations_are_cut_off_early() -> None:
    a = Attacker()
    sent = 0
    evs = a.raw(f.pack_header(1000, f.HEADERS, 0, 1) + bytes(1000))
    for _ in range(10_000):
        evs += a.raw(f.pack_header(16 * 1024, f.CONTINUATION, 0, 1) + bytes(16 * 1024))
        sent += 1
        if a.s.dead:
            break
    assert a.s.dead and sent <= 4          # 64 KiB block limit: stopped within a few frames
    assert any(isinstance(e, ConnectionClosed) and e.error_code == f.ENHANCE_YOUR_CALM for e in evs)


def test_many_empty_continuations_are_cut_off() -> None:
    a = Attacker()
    a.raw(f.pack_header(0, f.HEADERS, 0, 1))
    sent = 0
    while not a.s.dead and sent < 100:
        a.raw(f.pack_header(0, f.CONTINUATION, 0, 1))
        sent += 1
    assert a.s.dead and sent == 17          # the 17th CONTINUATION is one too many


def test_hpack_bomb_over_the_header_list_limit_is_refused() -> None:
    a = Attacker()
    sid = a.connect()
    a.h2.send_headers(sid + 2, [(":method", "CONNECT"), (":authority", "10.0.0.2:8080"),
                                *[("x-big", "v" * 4000) for _ in range(30)]])     # ~120 kB decoded
    a.pump()
    assert a.s.dead and a.goaway() is not None


def test_normal_connect_headers_are_accepted() -> None:
    a = Attacker()
    a.connect()
    a.pump()
    assert len(a.of(ConnectRequest)) == 1 and not a.s.dead


# --- stream floods ---------------------------------------------------------------------------------

def test_streams_over_the_limit_are_refused_and_the_connection_lives() -> None:
    a = Attacker()
    a.h2.remote_settings = h2.settings.Settings(client=False)      # the attacker ignores our limit
    a.h2.remote_settings.max_concurrent_streams  # noqa: B018 (h2 reads it per stream)
    sids = []
    for _ in range(150):
        sids.append(a.connect())
        a.pump()
    reqs = a.of(ConnectRequest)
    assert len(reqs) == 100 and a.s.refused_streams == 50
    refused = [e for e in a.h2_events if isinstance(e, h2.events.StreamReset)]
    assert len(refused) == 50 and {e.error_code for e in refused} == {f.REFUSED_STREAM}
    assert not a.s.dead and a.goaway() is None
    # Closing one admitted stream makes room for exactly one more.
    a.s.respond(reqs[0].stream_id, 403)
    a.pump()
    a.connect()
    a.pump()
    assert len(a.of(ConnectRequest)) == 101


# --- rapid reset --------------------------------------------------------------------------------------

def test_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    clock = Clock()
    a = Attacker(reset_budget=ResetBudget(rate=100, burst=400, clock=clock))
    pairs = 0
    while not a.s.dead and pairs < 5000:
        sid = a.connect()
        a.h2.reset_stream(sid, f.CANCEL)
        a.pump()
        pairs += 1
    assert a.s.dead and 390 <= pairs <= 410
    assert a.goaway() is not None and a.goaway().error_code == f.ENHANCE_YOUR_CALM
    # Every request the attacker got in was announced and then reset: the edge can cancel its work.
    reset_ids = {e.stream_id for e in a.of(StreamReset)}
    assert {e.stream_id for e in a.of(ConnectRequest)} <= reset_ids


def test_resets_at_a_sane_rate_never_hit_the_budget() -> None:
    clock = Clock()
    a = Attacker(reset_budget=ResetBudget(rate=100, burst=400, clock=clock))
    for _ in range(3000):       # 50 resets/s for a minute
        sid = a.connect()
        a.h2.reset_stream(sid, f.CANCEL)
        a.pump()
        clock.t += 0.02
    assert not a.s.dead and a.s.peer_resets == 3000


def test_reset_budget_refills_at_its_rate() -> None:
    clock = Clock()
    b = ResetBudget(rate=10, burst=5, clock=clock)
    assert all(b.spend() for _ in range(5)) and not b.spend()
    clock.t += 0.35                              # 3.5 tokens back, one was overdrawn
    assert b.spend() and b.spend() and not b.spend()
    clock.t += 100
    assert b.tokens <= 5 and all(b.spend() for _ in range(5))
    with pytest.raises(ValueError):
        ResetBudget(rate=-1)


# --- head-of-line blocking ---------------------------------------------------------------------------

def test_five_stalled_streams_do_not_block_a_sixth() -> None:
    p = Pair()
    stalled = [p.open() for _ in range(5)]
    for sid in stalled:
        assert p.c.send_data(sid, bytes(4 * MiB)) == 4 * MiB   # never consumed by the reader
    p.pump()
    assert not p.c.congested
    bulk = p.open()
    total = 0
    for _ in range(50):                                         # 50 windows' worth flows on
        n = p.c.send_data(bulk, bytes(4 * MiB))
        assert n == 4 * MiB
        total += n
        p.pump()
        p.received("s", bulk)
        p.pump()
    assert total == 200 * MiB


def test_a_connection_with_most_of_its_window_stalled_is_congested() -> None:
    p = Pair()
    assert not p.c.congested and not p.s.congested
    for i in range(16):
        sid = p.open()
        p.c.send_data(sid, bytes(4 * MiB) if i < 15 else b"x")
    assert p.c.congested                    # a pool puts new streams on another connection
    p.pump()
    assert p.s.congested                    # and the receiving side sees it too


# --- bookkeeping -----------------------------------------------------------------------------------------

def test_conn_limiter_counts_per_key() -> None:
    lim = ConnLimiter(2)
    assert lim.acquire("a") and lim.acquire("a") and not lim.acquire("a")
    assert lim.acquire("b") and lim.refused == 1 and lim.count("a") == 2
    lim.release("a")
    assert lim.acquire("a") and lim.total() == 3
    for _ in range(3):
        lim.release("a")
    lim.release("b")
    assert len(lim) == 0
    unlimited = ConnLimiter(0)
    assert all(unlimited.acquire("x") for _ in range(10_000))


def test_proxy_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        ProxyLimits(hbone_max_streams=0)
    with pytest.raises(ValueError):
        ProxyLimits(tls_handshake_timeout=0)
    with pytest.raises(ValueError):
        ProxyLimits(max_inbound_per_pod=-1)


@pytest.mark.parametrize(("ip", "port", "loops"), [
    ("10.0.0.5", 15006, True), ("10.0.0.5", 15008, True), ("10.0.0.5", 15001, True),
    ("127.0.0.1", 15006, True), ("0.0.0.0", 15008, True), ("::ffff:10.0.0.5", 15006, True),
    ("::1", 15001, True),
    ("10.0.0.6", 15006, False),        # another node's pod: its own ztunnel refuses it
    ("10.0.0.5", 8080, False), ("10.0.0.5", 15020, False),
])
def test_loops_back(ip: str, port: int, loops: bool) -> None:
    assert routing.loops_back(ip, port, {"10.0.0.5"}) is loops


# --- the asyncio edge: timeouts and per-identity limits over real TLS -----------------------------------

def test_a_peer_that_never_sends_the_preface_is_closed(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            m.server.preface_timeout = 0.5
            ctx = tls.client_context(m.client_cert)
            t0 = time.monotonic()
            r, w = await asyncio.open_connection("127.0.0.1", m.port, ssl=ctx, server_hostname="127.0.0.1")
            assert w.get_extra_info("ssl_object") is not None          # TLS completed
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                assert await asyncio.wait_for(r.read(), 5) == b"" or True
            assert 0.4 <= time.monotonic() - t0 < 3
            assert m.server.preface_timeouts == 1
            w.close()
            # Control: a real client (with its preface) is served on the same server.
            st = await m.open()
            st.write(b"ping")
            assert await st.readexactly(4) == b"ping"
            st.close()
    asyncio.run(main())


def test_idle_hbone_connections_are_closed_and_busy_ones_are_not(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            m.server.idle_timeout = 0.5
            m.server.preface_timeout = 0.2         # the idle watch starts after the preface check
            busy = await m.open()
            await asyncio.sleep(1.5)                        # busy: a tunnel is open
            busy.write(b"still")
            assert await busy.readexactly(5) == b"still"
            assert m.server.idle_closed == 0
            busy.write_eof()
            assert await busy.read() == b""
            await busy.wait_closed()
            for _ in range(40):                             # idle now: GOAWAY, the pool lets it go
                if not m.pool.connections():
                    break
                await asyncio.sleep(0.1)
            assert m.pool.connections() == {} and m.server.idle_closed == 1
    asyncio.run(main())


def test_connections_per_identity_are_capped(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo, max_streams=1) as m:
            m.server.per_identity = lim = ConnLimiter(1)
            first = await m.open()
            with pytest.raises((HBONEConnectError, ConnectionError, ssl.SSLError)):
                await m.open(timeout=3)                      # needs a second connection: refused
            assert lim.refused >= 1 and lim.count(CLIENT) == 1
            first.close()
            for _ in range(50):
                if lim.count(CLIENT) == 0:
                    break
                await asyncio.sleep(0.1)
            m.pool.close_where(lambda k: True, "test")
            await asyncio.sleep(0.3)
            again = await m.open()                           # the slot was released
            again.write(b"ok")
            assert await again.readexactly(2) == b"ok"
            again.close()
    asyncio.run(main())


def test_resets_of_answered_tunnels_and_of_our_own_streams_spend_no_budget() -> None:
    clock = Clock()
    p = Pair(reset_budget=ResetBudget(rate=0, burst=10, clock=clock))
    for _ in range(50):
        sid = p.open()                  # answered with 200: an app that aborts later is no attack
        p.c.reset_stream(sid)
        p.pump()
    assert not p.s.dead and p.s.peer_resets == 50
    for _ in range(50):                 # the server refusing (non-200 + RST) the client's streams
        sid = p.c.open_stream("10.0.0.2:9")
        p.pump()
        [req] = p.take("s", ConnectRequest)
        p.s.respond(req.stream_id, 503)
        p.pump()
    assert not p.c.dead and not p.s.dead
