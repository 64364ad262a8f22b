"""HBONEProtocol against a peer that sends without reading: while the transport is paused (its
buffer is full because the peer does not read), the answers the peer's frames cost are held in the
connection, bounded, instead of piling up in the transport; past the bound the connection is cut.
The sans-IO half is tests/unit/ztunnel/test_hbone_probe2.py."""

from __future__ import annotations

import asyncio

from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone import limits
from ambit.dataplane.hbone.connection import HBONEConnection
from ambit.dataplane.hbone.protocol import HBONEProtocol
from tests.unit.dataplane.test_hbone_protocol import FakeTransport

PING = f.pack_header(8, f.PING, 0, 0) + b"12345678"


class Transport(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = self.closed = False

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.aborted or self.closed


def served(**conn_kw) -> tuple[HBONEProtocol, Transport]:
    t = Transport()
    proto = HBONEProtocol(HBONEConnection(client_side=False, **conn_kw), loop=asyncio.new_event_loop())
    proto.connection_made(t)        # type: ignore[arg-type]
    proto.start("spiffe://cluster.local/ns/demo/sa/attacker")
    proto.data_received(f.PREFACE + f.pack_header(0, f.SETTINGS, 0, 0))
    t.writes.clear()
    return proto, t


def test_a_ping_flood_that_is_never_read_is_held_bounded_and_cut_off() -> None:
    proto, t = served()
    proto.pause_writing()           # the peer stopped reading: the transport's buffer is full
    sent = 0
    while not t.aborted and sent < 5 * limits.MAX_UNSENT_ANSWERS:
        proto.data_received(PING * 100)
        sent += 100
    assert t.aborted and sent <= limits.MAX_UNSENT_ANSWERS + 100
    # Nothing went to the paused transport: the held answers were dropped with the connection.
    assert not t.writes
    proto.loop.close()


def test_answers_held_while_paused_go_out_when_the_transport_drains() -> None:
    proto, t = served()
    proto.pause_writing()
    proto.data_received(PING * 10)
    assert not t.writes
    proto.resume_writing()
    assert b"".join(t.writes).count(f.pack_header(8, f.PING, f.ACK, 0) + b"12345678") == 10
    assert not t.aborted and not t.closed
    proto.loop.close()


def test_a_flood_of_answers_in_one_read_while_paused_aborts_rather_than_waits_on_a_close() -> None:
    proto, t = served()
    proto.pause_writing()
    proto.data_received(PING * (limits.MAX_UNSENT_ANSWERS + 1))     # one read, never answered
    assert t.aborted and not t.closed
    proto.loop.close()


class Socket(Transport):
    """A transport with a socket buffer: it pauses the protocol over `HIGH` buffered bytes, as
    asyncio's do, and resumes it once the peer has read them (`peer_reads`)."""

    HIGH = 64 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.proto: HBONEProtocol | None = None
        self.buffered = 0
        self.most_buffered = 0

    def writelines(self, pieces) -> None:
        super().writelines(pieces)
        self.buffered += len(self.writes[-1])
        self.most_buffered = max(self.most_buffered, self.buffered)
        if self.buffered > self.HIGH and self.proto is not None and not self.proto.write_paused:
            self.proto.pause_writing()

    def peer_reads(self) -> None:
        self.buffered = 0
        assert self.proto is not None
        if self.proto.write_paused:
            self.proto.resume_writing()


def on_a_socket() -> tuple[HBONEProtocol, Socket]:
    t = Socket()
    proto = HBONEProtocol(HBONEConnection(client_side=False), loop=asyncio.new_event_loop())
    t.proto = proto
    proto.connection_made(t)        # type: ignore[arg-type]
    proto.start("spiffe://cluster.local/ns/demo/sa/chatty")
    proto.data_received(f.PREFACE + f.pack_header(0, f.SETTINGS, 0, 0))
    return proto, t


def test_a_peer_that_reads_is_never_cut_by_a_large_ping_batch() -> None:
    """A legitimate, chatty peer: many more PINGs than the limit in one read, again and again; it
    reads our answers between its batches, so every PING is answered and the connection lives."""
    proto, t = on_a_socket()
    batch = 3 * limits.MAX_UNSENT_ANSWERS
    for _ in range(5):
        proto.data_received(PING * batch)
        t.peer_reads()
    assert not t.aborted and not t.closed and not proto.conn.dead
    assert b"".join(t.writes).count(f.pack_header(8, f.PING, f.ACK, 0) + b"12345678") == 5 * batch
    proto.loop.close()


def test_a_peer_that_does_not_read_is_cut_and_what_it_makes_us_hold_stays_bounded() -> None:
    """The same PINGs from a peer that never reads: once the socket buffer is full, the answers are
    held (bounded) and the connection is aborted past the limit; what was handed to the transport
    and held in the connection never exceeds one read plus the buffer plus the limit."""
    proto, t = on_a_socket()
    answer = len(PING)
    batch = 1000
    sent = 0
    while not t.aborted and sent < 20 * limits.MAX_UNSENT_ANSWERS:
        proto.data_received(PING * batch)
        sent += batch
    assert t.aborted and proto.conn.dead
    assert sent <= limits.MAX_UNSENT_ANSWERS + batch + (t.HIGH // answer + batch)
    assert t.most_buffered <= t.HIGH + batch * answer + 1024
    proto.loop.close()
