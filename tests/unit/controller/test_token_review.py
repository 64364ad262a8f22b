"""Cluster credentials: TokenReview against the API-server emulator (real HTTP, the official
client), for ztunnel's node token and a waypoint pod's own token, through the real CA gRPC
service and the config stream's claim check."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ambit.api import ca_pb2, ca_pb2_grpc
from ambit.configclient.node import NodeInfo
from ambit.kube.client import make_api_client
from controller.ca import CertificateAuthority, TokenReviewVerifier, Unauthenticated, generate_root
from controller.ca.credentials import REVIEW_CACHE_TTL, CredentialCheckBusy, scope_of
from controller.ca.service import CertificateServicer, add_to_server
from controller.configserver.auth import check_claim
from tests.support.kube_emulator import KubeEmulator
from tests.unit.controller.test_ca import make_csr

TD = "cluster.local"
ZTUNNEL = "system:serviceaccount:ambit-system:ztunnel"
WAYPOINTS = {("default", "waypoint")}
PODS = {"node-1": [("default", "frontend"), ("default", "waypoint")], "node-2": [("prod", "db")]}


def spiffe(ns: str, sa: str) -> str:
    return f"spiffe://{TD}/ns/{ns}/sa/{sa}"


@pytest.fixture(scope="module")
def emu():
    with KubeEmulator() as e:
        e.add_token("zt-1", "ambit-system", "ztunnel", node="node-1", pod="ztunnel-abcde")
        e.add_token("wp-1", "default", "waypoint", node="node-1", pod="waypoint-7d9f-x2")
        e.add_token("fe-1", "default", "frontend", node="node-1", pod="frontend-1")
        e.add_token("zt-other-aud", "ambit-system", "ztunnel", node="node-1", audiences=("kubernetes",))
        e.add_token("zt-unbound", "ambit-system", "ztunnel")
        yield e


@pytest.fixture(scope="module")
def verifier(emu: KubeEmulator) -> TokenReviewVerifier:
    return TokenReviewVerifier(make_api_client(emu.url), {ZTUNNEL},
                               workload_accounts=lambda ns, sa: (ns, sa) in WAYPOINTS)


def test_ztunnel_token_is_a_node_credential_and_a_waypoint_token_is_scoped_to_its_account(verifier) -> None:
    node = verifier.review("zt-1", "node-1")
    assert node == "node-1" and scope_of(node) == ""
    wp = verifier.review("wp-1", "node-1")
    assert wp == "node-1" and scope_of(wp) == "default/waypoint"


@pytest.mark.parametrize("token, node, why", [
    ("fe-1", "node-1", "'system:serviceaccount:default:frontend' is neither a ztunnel nor a waypoint"),
    ("zt-1", "node-2", "belongs to node 'node-1', not 'node-2'"),
    ("wp-1", "node-2", "belongs to node 'node-1', not 'node-2'"),
    ("zt-other-aud", "node-1", "audiences"),
    ("zt-unbound", "node-1", "not bound to a node"),
    ("forged", "node-1", "invalid bearer token"),
])
def test_other_tokens_are_refused_saying_why(verifier, token: str, node: str, why: str) -> None:
    with pytest.raises(Unauthenticated, match=why.replace("(", r"\(").replace(")", r"\)")):
        verifier.review(token, node)


def test_a_review_that_does_not_confirm_the_audience_is_refused(emu: KubeEmulator, verifier) -> None:
    """The TokenReview API: "a client that sets spec.audiences should validate that a compatible
    audience identifier is returned in status.audiences"; an empty one means the token is valid for
    the API server's own audience. Behind an authenticator that is not audience-aware, a token meant
    for the API server (or any other audience) was taken as a CA credential."""
    emu.audience_aware = False
    try:
        for token in ("zt-other-aud", "zt-1"):
            with pytest.raises(Unauthenticated, match=r"did not confirm the audience \['ambit-ca'\]"):
                verifier.review(token, "node-1")
    finally:
        emu.audience_aware = True
    assert verifier.review("zt-1", "node-1") == "node-1"


def test_a_flood_of_unknown_tokens_neither_queues_known_nodes_nor_piles_up(emu: KubeEmulator) -> None:
    """Any pod reaches the controller, and every unknown token cost a TokenReview on a small thread
    pool shared by the CA and the config stream: 2,000 bogus requests kept a real node's request
    waiting 15 s behind them (/tmp/caa/flood.py). A node confirmed within the last minute is now
    answered without a review, and a new check past the bound is refused at once as busy."""
    t = [0.0]
    v = TokenReviewVerifier(make_api_client(emu.url), {ZTUNNEL}, max_pending=4, clock=lambda: t[0])

    def reviews() -> int:
        return sum(1 for _m, p, _q in list(emu.requests) if p.endswith("/tokenreviews"))

    async def run() -> None:
        assert await v.verify("zt-1", "node-1") == "node-1"
        before = reviews()
        with emu.hold_token_reviews():                 # the API server is slow under the flood
            flood = [asyncio.ensure_future(v.verify(f"bogus-{i}", "node-1")) for i in range(4)]
            await asyncio.sleep(0)
            node = await asyncio.wait_for(v.verify("zt-1", "node-1"), 10)
            assert node == "node-1" and scope_of(node) == ""
            with pytest.raises(CredentialCheckBusy, match="4 credential checks are pending"):
                await v.verify("bogus-more", "node-1")
        results = await asyncio.gather(*flood, return_exceptions=True)
        assert all(isinstance(r, Unauthenticated) for r in results), results
        assert reviews() == before + 4, "the known node was not reviewed again, the refused one not at all"
        t[0] += REVIEW_CACHE_TTL + 1                  # a minute later the token is reviewed again
        assert await v.verify("zt-1", "node-1") == "node-1" and reviews() == before + 5
        assert await v.verify("zt-1", "node-1") == "node-1" and reviews() == before + 5

    asyncio.run(run())


def test_a_busy_verifier_is_unavailable_not_unauthenticated_at_the_ca() -> None:
    class Busy:
        async def verify(self, token: str, claimed_node: str) -> str:
            raise CredentialCheckBusy("64 credential checks are pending at the API server; try again later")

    async def run() -> None:
        ca = CertificateAuthority(generate_root(TD), TD)
        server = grpc.aio.server()
        add_to_server(server, CertificateServicer(ca, Busy(), lambda n: PODS.get(n, [])))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await ca_pb2_grpc.CertificateServiceStub(ch).CreateCertificate(
                        ca_pb2.CSRRequest(csr_pem=make_csr().decode(), identity=spiffe("default", "frontend")),
                        metadata=[("authorization", "Bearer zt-1"), ("x-ambit-node", "node-1")])
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE and "pending" in ei.value.details()
        finally:
            await server.stop(None)

    asyncio.run(run())


def test_the_ca_gives_a_waypoint_token_its_own_identity_only(verifier) -> None:
    """The node credential may get every identity of its node's pods; a waypoint's own token may
    get the waypoint's identity only, although the frontend pod runs on the same node."""
    ca = CertificateAuthority(generate_root(TD), TD)

    async def run() -> None:
        server = grpc.aio.server()
        add_to_server(server, CertificateServicer(ca, verifier, lambda n: PODS.get(n, [])))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = ca_pb2_grpc.CertificateServiceStub(ch)

                async def call(token: str, identity: str):
                    md = [("x-ambit-node", "node-1"), ("authorization", f"Bearer {token}")]
                    req = ca_pb2.CSRRequest(csr_pem=make_csr().decode(), identity=identity, ttl_seconds=3600)
                    return await stub.CreateCertificate(req, metadata=md)

                assert (await call("wp-1", spiffe("default", "waypoint"))).cert_chain
                assert (await call("zt-1", spiffe("default", "frontend"))).cert_chain      # positive control
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await call("wp-1", spiffe("default", "frontend"))
                assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "default/waypoint's, which gets its own identity only" in ei.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await call("fe-1", spiffe("default", "frontend"))
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await server.stop(None)

    asyncio.run(run())


