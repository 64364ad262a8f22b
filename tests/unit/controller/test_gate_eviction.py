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

import grpc
from prometheus_client import CollectorRegistry

from ambit.api import ca_pb2, ca_pb2_grpc, config_pb2, config_pb2_grpc
from ambit.configclient import NodeInfo
from ambit.model import Workload
from controller import fairness
from controller.acceptgate import make_server, serve
from controller.ca import CertificateAuthority, CertificateServicer, add_to_server
from controller.ca.credentials import BootstrapTokens
from controller.configserver import ConfigServer
from controller.configserver.auth import NodeAuthenticator
from controller.configserver.server import server_options
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


def test_idle_unauthenticated_connections_from_four_addresses_cannot_lock_out_a_node(ca: CertificateAuthority) -> None:
    """The port holds 40, each address 10. A node's config stream is up; four addresses fill the
    rest with idle TLS connections. Before, a node's CA channel was then reset at accept: no
    certificate. Now it evicts the oldest idle connection past its grace and gets its certificate,
    and the node's authenticated config stream is never cut."""
    tokens = BootstrapTokens()
    token = tokens.issue("node-a")
    config = ConfigServer(debounce=0.0, registry=CollectorRegistry(), authenticator=NodeAuthenticator(tokens))
    config.update({Workload.TYPE: [workload("a1", "node-a")]}, "v1")
    servicer = CertificateServicer(ca, tokens, lambda n: [("demo", "client")] if n == "node-a" else [])
    clock = FakeClock()
    identity = f"spiffe://{TD}/ns/demo/sa/client"

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
        chain, key = ca.issue_serving_certificate(["127.0.0.1"])
        port = await serve(server, accept, "127.0.0.1:0",
                           grpc.ssl_server_credentials([(key.encode(), "".join(chain).encode())]))
        roots = grpc.ssl_channel_credentials(root_certificates=ca.trust_bundle().pem_bundle().encode())
        # each channel its own connection (grpc shares subchannels between a process's channels)
        own = [("grpc.use_local_subchannel_pool", 1)]
        flood: list[ssl.SSLSocket] = []
        node = grpc.aio.secure_channel(f"127.0.0.1:{port}", roots, options=own)
        try:
            stream = config_pb2_grpc.ConfigServiceStub(node).DeltaStream(
                metadata=[("authorization", f"Bearer {token}"), ("x-ambit-node", "node-a")])
            await stream.write(config_pb2.DeltaRequest(node=NodeInfo("ztunnel", "node-a").to_proto(),
                                                       type_url=Workload.TYPE, subscribe=True))
            first = await asyncio.wait_for(stream.read(), 10)
            assert first is not grpc.aio.EOF and first.system_version_info == "v1", first
            for source in FLOODERS:
                for _ in range(10):
                    s = await loop.run_in_executor(None, idle_tls_from, source, port)
                    if s is not None:
                        flood.append(s)
            assert len(flood) == 39          # the port is full: the node's connection and 39 idle ones
            clock.t += 11                    # the idle ones are past their grace

            evicted_before = fairness.REFUSED.get("unauthenticated_evicted", 0)
            for _ in range(3):              # each a new connection: a restarted ztunnel's CA channel
                async with grpc.aio.secure_channel(f"127.0.0.1:{port}", roots, options=own) as ch:
                    resp = await ca_pb2_grpc.CertificateServiceStub(ch).CreateCertificate(
                        ca_pb2.CSRRequest(csr_pem=make_csr().decode(), identity=identity, ttl_seconds=3600),
                        metadata=[("x-ambit-node", "node-a"), ("authorization", f"Bearer {token}")], timeout=10)
                    assert resp.cert_chain
                await asyncio.sleep(0.1)    # the channel's close reaches the gate: its slot is free
            # The first CA channel evicted the oldest idle connection (127.0.0.2's first); the next
            # ones took the slot each predecessor freed, so nothing more was evicted.
            assert fairness.REFUSED["unauthenticated_evicted"] == evicted_before + 1
            assert await loop.run_in_executor(None, _closed_within, flood[0], 5.0)
            assert not await loop.run_in_executor(None, _closed_within, flood[1], 0.2)

            # The node's authenticated connection was never the one evicted: its stream still gets pushes.
            await stream.write(config_pb2.DeltaRequest(type_url=Workload.TYPE, response_nonce=first.nonce))
            config.update({Workload.TYPE: [workload("a1", "node-a"), workload("a2", "node-a", ip="10.0.1.2")]}, "v2")
            pushed = await asyncio.wait_for(stream.read(), 10)
            assert pushed is not grpc.aio.EOF and pushed.system_version_info == "v2", pushed
            stream.cancel()
        finally:
            for s in flood:
                s.close()
            await node.close()
            await server.stop(None)
            await accept.stop()

    asyncio.run(asyncio.wait_for(go(), 90))
