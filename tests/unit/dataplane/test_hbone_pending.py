"""Connections still in their TLS handshake are bounded on a real HBONEServer (loopback, real TLS):
silent peers stay in the kernel (TCP_DEFER_ACCEPT), partial ClientHellos are capped per source IP
and in all (the oldest aborted), and a real mTLS client still gets its tunnel during the flood."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from ambit.dataplane.hbone.limits import REFUSED, PendingHandshakes
from tests.unit.dataplane.test_hbone import LOOPS, Mesh, echo, run

# A TLS record header and the first bytes of a ClientHello: the server waits for the rest.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01"


def flood(port: int, source: str, n: int, data: bytes = PARTIAL_HELLO) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        if data:
            s.sendall(data)
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


async def wait_for(cond, what: str, timeout: float = 10.0) -> None:
    """Wait for the server's loop to act (not a timing assertion: the bound is what is checked)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, what
        await asyncio.sleep(0.02)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def tunnel_echoes(m: Mesh) -> None:
    st = await m.open()
    st.write(b"ping")
    assert await st.readexactly(4) == b"ping"
    st.write_eof()
    await st.wait_closed()


async def handshake(m: Mesh) -> None:
    """A new mTLS connection (not the pool's): the server accepted everything queued before it."""
    ctx = m.cache.client(m.client_cert)
    ctx.check_hostname = False
    _r, w = await asyncio.open_connection("127.0.0.1", m.port, ssl=ctx, server_hostname="server")
    w.transport.abort()


# --- sans-IO ---------------------------------------------------------------------------------------

def test_pending_handshakes_evicts_the_oldest_and_caps_a_source() -> None:
    p = PendingHandshakes(limit=3, per_source=2)
    assert p.enter("a1", "A") and p.enter("a2", "A") and p.evicted is None
    assert not p.enter("a3", "A") and p.refused == 1           # its source is at per_source
    assert p.enter("b1", "B") and p.evicted is None
    assert p.enter("c1", "C") and p.evicted == "a1" and p.dropped == 1    # full: the oldest goes
    assert "a1" not in p and len(p) == 3 and p.from_source("A") == 1
    p.leave("a1")                                               # its task ends later: ignored
    assert len(p) == 3
    for t in ("a2", "b1", "c1"):
        p.leave(t)
    assert len(p) == 0 and p.from_source("A") == 0
    assert PendingHandshakes(0, 0).enter("x", "A")             # 0: unlimited
    with pytest.raises(ValueError, match="per_source"):
        PendingHandshakes(1, -1)


# --- real sockets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("loop_kind", LOOPS)
def test_partial_client_hellos_are_bounded_and_a_real_client_gets_through(ca, loop_kind: str) -> None:
    """40 connections that send a few bytes of a ClientHello and stop, from 5 source IPs, against a
    bound of 16 under way (8 per source): the server aborts all but 16 at once instead of holding
    every one for the handshake timeout, and an mTLS client still gets its tunnel."""
    async def main() -> None:
        m = Mesh(ca, echo)
        m.server.pending = PendingHandshakes(limit=16, per_source=8)
        m.server.handshake_timeout = 60.0      # so nothing here is closed by the deadline
        async with m:
            before = dict(REFUSED)
            socks = flood(m.port, "127.0.0.2", 12)             # 4 over its source's cap
            for i in range(3, 7):
                socks += flood(m.port, f"127.0.0.{i}", 7)      # 28 more: 40 > 16 under way
            await tunnel_echoes(m)                             # accepted after the flood (FIFO)
            await wait_for(lambda: sum(map(closed_by_server, socks)) >= len(socks) - 16,
                           "the server still holds more than 16 pending handshakes")
            assert len(m.server.pending) <= 16
            assert REFUSED["pending_handshakes_per_source"] - before["pending_handshakes_per_source"] == 4
            assert REFUSED["pending_handshakes"] > before["pending_handshakes"]
            for s in socks:
                s.close()
    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_silent_connections_hold_nothing_in_the_server(ca, loop_kind: str) -> None:
    """200 connections that send nothing: the kernel keeps them (TCP_DEFER_ACCEPT) and the server
    accepts none, so they hold no descriptor, no TLS state and no slot; a client still connects.
    When the kernel hands them over at the end of the deferral they are closed, within about the
    handshake deadline of their connect, as before."""
    async def main() -> None:
        m = Mesh(ca, echo)
        m.server.handshake_timeout = 4.0        # deferred ~3 s, then SILENT_GRACE
        async with m:
            await tunnel_echoes(m)
            fds = open_fds()
            socks = flood(m.port, "127.0.0.7", 200, data=b"")
            await handshake(m)              # the listener has accepted all it was given since
            await tunnel_echoes(m)
            # the clients' own 200 descriptors, none of the server's (the old code accepted all 200)
            assert open_fds() - fds < 200 + 20
            assert len(m.server.pending) == 0
            await wait_for(lambda: all(map(closed_by_server, socks)), "silent connections were never closed", 20)
            for s in socks:
                s.close()
    run(loop_kind, main)
