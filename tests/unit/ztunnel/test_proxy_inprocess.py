"""ztunnel's data path driven in process, without root: outbound → HBONE (real TLS 1.3 mTLS with
certificates from a real CA) → inbound → app, and inbound plaintext under PERMISSIVE and STRICT.

Pods are loopback addresses (127.0.0.0/8 is all local, so binding a "pod IP" needs no netns and no
IP_TRANSPARENT); the original-destination lookup and the access-log sink are injected, which is
what makes `Proxy` testable here and lets the lab tests focus on the kernel's part.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from ambit.dataplane import tls
from ambit.dataplane.acceptloop import AcceptLoop
from ambit.dataplane.hbone import HBONEClientPool, HBONEConnectError
from ambit.dataplane.identity import IdentityManager
from ambit.dataplane.settings import TunnelSettings
from ambit.dataplane.telemetry.accesslog import ConnRecord
from ambit.dataplane.telemetry.metrics import Metrics
from ambit.model import PeerAuthn, TcpKeepalive
from ambit.zds import PodInfo
from bench.inproc_ztunnel import LoopbackPod, pod_listener
from tests.unit.conftest import LocalCAFetcher
from tests.unit.ztunnel.meshcfg import config, wl
from ztunnel.pods import PodProxy, serve_plaintext
from ztunnel.proxy import Proxy

# The app and HBONE ports are fixed (as in a pod), so each xdist worker gets loopback addresses of
# its own: tests of this module, and test_no_cycles which borrows them, may run at once on others.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
CLIENT_IP, SERVER_IP = f"127.0.{10 + _WORKER}.2", f"127.0.{10 + _WORKER}.3"
APP_PORT, HBONE_PORT = 18080, 15008


@dataclass
class ListSink:
    records: list[ConnRecord] = field(default_factory=list)

    def emit(self, rec: ConnRecord) -> None:
        self.records.append(rec)


def pod(w) -> LoopbackPod:
    return LoopbackPod(PodInfo(w.uid, w.name, w.namespace, w.ips[0], "node1", w.service_account), netns_fd=-1)


async def echo_app(host: str, port: int, seen: list[tuple[str, bytes]]) -> asyncio.Server:
    """The destination app: answers `echo:<bytes>` and records the peer address it saw."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read(65536)
        seen.append((w.get_extra_info("peername")[0], data))
        w.write(b"echo:" + data)
        await w.drain()
        w.close()
    return await asyncio.start_server(handle, host, port, reuse_address=True)


async def serve(handler, pod_proxy: PodProxy, host: str, port: int = 0) -> tuple[AcceptLoop, int]:
    """A listener whose accepted connections go to `handler(pod, leg)`, as PodRegistry wires them."""
    sock = socket.create_server((host, port))     # SO_REUSEADDR, as create_server(reuse_address=True)
    return serve_plaintext(pod_proxy, sock, handler), sock.getsockname()[1]


def hbone_listener(ip: str = SERVER_IP, port: int = HBONE_PORT) -> socket.socket:
    """The destination pod's 15008 listener, as PodRegistry hands it to `_serve_hbone`."""
    return pod_listener(ip, port)


