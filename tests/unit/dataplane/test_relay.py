"""The callback relays over real loopback sockets and real HBONE (mTLS) tunnels, on asyncio and uvloop:
bytes intact both ways, half-close, byte counts, bounded buffering against a slow receiver, and
errors ending both sides."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct

import pytest

from ambit.dataplane.hbone import HBONEStream
from ambit.dataplane.relay import EARLY_LIMIT, WRITE_HIGH, Leg, relay, relay_tunnel
from tests.unit.dataplane.test_hbone import LOOPS, Mesh, listener, run

MiB = 1024 * 1024


async def digest_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An app that answers sha256 + length of everything it got, after the client's FIN."""
    h, n = hashlib.sha256(), 0
    while chunk := await reader.read(65536):
        h.update(chunk)
        n += len(chunk)
    writer.write(h.digest() + n.to_bytes(8, "big"))
    await writer.drain()
    writer.close()


async def start_app(handler=digest_app) -> tuple[asyncio.Server, int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def connect_leg(port: int) -> Leg:
    loop = asyncio.get_running_loop()
    _, leg = await loop.create_connection(Leg, "127.0.0.1", port)
    return leg


async def accept_legs(handle) -> tuple[asyncio.Server, int, list[asyncio.Task]]:
    """A listener whose accepted connections are `Leg`s handed to `handle(leg)` in a task."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task] = []
    srv = await loop.create_server(lambda: Leg(on_made=lambda leg: tasks.append(asyncio.ensure_future(handle(leg)))),
                                   sock=listener())
    return srv, srv.sockets[0].getsockname()[1], tasks


async def send_and_digest(port: int, payload: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(payload)
    await w.drain()
    w.write_eof()
    reply = await asyncio.wait_for(r.read(), 20)
    w.close()
    return reply


def expect(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest() + len(payload).to_bytes(8, "big")


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_tcp_relay_carries_both_ways_through_a_half_close_and_counts_bytes(loop_kind: str) -> None:
    payload = os.urandom(6 * MiB + 12345)

    async def main() -> None:
        app, app_port = await start_app()
        counts: list[tuple[int, int]] = []

        async def handle(client: Leg) -> None:
            # The client's bytes arrive while we connect: the leg keeps them until the relay starts.
            upstream = await connect_leg(app_port)
            counts.append(await relay(client, upstream))

        srv, port, tasks = await accept_legs(handle)
        try:
            assert await send_and_digest(port, payload) == expect(payload)
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert counts == [(len(payload), 40)]
        finally:
            srv.close()
            app.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_slow_receiver_stops_the_sender_instead_of_buffering_everything(loop_kind: str) -> None:
    """While the upstream app reads nothing, the relay holds at most about its high-water mark
    (plus one read) in memory: the client's sends stall in the kernel, not in ztunnel."""

    async def main() -> None:
        release = asyncio.Event()
        upstreams: list[Leg] = []

        async def slow_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await release.wait()
            await digest_app(reader, writer)

        app, app_port = await start_app(slow_app)

        async def handle(client: Leg) -> None:
            upstream = await connect_leg(app_port)
            upstreams.append(upstream)
            await relay(client, upstream)

        srv, port, tasks = await accept_legs(handle)
        payload = os.urandom(48 * MiB)
        try:
            sender = asyncio.ensure_future(send_and_digest(port, payload))
            # until the relay's upstream leg is up and the kernel buffers have filled (a loaded
            # machine can take longer than a fixed second to get there)
            for _ in range(100):
                await asyncio.sleep(0.1)
                if upstreams and upstreams[0].transport is not None and \
                        upstreams[0].transport.get_write_buffer_size() > 0:
                    break
            await asyncio.sleep(0.5)
            assert not sender.done(), "48 MiB cannot fit in kernel buffers: the sender must be held back"
            assert upstreams and upstreams[0].transport is not None
            assert upstreams[0].transport.get_write_buffer_size() <= WRITE_HIGH + EARLY_LIMIT
            release.set()
            assert await asyncio.wait_for(sender, 30) == expect(payload)
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            srv.close()
            app.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_app_to_app_through_an_hbone_tunnel_both_ends_relayed(ca, loop_kind: str) -> None:
    """client -> Leg -> tunnel (mTLS) -> Leg -> app, the app replying after the client's FIN: what
    outbound + inbound-HBONE do for every meshed connection."""
    payload = os.urandom(5 * MiB + 7)

    async def main() -> None:
        app, app_port = await start_app()
        server_counts: list[tuple[int, int]] = []
        client_counts: list[tuple[int, int]] = []

        async def deliver(st: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
            leg = await connect_leg(app_port)
            st.respond(200)
            server_counts.append(await relay_tunnel(leg, st))

        async with Mesh(ca, deliver) as m:
            async def outbound(client: Leg) -> None:
                tunnel = await m.open()
                client_counts.append(await relay_tunnel(client, tunnel))

            srv, port, tasks = await accept_legs(outbound)
            try:
                assert await send_and_digest(port, payload) == expect(payload)
                await asyncio.wait_for(asyncio.gather(*tasks), 10)
                for _ in range(100):
                    if server_counts:
                        break
                    await asyncio.sleep(0.05)
                assert client_counts == [(len(payload), 40)]
                assert server_counts == [(40, len(payload))]   # (from app, to app)
            finally:
                srv.close()
                app.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_an_app_reset_resets_the_tunnel_and_the_client_sees_the_connection_end(ca, loop_kind: str) -> None:
    async def rst_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def main() -> None:
        app, app_port = await start_app(rst_app)

        async def deliver(st: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
            leg = await connect_leg(app_port)
            st.respond(200)
            await relay_tunnel(leg, st)

        async with Mesh(ca, deliver) as m:
            async def outbound(client: Leg) -> None:
                await relay_tunnel(client, await m.open())

            srv, port, tasks = await accept_legs(outbound)
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"hello")
                await w.drain()
                # No FIN from us: only the reset travelling back can end this read.
                with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                    data = await asyncio.wait_for(r.read(), 10)
                    if data == b"":
                        raise asyncio.IncompleteReadError(b"", None)
                w.close()
                await asyncio.wait_for(asyncio.gather(*tasks), 10)
            finally:
                srv.close()
                app.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_cancelling_the_owner_closes_both_sides(loop_kind: str) -> None:
    """Pod drain cancels connection handlers: the client and the upstream must both see the end."""

    async def main() -> None:
        upstream_closed = asyncio.Event()

        async def idle_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            upstream_closed.set()
            writer.close()

        app, app_port = await start_app(idle_app)

        async def handle(client: Leg) -> None:
            await relay(client, await connect_leg(app_port))

        srv, port, tasks = await accept_legs(handle)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"x")
            await w.drain()
            while not tasks:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            tasks[0].cancel()
            assert await asyncio.wait_for(r.read(), 5) == b""
            await asyncio.wait_for(upstream_closed.wait(), 5)
            w.close()
        finally:
            srv.close()
            app.close()

    run(loop_kind, main)
