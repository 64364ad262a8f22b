"""A few addresses cannot lock the mesh's nodes out of the controller's gRPC port.

The accept gate bounds each address (`--max-connections-per-peer`) and the whole port
(`--max-connections`), but ten addresses (ten pods of any tenant) could hold every slot with TLS
connections that never make an authenticated call, reconnecting as grpc's timeouts close them:
a new node, a restarted ztunnel or a new waypoint then got no config and no certificate. Now the
gate learns which connections authenticated (a call whose credential verified), and when the port
is full a new connection evicts the oldest connection that never did and is past its grace
(controller/fairness.py `ConnectionAdmission`); authenticated connections are never evicted.

A real grpc.aio server behind the real gate, real TLS (a CA-issued serving certificate), real
grpc clients with bootstrap node tokens, and idle TLS clients from several loopback addresses.
The admission's clock is injected: the idle connections are made old without waiting.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from ambit.api import ca_pb2, ca_pb2_grpc, config_pb2, config_pb2_grpc, debug_pb2, debug_pb2_grpc
from ambit.configclient import NodeInfo
from ambit.model import Workload
from controller import fairness
from controller.acceptgate import make_server, serve
from controller.ca import CertificateAuthority, CertificateServicer, add_to_server
from controller.ca.credentials import BootstrapTokens
from controller.configserver import ConfigServer
from controller.configserver.auth import NodeAuthenticator
from controller.configserver.server import server_options
from controller.debug import DebugServicer, TokenFileReaders
from controller.grpcgate import CallGate
from tests.unit.configstream.helpers import workload
from tests.unit.controller.test_ca import TD, make_csr
from tests.unit.controller.test_fairness import FakeClock
from tests.unit.controller.test_grpc_connections import PREFACE, _closed_within

FLOODERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


def idle_tls_from(source: str, port: int) -> ssl.SSLSocket | None:
    """A TLS connection from `source` that sends the HTTP/2 preface and then nothing (None: refused)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE      # the controller asks for no client cert
    ctx.set_alpn_protocols(["h2"])
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.bind((source, 0))
    raw.settimeout(5)
    try:
        raw.connect(("127.0.0.1", port))
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(PREFACE)
        tls.settimeout(None)
        return tls
    except OSError:
        raw.close()
        return None


def test_idle_unauthenticated_connections_from_four_addresses_cannot_lock_out_a_node(ca: CertificateAuthority,
                                                                                  tmp_path: Path) -> None:
    """The port holds 40, each address 10. A CA channel, a debug reader (the CLI) and a node's config
    stream are up, each having made an authenticated call; four addresses fill the rest with idle
    TLS connections. Before, a node's new CA channel was then reset at accept: no certificate. Now
    each new one evicts the oldest idle connection past its grace and gets its certificate, and the
    authenticated connections (the oldest of all) are never the ones evicted."""
    tokens = BootstrapTokens()
    token = tokens.issue("node-a")
    node_md = [("x-ambit-node", "node-a"), ("authorization", f"Bearer {token}")]
    config = ConfigServer(debounce=0.0, registry=CollectorRegistry(), authenticator=NodeAuthenticator(tokens))
    config.update({Workload.TYPE: [workload("a1", "node-a")]}, "v1")
    servicer = CertificateServicer(ca, tokens, lambda n: [("demo", "client")] if n == "node-a" else [])
    readers = TokenFileReaders(tmp_path / "debug-token")
    debug = DebugServicer(config, readers)
    clock = FakeClock()
    csr = ca_pb2.CSRRequest(csr_pem=make_csr().decode(), identity=f"spiffe://{TD}/ns/demo/sa/client", ttl_seconds=3600)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        gate = CallGate()
        server, accept = make_server("127.0.0.1:0", 40, 10, server_options, [gate])
        assert accept is not None
        accept.admission.clock = clock          # the admission's injected clock (time.monotonic in production)
        config.add_to_server(server)
        gate.guard(config.guards())
        add_to_server(server, servicer)
        gate.guard(servicer.guards())
        debug.add_to_server(server)
        gate.guard(debug.guards())
        chain, key = ca.issue_serving_certificate(["127.0.0.1"])
        port = await serve(server, accept, "127.0.0.1:0",
                           grpc.ssl_server_credentials([(key.encode(), "".join(chain).encode())]))
        roots = grpc.ssl_channel_credentials(root_certificates=ca.trust_bundle().pem_bundle().encode())

        def channel() -> grpc.aio.Channel:
            # each its own connection (grpc shares subchannels between a process's channels)
            return grpc.aio.secure_channel(f"127.0.0.1:{port}", roots, options=[("grpc.use_local_subchannel_pool", 1)])

        async def certificate(ch: grpc.aio.Channel) -> None:
            resp = await ca_pb2_grpc.CertificateServiceStub(ch).CreateCertificate(csr, metadata=node_md, timeout=10)
            assert resp.cert_chain

        flood: list[ssl.SSLSocket] = []
        channels = [channel() for _ in range(6)]
        ca_ch, debug_ch, node = channels[:3]
        try:
            await certificate(ca_ch)
            await debug_pb2_grpc.DebugServiceStub(debug_ch).ProxyStatus(
                debug_pb2.ProxyStatusRequest(), metadata=[("authorization", f"Bearer {readers._token}")], timeout=10)
            stream = config_pb2_grpc.ConfigServiceStub(node).DeltaStream(metadata=node_md)
            await stream.write(config_pb2.DeltaRequest(node=NodeInfo("ztunnel", "node-a").to_proto(),
                                                       type_url=Workload.TYPE, subscribe=True))
            first = await asyncio.wait_for(stream.read(), 10)
            assert first is not grpc.aio.EOF and first.system_version_info == "v1", first
            for source in FLOODERS:
                for _ in range(10):
                    s = await loop.run_in_executor(None, idle_tls_from, source, port)
                    if s is not None:
                        flood.append(s)
            assert len(flood) == 37          # the port is full: the three authenticated and 37 idle
            clock.t += 11                    # the idle ones are past their grace

            evicted_before = fairness.REFUSED.get("unauthenticated_evicted", 0)
            for ch in channels[3:]:         # new connections, held: a restarted ztunnel's CA channels
                await certificate(ch)
            # Each evicted the oldest idle connection (127.0.0.2's first three), not the older
            # authenticated ones.
            assert fairness.REFUSED["unauthenticated_evicted"] == evicted_before + 3
            closed = [await loop.run_in_executor(None, _closed_within, s, 5.0 if i < 3 else 0.1)
                      for i, s in enumerate(flood[:4])]
            assert closed == [True, True, True, False], closed

            # The node's stream still gets pushes.
            await stream.write(config_pb2.DeltaRequest(type_url=Workload.TYPE, response_nonce=first.nonce))
            config.update({Workload.TYPE: [workload("a1", "node-a"), workload("a2", "node-a", ip="10.0.1.2")]}, "v2")
            pushed = await asyncio.wait_for(stream.read(), 10)
            assert pushed is not grpc.aio.EOF and pushed.system_version_info == "v2", pushed
            stream.cancel()
        finally:
            for s in flood:
                s.close()
            for ch in channels:
                await ch.close()
            await server.stop(None)
            await accept.stop()

    asyncio.run(asyncio.wait_for(go(), 90))
