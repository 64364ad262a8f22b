"""One greedy or compromised client cannot starve the controller's other clients.

- The CA: each credential has a token bucket (controller/fairness.py). A node asking for
  certificates in a tight loop is refused RESOURCE_EXHAUSTED, told which limit and when to retry,
  while every other node is still served; a node's start-up (one certificate per identity on it,
  hundreds at once) passes on the defaults.
- The gRPC port: one address holds at most `max_connections_per_peer` of its connections (an
  accept gate in front of grpc, controller/acceptgate.py), so it cannot lock the nodes out.
- The config stream: one credential holds at most `max_streams_per_client` streams, however many
  it multiplexes on one connection; the next is refused RESOURCE_EXHAUSTED naming the bound, other
  nodes are still served, and a stream that ends frees its place.

Real grpc.aio servers on 127.0.0.1 and real grpc clients; the bucket's clock is injected, so no
assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import resource
import socket

import grpc
import pytest
from prometheus_client import CollectorRegistry

from ambit.api import ca_pb2, ca_pb2_grpc, config_pb2, config_pb2_grpc, debug_pb2, debug_pb2_grpc
from ambit.configclient import NodeInfo
from ambit.model import Workload
from controller import fairness
from controller.acceptgate import descriptors_needed, raise_descriptor_limit
from controller.ca import CertificateAuthority, CertificateServicer, add_to_server, generate_root
from controller.ca.credentials import BootstrapTokens
from controller.configserver import ConfigServer
from controller.configserver.auth import NodeAuthenticator
from controller.debug import DebugServicer, TokenFileReaders
from controller.fairness import ConnectionAdmission, Refusal, RequestRate, peer_key
from controller.grpcgate import CallGate
from controller.health import ControllerHealth
from tests.unit.configstream.helpers import workload
from tests.unit.controller.test_ca import TD, _Harness, make_csr
from tests.unit.controller.test_grpc_connections import _closed_within, connect_from

# --- the sans-IO cores ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_bucket_gives_its_burst_then_its_rate_and_says_when_to_retry() -> None:
    clock = FakeClock()
    rate = RequestRate(2.0, 3, clock)
    assert [rate.take("a") for _ in range(3)] == [None, None, None]
    assert rate.take("a") == Refusal("ca_request_rate", 0.5)        # one token back in 0.5 s
    assert rate.take("b") is None                                   # another key has its own bucket
    clock.t += 0.5
    assert rate.take("a") is None
    assert rate.take("a") == Refusal("ca_request_rate", 0.5)
    clock.t += 3600                                                 # refilled up to the burst, not past it
    assert [rate.take("a") for _ in range(4)] == [None, None, None, Refusal("ca_request_rate", 0.5)]


def test_a_bucket_with_rate_zero_is_no_bound_and_bad_settings_are_refused() -> None:
    rate = RequestRate(0.0, 1, FakeClock())
    assert all(rate.take("a") is None for _ in range(100))
    with pytest.raises(ValueError, match="burst >= 1"):
        RequestRate(1.0, 0, FakeClock())


def test_the_table_of_buckets_is_bounded() -> None:
    rate = RequestRate(1.0, 2, FakeClock(), max_keys=10)
    for i in range(1000):
        rate.take(i)
    assert len(rate) == 10


# --- the CA over gRPC ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority(generate_root(TD), TD)


def test_a_node_asking_in_a_tight_loop_is_refused_with_the_limit_and_when_to_retry_others_still_served(ca) -> None:
    clock = FakeClock()
    pods = {"node-1": [("demo", "client")], "node-2": [("prod", "db")]}

    async def run() -> None:
        async with _Harness(ca, pods, rate=RequestRate(1.0, 5, clock)) as h:
            ids = {"node-1": f"spiffe://{TD}/ns/demo/sa/client", "node-2": f"spiffe://{TD}/ns/prod/sa/db"}
            for _ in range(5):
                assert (await h.call("node-1", h.token["node-1"], ids["node-1"])).cert_chain
            before = fairness.REFUSED["ca_request_rate"]
            for _ in range(20):         # the flood: every one refused, none signed
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await h.call("node-1", h.token["node-1"], ids["node-1"])
                assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ei.value.details() == ("node 'node-1' is over the CA's per-client limit (ca_request_rate: 5 "
                                          "certificate requests at once, then 1 per second); retry in 1 s")
            assert fairness.REFUSED["ca_request_rate"] == before + 20
            assert h.servicer.issued == 5 and h.servicer.refused == {"RESOURCE_EXHAUSTED": 20}
            # Another node is served meanwhile, and node-1 again once its bucket refilled.
            assert (await h.call("node-2", h.token["node-2"], ids["node-2"])).cert_chain
            clock.t += 1.0
            assert (await h.call("node-1", h.token["node-1"], ids["node-1"])).cert_chain
            # What the controller's /metrics shows (controller/health.py).
            health = {m.name: m for m in ControllerHealth(_NoController(), h.servicer).collect()}
            limited = {s.labels["limit"]: s.value for s in health["ambit_controller_limited"].samples}
            assert limited["ca_request_rate"] == fairness.REFUSED["ca_request_rate"]
            refused = {s.labels["code"]: s.value for s in health["ambit_ca_requests_refused"].samples}
            assert refused["RESOURCE_EXHAUSTED"] == 20

    asyncio.run(run())


def test_a_nodes_start_up_of_hundreds_of_identities_passes_on_the_default_limits(ca) -> None:
    """300 service accounts on one node (past kubelet's 110-pod default and a 250-pod large node),
    each asked for at once, as a ztunnel starting on that node does."""
    accounts = [("demo", f"sa-{i}") for i in range(300)]

    async def run() -> None:
        async with _Harness(ca, {"node-1": accounts}) as h:
            got = await asyncio.gather(*(h.call("node-1", h.token["node-1"], f"spiffe://{TD}/ns/{ns}/sa/{sa}")
                                         for ns, sa in accounts), return_exceptions=True)
            failed = [g for g in got if isinstance(g, BaseException)]
            assert not failed, failed[:3]
            assert h.servicer.issued == 300

    asyncio.run(run())


class _NoController:
    version, last_applied_at, snapshots = "", 0.0, 0


# --- the config stream over gRPC ----------------------------------------------------------------------


async def _open(stub: config_pb2_grpc.ConfigServiceStub, node: NodeInfo, token: str):
    """Open a config stream as `node`; the call (admitted: its first response read) or the AioRpcError."""
    call = stub.DeltaStream(metadata=[("authorization", f"Bearer {token}"), ("x-ambit-node", node.name)])
    await call.write(config_pb2.DeltaRequest(node=node.to_proto(), type_url=Workload.TYPE, subscribe=True))
    await call.initial_metadata()
    if call.done():
        code, details = await call.code(), await call.details()
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    await asyncio.wait_for(call.read(), 10)
    return call


def test_one_credential_cannot_hold_more_than_its_config_streams_and_others_are_still_served() -> None:
    tokens = BootstrapTokens()
    token = {n: tokens.issue(n) for n in ("node-a", "node-b")}
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry(), authenticator=NodeAuthenticator(tokens),
                          max_streams_per_client=4)
    server.update({Workload.TYPE: [workload("a1", "node-a"), workload("b1", "node-b", ip="10.0.2.1")]}, "v1")

    async def go() -> None:
        port = await server.start()
        try:
            # Every stream of node-a on ONE connection: HTTP/2 multiplexing, not a connection bound, is the way in.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = config_pb2_grpc.ConfigServiceStub(ch)
                held = [await _open(stub, NodeInfo("ztunnel", "node-a", instance_id=f"w{i}"), token["node-a"])
                        for i in range(4)]
                assert all(isinstance(c, grpc.aio.StreamStreamCall) for c in held), held
                before = fairness.REFUSED["config_streams_per_client"]
                for kind in ("ztunnel", "agent"):
                    over = await _open(stub, NodeInfo(kind, "node-a"), token["node-a"])
                    assert isinstance(over, grpc.aio.AioRpcError), "a stream past the bound was served"
                    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert f"{kind}/node-a: the credential of node 'node-a' holds 4 config streams" in over.details()
                    assert "--max-config-streams-per-client" in over.details()
                assert fairness.REFUSED["config_streams_per_client"] == before + 2
                assert len(server.status()) == 4
                other = await _open(stub, NodeInfo("ztunnel", "node-b"), token["node-b"])
                assert isinstance(other, grpc.aio.StreamStreamCall)
                other.cancel()
                held.pop().cancel()             # a stream that ends frees its place
                for _ in range(100):
                    if server.streams_per_client.count(("node-a", "")) < 4:
                        break
                    await asyncio.sleep(0.05)
                again = await _open(stub, NodeInfo("agent", "node-a"), token["node-a"])
                assert isinstance(again, grpc.aio.StreamStreamCall)
                for c in [*held, again]:
                    c.cancel()
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(go(), 60))


# --- the gRPC port's connections ----------------------------------------------------------------------


def test_a_peer_is_its_ipv4_address_or_its_ipv6_64() -> None:
    assert peer_key("10.0.0.7") == "10.0.0.7"
    assert peer_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert peer_key("2001:db8:1:2::1") == peer_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")


def test_admission_bounds_each_peer_and_the_whole() -> None:
    adm = ConnectionAdmission(max_total=5, per_peer=2, clock=FakeClock())
    assert [adm.admit(f"a{i}", "10.0.0.1") for i in range(3)] == [None, None, "connections_per_peer"]
    assert [adm.admit(i, f"10.0.0.{i}") for i in (2, 3, 4, 5)] == [None, None, None, "max_connections"]
    adm.release("a0")
    assert adm.admit("a3", "10.0.0.1") is None and adm.total == 5
    assert adm.evicted is None                  # a freed slot: nothing evicted


def test_a_full_port_evicts_the_oldest_connection_that_never_authenticated_once_past_its_grace() -> None:
    """Ten addresses of any tenant could hold the whole port with idle TLS connections, and a new
    node was refused. Now a new connection takes the slot of the oldest one that made no
    authenticated call in `grace`; one too young to have had its chance is kept (the new one is
    refused), and so is every authenticated one, however old."""
    clock = FakeClock()
    adm = ConnectionAdmission(max_total=4, per_peer=0, clock=clock, grace=10.0)
    before = dict(fairness.REFUSED)
    assert adm.admit("node", "10.0.0.1") is None
    adm.authenticated("node")                   # the oldest of all, but authenticated
    for i in (2, 3, 4):
        clock.t += 1
        assert adm.admit(f"idle{i}", f"10.0.0.{i}") is None
    assert adm.admit("new", "10.0.1.1") == "max_connections" and adm.evicted is None    # all too young
    clock.t += 8                                # idle2 is 10 s old, idle3 9 s
    assert adm.admit("new", "10.0.1.1") is None and adm.evicted == "idle2" and adm.evicted_age == 10.0
    assert adm.evicted_at == "max_connections" and adm.total == 4
    adm.release("idle2")                        # the caller closes it: already released, ignored
    assert adm.total == 4 and adm.admit("next", "10.0.1.2") == "max_connections"   # idle3: 9 s
    assert fairness.REFUSED["unauthenticated_evicted"] == before["unauthenticated_evicted"] + 1
    assert fairness.REFUSED["max_connections"] == before["max_connections"] + 2
    for conn in ("idle3", "idle4", "new"):
        adm.authenticated(conn)
    clock.t += 3600
    assert adm.admit("late", "10.0.1.3") == "max_connections" and adm.evicted is None
    assert all(adm.is_authenticated(c) for c in ("node", "idle3", "idle4", "new"))
    adm.release("node")                         # an authenticated one that closes frees its slot
    assert adm.admit("late", "10.0.1.3") is None and adm.total == 4


def test_at_the_per_peer_bound_only_that_peers_own_idle_connection_gives_way() -> None:
    """A host-network pod shares its node's address with the node's ztunnel: its idle connections
    give way to the node's new one at the per-peer bound, but never another address's, and an
    address whose connections all authenticated is refused as before. An IPv6 /64 is one peer."""
    clock = FakeClock()
    adm = ConnectionAdmission(max_total=100, per_peer=2, clock=clock, grace=10.0)
    assert adm.admit("other", "10.0.0.9") is None           # older than all, not the same peer
    clock.t += 1
    assert adm.admit("ztunnel", "10.0.0.1") is None
    adm.authenticated("ztunnel")
    assert adm.admit("idle", "10.0.0.1") is None
    assert adm.admit("restarted", "10.0.0.1") == "connections_per_peer"     # idle is too young
    clock.t += 10
    assert adm.admit("restarted", "10.0.0.1") is None and adm.evicted == "idle"
    assert adm.evicted_at == "connections_per_peer"
    adm.authenticated("restarted")
    clock.t += 60
    assert adm.admit("third", "10.0.0.1") == "connections_per_peer" and adm.evicted is None
    assert adm.admit("v6a", "2001:db8::1") is None and adm.admit("v6b", "2001:db8::2") is None
    clock.t += 10
    assert adm.admit("v6c", "2001:db8::ffff") is None and adm.evicted == "v6a"
    assert adm.total == 5


def test_admission_refuses_a_negative_grace() -> None:
    with pytest.raises(ValueError, match="grace"):
        ConnectionAdmission(10, 1, FakeClock(), grace=-1)


def test_one_address_cannot_take_every_slot_of_the_grpc_port_and_others_still_get_config() -> None:
    """The port holds 10 connections. Before, one address took all 10 (HTTP/2 prefaces, no call:
    held until the 5-minute idle timeout) and every node was closed at accept. Now one address
    holds at most 4; the rest are reset at accept, and a real grpc client elsewhere is served,
    with its own address in the subscribers' status."""
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
    server.update({Workload.TYPE: [workload("a1", "node-a")]}, "v1")

    async def go() -> None:
        loop = asyncio.get_running_loop()
        port = await server.start("127.0.0.1:0", max_connections=10, max_connections_per_peer=4)
        before = fairness.REFUSED["connections_per_peer"]
        flood: list[socket.socket] = []
        try:
            for _ in range(12):
                flood.append(await loop.run_in_executor(None, connect_from, "127.0.0.2", port))
            closed = await asyncio.gather(*(loop.run_in_executor(None, _closed_within, s, 2.0) for s in flood))
            assert closed.count(False) == 4, closed
            assert fairness.REFUSED["connections_per_peer"] == before + 8
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = await _open(config_pb2_grpc.ConfigServiceStub(ch), NodeInfo("ztunnel", "node-a"), "unused")
                assert isinstance(call, grpc.aio.StreamStreamCall), call
                (sub,) = server.status()
                assert sub.peer.startswith("ipv4:127.0.0.1:"), sub.peer     # the client's, not the gate's
                call.cancel()
            # The flood's held connections are its own to free: then that address gets in again.
            for s in flood:
                s.close()
            for _ in range(100):
                if server._accept is not None and server._accept.admission.total == 0:
                    break
                await asyncio.sleep(0.05)
            again = await loop.run_in_executor(None, connect_from, "127.0.0.2", port)
            assert not await loop.run_in_executor(None, _closed_within, again, 0.5)
            again.close()
        finally:
            for s in flood:
                s.close()
            await server.stop(None)

    asyncio.run(asyncio.wait_for(go(), 60))


def test_a_large_node_keeps_hundreds_of_connections_on_the_default_bound() -> None:
    """A node of many ztunnel workers (each with a config stream and a CA channel) from one address."""
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry())

    async def go() -> None:
        loop = asyncio.get_running_loop()
        port = await server.start("127.0.0.1:0")
        held: list[socket.socket] = []
        try:
            for _ in range(400):
                held.append(await loop.run_in_executor(None, connect_from, "127.0.0.3", port))
            assert not await loop.run_in_executor(None, _closed_within, held[-1], 0.5)
            assert server._accept is not None and server._accept.admission.total == 400
        finally:
            for s in held:
                s.close()
            await server.stop(None)

    asyncio.run(asyncio.wait_for(go(), 60))


