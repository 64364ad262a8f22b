"""The controller's channels are TLS, and clients believe only the controller (issue 16).

The lab's agents, ztunnels and waypoints reach the controller's socket over TLS, pinned to the root
the lab wrote (`<labdir>/controller-root.pem`), checking the controller's SPIFFE id. Here:

* a plaintext client, and a TLS client without a credential, get nothing (config stream and CA);
* a man in the middle on the socket path, serving a forged root and a certificate that claims the
  controller's identity, is refused before the client's credential leaves it, so the forged trust
  bundle it would hand out is never seen; and so is one that holds a genuine mesh certificate (a
  stolen workload key): the CA never puts the controller's DNS name in a workload certificate.

Node scoping (a node cannot obtain another node's workloads or certificates) is tested in
test_trust_holes.py and test_mtls.py over the same TLS channel.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ambit.api import ca_grpc, ca_pb2, ca_pb2_grpc, config_grpc, config_pb2, config_pb2_grpc
from ambit.configclient import ConfigClient, NodeInfo, tls
from ambit.configclient.credential import node_metadata
from ambit.dataplane.identity import CertificateFetchError, GrpcCertificateFetcher, make_key_and_csr
from ambit.model import Workload
from ambitctl.lab import components
from controller.ca import CertificateAuthority, DirectoryStorage, generate_root
from tests.lab.labctl import Lab

CLIENT_ID = "spiffe://cluster.local/ns/demo/sa/client"


def token(lab: Lab, node: str = "node1") -> str:
    return (lab.dir / node / "bootstrap-token").read_text().strip()


class Mitm(config_pb2_grpc.ConfigServiceServicer, ca_pb2_grpc.CertificateServiceServicer):
    """An impostor controller: records every call's metadata (a credential it could steal) and would
    answer with its own forged root as the trust bundle."""

    def __init__(self, forged: CertificateAuthority) -> None:
        self.forged = forged
        self.seen: list[dict[str, str]] = []

    async def DeltaStream(self, request_iterator, context):  # noqa: N802 - gRPC method name
        self.seen.append(dict(context.invocation_metadata() or ()))
        async for _ in request_iterator:
            yield config_pb2.DeltaResponse(type_url=Workload.TYPE, system_version_info="forged", nonce="1")

    async def CreateCertificate(self, request, context):  # noqa: N802 - gRPC method name
        self.seen.append(dict(context.invocation_metadata() or ()))
        return ca_pb2.CSRResponse(cert_chain=self.forged.sign_csr(request.csr_pem, request.identity),
                                  trust_bundle=self.forged.trust_bundle().pems())


async def serve(socket: Path, chain: list[str], key: str, servicer: Mitm) -> grpc.aio.Server:
    server = grpc.aio.server()
    config_pb2_grpc.add_ConfigServiceServicer_to_server(servicer, server)
    ca_pb2_grpc.add_CertificateServiceServicer_to_server(servicer, server)
    server.add_secure_port(f"unix:{socket}", grpc.ssl_server_credentials([(key.encode(), "".join(chain).encode())]))
    await server.start()
    return server


async def try_config(lab: Lab, target: str) -> ConfigClient:
    """Run a node1 agent's config client against `target` for a few seconds; returns it (synced or not)."""
    client = ConfigClient(target, NodeInfo("agent", "node1"), [Workload.TYPE], lambda _u: None,
                          metadata=node_metadata(lab.dir / "node1" / "bootstrap-token", "node1"),
                          trust=components.controller_trust(lab.dir))
    await client.start()
    try:
        await client.wait_synced(timeout=5)
    except TimeoutError:
        pass
    await client.stop()
    return client


async def try_certificate(lab: Lab, target: str) -> str:
    """Ask `target` for demo/client's certificate with node1's credential, over the pinned TLS channel."""
    async with tls.channel(target, components.controller_trust(lab.dir)) as ch:
        _, csr = make_key_and_csr(CLIENT_ID)
        try:
            res = await GrpcCertificateFetcher(ch, "node1", lambda: token(lab), timeout=5).fetch(CLIENT_ID, csr, 600)
        except CertificateFetchError as e:
            return f"refused: {e}"
        return f"issued; bundle of {len(res.trust_bundle)} roots"


