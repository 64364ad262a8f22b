"""The engine over HBONE: tunnels terminated by an `HBONEServer` (real TLS 1.3, CA-issued
identities) carry HTTP/1.1, HTTP/2 and opaque bytes through `HBONETransport`; an upstream can be an
HBONE tunnel too. This is the shape the waypoint runs in: HBONE in, HBONE out."""

from __future__ import annotations

import asyncio
import json

import h2.config
import h2.connection
import h2.events
import pytest

from ambit.dataplane.hbone import HBONEStream
from tests.unit.dataplane.test_hbone import CLIENT, Mesh
from tests.unit.waypoint.harness import Origin, _H2OriginProtocol
from waypoint.http.engine import Engine, UpstreamTarget
from waypoint.http.plug import HBONETransport, connect_tcp
from waypoint.http.record import RequestRecord
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream, Forward, RequestHead

pytestmark = pytest.mark.timeout(60)


async def _read_http1(st: HBONEStream) -> bytes:
    out = b""
    while b"\r\n\r\n" not in out:
        out += await st.read()
    head, body = out.split(b"\r\n\r\n", 1)
    n = int(next(v for k, v in (line.split(b": ", 1) for line in head.split(b"\r\n")[1:]) if k == b"content-length"))
    while len(body) < n:
        body += await st.read()
    return head + b"\r\n\r\n" + body


def test_http1_over_hbone_down_and_h2_over_hbone_up(ca) -> None:  # noqa: ANN001
    origin = Origin()
    records: list[RequestRecord] = []

    async def main() -> None:

        async def h2_origin(st: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
            st.respond(200)
            HBONETransport(st).attach(_H2OriginProtocol())
            await st.wait_closed()

        async with Mesh(ca, h2_origin) as upstream_mesh:
            def decide(head: RequestHead, ds: Downstream) -> Forward:
                assert ds.source_identity == CLIENT
                return Forward(service="t/s", port=1 if head.header("x-to") == "h2" else origin.port)

            def upstream(fwd: Forward, head: RequestHead, down: Downstream,
                         exclude: frozenset[str] = frozenset()) -> UpstreamTarget:
                if fwd.port == 1:
                    async def hbone() -> HBONETransport:
                        return HBONETransport(await upstream_mesh.open("10.0.0.9:8080"))
                    return UpstreamTarget("10.0.0.9:8080", "10.0.0.9:8080", hbone, "h2")
                return UpstreamTarget(f"o:{fwd.port}", f"127.0.0.1:{fwd.port}",
                                      lambda: connect_tcp("127.0.0.1", fwd.port, 5))

            engine = Engine(HttpSettings(), decide, upstream, access_log=records.append)

            def waypoint(st: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
                st.respond(200)                     # as WaypointProxy.on_connect: a plain handler, the tunnel to a sink
                engine.serve(HBONETransport(st), Downstream(source_identity=peer))

            async with Mesh(ca, waypoint, plain=True) as m:
                # HTTP/1.1 in a tunnel, two requests (keep-alive inside the tunnel), h1 and h2 upstream
                st = await m.open()
                st.write(b"GET /one HTTP/1.1\r\nHost: svc\r\n\r\n")
                r1 = await _read_http1(st)
                st.write(b"GET /two HTTP/1.1\r\nHost: svc\r\nx-to: h2\r\n\r\n")
                r2 = await _read_http1(st)
                assert r1.startswith(b"HTTP/1.1 200") and json.loads(r1.split(b"\r\n\r\n", 1)[1])["path"] == "/one"
                assert r2.startswith(b"HTTP/1.1 200") and b"x-origin: h2" in r2
                assert dict(json.loads(r2.split(b"\r\n\r\n", 1)[1])["headers"])[":path"] == "/two"
                st.write_eof()
                assert await asyncio.wait_for(st.read(), 5) == b""      # the engine ends its side too
                await asyncio.wait_for(st.wait_closed(), 5)

                # HTTP/2 in a tunnel
                st = await m.open()
                c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
                c.initiate_connection()
                c.send_headers(1, [(":method", "GET"), (":path", "/h2"), (":scheme", "http"), (":authority", "svc")],
                               end_stream=True)
                st.write(c.data_to_send())
                status, body, ended = None, b"", False
                while not ended:
                    for ev in c.receive_data(await st.read()):
                        if isinstance(ev, h2.events.ResponseReceived):
                            status = dict(ev.headers)[":status"]
                        elif isinstance(ev, h2.events.DataReceived):
                            body += ev.data
                        elif isinstance(ev, h2.events.StreamEnded):
                            ended = True
                    st.write(c.data_to_send())
                assert status == "200" and json.loads(body)["path"] == "/h2"
                st.reset()
            await engine.shutdown()

    try:
        asyncio.run(main())
    finally:
        origin.close()
    assert [r.path for r in records] == ["/one", "/two", "/h2"]
    assert records[1].upstream_protocol == "h2" and records[1].upstream == "10.0.0.9:8080"
    assert all(r.downstream.source_identity == CLIENT for r in records)