def test_the_controller_raises_its_descriptor_limit_and_says_when_even_the_hard_one_is_short() -> None:
    """Through the gate a connection holds three descriptors; a container started at a soft limit
    of 1,024 would stop accepting near 330 connections without this."""
    assert descriptors_needed(10_000, 1000, "0.0.0.0:15012") == 31_024
    assert descriptors_needed(10_000, 0, "0.0.0.0:15012") == descriptors_needed(10_000, 1000, "unix:/x") == 11_024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip(f"needs a finite hard descriptor limit above 1024, have {hard}")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert raise_descriptor_limit(hard) == ""
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert f"the descriptor limit is {hard}, below the {hard + 1}" in raise_descriptor_limit(hard + 1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_credential_over_its_rate_is_refused_before_its_request_is_read(ca) -> None:
    """With the controller's CallGate, a credential over its rate is refused from the metadata: a
    request over grpc's 4 MiB limit gets the rate's reason, not "larger than max" (which it gets
    once its bucket has a token again and grpc reads it), so a loop of 4 MiB requests costs the CA
    no reading and no parsing."""
    clock = FakeClock()
    tokens = BootstrapTokens()
    token = tokens.issue("node-1")
    servicer = CertificateServicer(ca, tokens, lambda n: [("demo", "client")], RequestRate(1.0, 2, clock))
    ident = f"spiffe://{TD}/ns/demo/sa/client"
    md = [("authorization", f"Bearer {token}"), ("x-ambit-node", "node-1")]

    async def run() -> None:
        gate = CallGate()
        gate.guard(servicer.guards())
        server = grpc.aio.server(interceptors=[gate])
        add_to_server(server, servicer)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = ca_pb2_grpc.CertificateServiceStub(ch)

                async def ask(csr: str) -> tuple[grpc.StatusCode, str]:
                    try:
                        await stub.CreateCertificate(ca_pb2.CSRRequest(csr_pem=csr, identity=ident), metadata=md)
                    except grpc.aio.AioRpcError as e:
                        return e.code(), e.details() or ""
                    return grpc.StatusCode.OK, ""

                small, huge = make_csr().decode(), "x" * (5 << 20)
                assert [(await ask(small))[0] for _ in range(2)] == [grpc.StatusCode.OK] * 2
                code, details = await ask(huge)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "over the CA's per-client limit (ca_request_rate" in details, details
                clock.t += 1.0      # a token again: now grpc reads it, and its own size limit answers
                code, details = await ask(huge)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details, details
        finally:
            await server.stop(None)

    asyncio.run(run())


async def _gated_server(cfg: ConfigServer, debug: DebugServicer) -> tuple[grpc.aio.Server, int]:
    """The config and debug services on a grpc.aio server with the controller's CallGate, started."""
    gate = CallGate()
    server = grpc.aio.server(interceptors=[gate])
    cfg.add_to_server(server)
    debug.add_to_server(server)
    gate.guard(cfg.guards())
    gate.guard(debug.guards())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def test_one_credential_cannot_hold_more_feeds_than_its_bound(tmp_path) -> None:
    """Every `ambit top` scrape asks every feed: one node's credential holding feeds without bound
    made each scrape's work its own. The config stream's per-client bound holds for feeds too."""
    tokens = BootstrapTokens()
    token = {n: tokens.issue(n) for n in ("node-a", "node-b")}

    async def run() -> None:
        cfg = ConfigServer(registry=CollectorRegistry(), authenticator=NodeAuthenticator(tokens),
                           max_streams_per_client=2)
        server, port = await _gated_server(cfg, DebugServicer(cfg, TokenFileReaders(tmp_path / "t")))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = debug_pb2_grpc.DebugServiceStub(ch)

                async def feed(node: str):
                    md = [("authorization", f"Bearer {token[node]}"), ("x-ambit-node", node)]
                    call = stub.Feed(metadata=md)
                    await call.write(debug_pb2.FeedUpload(node=NodeInfo("ztunnel", node).to_proto()))
                    try:
                        await asyncio.wait_for(call.read(), 10)     # the current filters, sent at once
                    except grpc.aio.AioRpcError as e:
                        return e
                    return call

                held = [await feed("node-a"), await feed("node-a")]
                assert all(isinstance(c, grpc.aio.StreamStreamCall) for c in held), held
                before = fairness.REFUSED["feeds_per_client"]
                over = await feed("node-a")
                assert isinstance(over, grpc.aio.AioRpcError) and over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "ztunnel/node-a: the credential of node 'node-a' holds 2 feeds" in (over.details() or "")
                assert fairness.REFUSED["feeds_per_client"] == before + 1
                other = await feed("node-b")
                assert isinstance(other, grpc.aio.StreamStreamCall)
                for c in [*held, other]:
                    c.cancel()
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(run(), 60))


