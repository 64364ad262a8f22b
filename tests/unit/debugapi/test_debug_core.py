"""The debug API's pure parts and its in-process gRPC edge: proxy states from the config stream's
view (SYNCED / STALE / NACK / NOT SENT / DISCONNECTED), the version-skew policy, report expiry,
and the node credential scoping of status reports (a ztunnel cannot report as another node)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from prometheus_client import CollectorRegistry

from ambit.api import debug_pb2, debug_pb2_grpc
from ambit.configclient.node import NodeInfo
from ambit.version import COMPATIBLE, INCOMPATIBLE, UNKNOWN, WARN, compatibility
from controller.ca import BootstrapTokens
from controller.configserver import ConfigServer
from controller.configserver.auth import NodeAuthenticator
from controller.configserver.subscription import Nack, SubscriberStatus, TypeStatus
from controller.debug import DebugServicer, ReportStore, TokenFileReaders
from controller.debug.proxystatus import state_of

ZT = NodeInfo("ztunnel", "n1")


def sub(*types: TypeStatus, connected: bool = True) -> SubscriberStatus:
    return SubscriberStatus(ZT, connected, 0.0, None if connected else 1.0, "peer", types)


def t(acked: str, sent: str, in_sync: bool, nack: Nack | None = None) -> TypeStatus:
    return TypeStatus("ambit.io/Workload", acked, sent, in_sync, 1, nack)


def test_proxy_states() -> None:
    assert state_of(sub(t("v2", "v2", True)), "v2") == ("SYNCED", "v2", "")
    assert state_of(sub(t("v1", "v2", False)), "v2") == ("STALE", "v1", "")
    assert state_of(sub(t("", "", False)), "v2") == ("NOT SENT", "", "")
    nacked = sub(t("v1", "v2", False, Nack("v2", "3", "bad weight", 0.0)))
    assert state_of(nacked, "v2") == ("NACK", "v1", "ambit.io/Workload: bad weight")
    # A NACK of an older version, since superseded by an accepted one, is not a NACK now.
    assert state_of(sub(t("v3", "v3", True, Nack("v2", "3", "old", 0.0))), "v3")[0] == "SYNCED"
    assert state_of(sub(t("v1", "v1", True), connected=False), "v2")[0] == "DISCONNECTED"
    # Two types, one behind: the proxy's ACKed version is the one behind.
    two = sub(t("v2", "v2", True), TypeStatus("ambit.io/Service", "v1", "v2", False, 0, None))
    assert state_of(two, "v2") == ("STALE", "v1", "")


@pytest.mark.parametrize("a,b,verdict", [
    ("1.4.0", "1.4.7", COMPATIBLE), ("1.4.0", "1.5.0", WARN), ("1.5.2", "1.4.0", WARN),
    ("1.4.0", "1.6.0", INCOMPATIBLE), ("1.4.0", "2.4.0", INCOMPATIBLE), ("1.4.0", "", UNKNOWN),
    ("v0.1.0", "0.1.3-dev", COMPATIBLE),
])
def test_version_skew_policy(a: str, b: str, verdict: str) -> None:
    assert compatibility(a, b)[0] == verdict


def test_reports_expire() -> None:
    now = [100.0]
    store = ReportStore(ttl=30, clock=lambda: now[0])
    store.put(ZT, "0.1.0", {"certs": []})
    now[0] = 125.0
    r = store.get(ZT.key)
    assert r is not None and store.age(r) == 25.0
    now[0] = 131.0
    assert store.get(ZT.key) is None and store.all() == []


def test_token_file_readers_create_a_private_token(tmp_path) -> None:
    readers = TokenFileReaders(tmp_path / "debug-token")
    token = (tmp_path / "debug-token").read_text().strip()
    assert len(token) >= 32 and oct((tmp_path / "debug-token").stat().st_mode & 0o777) == "0o600"
    assert asyncio.run(readers.check(token)) == "lab-admin"
    assert TokenFileReaders(tmp_path / "debug-token")._token == token      # kept across restarts


async def _serve(tmp_path):  # noqa: ANN202
    tokens = BootstrapTokens()
    n1, n2 = tokens.issue("n1"), tokens.issue("n2")
    cfg = ConfigServer(authenticator=NodeAuthenticator(tokens), registry=CollectorRegistry())
    server = grpc.aio.server()
    cfg.add_to_server(server)
    debug = DebugServicer(cfg, TokenFileReaders(tmp_path / "t"))
    debug.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, debug, port, n1, n2


def test_reports_are_scoped_by_the_node_credential(tmp_path) -> None:
    async def run() -> None:
        server, debug, port, n1, n2 = await _serve(tmp_path)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = debug_pb2_grpc.DebugServiceStub(ch)
                report = debug_pb2.ProxyReport(node=ZT.to_proto(), version="0.1.0",
                                               state_json=json.dumps({"certs": []}).encode())
                reply = await stub.Report(report, metadata=(("authorization", f"Bearer {n1}"), ("x-ambit-node", "n1")))
                assert reply.controller_version and debug.reports.get(ZT.key) is not None
                with pytest.raises(grpc.aio.AioRpcError) as e:      # node n2's credential, claiming n1
                    await stub.Report(report, metadata=(("authorization", f"Bearer {n2}"), ("x-ambit-node", "n2")))
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "n1" in e.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as e:      # no credential at all
                    await stub.Report(report)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as e:      # a node credential is not a reader's
                    await stub.ProxyStatus(debug_pb2.ProxyStatusRequest(), metadata=(("authorization", f"Bearer {n1}"),))
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
                token = (tmp_path / "t").read_text().strip()
                resp = await stub.ProxyStatus(debug_pb2.ProxyStatusRequest(),
                                              metadata=(("authorization", f"Bearer {token}"),))
                assert resp.controller_version and list(resp.proxies) == []    # reported, but never subscribed
        finally:
            await server.stop(None)
    asyncio.run(run())


def test_a_report_nested_too_deep_is_refused_and_proxy_status_still_answers(tmp_path) -> None:
    """A report nested 100,000 levels raised RecursionError (no ValueError) out of Report, an
    internal error; one nested 900 levels was stored, and then every `ambit proxy-status` failed
    to encode it for as long as the proxy kept reporting. Both are refused, naming the bound."""
    from controller.configserver.server import _Stream
    from controller.configserver.subscription import Subscription

    async def run() -> None:
        server, debug, port, n1, _ = await _serve(tmp_path)
        debug.config._register(_Stream(Subscription(ZT, "peer", 0.0)))
        creds = (("authorization", f"Bearer {n1}"), ("x-ambit-node", "n1"))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = debug_pb2_grpc.DebugServiceStub(ch)
                for depth in (100_000, 900, 33):
                    deep = ('{"x": ' + "[" * depth + "]" * depth + "}").encode()
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        await stub.Report(debug_pb2.ProxyReport(node=ZT.to_proto(), version="1", state_json=deep),
                                          metadata=creds)
                    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (depth, e.value.details())
                    assert "nested more than 32 levels deep" in e.value.details()
                ok = {"a": [[[{"b": 1}]]]}
                await stub.Report(debug_pb2.ProxyReport(node=ZT.to_proto(), version="1",
                                                        state_json=json.dumps(ok).encode()), metadata=creds)
                token = (tmp_path / "t").read_text().strip()
                resp = await stub.ProxyStatus(debug_pb2.ProxyStatusRequest(),
                                              metadata=(("authorization", f"Bearer {token}"),))
                (row,) = resp.proxies
                assert json.loads(row.report_json) == ok
        finally:
            await server.stop(None)
    asyncio.run(run())


def test_proxy_status_over_grpc_tells_synced_from_nack(tmp_path) -> None:
    """Two real config-stream clients: one applies everything, one rejects every update. The
    debug API says SYNCED for the first and NACK (with the client's reason) for the second."""
    from ambit.configclient import ConfigClient
    from ambit.model import Workload

    def reject(update) -> None:  # noqa: ANN001
        raise ValueError("weight 7 is not allowed here")

    async def run() -> None:
        cfg = ConfigServer(registry=CollectorRegistry())
        w = Workload(uid="u1", name="echo", namespace="demo", ips=["10.0.0.5"], node="n1", service_account="echo",
                     identity="spiffe://cluster.local/ns/demo/sa/echo")
        cfg.update({Workload.TYPE: [w]}, "v1")
        server = grpc.aio.server()
        cfg.add_to_server(server)
        debug = DebugServicer(cfg, TokenFileReaders(tmp_path / "t"))
        debug.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        good = ConfigClient(f"127.0.0.1:{port}", NodeInfo("ztunnel", "n1"), [Workload.TYPE], lambda u: None)
        bad = ConfigClient(f"127.0.0.1:{port}", NodeInfo("ztunnel", "n2"), [Workload.TYPE], reject)
        try:
            await good.start()
            await bad.start()
            await good.wait_synced(5)
            for _ in range(100):
                states = {p.node.name: p for p in debug.status_response().proxies}
                # The client is synced once it applied v1; the server hears its ACK a moment later.
                if (states.get("n2") is not None and states["n2"].state == "NACK"
                        and states.get("n1") is not None and states["n1"].state == "SYNCED"):
                    break
                await asyncio.sleep(0.05)
            assert states["n1"].state == "SYNCED" and states["n1"].acked_version == "v1"
            assert states["n2"].state == "NACK" and "weight 7 is not allowed here" in states["n2"].nack
            dump = json.loads((await _config(port, tmp_path, "ztunnel/n1")).json)
            assert dump["config"][Workload.TYPE]["resources"]["u1"]["body"]["name"] == "echo"
        finally:
            await good.stop()
            await bad.stop()
            await server.stop(None)
    asyncio.run(run())


async def _config(port: int, tmp_path, proxy: str):  # noqa: ANN202
    token = (tmp_path / "t").read_text().strip()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        return await debug_pb2_grpc.DebugServiceStub(ch).ProxyConfig(
            debug_pb2.ProxyConfigRequest(proxy=proxy), metadata=(("authorization", f"Bearer {token}"),))
