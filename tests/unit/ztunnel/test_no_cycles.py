"""A finished connection is freed by reference counting alone: no reference cycle outlives it.

Why it matters: whatever a connection leaves in a cycle (its relay, legs, transports, the HBONE
stream, futures) waits for the cyclic collector, and every full collection walks all of it; that
pause lands in some request's latency (docs/performance.md, round 4). Run on uvloop, the loop
ztunnel runs on (asyncio's own selector transports keep a cycle of their own through a bound
method, which is not ours to fix).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import uvloop

from ambit.dataplane.settings import TunnelSettings
from tests.support import cycles
from tests.unit.ztunnel.test_proxy_inprocess import (
    APP_PORT,
    CLIENT_IP,
    SERVER_IP,
    ListSink,
    echo_app,
    hbone_listener,
    mesh,
    pod,
    roundtrip,
    serve,
)
from ztunnel.proxy import Proxy

CONNS = 20


def garbage_of(make_connections) -> Counter[str]:
    """Types of the objects only the cyclic collector could free, left by `make_connections()`
    (tests/support/cycles.py: another thread's garbage in the window is not counted)."""
    return cycles.garbage_of(make_connections, qualified=False)


def test_tunnelled_and_plaintext_connections_leave_no_cycles(ca):
    loop = uvloop.new_event_loop()
    sink = ListSink()

    async def setup():
        client, server, cfg, identities, _, metrics = mesh(ca)
        proxy = Proxy(cfg, identities=identities, metrics=metrics, access_log=sink,
                      original_dst=lambda s: (SERVER_IP, APP_PORT), tunnel=TunnelSettings(connect_timeout=5, cert_wait=5))
        cpod, spod = pod(client), pod(server)
        proxy.registry.by_ip[CLIENT_IP] = cpod
        identities.prefetch([client.identity, server.identity])
        await identities.get(server.identity, 5)
        app = await echo_app(SERVER_IP, APP_PORT, [])
        hbone = await proxy._serve_hbone(spod, hbone_listener())
        out, out_port = await serve(proxy.outbound, cpod, "127.0.0.1")
        inb, inb_port = await serve(proxy.inbound_plaintext, spod, SERVER_IP)
        await roundtrip(out_port, b"warm")     # the pooled HBONE connection and the certificates stay
        await roundtrip(inb_port, b"warm", host=SERVER_IP)
        await asyncio.sleep(0.1)
        return proxy, identities, [app, hbone, out, inb], out_port, inb_port

    async def connections(port: int, host: str, replies: list[bytes]) -> None:
        done = len(sink.records)
        for i in range(CONNS):
            replies.append(await roundtrip(port, b"x%d" % i, host=host))
        per_conn = 2 if port == out_port else 1         # a tunnel logs at both ends
        for _ in range(200):            # until every handler has finished (access log, metrics)
            if len(sink.records) >= done + per_conn * CONNS:
                break
            await asyncio.sleep(0.02)

    try:
        proxy, identities, servers, out_port, inb_port = loop.run_until_complete(setup())
        try:
            for port, host in ((out_port, "127.0.0.1"), (inb_port, SERVER_IP)):
                replies: list[bytes] = []
                garbage = garbage_of(lambda p=port, h=host, r=replies: loop.run_until_complete(connections(p, h, r)))
                assert replies == [b"echo:x%d" % i for i in range(CONNS)]     # the connections did work
                assert garbage == Counter(), f"{host}:{port} left cycles: {garbage.most_common(8)}"
            assert sum(1 for r in sink.records if not r.error) == 3 * (CONNS + 1)   # tunnel: out + in; plaintext: in
        finally:
            async def teardown() -> None:
                for s in servers:
                    s.close()
                await proxy.close()
                await identities.close()
            loop.run_until_complete(teardown())
    finally:
        loop.close()