def test_a_credential_reporting_in_a_loop_is_cut_at_its_rate_before_its_reports_are_read(tmp_path) -> None:
    """Parsing a status report costs the controller's event loop up to 2.5 ms: one node reporting in
    a loop took 85% of it. Past its bucket a report is refused from its metadata (a report over
    grpc's 4 MiB limit gets the rate's reason, not "larger than max"); another node still reports."""
    clock = FakeClock()
    tokens = BootstrapTokens()
    token = {n: tokens.issue(n) for n in ("node-a", "node-b")}

    async def run() -> None:
        cfg = ConfigServer(registry=CollectorRegistry(), authenticator=NodeAuthenticator(tokens))
        debug = DebugServicer(cfg, TokenFileReaders(tmp_path / "t"),
                              report_rate=RequestRate(1.0, 2, clock, limit="report_rate"))
        server, port = await _gated_server(cfg, debug)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = debug_pb2_grpc.DebugServiceStub(ch)

                async def report(node: str, state: bytes = b"{}") -> tuple[grpc.StatusCode, str]:
                    md = [("authorization", f"Bearer {token[node]}"), ("x-ambit-node", node)]
                    try:
                        await stub.Report(debug_pb2.ProxyReport(node=NodeInfo("ztunnel", node).to_proto(),
                                                                state_json=state), metadata=md)
                    except grpc.aio.AioRpcError as e:
                        return e.code(), e.details() or ""
                    return grpc.StatusCode.OK, ""

                assert [(await report("node-a"))[0] for _ in range(2)] == [grpc.StatusCode.OK] * 2
                before = fairness.REFUSED["report_rate"]
                code, details = await report("node-a", b" " * (5 << 20))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
                assert details == ("the credential of node 'node-a' is over the controller's per-client limit "
                                   "(report_rate: 2 status reports at once, then 1 per second); retry in 1 s")
                assert fairness.REFUSED["report_rate"] == before + 1
                assert (await report("node-b"))[0] == grpc.StatusCode.OK
                clock.t += 1.0
                assert (await report("node-a"))[0] == grpc.StatusCode.OK
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(run(), 60))