def test_a_waypoint_token_subscribes_as_its_own_waypoint_only(verifier) -> None:
    caller = verifier.review("wp-1", "node-1")
    pods = {("default", "waypoint", "waypoint-7d9f-x2"), ("default", "other", "other-0")}
    scope = scope_of(caller)
    assert check_claim(caller, NodeInfo("waypoint", "waypoint-7d9f-x2", waypoint="default/waypoint"), pods, scope) == ""
    assert "may subscribe as waypoint default/waypoint only" in check_claim(
        caller, NodeInfo("ztunnel", "node-1"), pods, scope)
    assert "may subscribe as waypoint default/waypoint only" in check_claim(
        caller, NodeInfo("waypoint", "other-0", waypoint="default/other"), pods, scope)
    # nor as a sibling pod of its own waypoint on the same node: its reports name the pod they describe
    sibling = pods | {("default", "waypoint", "waypoint-7d9f-y3")}
    assert "bound to pod default/waypoint-7d9f-x2" in check_claim(
        caller, NodeInfo("waypoint", "waypoint-7d9f-y3", waypoint="default/waypoint"), sibling, scope)
    # the node credential still may subscribe as the node's ztunnel (positive control)
    node = verifier.review("zt-1", "node-1")
    assert check_claim(node, NodeInfo("ztunnel", "node-1"), pods, scope_of(node)) == ""


