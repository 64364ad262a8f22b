"""HBONE liveness (ambit/dataplane/hbone/liveness.py): a connection whose peer went silent (a node
crashed, the network partitioned) is closed after an unanswered PING and its tunnels are reset,
on the client side and on the server side; a quiet but healthy connection is kept.

The peer's silence is made by pausing the reading of its end of a real TLS connection: it then
answers nothing, as a crashed node, while the kernel still holds the TCP connection up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ambit.dataplane.hbone import liveness
from ambit.dataplane.hbone.liveness import ALIVE, DEAD, PING, WAIT, Liveness, verdict
from ambit.dataplane.hbone.stream import StreamResetError
from tests.unit.dataplane.test_hbone import Mesh, echo

FAST = Liveness(interval=0.1, timeout=0.3)


@pytest.fixture
def fast() -> Iterator[None]:
    liveness.configure(FAST)
    try:
        yield
    finally:
        liveness.configure(Liveness())


def test_verdict() -> None:
    assert verdict(reads=5, seen=4, ping_sent_at=None, now=100.0, timeout=20) == ALIVE
    assert verdict(reads=5, seen=4, ping_sent_at=90.0, now=100.0, timeout=20) == ALIVE   # anything answers
    assert verdict(reads=4, seen=4, ping_sent_at=None, now=100.0, timeout=20) == PING
    assert verdict(reads=4, seen=4, ping_sent_at=90.0, now=100.0, timeout=20) == WAIT
    assert verdict(reads=4, seen=4, ping_sent_at=80.0, now=100.0, timeout=20) == DEAD


def test_disabled_with_a_zero_interval() -> None:
    assert not Liveness(0, 20).enabled and Liveness(10, 20).enabled


async def _until(pred, what: str, limit: float = 5.0) -> None:
    for _ in range(int(limit / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {limit}s: {what}")


def test_a_silent_server_is_found_and_the_clients_tunnels_are_reset(ca, fast) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            st = await m.open()
            st.write(b"ping")
            assert await st.readexactly(4) == b"ping"
            assert len(m.pool.connections()) == 1
            for server_side in m.server.connections:
                server_side.transport.pause_reading()      # the peer answers nothing from now on,
                liveness.forget(server_side)               # and does nothing (a crashed node)
            with pytest.raises(StreamResetError) as e:
                await asyncio.wait_for(st.read(), 5)
            assert "answered no PING in 0.3s" in str(e.value)
            assert m.pool.connections() == {}              # the next tunnel dials afresh
            for server_side in list(m.server.connections):
                server_side.transport.resume_reading()

    asyncio.run(main())


def test_a_silent_client_is_found_by_the_server(ca, fast) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            st = await m.open()
            st.write(b"ping")
            assert await st.readexactly(4) == b"ping"
            (client_side,) = [p for ps in m.pool._pool.values() for p in ps]
            client_side.transport.pause_reading()
            liveness.forget(client_side)        # the client side stays quiet (a crashed node's)
            await _until(lambda: not m.server.connections, "the server closes the silent connection")
            client_side.transport.resume_reading()

    asyncio.run(main())


def test_a_quiet_healthy_connection_is_kept_and_answers_the_pings(ca, fast) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            st = await m.open()
            (conn,) = [p for ps in m.pool._pool.values() for p in ps]
            reads = conn.reads
            await asyncio.sleep(1.5)        # 15 intervals, 5 timeouts of silence from the app
            assert conn.reads > reads       # the PINGs' answers
            assert not conn.lost and list(m.pool.connections().values()) == [1]
            assert len(m.server.connections) == 1
            st.write(b"still")
            assert await st.readexactly(5) == b"still"

    asyncio.run(main())
