"""Connections still in their TLS handshake are bounded on a real HBONEServer (loopback, real TLS):
silent peers stay in the kernel (TCP_DEFER_ACCEPT), partial ClientHellos are capped per source IP
and in all (the oldest aborted), and a real mTLS client still gets its tunnel during the flood."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from ambit.accept import peer_key
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


def test_the_per_source_cap_counts_an_ipv6_64_as_one_source_as_the_controllers_gate_does() -> None:
    """An IPv6 host has a whole /64 and may connect from any address in it: counted per address,
    a flood spread over its /64 met only the process-wide bound, evicting every other peer's
    handshakes. Counted per /64 (ambit.accept.peer_key, the controller's accept gate's key), its
    third is refused here and the others' handshakes stay; an IPv4 client seen by a dual-stack
    listener (`::ffff:a.b.c.d`) is its IPv4 address."""
    p = PendingHandshakes(limit=8, per_source=2)
    assert p.enter("x1", "2001:db8:1:2::1") and p.enter("x2", "2001:db8:1:2:ffff::9")
    assert not p.enter("x3", "2001:db8:1:2:dead:beef:0:1") and p.refused == 1   # the same /64
    assert p.from_source("2001:db8:1:2::77") == 2
    assert p.enter("y1", "2001:db8:1:3::1") and p.evicted is None           # the next /64 is another host
    assert p.enter("v1", "10.0.0.7") and p.enter("v2", "::ffff:10.0.0.7")
    assert not p.enter("v3", "10.0.0.7") and p.refused == 2
    assert p.from_source("10.0.0.7") == p.from_source("::ffff:10.0.0.7") == 2
    assert p.enter("z1", "fe80::1%eth0") and p.from_source("fe80::2") == 1  # a scope id is not part of it
    assert p.dropped == 0
    for t in ("x1", "x2", "y1", "v1", "v2", "z1"):
        p.leave(t)
    assert len(p) == 0 and p._per == {}


def test_peer_key() -> None:
    assert peer_key("10.0.0.7") == "10.0.0.7"
    assert peer_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert peer_key("2001:db8:1:2::1") == peer_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")
    assert peer_key("::1") == "::/64" and peer_key("fe80::1%eth0") == "fe80::/64"
    assert peer_key("not an address") == "not an address" and peer_key("a:b") == "a:b"


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


IPV6_FLOOD = r"""
import asyncio, json, socket, ssl, subprocess
for cmd in (["ip", "link", "set", "lo", "up"],
            # AnyIP: every address of these /64s is this host's, as a host given a /64 has them
            ["ip", "-6", "route", "add", "local", "2001:db8:1:2::/64", "dev", "lo"],
            ["ip", "-6", "route", "add", "local", "2001:db8:1:3::/64", "dev", "lo"]):
    subprocess.run(cmd, check=True)
from ambit.dataplane.acceptloop import AcceptLoop, Handshakes
from ambit.dataplane.hbone.limits import PendingHandshakes

PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01"

async def main():
    ls = socket.socket(socket.AF_INET6)
    ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)     # dual stack: IPv4 peers as ::ffff:a.b.c.d
    ls.bind(("::", 0))
    ls.listen(512)
    port = ls.getsockname()[1]
    pending = PendingHandshakes(limit=64, per_source=8)
    accept = AcceptLoop(ls, Handshakes(asyncio.Protocol, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), 60.0, pending,
                                       "test"), 60.0)
    accept.on_conn = accept.on_conn.accepted
    accept.start()
    socks, sent = [], 0
    for source, dest, n in ([(f"2001:db8:1:2::{i:x}", "::1", 1) for i in range(1, 41)]    # 40 addresses, one /64
                            + [("2001:db8:1:3::5", "::1", 3), ("127.0.0.2", "127.0.0.1", 12)]):
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET)
            s.setsockopt(socket.SOL_IP, 15, 1)      # IP_FREEBIND: an address of the local route, not of lo
            s.bind((source, 0))
            s.connect((dest, port))
            s.sendall(PARTIAL_HELLO)
            socks.append(s)
            sent += 1
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while len(pending) + pending.refused < sent and loop.time() < end:
        await asyncio.sleep(0.02)
    print(json.dumps({"sent": sent, "pending": len(pending), "refused": pending.refused, "dropped": pending.dropped,
                      "first_64": pending.from_source("2001:db8:1:2::1"), "second_64": pending.from_source("2001:db8:1:3::1"),
                      "ipv4": pending.from_source("127.0.0.2")}))
    accept.close()
    for s in socks:
        s.close()

asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace of its own")
def test_a_flood_spread_over_an_ipv6_64_is_capped_as_one_source_on_real_sockets() -> None:
    """Real sockets on a dual-stack listener, in a network namespace of the test's own (every
    address of two /64s made local): 40 partial ClientHellos from 40 addresses of one /64, 3 from
    another /64, 12 from one IPv4 address (seen as ::ffff:127.0.0.2). Per /64 and per IPv4
    address, each source holds at most its 8; before, the 40 addresses were 40 sources and all
    40 held a slot (a /64 holds 2^64 addresses, so only the process-wide bound held it)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    p = subprocess.run(["unshare", "--net", sys.executable, "-c", IPV6_FLOOD], capture_output=True, text=True,
                       timeout=60, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"sent": 55, "pending": 8 + 3 + 8, "refused": 32 + 4, "dropped": 0,
                   "first_64": 8, "second_64": 3, "ipv4": 8}