def test_debug_readers_are_reviewed_once_and_a_flood_of_made_up_tokens_is_bounded(emu: KubeEmulator) -> None:
    """Every reader call is checked before its request is read and again by its method
    (controller/grpcgate.py): a confirmed reader costs one TokenReview, not one per check; and
    made-up bearer tokens queued reviews without bound (one thread each, each call held)."""
    from controller.debug.readers import TokenReviewReaders
    from controller.debug.readers import Unauthenticated as NotReader
    emu.add_token("ops-1", "ops", "reader")
    readers = TokenReviewReaders(make_api_client(emu.url), ("user:system:serviceaccount:ops:reader",), max_pending=2)

    def reviews() -> int:
        return sum(1 for _m, p, _q in list(emu.requests) if p.endswith("/tokenreviews"))

    async def run() -> None:
        assert await readers.check("ops-1") == "system:serviceaccount:ops:reader"
        before = reviews()
        with emu.hold_token_reviews():
            flood = [asyncio.ensure_future(readers.check(f"bogus-{i}")) for i in range(2)]
            await asyncio.sleep(0)
            assert await asyncio.wait_for(readers.check("ops-1"), 10) == "system:serviceaccount:ops:reader"
            with pytest.raises(CredentialCheckBusy, match="2 credential checks are pending"):
                await readers.check("bogus-more")
        results = await asyncio.gather(*flood, return_exceptions=True)
        assert all(isinstance(r, NotReader) for r in results), results
        assert reviews() == before + 2, "the confirmed reader was not reviewed again, the refused token not at all"

    asyncio.run(run())


def test_a_cached_review_ends_when_the_pod_its_token_is_bound_to_is_deleted(emu: KubeEmulator) -> None:
    """A confirmed token was taken again for 60 s without a TokenReview: a deleted ztunnel pod's
    token (or a stolen copy of it) still got certificates for up to a minute after the API server
    had invalidated it. istiod reviews every call. Now a cached review holds only while the pod (by
    UID), service account and node it is bound to are in the controller's watch (`observe`, fed
    the controller's snapshot; here listed from the emulator with the official client)."""
    from kubernetes import client as k8s

    emu.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    emu.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ztunnel", "namespace": "ambit-system"}})
    pod = emu.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ztunnel-gone", "namespace": "ambit-system"},
                      "spec": {"nodeName": "node-1", "serviceAccountName": "ztunnel", "containers": [{"name": "z"}]}})
    emu.add_token("zt-bound", "ambit-system", "ztunnel", node="node-1", pod="ztunnel-gone",
                  pod_uid=pod["metadata"]["uid"])
    api = make_api_client(emu.url)
    t = [0.0]
    v = TokenReviewVerifier(api, {ZTUNNEL}, clock=lambda: t[0])

    def watched() -> list[dict]:
        core = k8s.CoreV1Api(api)
        out = []
        for kind, items in (("Pod", core.list_pod_for_all_namespaces().items),
                            ("ServiceAccount", core.list_service_account_for_all_namespaces().items),
                            ("Node", core.list_node().items)):
            out += [{"kind": kind, "metadata": {"name": o.metadata.name, "namespace": o.metadata.namespace,
                                                "uid": o.metadata.uid}} for o in items]
        return out

    def reviews() -> int:
        return sum(1 for _m, p, _q in list(emu.requests) if p.endswith("/tokenreviews"))

    async def run() -> None:
        v.observe(watched())
        assert await v.verify("zt-bound", "node-1") == "node-1"
        before = reviews()
        t[0] += 30
        assert await v.verify("zt-bound", "node-1") == "node-1" and reviews() == before   # cached
        emu.delete("v1", "Pod", "ztunnel-gone", "ambit-system")
        v.observe(watched())
        t[0] += 1                                      # well within the cache's minute
        with pytest.raises(Unauthenticated, match="invalidated"):
            await v.verify("zt-bound", "node-1")
        assert reviews() == before + 1

    asyncio.run(run())
