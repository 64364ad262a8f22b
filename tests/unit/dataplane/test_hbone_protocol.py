"""HBONEProtocol's send path on a fake transport: what a stream's `write()` puts on the wire, and when.

A small write with nothing of its stream queued is framed at once (`send_now`, docs/performance.md
§69), yet the transport still gets one write per loop iteration for all streams; what the windows
or a paused transport hold back waits in the stream's queue and follows in order. The bytes are
read back by a server-side `HBONEConnection`, as the peer would.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone.connection import Data, HBONEConnection
from ambit.dataplane.hbone.protocol import DIRECT_MAX, HBONEProtocol


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writelines(self, pieces: Any) -> None:
        self.writes.append(b"".join(bytes(p) for p in pieces))

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class Wire:
    """A client HBONEProtocol on a fake transport, and the server connection reading its bytes."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.t = FakeTransport()
        self.proto = HBONEProtocol(HBONEConnection(client_side=True), loop=self.loop)
        self.proto.connection_made(self.t)      # type: ignore[arg-type]
        self.proto.start("spiffe://cluster.local/ns/demo/sa/server")
        self.server = HBONEConnection(client_side=False)
        self.server.initiate()
        self.received: dict[int, bytearray] = {}
        self.read()

    def read(self) -> int:
        """Feed the server what the client wrote so far; returns how many transport writes that was."""
        n = len(self.t.writes)
        for w in self.t.writes:
            for ev in self.server.receive_data(w):
                if isinstance(ev, Data):
                    self.received.setdefault(ev.stream_id, bytearray()).extend(ev.data)
        self.t.writes.clear()
        return n

    def open(self) -> Any:
        return self.proto.open_stream("10.0.0.2:80", [])


async def opened(n: int) -> tuple[Wire, list[Any]]:
    """A wire with `n` streams open, their HEADERS sent and read: what follows is what is tested."""
    w = Wire()
    streams = [w.open() for _ in range(n)]
    await asyncio.sleep(0)
    w.read()
    return w, streams


def test_small_writes_are_framed_at_once_and_leave_in_one_write_per_iteration() -> None:
    asyncio.run(_small_writes_are_framed_at_once_and_leave_in_one_write_per_iteration())


async def _small_writes_are_framed_at_once_and_leave_in_one_write_per_iteration() -> None:
    w, (a, b) = await opened(2)
    a.write(b"GET / HTTP/1.1\r\n\r\n")
    b.write(b"x" * 1000)
    a.write(b"more")
    assert not w.t.writes, "the transport write waits for the end of the iteration"
    await asyncio.sleep(0)
    assert w.read() == 1, "all three writes, of two streams, in one transport write"
    assert w.received == {a.stream_id: bytearray(b"GET / HTTP/1.1\r\n\r\nmore"), b.stream_id: bytearray(b"x" * 1000)}


def test_what_the_window_holds_back_follows_in_order_once_it_opens() -> None:
    asyncio.run(_what_the_window_holds_back_follows_in_order_once_it_opens())


async def _what_the_window_holds_back_follows_in_order_once_it_opens() -> None:
    w, (st,) = await opened(1)
    chunks = [bytes([65 + i]) * 10_000 for i in range(9)]      # 90,000 bytes against a 65,535 window
    for c in chunks:
        st.write(c)
    await asyncio.sleep(0)
    w.read()
    assert len(w.received[st.stream_id]) == f.DEFAULT_WINDOW
    assert st._tx_bytes == 90_000 - f.DEFAULT_WINDOW, "the rest waits in the stream's queue"
    st.write(b"tail")                   # behind the queue, never around it
    w.proto.data_received(f.window_update(0, 1 << 20) + f.window_update(st.stream_id, 1 << 20))
    await asyncio.sleep(0)
    w.read()
    assert bytes(w.received[st.stream_id]) == b"".join(chunks) + b"tail"


def test_nothing_is_framed_while_the_transport_is_paused_or_for_a_large_write() -> None:
    asyncio.run(_nothing_is_framed_while_the_transport_is_paused_or_for_a_large_write())


async def _nothing_is_framed_while_the_transport_is_paused_or_for_a_large_write() -> None:
    w, (st,) = await opened(1)
    w.proto.data_received(f.window_update(0, 1 << 20) + f.window_update(st.stream_id, 1 << 20))
    w.proto.pause_writing()
    st.write(b"held")
    assert st._tx_bytes == 4 and not w.proto.conn.data_to_send(), "queued, not framed"
    w.proto.resume_writing()
    big = b"z" * (DIRECT_MAX + 1)
    st.write(big)
    assert st._tx_bytes == len(big), "a large write takes the queue, where streams take turns"
    st.write(b"after")                  # small, but behind the queue: never framed around it
    await asyncio.sleep(0)
    w.read()
    assert bytes(w.received[st.stream_id]) == b"held" + big + b"after"


def _futures_held_by(st: Any) -> list[asyncio.Future[Any]]:
    return [r for r in gc.get_referents(st) if isinstance(r, asyncio.Future)]


def test_a_tunnel_holds_no_future_once_its_response_is_in() -> None:
    """A held tunnel (1000 of them in the bench's RSS run) keeps no waiter it no longer needs
    (docs/performance.md §76): the response's future goes once the response is delivered."""
    asyncio.run(_a_tunnel_holds_no_future_once_its_response_is_in())


async def _a_tunnel_holds_no_future_once_its_response_is_in() -> None:
    w, (st,) = await opened(1)
    waiter = asyncio.ensure_future(st.wait_response())
    await asyncio.sleep(0)
    assert len(_futures_held_by(st)) == 1            # the waiter, while someone waits
    w.server.respond(st.stream_id, 200, None)
    w.proto.data_received(w.server.bytes_to_send())
    assert (await waiter).status == 200
    assert _futures_held_by(st) == []
    assert (await st.wait_response()).status == 200  # asked again: answered from what it kept


def test_on_closed_calls_back_when_the_peer_resets_unless_unregistered() -> None:
    asyncio.run(_on_closed_calls_back_when_the_peer_resets_unless_unregistered())


async def _on_closed_calls_back_when_the_peer_resets_unless_unregistered() -> None:
    w, (a, b) = await opened(2)
    calls: list[str] = []
    a.on_closed(lambda: calls.append("a"))
    unregister = b.on_closed(lambda: calls.append("b"))
    assert _futures_held_by(a) == _futures_held_by(b) == []
    unregister()
    for st in (a, b):
        w.server.reset_stream(st.stream_id, f.CANCEL)
    w.proto.data_received(w.server.bytes_to_send())
    assert a.is_closed and b.is_closed
    assert calls == []              # from the loop, not from inside the close
    await asyncio.sleep(0)
    assert calls == ["a"]
    a.on_closed(lambda: calls.append("late"))        # registered after the close: called soon
    await asyncio.sleep(0)
    assert calls == ["a", "late"]