async def roundtrip(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    r, w = await asyncio.open_connection(host, port)
    w.write(payload)
    await w.drain()
    w.write_eof()
    try:
        return await asyncio.wait_for(r.read(), 10)
    except ConnectionResetError:
        return b"<reset>"
    finally:
        w.close()


def mesh(ca, pas=()):
    client, server = wl("client", CLIENT_IP), wl("echo", SERVER_IP)
    cfg = config([client, server], pas=list(pas))
    identities = IdentityManager(LocalCAFetcher(ca))
    sink, metrics = ListSink(), Metrics()
    return client, server, cfg, identities, sink, metrics


@contextlib.asynccontextmanager
async def hbone_mesh(ca, seen: list[tuple[str, bytes]] | None = None, **proxy_kw):
    """The client pod's outbound listener -> its ztunnel -> HBONE -> the server pod's :15008 -> the
    echo app, all in this process: yields (proxy, the outbound port, the access-log sink, metrics,
    the client and server workloads); closes everything after."""
    client, server, cfg, identities, sink, metrics = mesh(ca)
    target = (SERVER_IP, APP_PORT)
    proxy = Proxy(cfg, identities=identities, metrics=metrics, access_log=sink, original_dst=lambda s: target,
                  tunnel=TunnelSettings(connect_timeout=5, cert_wait=5), **proxy_kw)
    cpod, spod = pod(client), pod(server)
    proxy.registry.by_ip[CLIENT_IP] = cpod
    identities.prefetch([client.identity, server.identity])
    await identities.get(server.identity, 5)
    app = await echo_app(SERVER_IP, APP_PORT, seen if seen is not None else [])
    hbone = await proxy._serve_hbone(spod, hbone_listener())
    out, out_port = await serve(proxy.outbound, cpod, "127.0.0.1")
    try:
        yield proxy, out_port, sink, metrics, client, server
    finally:
        out.close()
        hbone.close()
        app.close()
        await proxy.close()
        await identities.close()


def test_outbound_hbone_inbound_app_end_to_end_with_identities_and_source_ip(ca):
    async def go() -> None:
        seen: list[tuple[str, bytes]] = []
        async with hbone_mesh(ca, seen) as (_, out_port, sink, metrics, client, server):
            reply = await roundtrip(out_port, b"hello mesh")
            assert reply == b"echo:hello mesh"
            # The app saw the client pod's address, not ztunnel's.
            assert seen == [(CLIENT_IP, b"hello mesh")]
            await asyncio.sleep(0.1)
            recs = {r.direction: r for r in sink.records}
            assert set(recs) == {"outbound", "inbound"}
            assert recs["outbound"].route == "hbone" and recs["outbound"].dst_identity == server.identity
            assert recs["inbound"].src_identity == client.identity, "the destination saw the source's SPIFFE id"
            assert recs["inbound"].src_workload == "client"
            assert recs["outbound"].bytes_sent == len(b"hello mesh")
            text = metrics.exposition().decode()
            assert 'istio_tcp_connections_opened_total{' in text and 'reporter="destination"' in text
            assert 'connection_security_policy="mutual_tls"' in text
    asyncio.run(go())


@pytest.mark.parametrize(("mode", "delivered"), [("PERMISSIVE", True), ("STRICT", False)])
def test_inbound_plaintext_follows_peer_authentication(ca, mode, delivered):
    async def go() -> None:
        pa = PeerAuthn(name="default", namespace="demo", mode=mode)
        client, server, cfg, identities, sink, metrics = mesh(ca, pas=[pa])
        proxy = Proxy(cfg, identities=identities, metrics=metrics, access_log=sink,
                      original_dst=lambda s: (SERVER_IP, APP_PORT))
        spod = pod(server)
        seen: list[tuple[str, bytes]] = []
        app = await echo_app(SERVER_IP, APP_PORT, seen)
        inb, inb_port = await serve(proxy.inbound_plaintext, spod, SERVER_IP)
        try:
            reply = await roundtrip(inb_port, b"plain", host=SERVER_IP)
            await asyncio.sleep(0.05)
            if delivered:
                assert reply == b"echo:plain" and [d for _, d in seen] == [b"plain"]
                assert not sink.records[0].error
            else:
                assert reply in (b"", b"<reset>") and seen == [], "STRICT: not one byte reaches the app"
                assert "STRICT" in sink.records[0].error
        finally:
            inb.close()
            app.close()
            await proxy.close()
            await identities.close()
    asyncio.run(go())


def test_a_tunnel_given_up_while_its_app_connection_is_made_cancels_that_connect(ca):
    """The destination app does not accept (its accept queue is full, so the SYN is dropped); the
    source gives up on the tunnel. The inbound connect is cancelled at once, not left to its
    timeout, the access line says why, and the pod's drain set forgets the tunnel."""
    async def go() -> None:
        client, server, cfg, identities, sink, metrics = mesh(ca)
        proxy = Proxy(cfg, identities=identities, metrics=metrics, access_log=sink,
                      tunnel=TunnelSettings(connect_timeout=30, cert_wait=5))
        spod = pod(server)
        identities.prefetch([client.identity, server.identity])
        await identities.get(server.identity, 5)
        await identities.get(client.identity, 5)
        app = socket.socket()
        app.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        app.bind((SERVER_IP, APP_PORT))
        app.listen(0)                               # never accepted: one queued connection fills it
        fillers = []
        for _ in range(2):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex((SERVER_IP, APP_PORT))
            fillers.append(f)
        hbone = await proxy._serve_hbone(spod, hbone_listener())
        cache = tls.ContextCache()

        async def client_ctx(identity: str) -> ssl.SSLContext:
            return cache.client(identities.current(identity))
        pool = HBONEClientPool(client_ctx, port=HBONE_PORT)
        try:
            t0 = time.monotonic()
            with pytest.raises(HBONEConnectError):
                await pool.connect(client.identity, server.identity, SERVER_IP, f"{SERVER_IP}:{APP_PORT}",
                                   timeout=0.5)
            for _ in range(100):
                if sink.records:
                    break
                await asyncio.sleep(0.02)
            [rec] = sink.records
            assert rec.error.startswith("tunnel gone while connecting to the app: HBONE stream 1 reset by the peer")
            assert time.monotonic() - t0 < 5, "cancelled when the tunnel went, not at the 30 s connect timeout"
            assert not spod.conns, "the pod's drain set no longer holds the tunnel"
        finally:
            await pool.close()
            hbone.close()
            for f in fillers:
                f.close()
            app.close()
            await proxy.close()
            await identities.close()
    asyncio.run(go())


async def echo_until_eof(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.close()


def test_draining_a_pod_waits_for_its_open_connections_then_cuts_them(ca):
    """A relayed connection holds no task of its own (the relay finishes its access line), yet
    draining the pod still finds it: one that ends within the drain time ends on its own, one
    still open at the deadline is cut, and both are logged with their byte counts."""
    async def go() -> None:
        client, server, cfg, identities, sink, metrics = mesh(ca)
        proxy = Proxy(cfg, identities=identities, metrics=metrics, access_log=sink,
                      original_dst=lambda s: (SERVER_IP, APP_PORT))
        spod = pod(server)
        app = await asyncio.start_server(echo_until_eof, SERVER_IP, APP_PORT, reuse_address=True)
        inb, inb_port = await serve(proxy.inbound_plaintext, spod, SERVER_IP)
        try:
            conns = []
            for msg in (b"short", b"long-lived"):
                r, w = await asyncio.open_connection(SERVER_IP, inb_port)
                w.write(msg)
                assert await asyncio.wait_for(r.readexactly(len(msg)), 5) == msg
                conns.append((r, w))
            await asyncio.sleep(0.05)
            assert len(spod.conns) == 2
            assert not any(isinstance(c, asyncio.Future) for c in spod.conns), "no task per relayed connection"

            async def close_first_soon() -> None:
                await asyncio.sleep(0.2)
                conns[0][1].write_eof()
            t0 = time.monotonic()
            closer = asyncio.ensure_future(close_first_soon())
            await spod.close(drain=1.0)
            waited = time.monotonic() - t0
            await closer
            assert 0.9 <= waited < 3, f"drain waited {waited:.2f}s for the long-lived connection"
            assert await asyncio.wait_for(conns[0][0].read(), 5) == b""          # ended on its own
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(conns[1][0].read(), 5) == b""      # cut at the deadline
            for _ in range(100):
                if len(sink.records) == 2:
                    break
                await asyncio.sleep(0.02)
            assert sorted(r.bytes_sent for r in sink.records) == [len(b"short"), len(b"long-lived")]
            assert not spod.conns
        finally:
            for _, w in conns:
                w.close()
            inb.close()
            app.close()
            await proxy.close()
            await identities.close()
    asyncio.run(go())


def _hbone_socket_timers() -> list[str]:
    """`ss -o` of the established TCP sockets to and from the destination pod's :15008 (both ends
    are in this process, on loopback): a socket with SO_KEEPALIVE shows `timer:(keepalive,…)`."""
    out = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{HBONE_PORT} or dport = :{HBONE_PORT} )",
                          "dst", SERVER_IP, "or", "src", SERVER_IP], capture_output=True, text=True, check=True)
    return [ln for ln in out.stdout.splitlines() if SERVER_IP in ln]