def test_plaintext_and_credential_less_clients_get_nothing(lab: Lab) -> None:
    sock = f"unix:{lab.dir / 'controller.sock'}"

    async def go() -> tuple[grpc.StatusCode, Status, Status]:
        async with grpc.aio.insecure_channel(sock) as ch:         # no TLS at all: no handshake, nothing served
            with pytest.raises(grpc.aio.AioRpcError) as plain:
                await config_pb2_grpc.ConfigServiceStub(ch).Status(config_pb2.StatusRequest(), timeout=5)
        async with lab.controller_channel() as ch:                # TLS, but no credential
            _, csr = make_key_and_csr(CLIENT_ID)
            with pytest.raises(GRPCError) as ca:
                await ca_grpc.CertificateServiceStub(ch).CreateCertificate(
                    ca_pb2.CSRRequest(csr_pem=csr.decode(), identity=CLIENT_ID), timeout=5)
            # The server refuses on the call's metadata, before it reads a message, so the client
            # reads without writing a message first.
            with pytest.raises(GRPCError) as stream:
                async with config_grpc.ConfigServiceStub(ch).DeltaStream.open() as call:
                    await call.send_request()
                    await asyncio.wait_for(call.recv_message(), 10)
        assert "node credential" in (stream.value.message or ""), stream.value.message
        return plain.value.code(), ca.value.status, stream.value.status

    plain, ca, stream = asyncio.run(go())
    assert plain == grpc.StatusCode.UNAVAILABLE
    assert ca == Status.UNAUTHENTICATED
    assert stream == Status.UNAUTHENTICATED


def test_a_man_in_the_middle_is_refused_before_the_credential_leaves(lab: Lab, tmp_path: Path) -> None:
    identity = components.controller_identity("cluster.local")
    hosts = [tls.server_name(identity)]
    forged = CertificateAuthority(generate_root("cluster.local"), "cluster.local")
    material = DirectoryStorage(lab.dir / "ca").load()
    assert material is not None
    # A genuine mesh certificate (as a stolen workload key would be), from the real CA.
    genuine = CertificateAuthority(material, "cluster.local")
    wkey, wcsr = make_key_and_csr(CLIENT_ID)
    impostors = {
        "forged root claiming the controller's id": forged.issue_serving_certificate(hosts, identity=identity),
        "genuine workload certificate": (genuine.sign_csr(wcsr, CLIENT_ID), wkey.decode()),
    }

    async def go() -> dict[str, tuple[bool, str, str, list[dict[str, str]]]]:
        out = {}
        for i, (what, (chain, key)) in enumerate(impostors.items()):
            sock = tmp_path / f"mitm{i}.sock"
            mitm = Mitm(forged)
            server = await serve(sock, chain, key, mitm)
            try:
                client = await try_config(lab, f"unix:{sock}")
                cert = await try_certificate(lab, f"unix:{sock}")
            finally:
                await server.stop(None)
            out[what] = (client.connected or client.updates > 0, client.last_error, cert, mitm.seen)
        return out

    for what, (synced, error, cert, seen) in asyncio.run(go()).items():
        assert not synced, f"{what}: the config client accepted the impostor"
        assert "not trusted" in error or "certificate" in error.lower(), (what, error)
        assert cert.startswith("refused: "), (what, cert)
        assert seen == [], f"{what}: the impostor received a call (and the node credential): {seen}"

    # The same client, against the real controller: served (the refusals above were the impostors').
    async def real() -> tuple[ConfigClient, str]:
        target = f"unix:{lab.dir / 'controller.sock'}"
        return await try_config(lab, target), await try_certificate(lab, target)
    client, cert = asyncio.run(real())
    assert client.updates > 0, client.last_error
    assert cert.startswith("issued"), cert
