"""The controller checks a caller's credential before it reads the caller's request.

grpc reads a unary request whole (up to its 4 MiB limit) before a handler runs; 200 concurrent
4 MiB requests without a credential took the controller from 110 MB to about 900 MB. The real
controller process (`--kube --ca-secret`, TLS, TokenReview against the API-server emulator) is sent
requests *over* the 4 MiB limit: a call whose request were read would fail RESOURCE_EXHAUSTED
("larger than max"); refused before reading, it fails UNAUTHENTICATED with the method's own reason.
A caller with a valid node credential is read as before (the limit is unchanged for nodes). (The
config stream reads a refused caller's first request, one refusal at a time, so that its client
learns why: controller/grpcgate.py.)
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from prometheus_client import CollectorRegistry

from ambit.api import ca_grpc, ca_pb2, config_grpc, config_pb2, debug_grpc, debug_pb2
from ambit.configclient import tls
from controller.ca.credentials import BootstrapTokens
from controller.configserver import ConfigServer
from controller.configserver.auth import NodeAuthenticator
from controller.configserver.server import SERVER_OPTIONS
from controller.grpcgate import CallGate
from tests.support.kube_emulator import KubeEmulator
from tests.unit.controller.test_ca_secret import NS, TD, published_root, start_controller, stop

OVER = 5 << 20          # over grpc's 4 MiB max_receive_message_length
NODE = config_pb2.Node(kind="ztunnel", name="node-1", instance_id="i")


@pytest.fixture(scope="module")
def controller() -> Iterator[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="gate-"))
    emu = KubeEmulator().start()
    for o in [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in (NS, "default")] + [
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}]:
        emu.create(o)
    emu.add_token("zt-1", NS, "ztunnel", node="node-1", pod="ztunnel-a")
    proc, address, log = start_controller({"emu": emu, "tmp": tmp}, "gate")
    try:
        (tmp / "root.pem").write_bytes(published_root(emu))
        yield {"address": address, "trust": tls.ControllerTrust(tmp / "root.pem", tls.controller_identity(TD, NS))}
    finally:
        stop(proc, log)
        emu.stop()


async def call(c: dict[str, Any], method: str, token: str) -> tuple[str, str]:
    """(status name, message) of `method` with an oversized request, as node-1 with `token`."""
    md = {"authorization": f"Bearer {token}", "x-ambit-node": "node-1"}
    async with tls.channel(c["address"], c["trust"]) as ch:
        try:
            if method == "CreateCertificate":
                await ca_grpc.CertificateServiceStub(ch).CreateCertificate(
                    ca_pb2.CSRRequest(csr_pem="A" * OVER, identity="spiffe://cluster.local/ns/default/sa/x"),
                    metadata=md, timeout=30)
            elif method == "Report":
                await debug_grpc.DebugServiceStub(ch).Report(
                    debug_pb2.ProxyReport(node=NODE, version="A" * OVER), metadata=md, timeout=30)
            elif method == "ProxyConfig":
                await debug_grpc.DebugServiceStub(ch).ProxyConfig(
                    debug_pb2.ProxyConfigRequest(proxy="A" * OVER), metadata=md, timeout=30)
            else:
                assert method == "Feed"
                async with debug_grpc.DebugServiceStub(ch).Feed.open(metadata=md, timeout=30) as s:
                    await s.send_message(debug_pb2.FeedUpload(node=NODE, metrics="A" * OVER))
                    await s.recv_message()
        except GRPCError as e:
            return e.status.name, e.message or ""
    return "OK", ""


@pytest.mark.parametrize("method, why", [
    ("CreateCertificate", "TokenReview"),
    ("Report", "status report"),
    ("Feed", "feed"),
    ("ProxyConfig", "debug API"),
])
def test_a_caller_without_a_valid_credential_is_refused_before_its_request_is_read(
        controller: dict[str, Any], method: str, why: str) -> None:
    code, message = asyncio.run(call(controller, method, "made-up-token"))
    assert code == "UNAUTHENTICATED", (code, message)
    assert why in message, message


def test_a_caller_with_the_node_credential_is_read_and_held_to_the_size_limit(controller: dict[str, Any]) -> None:
    code, message = asyncio.run(call(controller, "CreateCertificate", "zt-1"))
    assert code == "RESOURCE_EXHAUSTED", (code, message)


def test_a_refused_config_stream_is_read_for_its_reason_one_at_a_time() -> None:
    """A refused config stream's first request is read (so its client learns why) by one refusal at
    a time: while one waits for its first request, another refused stream is answered without its
    oversized request being read (UNAUTHENTICATED, not RESOURCE_EXHAUSTED)."""
    async def go() -> tuple[str, str]:
        config = ConfigServer(debounce=0.0, registry=CollectorRegistry(),
                              authenticator=NodeAuthenticator(BootstrapTokens()))
        gate = CallGate(max_draining=1, drain_timeout=30.0)
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[gate])
        config.add_to_server(server)
        gate.guard(config.guards())
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        md = {"authorization": "Bearer made-up", "x-ambit-node": "node-1"}
        try:
            async with Channel("127.0.0.1", port) as ch:
                stub = config_grpc.ConfigServiceStub(ch)
                async with stub.DeltaStream.open(metadata=md, timeout=30) as holding:
                    await holding.send_request()            # headers, and no first request yet
                    while gate.draining < 1:
                        await asyncio.sleep(0.01)
                    try:
                        async with stub.DeltaStream.open(metadata=md, timeout=30) as s:
                            await s.send_message(config_pb2.DeltaRequest(
                                node=NODE, type_url="ambit.io/Workload", subscribe=True,
                                initial_resource_versions={"w": "v" * OVER}))
                            await s.recv_message()
                    except GRPCError as e:
                        return e.status.name, e.message or ""
                    finally:
                        await holding.cancel()
                return "OK", ""
        finally:
            await server.stop(None)

    code, message = asyncio.run(go())
    assert code == "UNAUTHENTICATED", (code, message)
    assert "bootstrap token not valid" in message, message
