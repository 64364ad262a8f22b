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
        yield {"address": address, "trust": tls.ControllerTrust(tmp / "root.pem", tls.controller_identity(TD, NS)),
               "pid": proc.pid}
    finally:
        stop(proc, log)
        emu.stop()


async def call(c: dict[str, Any], method: str, token: str, size: int = OVER) -> tuple[str, str]:
    """(status name, message) of `method` with a request of about `size` bytes, as node-1 with
    `token`."""
    md = {"authorization": f"Bearer {token}", "x-ambit-node": "node-1"}
    async with tls.channel(c["address"], c["trust"]) as ch:
        try:
            if method == "CreateCertificate":
                await ca_grpc.CertificateServiceStub(ch).CreateCertificate(
                    ca_pb2.CSRRequest(csr_pem="A" * size, identity="spiffe://cluster.local/ns/default/sa/x"),
                    metadata=md, timeout=30)
            elif method == "Report":
                await debug_grpc.DebugServiceStub(ch).Report(
                    debug_pb2.ProxyReport(node=NODE, version="1", state_json=b"{" + b" " * size + b"}"),
                    metadata=md, timeout=30)
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


@pytest.mark.parametrize("method, size, bound", [
    ("CreateCertificate", 200 << 10, "65536"),       # a CSR is about 1 KiB
    ("Report", 1 << 20, "327680"),                    # a report's state is at most 256 KiB
])
def test_an_authenticated_node_is_held_to_each_methods_own_message_bound(
        controller: dict[str, Any], method: str, size: int, bound: str) -> None:
    """Was: read and parsed up to grpc's 4 MiB for every method (a 200 KiB "CSR" was parsed and
    refused as a bad CSR; a 1 MiB report was parsed, then refused INVALID_ARGUMENT). Now refused
    RESOURCE_EXHAUSTED, unparsed, by a message naming the method and its bound."""
    code, message = asyncio.run(call(controller, method, "zt-1", size))
    assert code == "RESOURCE_EXHAUSTED", (code, message)
    assert method in message and f"bound of {bound} bytes" in message, message


def _rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) >> 10
    raise AssertionError("no VmRSS")


def test_config_streams_claiming_megabytes_of_resources_do_not_hold_megabytes_each(
        controller: dict[str, Any]) -> None:
    """A subscribe's `initial_resource_versions` is the client's word, up to grpc's 4 MiB. Ten
    streams of one authenticated node, each claiming 270,000 resources it was never sent and never
    ACKing, took the controller from 109 to 765 MiB (a dict of the claim per stream, and
    the removal of every name in a response the client does not read); one credential may hold
    512 streams. The server now keeps the claim compactly and removes at most MAX_GONE names
    outside the view per subscribe."""
    md = {"authorization": "Bearer zt-1", "x-ambit-node": "node-1"}
    req = config_pb2.DeltaRequest(node=NODE, type_url="ambit.io/Workload", subscribe=True,
                                  initial_resource_versions={f"n{i:07d}": "v" for i in range(270_000)})
    assert 4 << 20 > req.ByteSize() > 3 << 20

    async def go() -> int:
        before = _rss_mib(controller["pid"])
        async with tls.channel(controller["address"], controller["trust"]) as ch:
            stub = config_grpc.ConfigServiceStub(ch)
            opened = [stub.DeltaStream.open(metadata=md, timeout=60) for _ in range(10)]
            streams = [await o.__aenter__() for o in opened]
            for s in streams:                   # each subscribe handled: its first response arrives
                await s.send_message(req)
                await s.recv_message()
            grown = _rss_mib(controller["pid"]) - before
            for s in streams:
                await s.cancel()
        return grown

    grown = asyncio.run(go())
    assert grown < 300, f"the controller grew {grown} MiB for 10 streams"
