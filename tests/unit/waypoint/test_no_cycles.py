"""A finished request, and a finished downstream connection, are freed by reference counting alone.

Why it matters: whatever a request or a tunnel leaves in a reference cycle (its exchange and try,
the HTTP/1 server and its parser, the HBONE transport and stream, their futures) waits for the
cyclic collector. Under load that is thousands of objects a second: collections run all the time,
every full collection walks all of them (a 30–70 ms pause measured in the lab waypoint), and the
waypoint's memory grows until one runs (docs/performance.md, round 6). Run on uvloop, the loop the
waypoint runs on, in the shape it runs in: HTTP/1.1 in HBONE tunnels (real TLS 1.3), pooled
HTTP/1.1 upstream, Istio's default retry policy (a `_Try` per request).
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.events
import pytest
import uvloop

from ambit.dataplane.hbone import HBONEStream
from tests.support import cycles
from tests.unit.dataplane.test_hbone import Mesh
from tests.unit.waypoint.harness import Origin, start_h2_origin
from tests.unit.waypoint.test_hbone_plug import _read_http1
from waypoint.http.engine import Engine, UpstreamTarget
from waypoint.http.plug import HBONETransport, connect_tcp
from waypoint.http.record import RequestRecord
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream, Forward, RequestHead

pytestmark = pytest.mark.timeout(60)

N = 20


def garbage_of(loop: asyncio.AbstractEventLoop, work: Callable[[], Awaitable[None]]) -> Counter[str]:
    """Types of the objects only the cyclic collector could free, left by `work()`
    (tests/support/cycles.py: another thread's garbage in the window is not counted)."""
    return cycles.garbage_of(lambda: loop.run_until_complete(work()))


def test_requests_and_tunnels_through_the_engine_leave_no_cycles(ca) -> None:  # noqa: ANN001
    origin = Origin()
    records: list[RequestRecord] = []
    loop = uvloop.new_event_loop()

    def decide(head: RequestHead, ds: Downstream) -> Forward:
        return Forward(service="t/s", port=origin.port, route="t#0")

    def upstream(fwd: Forward, head: RequestHead, down: Downstream,
                 exclude: frozenset[str] = frozenset()) -> UpstreamTarget:
        return UpstreamTarget(f"o:{fwd.port}", f"127.0.0.1:{fwd.port}", lambda: connect_tcp("127.0.0.1", fwd.port, 5))

    async def new_engine() -> Engine:      # it binds to the running loop
        return Engine(HttpSettings(), decide, upstream, access_log=records.append)

    engine = loop.run_until_complete(new_engine())

    def waypoint(st: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
        st.respond(200)                     # as WaypointProxy.on_connect: a plain handler, the tunnel to a sink
        engine.serve(HBONETransport(st), Downstream(source_identity=peer))

    mesh = Mesh(ca, waypoint, plain=True)

    async def get(st: HBONEStream, path: str) -> None:
        st.write(f"GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n".encode())
        assert (await _read_http1(st)).startswith(b"HTTP/1.1 200")

    async def settle(n: int) -> None:
        for _ in range(250):            # the record is emitted just after the response is written
            if len(records) >= n and not engine.exchanges:
                return
            await asyncio.sleep(0.02)

    async def keep_alive() -> None:     # N requests on one open tunnel
        for i in range(N):
            await get(st, f"/k{i}")
        await settle(1 + N)

    async def tunnels() -> None:        # N tunnels, one request each, ended by the client
        for i in range(N):
            t = await mesh.open()
            await get(t, f"/t{i}")
            t.write_eof()
            assert await asyncio.wait_for(t.read(), 5) == b""
            await asyncio.wait_for(t.wait_closed(), 5)
        await settle(1 + 2 * N)
        await asyncio.sleep(0.2)        # the engine's side of the last tunnel finishes after the client's

    async def closed_by_the_waypoint() -> None:  # `Connection: close`: the waypoint ends the tunnel first
        for i in range(N):
            t = await mesh.open()
            t.write(f"GET /c{i} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := await asyncio.wait_for(t.read(), 5):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200")
            t.write_eof()
            await asyncio.wait_for(t.wait_closed(), 5)
        await settle(1 + 3 * N)
        await asyncio.sleep(0.2)

    try:
        loop.run_until_complete(mesh.__aenter__())
        st = loop.run_until_complete(mesh.open())
        loop.run_until_complete(get(st, "/warm"))  # the HBONE connection, the upstream pool and the certificates stay
        requests = garbage_of(loop, keep_alive)
        conns = garbage_of(loop, tunnels)
        closed = garbage_of(loop, closed_by_the_waypoint)
        assert [r.path for r in records] == ["/warm", *(f"/k{i}" for i in range(N)), *(f"/t{i}" for i in range(N)),
                                             *(f"/c{i}" for i in range(N))]
        assert requests == Counter(), f"requests left cycles: {requests.most_common(10)}"
        assert conns == Counter(), f"tunnels left cycles: {conns.most_common(10)}"
        assert closed == Counter(), f"tunnels the waypoint closed left cycles: {closed.most_common(10)}"
        # ...and nothing holds a finished tunnel afterwards (the close's linger timer is cancelled
        # once the peer has ended its side): only the open keep-alive tunnel is alive
        assert sum(isinstance(o, HBONETransport) for o in gc.get_objects()) == 1
    finally:
        async def teardown() -> None:
            st.reset()
            await engine.shutdown()
            await mesh.__aexit__(None, None, None)
        loop.run_until_complete(teardown())
        loop.close()
        origin.close()


def test_http2_streams_and_tunnels_leave_no_cycles(ca) -> None:  # noqa: ANN001
    """The same for h2c downstream (prior knowledge, in HBONE) and HTTP/2 upstream: per stream and
    per tunnel."""
    records: list[RequestRecord] = []
    loop = uvloop.new_event_loop()

    async def setup() -> tuple[Engine, asyncio.AbstractServer, int]:
        server, port = await start_h2_origin()

        def decide(head: RequestHead, ds: Downstream) -> Forward:
            return Forward(service="t/s", port=port, route="t#0")

        def upstream(fwd: Forward, head: RequestHead, down: Downstream,
                     exclude: frozenset[str] = frozenset()) -> UpstreamTarget:
            return UpstreamTarget(f"o:{fwd.port}", f"127.0.0.1:{fwd.port}",
                                  lambda: connect_tcp("127.0.0.1", fwd.port, 5), "h2")

        return Engine(HttpSettings(), decide, upstream, access_log=records.append), server, port

    engine, origin, _ = loop.run_until_complete(setup())

    def waypoint(st: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
        st.respond(200)                     # as WaypointProxy.on_connect: a plain handler, the tunnel to a sink
        engine.serve(HBONETransport(st), Downstream(source_identity=peer))

    mesh = Mesh(ca, waypoint, plain=True)

    def new_client() -> h2.connection.H2Connection:
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        c.initiate_connection()
        return c

    async def get(st: HBONEStream, c: h2.connection.H2Connection, path: str) -> None:
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "svc")],
                       end_stream=True)
        st.write(c.data_to_send())
        status, ended = None, False
        while not ended:
            for ev in c.receive_data(await asyncio.wait_for(st.read(), 5)):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[":status"]
                elif isinstance(ev, h2.events.DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    ended = True
            st.write(c.data_to_send())
        assert status == "200"

    async def settle(n: int) -> None:
        for _ in range(250):
            if len(records) >= n and not engine.exchanges:
                return
            await asyncio.sleep(0.02)

    async def streams() -> None:        # N requests, each its own stream, on one open tunnel
        for i in range(N):
            await get(st, client, f"/s{i}")
        await settle(1 + N)

    clients: list[h2.connection.H2Connection] = []    # the h2 library's connections are cycles of their own

    async def tunnels() -> None:        # N tunnels, one stream each, then GOAWAY and the end of the tunnel
        for i in range(N):
            t, c = await mesh.open(), new_client()
            clients.append(c)
            await get(t, c, f"/t{i}")
            c.close_connection()
            t.write(c.data_to_send())
            t.write_eof()
            while await asyncio.wait_for(t.read(), 5):
                pass
            await asyncio.wait_for(t.wait_closed(), 5)
        await settle(1 + 2 * N)
        await asyncio.sleep(0.2)

    try:
        loop.run_until_complete(mesh.__aenter__())
        st, client = loop.run_until_complete(mesh.open()), new_client()
        loop.run_until_complete(get(st, client, "/warm"))
        per_stream = garbage_of(loop, streams)
        per_tunnel = garbage_of(loop, tunnels)
        assert [r.path for r in records] == ["/warm", *(f"/s{i}" for i in range(N)), *(f"/t{i}" for i in range(N))]
        assert all(r.upstream_protocol == "h2" for r in records)
        assert per_stream == Counter(), f"streams left cycles: {per_stream.most_common(10)}"
        assert per_tunnel == Counter(), f"tunnels left cycles: {per_tunnel.most_common(10)}"
    finally:
        async def teardown() -> None:
            st.reset()
            await engine.shutdown()
            await mesh.__aexit__(None, None, None)
            origin.close()
        loop.run_until_complete(teardown())
        loop.close()
