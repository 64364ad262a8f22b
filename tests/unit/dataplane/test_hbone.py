"""HBONE over real TLS on 127.0.0.1 with certificates from the mesh CA, on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from ambit.dataplane import tls
from ambit.dataplane.hbone import (
    HBONEClientPool,
    HBONEConnectError,
    HBONEServer,
    HBONEStream,
    StreamResetError,
)
from tests.unit.conftest import issue, sid

CLIENT = sid("demo", "client")
SERVER = sid("demo", "server")
MiB = 1024 * 1024

LOOPS = ["asyncio", "uvloop"]


def run(loop_kind: str, coro_fn: Callable[[], Awaitable[None]]) -> None:
    if loop_kind == "uvloop":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(coro_fn())
    else:
        asyncio.run(coro_fn())


def listener() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    s.setblocking(False)
    return s


async def echo(stream: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
    stream.respond(200)
    while True:
        data = await stream.read_chunk()
        if not data:
            break
        stream.write(bytes(data))
        await stream.drain()
    stream.write_eof()


async def digest(stream: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
    """Reply with sha256(everything received) once the client half-closes."""
    stream.respond(200)
    h = hashlib.sha256()
    n = 0
    while chunk := await stream.read_chunk():
        h.update(chunk)
        n += len(chunk)
    stream.write(h.digest() + n.to_bytes(8, "big"))
    stream.write_eof()


class Mesh:
    """A CA-issued server identity on a listener, and a client pool with its own identity."""

    def __init__(self, ca, on_connect, *, client_ca=None, server_identity: str = SERVER, plain: bool = False,
                 **pool_kw) -> None:
        self.ca = ca
        self.cache = tls.ContextCache()
        self.server_cert = issue(ca, server_identity)
        self.client_cert = issue(client_ca or ca, CLIENT)
        self.sock = listener()
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[str, str, dict[str, str]]] = []

        async def record(st, peer, authority, headers):
            self.seen.append((peer, authority, headers))
            await on_connect(st, peer, authority, headers)

        def record_plain(st, peer, authority, headers):      # a handler that is a plain function
            self.seen.append((peer, authority, headers))
            on_connect(st, peer, authority, headers)

        def server_ctx() -> ssl.SSLContext:
            return self.cache.server(self.server_cert)

        async def client_ctx(identity: str) -> ssl.SSLContext:
            assert identity == CLIENT
            return self.cache.client(self.client_cert)

        self.server = HBONEServer(self.sock, server_ctx, record_plain if plain else record)
        self.pool = HBONEClientPool(client_ctx, port=self.port, **pool_kw)

    async def __aenter__(self) -> Mesh:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.close()
        await self.server.close(grace=1)
        self.sock.close()

    async def open(self, authority: str = "10.0.0.2:8080", dst: str = SERVER, timeout: float = 10, **kw
                   ) -> HBONEStream:
        return await self.pool.connect(CLIENT, dst, "127.0.0.1", authority, timeout=timeout, **kw)


async def roundtrip_digest(m: Mesh, payload: bytes) -> None:
    st = await m.open()
    view = memoryview(payload)
    for i in range(0, len(payload), 256 * 1024):
        st.write(view[i:i + 256 * 1024].tobytes())
        await st.drain()
    st.write_eof()
    reply = await st.readexactly(40)
    assert await st.read() == b""
    assert reply[:32] == hashlib.sha256(payload).digest() and int.from_bytes(reply[32:], "big") == len(payload)
    await st.wait_closed()


# --- tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("loop_kind", LOOPS)
def test_echo_through_a_connect_stream(ca, loop_kind: str) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            st = await m.open("10.0.0.2:8080", forwarded_for="10.0.0.1", traceparent=tp)
            assert st.peer_identity == SERVER
            st.write(b"hello over hbone")
            await st.drain()
            assert await st.readexactly(16) == b"hello over hbone"
            st.write_eof()
            assert await st.read() == b""
            await asyncio.wait_for(st.wait_closed(), 5)
            [(peer, authority, headers)] = m.seen
            assert peer == CLIENT and authority == "10.0.0.2:8080"
            assert headers["forwarded"] == "for=10.0.0.1" and headers["traceparent"] == tp

    run(loop_kind, main)


def test_neither_side_of_a_tunnel_keeps_its_request_headers(ca) -> None:
    """The handler gets the CONNECT's headers; neither stream, each held for the tunnel's life,
    keeps them (docs/performance.md §76): no dict is left behind either side's stream."""
    streams: list[HBONEStream] = []

    async def keep(st: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
        streams.append(st)
        await echo(st, peer, authority, headers)

    async def main() -> None:
        async with Mesh(ca, keep) as m:
            st = await m.open("10.0.0.2:8080", forwarded_for="10.0.0.1")
            st.write(b"x")
            assert await st.readexactly(1) == b"x"
            [(_, _, headers)] = m.seen
            assert headers["forwarded"] == "for=10.0.0.1"
            for side in (st, streams[0]):
                assert [r for r in gc.get_referents(side) if isinstance(r, dict)] == [], side
            st.write_eof()
            await asyncio.wait_for(st.wait_closed(), 5)

    run("uvloop", main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_tls13_aes_gcm_h2_is_negotiated_both_sides(ca, loop_kind: str) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            st = await m.open()
            client_ssl = st.get_extra_info("ssl_object")
            [server_proto] = m.server.connections
            server_ssl = server_proto.transport.get_extra_info("ssl_object")
            for obj in (client_ssl, server_ssl):
                assert obj.version() == "TLSv1.3"
                assert obj.cipher()[0] in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384")
                assert obj.selected_alpn_protocol() == "h2"
            assert tls.peer_identity(server_ssl).uri == CLIENT
            st.close()

    run(loop_kind, main)


def test_contexts_offer_only_tls13_aes_gcm(ca) -> None:
    cert = issue(ca, CLIENT)
    for ctx in (tls.client_context(cert), tls.server_context(cert)):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        suites = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
        assert suites == {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"}
        assert ctx.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_fifty_concurrent_streams_share_one_connection(ca, loop_kind: str) -> None:
    async def main() -> None:
        async with Mesh(ca, digest) as m:
            payloads = [os.urandom(50_000 + i * 20_000) for i in range(50)]   # ~30 MB in total
            await asyncio.gather(*(roundtrip_digest(m, p) for p in payloads))
            assert list(m.pool.connections().values()) == [1]
            assert len(m.seen) == 50

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_large_transfer_arrives_intact_both_ways(ca, loop_kind: str) -> None:
    async def sender(stream: HBONEStream, peer, authority, headers) -> None:
        stream.respond(200)
        data = DOWN
        for i in range(0, len(data), MiB):
            stream.write(data[i:i + MiB])
            await stream.drain()
        stream.write_eof()
        await stream.read()

    DOWN = os.urandom(16 * MiB)

    async def main() -> None:
        async with Mesh(ca, digest) as m:
            await roundtrip_digest(m, os.urandom(64 * MiB))
        async with Mesh(ca, sender) as m:
            st = await m.open()
            got = bytearray()
            while chunk := await st.read_chunk():
                got += chunk
            st.write_eof()      # first: a failed assert must not leave the sender waiting
            assert hashlib.sha256(got).digest() == hashlib.sha256(DOWN).digest()

    run(loop_kind, main)


def test_wrong_peer_identity_is_rejected(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            with pytest.raises(tls.PeerIdentityError, match="expected spiffe://cluster.local/ns/demo/sa/other"):
                await m.open(dst=sid("demo", "other"))
            assert m.pool.connections() == {}
            assert m.seen == []

    asyncio.run(main())


def test_client_certificate_from_an_untrusted_ca_is_rejected(ca, other_ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo, client_ca=other_ca) as m:
            with pytest.raises((ssl.SSLError, HBONEConnectError, ConnectionError)):
                await m.open()
            await asyncio.sleep(0.1)
            assert m.server.connections == set()
            assert m.seen == []

    asyncio.run(main())


def test_server_certificate_from_an_untrusted_ca_is_rejected(ca, other_ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            m.server_cert = issue(other_ca, SERVER)
            with pytest.raises(ssl.SSLCertVerificationError):
                await m.open()

    asyncio.run(main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_reset_of_one_stream_leaves_the_others_working(ca, loop_kind: str) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            a, b, c = [await m.open() for _ in range(3)]
            a.write(b"x" * 100_000)
            a.reset()
            with pytest.raises(StreamResetError):
                await a.read()
            with pytest.raises(StreamResetError):
                a.write(b"more")
            for st in (b, c):
                st.write(b"still here")
                assert await st.readexactly(10) == b"still here"
            # The server side of `a` saw the reset; a new stream still works on the same connection.
            d = await m.open()
            d.write(b"new")
            assert await d.readexactly(3) == b"new"
            assert list(m.pool.connections().values()) == [1]
            for st in (b, c, d):
                st.close()

    run(loop_kind, main)


def test_refusal_and_handler_errors_stay_on_their_stream(ca) -> None:
    async def picky(stream: HBONEStream, peer, authority, headers) -> None:
        if authority.endswith(":403"):
            stream.respond(403, "denied by policy ns/deny-all")
        elif authority.endswith(":500"):
            raise RuntimeError("boom")
        else:
            await echo(stream, peer, authority, headers)

    async def main() -> None:
        async with Mesh(ca, picky) as m:
            ok = await m.open("10.0.0.2:80")
            with pytest.raises(HBONEConnectError) as ei:
                await m.open("10.0.0.2:403")
            assert ei.value.status == 403 and ei.value.reason == "denied by policy ns/deny-all"
            with pytest.raises(HBONEConnectError) as ei:
                await m.open("10.0.0.2:500")
            assert ei.value.status == 500 and "RuntimeError" in ei.value.reason
            ok.write(b"ping")
            assert await ok.readexactly(4) == b"ping"
            assert list(m.pool.connections().values()) == [1]
            ok.close()

    asyncio.run(main())


class EchoSink:
    """Push mode: echo every piece back and end when the client ends."""

    def __init__(self, stream: HBONEStream) -> None:
        self.stream = stream

    def tunnel_data(self, data: memoryview) -> None:
        self.stream.write(bytes(data))

    def tunnel_eof(self) -> None:
        self.stream.write_eof()

    def tunnel_error(self, exc: Exception) -> None:
        pass

    def tunnel_writable(self) -> None:
        pass


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_plain_handler_hands_the_tunnel_to_a_sink_and_runs_no_task(ca, loop_kind: str) -> None:
    """`on_connect` as a plain function (the waypoint's): it answers at once and attaches a sink;
    the server keeps the tunnel open for the sink without a task per tunnel, and still answers
    for a handler that refused, forgot to answer, or raised."""
    def handler(stream: HBONEStream, peer, authority, headers) -> None:
        if authority.endswith(":403"):
            stream.respond(403, "denied by policy ns/deny-all")
        elif authority.endswith(":500"):
            raise RuntimeError("boom")
        elif authority.endswith(":204"):
            return                                            # forgot to answer
        else:
            stream.respond(200)
            stream.attach(EchoSink(stream))

    async def main() -> None:
        async with Mesh(ca, handler, plain=True) as m:
            tunnels = [await m.open(f"10.0.0.2:{80 + i}") for i in range(3)]
            assert m.server._tasks == set()                   # no task holds an open tunnel
            for i, st in enumerate(tunnels):
                st.write(b"ping %d" % i)
                assert await st.readexactly(6) == b"ping %d" % i
            for status, why in ((403, "denied by policy ns/deny-all"), (500, "RuntimeError"),
                                (500, "handler returned without answering")):
                port = 204 if "without" in why else status
                with pytest.raises(HBONEConnectError) as ei:
                    await m.open(f"10.0.0.2:{port}")
                assert ei.value.status == status and why in ei.value.reason
            for st in tunnels:                                # the refusals left the tunnels alone
                st.write_eof()
                assert await st.read() == b""
                await st.wait_closed()
            assert list(m.pool.connections().values()) == [1]     # one connection carried them all
            assert list(m.pool.streams().values()) == [0]         # and no tunnel is left open on it

    run(loop_kind, main)


def test_dead_connection_is_evicted_and_replaced(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            st = await m.open()
            [server_proto] = m.server.connections
            server_proto.abort()                         # the peer's connection dies
            with pytest.raises(StreamResetError):
                while await st.read():
                    pass
            assert m.pool.connections() == {}
            st2 = await m.open()
            st2.write(b"again")
            assert await st2.readexactly(5) == b"again"
            assert list(m.pool.connections().values()) == [1]
            st2.close()

    asyncio.run(main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_pooled_connection_that_died_unnoticed_costs_no_tunnel(ca, loop_kind: str) -> None:
    """The peer's process died (a ztunnel worker killed) and its RST is not read yet when the next
    tunnel picks the pooled connection: the CONNECT is lost with the connection before any answer,
    so nothing reached the destination, and the pool opens it again over a fresh connection."""
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            st = await m.open()
            st.close()
            [server_proto] = m.server.connections
            server_proto.abort()                  # no await after: the client has not seen it yet
            st2 = await m.open()
            st2.write(b"again")
            assert await st2.readexactly(5) == b"again"
            assert len(m.seen) in (2, 3)             # the lost CONNECT may have reached the server
            assert list(m.pool.connections().values()) == [1]
            st2.close()

    run(loop_kind, main)


def test_idle_pool_connection_closes_and_a_busy_one_stays_with_one_timer_each(ca) -> None:
    """The idle timer is armed once per connection (not re-created per tunnel); a connection that
    carries a tunnel outlives idle_timeout; once tunnel-less for idle_timeout it is closed."""
    async def main() -> None:
        async with Mesh(ca, echo, idle_timeout=0.3) as m:
            for _ in range(5):
                st = await m.open()
                st.write(b"x")
                assert await st.readexactly(1) == b"x"
                st.close()
                assert len(m.pool._idle_timers) == 1
            held = await m.open()
            await asyncio.sleep(0.8)                     # > 2 idle timeouts with a tunnel open
            assert list(m.pool.connections().values()) == [1]
            held.write(b"still here")
            assert await held.readexactly(10) == b"still here"
            held.close()
            for _ in range(250):                         # then idle: closed (poll, generous deadline)
                if not m.pool.connections():
                    break
                await asyncio.sleep(0.02)
            assert m.pool.connections() == {} and m.pool._idle_timers == {} and m.pool._last_used == {}

    asyncio.run(main())


def test_stream_limit_opens_a_second_connection(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo, max_streams=2) as m:
            streams = [await m.open() for _ in range(3)]
            assert list(m.pool.connections().values()) == [2]
            for st in streams:
                st.close()

    asyncio.run(main())


def test_many_concurrent_tunnels_past_the_stream_limit_all_open(ca) -> None:
    """250 tunnels opened at once with max_streams=100: the 101st and later must not hang (the bench
    once saw that), they go over further connections, and every tunnel carries its own bytes."""
    async def main() -> None:
        async with Mesh(ca, echo, max_streams=100) as m:
            streams = await asyncio.gather(*(m.open(timeout=20) for _ in range(250)))
            assert sum(m.pool.streams().values()) == 250
            assert sum(m.pool.connections().values()) >= 2
            for i, st in enumerate(streams):
                st.write(b"%d;" % i)
                st.write_eof()
            replies = await asyncio.gather(*(st.read() for st in streams))
            assert replies == [b"%d;" % i for i in range(250)]
            for st in streams:
                st.close()

    asyncio.run(main())


def test_slow_reader_pushes_back_on_the_writer(ca) -> None:
    state: dict[str, object] = {}

    async def lazy(stream: HBONEStream, peer, authority, headers) -> None:
        stream.respond(200)
        state["server_stream"] = stream
        await state["release"].wait()  # type: ignore[union-attr]
        h = hashlib.sha256()
        while chunk := await stream.read_chunk():
            h.update(chunk)
        stream.write(h.digest())
        stream.write_eof()

    async def main() -> None:
        state["release"] = asyncio.Event()
        async with Mesh(ca, lazy) as m:
            st = await m.open()
            payload = os.urandom(32 * MiB)
            written = 0

            async def writer() -> None:
                nonlocal written
                for i in range(0, len(payload), MiB):
                    st.write(payload[i:i + MiB])
                    await st.drain()
                    written = i + MiB
                st.write_eof()

            task = asyncio.ensure_future(writer())
            for _ in range(200):                         # let the writer run until it stalls
                await asyncio.sleep(0.01)
            assert not task.done()
            server_stream = state["server_stream"]
            # The receiver buffers at most one stream window; the sender stops at window + queue.
            assert server_stream._rx_bytes <= 4 * MiB
            assert written <= 4 * MiB + st.high_water + 4 * MiB   # + what sits in TLS/kernel buffers
            state["release"].set()  # type: ignore[union-attr]
            await asyncio.wait_for(task, 30)
            assert await st.readexactly(32) == hashlib.sha256(payload).digest()

    asyncio.run(main())


def test_server_close_drains_open_tunnels_and_refuses_new_ones(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            st = await m.open()
            closing = asyncio.ensure_future(m.server.close(grace=10))
            await asyncio.sleep(0.1)
            st.write(b"after goaway")                    # the in-flight tunnel keeps working
            assert await st.readexactly(12) == b"after goaway"
            st.write_eof()
            assert await st.read() == b""
            await asyncio.wait_for(closing, 10)
            assert m.pool.connections() == {}           # GOAWAY evicted it from the pool
            with pytest.raises((OSError, HBONEConnectError, ssl.SSLError)):
                await m.open()

    asyncio.run(main())


def test_connect_to_a_closed_port_fails_cleanly(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            dead = listener()
            m.pool.port = dead.getsockname()[1]
            dead.close()
            with pytest.raises(ConnectionRefusedError):
                await m.open()
            assert m.pool.connections() == {}

    asyncio.run(main())


def test_a_dial_that_times_out_says_so_not_the_tunnels_timeout(ca) -> None:
    """The TCP connect has `handshake_timeout` (10 s), the tunnel its own (15 s in ztunnel): the
    reason names what ran out. It said "timed out after 15s" after 10 s, about a connect that got
    no answer (a stale neighbour entry: ambitctl/lab/garp.py)."""
    async def never(key, port):
        await asyncio.sleep(3600)

    async def main() -> None:
        async with Mesh(ca, echo, dial=never, handshake_timeout=0.2) as m:
            with pytest.raises(HBONEConnectError) as e:
                await m.open(timeout=5)
            assert e.value.reason == f"TCP connect to 127.0.0.1:{m.port} timed out after 0.2s"

    asyncio.run(main())


def test_connect_timeout_resets_the_pending_tunnel_only(ca) -> None:
    server_side: list[HBONEStream] = []

    async def slow(stream: HBONEStream, peer, authority, headers) -> None:
        if authority.endswith(":1"):
            server_side.append(stream)
            with pytest.raises(StreamResetError):   # the client gives up and resets
                await stream.read()
            return
        await echo(stream, peer, authority, headers)

    async def main() -> None:
        async with Mesh(ca, slow) as m:
            with pytest.raises(HBONEConnectError, match="timed out after 0.3s"):
                await m.open("10.0.0.2:1", timeout=0.3)
            ok = await m.open("10.0.0.2:2")
            ok.write(b"fine")
            assert await ok.readexactly(4) == b"fine"
            for _ in range(100):
                if server_side and server_side[0].is_closed:
                    break
                await asyncio.sleep(0.01)
            assert server_side and server_side[0].is_closed
            ok.close()

    asyncio.run(main())


def test_a_rotated_client_certificate_gets_a_fresh_connection_and_the_old_one_drains(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            old_st = await m.open()
            [old_proto] = m.pool._pool[next(iter(m.pool._pool))]
            m.client_cert = issue(ca, CLIENT)            # rotation: the provider now returns a new context
            new_st = await m.open()
            assert new_st._proto is not old_proto
            # The old connection got GOAWAY but its open tunnel still works until it ends.
            old_st.write(b"still here")
            assert await old_st.readexactly(10) == b"still here"
            assert list(m.pool.connections().values()) == [1]
            old_st.write_eof()
            assert await old_st.read() == b""
            await asyncio.wait_for(asyncio.shield(old_proto.closed), 5)
            new_st.write(b"new")
            assert await new_st.readexactly(3) == b"new"
            new_st.close()

    asyncio.run(main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_client_hellos_queued_before_the_server_accepts_are_served(ca, loop_kind: str) -> None:
    """Regression: a busy server accepts connections whose ClientHello is already waiting; uvloop's
    start_tls on such a socket stalled. Blocking TLS clients in a thread connect before the event
    loop starts serving."""
    results: list[str] = []
    cache = tls.ContextCache()
    server_cert, client_cert = issue(ca, SERVER), issue(ca, CLIENT)
    sock = listener()
    port = sock.getsockname()[1]

    def clients() -> None:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                try:
                    with cache.client(client_cert).wrap_socket(raw, server_hostname="127.0.0.1") as t:
                        results.append(f"{t.version()} {tls.peer_identity(t).uri}")
                except OSError as e:
                    results.append(repr(e))

    async def main() -> None:
        async def refuse(st, *_a) -> None:
            st.respond(403)

        th = threading.Thread(target=clients)
        th.start()
        time.sleep(0.3)         # the first ClientHello is queued on the listener's backlog by now
        server = HBONEServer(sock, lambda: cache.server(server_cert), refuse)
        await server.start()
        await asyncio.get_running_loop().run_in_executor(None, th.join)
        await server.close(grace=0.5)

    try:
        run(loop_kind, main)
    finally:
        sock.close()
    assert results == [f"TLSv1.3 {SERVER}"] * 5


def test_a_server_without_its_certificate_yet_refuses_the_handshake(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            m.server_cert = None        # the provider raises, as ztunnel's does before the first cert
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await m.open(timeout=5)
            assert m.seen == [] and m.pool.connections() == {}

    asyncio.run(main())


class _WriteSizes:
    """A transport in front of the real one, recording how many bytes each call hands to TLS and
    the most the TLS transport ever held unsent (its memory BIO and backlog)."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner, self.calls, self.peak = inner, [], 0

    def write(self, data: bytes) -> None:
        self.calls.append(len(data))
        self.inner.write(data)
        self.peak = max(self.peak, self.inner.get_write_buffer_size())

    def writelines(self, parts) -> None:
        parts = list(parts)
        self.calls.append(sum(len(p) for p in parts))
        self.inner.writelines(parts)
        self.peak = max(self.peak, self.inner.get_write_buffer_size())

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_tls_batches_keep_order_and_bound_every_batch() -> None:
    from ambit.dataplane.hbone.protocol import tls_batches
    limit = 1000
    pieces = [b"a" * 10, b"b" * 999, b"c" * 1000, b"d" * 2501, memoryview(b"e" * 7), b"f" * 1001]
    batches = tls_batches(pieces, limit)
    assert b"".join(bytes(p) for b in batches for p in b) == b"".join(bytes(p) for p in pieces)
    assert all(b and sum(len(p) for p in b) <= limit for b in batches)
    assert [sum(len(p) for p in b) for b in batches] == [10, 999, 1000, 1000, 1000, 508, 1000, 1]
    assert tls_batches([b"x"], limit) == [[b"x"]]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_bulk_write_reaches_tls_in_bounded_batches_and_stops_when_it_is_full(ca, loop_kind: str) -> None:
    """TLS transports encrypt each call whole into an OpenSSL memory BIO that never shrinks, so a
    connection hands them at most TLS_BATCH bytes a call, and once the transport says it is full
    (`pause_writing`) it stops framing: it holds at most its high-water mark, one turn and one batch,
    not a whole window of every stream (docs/performance.md, round 13). The server's socket buffer is
    small and the client reads late, so the transport fills up."""
    from ambit.dataplane.hbone.protocol import TLS_BATCH, TRANSPORT_HIGH_WATER, TURN
    payload = os.urandom(12 * MiB)
    recorders: list[_WriteSizes] = []

    async def blast(stream: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
        [proto] = m.server.connections
        proto.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        recorders.append(_WriteSizes(proto.transport))
        proto.transport = recorders[0]
        stream.respond(200)
        stream.write(payload)                      # one write of three stream windows
        await stream.drain()
        stream.write_eof()
        while await stream.read_chunk():          # until the client's end
            pass

    async def main() -> None:
        nonlocal m
        async with Mesh(ca, blast) as m:
            st = await m.open()
            await asyncio.sleep(0.3)
            got = bytearray()
            while chunk := await asyncio.wait_for(st.read(), 30):
                got += chunk
            st.write_eof()
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            await st.wait_closed()

    m: Mesh
    run(loop_kind, main)
    rec = recorders[0]
    assert sum(rec.calls) > len(payload) and max(rec.calls) <= TLS_BATCH, (len(rec.calls), max(rec.calls))
    assert 0 < rec.peak <= TRANSPORT_HIGH_WATER + TURN + TLS_BATCH, rec.peak


def test_server_close_can_keep_accepting_for_a_while_and_serves_what_comes(ca) -> None:
    """A terminating waypoint stays in its peers' endpoints until they hear it is going: with
    `accept_for`, tunnels they open meanwhile (on a new connection: the old one got GOAWAY) are
    served; after the window the port is closed. Before, the port closed at once and such a tunnel
    met a reset."""
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            st = await m.open()
            closing = asyncio.ensure_future(m.server.close(grace=10, accept_for=1.5))
            await asyncio.sleep(0.2)
            late = await m.open()                       # a new connection, accepted in the window
            late.write(b"still served")
            assert await late.readexactly(12) == b"still served"
            late.write_eof()
            assert await late.read() == b""
            st.write(b"old one too")
            assert await st.readexactly(11) == b"old one too"
            st.write_eof()
            assert await st.read() == b""
            await asyncio.wait_for(closing, 10)
            with pytest.raises((OSError, HBONEConnectError, ssl.SSLError)):
                await m.open()

    asyncio.run(main())


def test_the_listener_serves_at_most_max_connections_and_resets_the_rest(ca) -> None:
    """A flood of handshaken mTLS connections (any mesh certificate) is bounded per listener: past
    `max_connections` a new one is reset and counted, those open keep working, and a slot freed
    is taken again. Before, every connection was served until the pod's OOM kill."""
    H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")

    async def main() -> None:
        async with Mesh(ca, echo) as m:
            m.server.max_connections = 3
            ctx = m.cache.client(m.client_cert)

            async def raw() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                r, w = await asyncio.open_connection("127.0.0.1", m.port, ssl=ctx, server_hostname=None)
                w.write(H2_PREFACE)
                await w.drain()
                return r, w

            held = [await raw() for _ in range(3)]
            for r, _w in held:      # each is served: the server's SETTINGS arrive
                assert await asyncio.wait_for(r.read(9), 10)
            r, w = await raw()
            try:
                got = await asyncio.wait_for(r.read(), 10)
            except (ConnectionResetError, ssl.SSLError):
                got = b""
            assert got == b""                                       # reset, never served
            w.close()
            assert m.server.over_limit == 1 and len(m.server.connections) == 3
            held.pop()[1].close()
            for _ in range(200):
                if len(m.server.connections) < 3:
                    break
                await asyncio.sleep(0.01)
            r, w = await raw()
            assert await asyncio.wait_for(r.read(9), 10)
            assert m.server.over_limit == 1
            w.close()
            for _r, w2 in held:
                w2.close()
            for _ in range(200):
                if not m.server.connections:
                    break
                await asyncio.sleep(0.01)
            st = await m.open()                         # tunnels flow as before
            st.write(b"served")
            assert await st.readexactly(6) == b"served"
            st.write_eof()
            assert await st.read() == b""

    run("asyncio", main)
