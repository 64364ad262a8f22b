"""The config stream requires the node credential and scopes by the node it authenticates.

A real grpc.aio server on 127.0.0.1 with the CA's own `BootstrapTokens` verifier, real clients:
raw stubs (to see the exact status codes and messages) and the `ConfigClient` the components use.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from ambit.api import config_pb2, config_pb2_grpc
from ambit.configclient import Backoff, ConfigClient, NodeInfo
from ambit.configclient.credential import node_metadata
from ambit.model import Resource, Workload
from controller.ca.credentials import BootstrapTokens
from controller.configserver import ConfigServer
from controller.configserver.auth import NodeAuthenticator, check_claim
from ztunnel.meshstate import TYPES as ZTUNNEL_TYPES

from .helpers import workload

STATE: dict[str, list[Resource]] = {
    Workload.TYPE: [workload("a1", "node-a", ip="10.0.1.1"), workload("a2", "node-a", ip="10.0.1.2"),
                    workload("b1", "node-b", ip="10.0.2.1")],
}


class Served:
    def __init__(self) -> None:
        self.tokens = BootstrapTokens()
        self.token = {n: self.tokens.issue(n) for n in ("node-a", "node-b")}
        self.server = ConfigServer(debounce=0.0, registry=CollectorRegistry(),
                                   authenticator=NodeAuthenticator(self.tokens))
        self.server.update(STATE, "v1")

    async def __aenter__(self) -> Served:
        self.port = await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(None)

    async def first_response(self, node: NodeInfo, metadata: list[tuple[str, str]] | None):
        """Open a stream as `node` with `metadata`; the first response (or the AioRpcError)."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            call = config_pb2_grpc.ConfigServiceStub(ch).DeltaStream(metadata=metadata)
            try:
                await call.write(config_pb2.DeltaRequest(node=node.to_proto(), type_url=Workload.TYPE,
                                                         subscribe=True))
                # As the ConfigClient does: after the first request, the server's headers (it
                # admitted us) or its refusal, with its status.
                await call.initial_metadata()
                if call.done():
                    return Refused(await call.code(), await call.details())
                return await asyncio.wait_for(call.read(), 10)
            except grpc.aio.AioRpcError as e:
                return Refused(e.code(), e.details() or "")
            finally:
                call.cancel()


@dataclass
class Refused:
    code: grpc.StatusCode
    details: str


def creds(token: str, node: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}"), ("x-ambit-node", node)]


def refused(result, code: grpc.StatusCode, *fragments: str) -> None:
    assert isinstance(result, Refused), f"expected {code.name}, got a response: {result}"
    assert result.code == code, (result.code, result.details)
    for f in fragments:
        assert f in result.details, result.details


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_without_or_with_a_bad_credential_the_stream_is_unauthenticated_and_says_what_it_needs() -> None:
    async def go() -> None:
        async with Served() as s:
            zt = NodeInfo("ztunnel", "node-a")
            refused(await s.first_response(zt, None), grpc.StatusCode.UNAUTHENTICATED,
                    "needs the node credential", "authorization: Bearer <token>", "x-ambit-node")
            refused(await s.first_response(zt, creds("not-a-token", "node-a")), grpc.StatusCode.UNAUTHENTICATED,
                    "bootstrap token not valid for node 'node-a'")
            # node-a's token naming node-b in the metadata: the verifier ties tokens to nodes.
            refused(await s.first_response(NodeInfo("ztunnel", "node-b"), creds(s.token["node-a"], "node-b")),
                    grpc.StatusCode.UNAUTHENTICATED, "node 'node-b'")
            # Positive control: the same server, the right credential, a response.
            ok = await s.first_response(zt, creds(s.token["node-a"], "node-a"))
            assert isinstance(ok, config_pb2.DeltaResponse) and len(ok.resources) == 3
    run(go())


def test_a_nodes_credential_never_buys_another_nodes_view_nor_a_waypoints() -> None:
    async def go() -> None:
        async with Served() as s:
            a = creds(s.token["node-a"], "node-a")
            refused(await s.first_response(NodeInfo("agent", "node-b"), a), grpc.StatusCode.PERMISSION_DENIED,
                    "the credential is node 'node-a''s, but the stream subscribes as agent/node-b")
            refused(await s.first_response(NodeInfo("waypoint", "wp-0", waypoint="demo/wp"), a),
                    grpc.StatusCode.PERMISSION_DENIED, "hosts no pod demo/wp-0 of waypoint demo/wp")
            # The agent of node-b, authenticated as node-b, gets node-b's pods only; node-a's agent node-a's.
            got_b = await s.first_response(NodeInfo("agent", "node-b"), creds(s.token["node-b"], "node-b"))
            assert [r.name for r in got_b.resources] == ["b1"]
            got_a = await s.first_response(NodeInfo("agent", "node-a"), a)
            assert sorted(r.name for r in got_a.resources) == ["a1", "a2"]
    run(go())


