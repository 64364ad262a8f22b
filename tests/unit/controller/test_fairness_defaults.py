"""The per-client bounds as the controller ships them (their defaults), against floods from one client.

test_fairness.py drives each bound with small settings and an injected clock; these use only the
servers' long-standing interfaces and their defaults, as a deployment does: one node's credential
asking for certificates in a loop, one node holding config streams, one address holding
connections. Each flood went through before (every CSR signed, every stream served, every slot
taken); now it is cut at its bound and the other clients are still served.
"""

from __future__ import annotations

import asyncio
import socket

import grpc
from prometheus_client import CollectorRegistry

from ambit.api import config_pb2, config_pb2_grpc
from ambit.configclient import NodeInfo, fetch_status
from ambit.model import Workload
from controller.app import StatusServer
from controller.ca import CertificateAuthority, generate_root
from controller.configserver import ConfigServer
from tests.unit.configstream.helpers import workload
from tests.unit.controller.test_ca import TD, _Harness
from tests.unit.controller.test_grpc_connections import connect_from


def test_a_node_asking_for_certificates_in_a_loop_is_cut_at_its_share_and_others_are_served() -> None:
    """1,500 requests of one node at once (the default bucket: 1,000, then 10/s)."""
    ca = CertificateAuthority(generate_root(TD), TD)
    ids = {"node-1": f"spiffe://{TD}/ns/demo/sa/client", "node-2": f"spiffe://{TD}/ns/prod/sa/db"}

    async def run() -> None:
        async with _Harness(ca, {"node-1": [("demo", "client")], "node-2": [("prod", "db")]}) as h:
            codes: list[grpc.StatusCode] = []
            for _ in range(15):
                got = await asyncio.gather(*(h.call("node-1", h.token["node-1"], ids["node-1"]) for _ in range(100)),
                                           return_exceptions=True)
                codes += [g.code() if isinstance(g, grpc.aio.AioRpcError) else grpc.StatusCode.OK for g in got]
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) > 0, "every request of the loop was signed"
            assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
            assert codes.count(grpc.StatusCode.OK) >= 1000            # the start-up burst passed whole
            assert (await h.call("node-2", h.token["node-2"], ids["node-2"])).cert_chain

    asyncio.run(run())


def test_a_node_cannot_hold_config_streams_without_bound() -> None:
    """513 streams of one node on one connection (the default bound: 512)."""
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
    server.update({Workload.TYPE: [workload("a1", "node-a")]}, "v1")

    async def go() -> None:
        port = await server.start()
        calls = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = config_pb2_grpc.ConfigServiceStub(ch)
                refused = None
                for i in range(513):
                    call = stub.DeltaStream()
                    node = NodeInfo("ztunnel", "node-a", instance_id=str(i))
                    await call.write(config_pb2.DeltaRequest(node=node.to_proto(), type_url=Workload.TYPE,
                                                             subscribe=True))
                    await call.initial_metadata()
                    if call.done():
                        refused = (await call.code(), await call.details(), i)
                        break
                    await call.read()
                    calls.append(call)
                assert refused is not None, "node-a held 513 config streams"
                assert refused[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and refused[2] == 512, refused
                other = stub.DeltaStream()
                await other.write(config_pb2.DeltaRequest(node=NodeInfo("ztunnel", "node-b").to_proto(),
                                                          type_url=Workload.TYPE, subscribe=True))
                assert (await other.read()).type_url == Workload.TYPE       # another node is served
                other.cancel()
        finally:
            for c in calls:
                c.cancel()
            await server.stop(None)

    asyncio.run(asyncio.wait_for(go(), 120))


def test_one_address_cannot_lock_the_nodes_out_of_the_grpc_port() -> None:
    """The port holds 1,500 connections; one address opens 1,500 (an HTTP/2 preface each, no call).
    Before, they took every slot and a real grpc client from elsewhere was closed at accept."""
    server = StatusServer(lambda: [], debounce=0.0, registry=CollectorRegistry())

    async def go() -> None:
        loop = asyncio.get_running_loop()
        port = await server.start("127.0.0.1:0", max_connections=1500)

        def flood() -> list[socket.socket]:
            return [connect_from("127.0.0.2", port) for _ in range(1500)]

        held = await loop.run_in_executor(None, flood)
        try:
            resp = await asyncio.wait_for(fetch_status(f"127.0.0.1:{port}"), 30)
            assert resp is not None and resp.version == "empty"
        finally:
            for s in held:
                s.close()
            await server.stop()

    asyncio.run(asyncio.wait_for(go(), 120))
