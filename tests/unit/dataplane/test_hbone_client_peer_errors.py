"""A broken remote server, seen from our client side of HBONE: the streams it makes us reset do
not spend a reset budget (the flood defences protect a server from its clients, as Envoy's do), so
it never makes us send GOAWAY(ENHANCE_YOUR_CALM) and tear down the healthy streams in flight on
that connection. Instead the connection is retired: no new streams on it, out of the pool, closed
once its last stream ends. The server-side budget is tests/unit/ztunnel/test_hbone_probe2.py."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import pytest

from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone.connection import ConnectionClosed, Data, HBONEConnection, StreamReset
from ambit.dataplane.hbone.protocol import HBONEProtocol
from tests.unit.dataplane.test_hbone_unread import Transport
from tests.unit.ztunnel.test_hbone_probe2 import PEER_ERRORS, _data_over_the_window, _window_update


class BrokenServer:
    """An h2 server in memory in front of our client connection; it answers every CONNECT with 200
    and can then break the protocol on a stream with raw frames."""

    def __init__(self, client: HBONEConnection) -> None:
        self.c = client
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.h2.initiate_connection()
        self.events: list = []
        client.initiate()
        self.pump()

    def pump(self, raw: bytes = b"") -> list:
        evs = self.c.receive_data(self.h2.data_to_send() + raw)
        self.events += evs
        out = self.c.bytes_to_send()
        if out:
            self.h2.receive_data(out)
        return evs

    def tunnel(self) -> int:
        sid = self.c.open_stream("10.0.0.2:8080")
        self.pump()
        self.h2.send_headers(sid, [(":status", "200")])
        self.pump()
        return sid


# The errors a hostile client makes our server commit, made here by a broken server: the same
# frames (each builder only needs the peer's `h2` connection).
SERVER_ERRORS = PEER_ERRORS


@pytest.mark.parametrize("make_error", SERVER_ERRORS.values(), ids=SERVER_ERRORS.keys())
def test_a_server_error_retires_the_connection_and_spares_the_healthy_streams(make_error) -> None:
    kw = {"stream_window": 65535} if make_error is _data_over_the_window else {}
    s = BrokenServer(HBONEConnection(client_side=True, **kw))
    healthy = s.tunnel()
    broken = s.tunnel()
    evs = s.pump(make_error(s, broken))
    # The broken stream is reset by us, and says why ...
    [reset] = [e for e in evs if isinstance(e, StreamReset)]
    assert reset.stream_id == broken and not reset.remote and "the peer's protocol error" in reset.reason
    # ... the connection is retired, not failed: no GOAWAY(ENHANCE_YOUR_CALM), no new streams ...
    [closed] = [e for e in evs if isinstance(e, ConnectionClosed)]
    assert not closed.fatal and closed.error_code == f.NO_ERROR and "protocol error" in closed.reason
    assert not s.c.dead and not s.c.can_open_stream
    # ... and the healthy tunnel goes on both ways.
    s.h2.send_data(healthy, b"pong")
    assert [bytes(e.data) for e in s.pump() if isinstance(e, Data)] == [b"pong"]
    assert s.c.send_data(healthy, b"ping") == 4
    got = s.h2.receive_data(s.c.bytes_to_send())
    assert [e.data for e in got if isinstance(e, h2.events.DataReceived)] == [b"ping"]


def test_a_retired_connection_leaves_the_pool_and_closes_after_its_last_stream() -> None:
    loop = asyncio.new_event_loop()
    unusable: list[HBONEProtocol] = []
    t = Transport()
    proto = HBONEProtocol(HBONEConnection(client_side=True), loop=loop, on_unusable=unusable.append)
    proto.connection_made(t)        # type: ignore[arg-type]
    proto.start("spiffe://cluster.local/ns/demo/sa/server")
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.receive_data(b"".join(t.writes))
    t.writes.clear()
    healthy = proto.open_stream("10.0.0.2:8080", [])
    broken = proto.open_stream("10.0.0.2:8080", [])
    proto._deferred_flush()
    server.receive_data(b"".join(t.writes))
    for st in (healthy, broken):
        server.send_headers(st.stream_id, [(":status", "200")])
    proto.data_received(server.data_to_send() + _window_update(broken.stream_id, 0))
    assert unusable == [proto] and not proto.usable
    assert broken.is_closed and "for the peer's protocol error: WINDOW_UPDATE of 0" in str(broken.error)
    assert not healthy.is_closed and not t.closed and not t.aborted
    server.end_stream(healthy.stream_id)
    proto.data_received(server.data_to_send())
    healthy.write_eof()
    proto._deferred_flush()
    assert t.closed and not t.aborted
    loop.close()