def test_the_config_client_presents_the_token_file_and_retries_until_it_appears(tmp_path: Path) -> None:
    token_file = tmp_path / "bootstrap-token"

    async def go() -> None:
        async with Served() as s:
            got: list[str] = []
            client = ConfigClient(f"127.0.0.1:{s.port}", NodeInfo("agent", "node-a"), [Workload.TYPE],
                                  lambda u: got.extend(sorted(u.state)), metadata=node_metadata(token_file, "node-a"),
                                  backoff=Backoff(initial=0.05, maximum=0.1))
            await client.start()
            try:
                await asyncio.sleep(0.5)
                assert not client.connected and "bootstrap-token" in client.last_error, client.last_error
                token_file.write_text("wrong\n")
                for _ in range(100):
                    if "UNAUTHENTICATED" in client.last_error:
                        break
                    await asyncio.sleep(0.05)
                assert "UNAUTHENTICATED" in client.last_error and not got
                token_file.write_text(s.token["node-a"] + "\n")
                await client.wait_synced(timeout=10)
                assert got == ["a1", "a2"] and client.connected
            finally:
                await client.stop()
    run(go())


@pytest.mark.parametrize("case", ["wrong token", "waypoint pod unknown"])
def test_a_refused_client_always_logs_the_controllers_reason_never_a_local_internal_error(
        case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Operators read the refusal in the component's log: every attempt must say UNAUTHENTICATED or
    PERMISSION_DENIED and why. (Before the client waited for the controller's admission, most
    attempts of a six-type subscriber failed a write as `INTERNAL: Internal error from Core`, and
    the log flipped between the two.) A waypoint pod the controller has not seen yet is refused
    PERMISSION_DENIED after its first request, until its informer catches up."""
    token_file = tmp_path / "bootstrap-token"

    async def go() -> list[str]:
        async with Served() as s:
            if case == "wrong token":
                token_file.write_text("wrong\n")
                node, code, why = NodeInfo("ztunnel", "node-a"), "UNAUTHENTICATED", "not valid for node 'node-a'"
            else:
                token_file.write_text(s.token["node-a"] + "\n")
                node, code, why = (NodeInfo("waypoint", "wp-0", waypoint="demo/wp"), "PERMISSION_DENIED",
                                   "hosts no pod demo/wp-0 of waypoint demo/wp")
            client = ConfigClient(f"127.0.0.1:{s.port}", node, list(ZTUNNEL_TYPES), lambda u: None,
                                  metadata=node_metadata(token_file, "node-a"),
                                  backoff=Backoff(initial=0.01, maximum=0.02))
            seen: list[str] = []
            note = client._note_failure

            def record(reason: str) -> None:
                seen.append(reason)
                note(reason)
            client._note_failure = record        # type: ignore[method-assign]
            await client.start()
            try:
                while len(seen) < 40:
                    await asyncio.sleep(0.02)
            finally:
                await client.stop()
            odd = [w for w in seen if not w.startswith(f"{code}: ")]
            assert not odd, f"{len(odd)} of {len(seen)} attempts did not carry the refusal: {odd[:3]}"
            assert why in seen[0], seen[0]
            return [code]

    with caplog.at_level("WARNING", logger="ambit.configclient"):
        code = run(go())[0]
    said = [r.getMessage() for r in caplog.records if r.name == "ambit.configclient"]
    assert len(said) == 1 and code in said[0], said     # said once, not on every retry


@pytest.mark.parametrize("node, why", [
    (NodeInfo("ztunnel", "n1"), ""), (NodeInfo("agent", "n1"), ""),
    (NodeInfo("ztunnel", "n2"), "subscribes as ztunnel/n2"),
    (NodeInfo("waypoint", "pod", waypoint="ns/wp"), "hosts no pod ns/pod of waypoint ns/wp")])
def test_check_claim(node: NodeInfo, why: str) -> None:
    got = check_claim("n1", node)
    assert (why in got and bool(got)) if why else got == ""


def test_a_waypoint_pod_subscribes_with_the_credential_of_its_node() -> None:
    pods = {("demo", "wp", "wp-0")}
    assert check_claim("node-a", NodeInfo("waypoint", "wp-0", waypoint="demo/wp"), pods) == ""
    # another pod name, another waypoint, or no such pod on that node: refused, saying why
    assert "hosts no pod demo/wp-1" in check_claim("node-a", NodeInfo("waypoint", "wp-1", waypoint="demo/wp"), pods)
    assert "waypoint demo/other" in check_claim("node-a", NodeInfo("waypoint", "wp-0", waypoint="demo/other"), pods)
    assert check_claim("node-b", NodeInfo("waypoint", "wp-0", waypoint="demo/wp"), set()) != ""