@pytest.mark.parametrize("keepalive", [TcpKeepalive(180, 180, 9), None], ids=["default", "off"])
def test_hbone_connections_carry_ztunnels_tcp_keepalive_both_ways(ca, keepalive):
    """ztunnel's --keepalive-* (istio/ztunnel's 180 s / 180 s / 9): a client's own keepalives reach
    only its local ztunnel, so the node-to-node HBONE connection needs its own, or the first NAT
    that times idle flows out cuts a quiet connection. Both ends of the pooled connection get it;
    --no-keepalive leaves both without."""
    async def go() -> None:
        async with hbone_mesh(ca, keepalive=keepalive) as (_, out_port, *_rest):
            assert await roundtrip(out_port, b"hello mesh") == b"echo:hello mesh"
            lines = await asyncio.to_thread(_hbone_socket_timers)     # the pooled connection stays open
            assert len(lines) == 2, lines                                # its client end and its server end
            if keepalive is None:
                assert not [ln for ln in lines if "keepalive" in ln], lines
            else:
                assert all("timer:(keepalive," in ln for ln in lines), lines
    asyncio.run(go())


def test_a_plaintext_upstream_gets_the_keepalive_too():
    """A connection ztunnel opens in plaintext (an out-of-mesh destination: it leaves the node, and
    NATs on the way time idle flows out) carries the same keepalive as HBONE."""
    from ztunnel.proxy import open_from

    async def go() -> None:
        srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]

        def fresh() -> socket.socket:
            s = socket.socket()
            s.setblocking(False)
            return s
        try:
            for ka, want in ((TcpKeepalive(180, 180, 9), (1, 180, 180, 9)), (None, (0,))):
                leg = await open_from(fresh, ("127.0.0.1", port), 5, ka)
                s = leg.transport.get_extra_info("socket")
                got = (s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),)
                if ka is not None:
                    got += tuple(s.getsockopt(socket.IPPROTO_TCP, o)
                                 for o in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT))
                assert got == want
                leg.transport.close()
        finally:
            srv.close()
    asyncio.run(go())
