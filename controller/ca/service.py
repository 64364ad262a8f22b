"""The CA's gRPC face: `ambit.ca.v1.CertificateService/CreateCertificate`.

Order of checks matters: authenticate the node first (UNAUTHENTICATED), then node authorization
(PERMISSION_DENIED), and only then parse and sign the CSR (INVALID_ARGUMENT), so an unauthenticated
caller learns nothing about which identities exist. Between authentication and authorization each
credential spends a token of its own bucket (controller/fairness.py; RESOURCE_EXHAUSTED past it,
before the request is read when the server's CallGate asks first), so a node asking in a tight
loop takes its own share of the CA and no more. Every refusal is logged with the node, the
requested identity and the reason, because these logs are how an operator spots a stolen credential.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import NoReturn

import grpc

from ambit.api import ca_pb2, ca_pb2_grpc
from controller.ca.authority import CAExpired, CertificateAuthority, CSRRejected
from controller.ca.credentials import CredentialCheckBusy, NodeCredentialVerifier, Unauthenticated, scope_of
from controller.ca.node_auth import authorize, within_scope
from controller.fairness import Refusal, RequestRate
from controller.grpcgate import CallRefused, Guard, metadata_dict, method_path
from controller.msgsize import SMALL
from controller.validation import printable

log = logging.getLogger("ambit.ca")

PodsOnNode = Callable[[str], Iterable[tuple[str, str]] | Awaitable[Iterable[tuple[str, str]]]]
NODE_HEADER = "x-ambit-node"

# Certificate requests per credential (a node's, or a waypoint's own token): a burst, then a rate.
# The burst is a node's start-up, or a root rotation, done at once: one certificate per identity on
# the node (kubelet's default is 110 pods, large nodes run 250) per ztunnel process asking; 1,000
# costs the CA about 0.5 s of CPU (a signature is about 0.5 ms). The rate, refilled after, is far
# above steady need (every identity renews at half of its 24 h life: 250 identities are one request
# every 3 minutes) and keeps a credential asking in a tight loop to about 0.5% of one CPU.
CA_REQUEST_BURST = 1000
CA_REQUEST_RATE = 10.0


def requested_ttl(seconds: int, max_ttl: dt.timedelta) -> dt.timedelta | None:
    """The lifetime a `CSRRequest.ttl_seconds` asks for; None (the CA's default) for 0, the proto's
    "unset". Raises ValueError naming the field and the bound for a negative value or one above
    `max_ttl`, checked on the integer before any `timedelta` is built: `timedelta(seconds=2**62)`
    overflows, and an unhandled OverflowError is not an answer a client can act on."""
    if seconds == 0:
        return None
    limit = int(max_ttl.total_seconds())
    if seconds < 0:
        raise ValueError(f"ttl_seconds: {seconds} is negative; use 1..{limit} seconds, or 0 for the CA's default")
    if seconds > limit:
        raise ValueError(f"ttl_seconds: {seconds} exceeds the maximum of {limit} seconds ({max_ttl})")
    return dt.timedelta(seconds=seconds)


class CertificateServicer(ca_pb2_grpc.CertificateServiceServicer):
    """Signs CSRs for authenticated nodes, for identities of pods on those nodes only."""

    def __init__(self, ca: CertificateAuthority, verifier: NodeCredentialVerifier, pods_on_node: PodsOnNode,
                 rate: RequestRate | None = None) -> None:
        self.ca = ca
        self.verifier = verifier
        self.pods_on_node = pods_on_node
        self.rate = rate if rate is not None else RequestRate(CA_REQUEST_RATE, CA_REQUEST_BURST, time.monotonic)
        # Plain counts, read at scrape time (controller/health.py): ambit_ca_*.
        self.issued = 0
        self.refused: dict[str, int] = {}       # gRPC status code name -> refusals

    async def CreateCertificate(  # noqa: N802 - gRPC method name
        self, request: ca_pb2.CSRRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.CSRResponse:
        md = metadata_dict(context.invocation_metadata())
        requested = request.identity
        try:
            node = await self.authenticate(md)
        except CallRefused as e:
            await self._refuse(context, e.code, md.get(NODE_HEADER, ""), requested, str(e))
        over = self.rate.take((str(node), scope_of(node)))
        if over is not None:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, node, requested, self._over(node, over))
        pods = self.pods_on_node(node)
        if inspect.isawaitable(pods):
            pods = await pods
        decision = authorize(node, requested, list(pods), trust_domain=self.ca.trust_domain)  # type: ignore[arg-type]
        scope = scope_of(node)
        if decision.allowed and scope:
            decision = within_scope(scope, requested)
        if not decision.allowed:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, node, requested, decision.reason)
        try:
            ttl = requested_ttl(request.ttl_seconds, self.ca.max_ttl)
        except ValueError as e:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, node, requested, str(e))
        try:
            chain = self.ca.sign_csr(request.csr_pem, requested, ttl)
        except CSRRejected as e:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, node, requested, e.reason)
        except CAExpired as e:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, node, requested, str(e))
        log.info("issued certificate: node=%s identity=%s ttl=%s", node, requested, ttl or self.ca.default_ttl)
        self.issued += 1
        return ca_pb2.CSRResponse(cert_chain=chain, trust_bundle=self.ca.trust_bundle().pems())

    async def authenticate(self, metadata: Mapping[str, str]) -> str:
        """The node (or waypoint Caller) the metadata's credential authenticates, or CallRefused."""
        claimed = metadata.get(NODE_HEADER, "")
        auth = metadata.get("authorization", "")
        if not claimed or not auth.startswith("Bearer "):
            raise CallRefused(grpc.StatusCode.UNAUTHENTICATED,
                              "missing 'authorization: Bearer <token>' or 'x-ambit-node' metadata")
        try:
            return await self.verifier.verify(auth[len("Bearer "):].strip(), claimed)
        except Unauthenticated as e:
            raise CallRefused(grpc.StatusCode.UNAUTHENTICATED, str(e)) from None
        except CredentialCheckBusy as e:
            raise CallRefused(grpc.StatusCode.UNAVAILABLE, str(e)) from None

    def _over(self, node: str, over: Refusal) -> str:
        who = f"node {node!r}" + (f" (service account {scope_of(node)})" if scope_of(node) else "")
        return (f"{who} is over the CA's per-client limit ({over.limit}: {self.rate.burst} certificate requests "
                f"at once, then {self.rate.rate:g} per second); retry in {over.retry_after:g} s")

    async def _gate_check(self, metadata: Mapping[str, str]) -> str:
        """`authenticate` and the request rate for the server's CallGate, counting its refusals as
        the handler's: a credential over its rate is refused before its request (up to 4 MiB) is
        read, so a loop of large requests costs the CA no more than a loop of small ones. The
        handler spends the token."""
        try:
            node = await self.authenticate(metadata)
            over = self.rate.check((str(node), scope_of(node)))
            if over is not None:
                raise CallRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, self._over(node, over))
            return node
        except CallRefused as e:
            self.refused[e.code.name] = self.refused.get(e.code.name, 0) + 1
            raise

    def guards(self) -> dict[str, Guard]:
        """CreateCertificate's credential check, for the server's CallGate: a caller without the
        node credential is refused before its CSR is read (controller/grpcgate.py)."""
        return {method_path(ca_pb2.DESCRIPTOR, "CertificateService", "CreateCertificate"):
                Guard(self._gate_check, max_message=SMALL)}

    async def _refuse(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, node: str, requested: str, reason: str
    ) -> NoReturn:
        n = self.refused[code.name] = self.refused.get(code.name, 0) + 1
        # `requested` (and reasons quoting it) come from a caller not yet authenticated: printable
        # and bounded, so a "\n" in it cannot forge an "issued certificate" line in this log. A
        # client over its rate is logged the first time and every 1,000th after (the metric counts
        # each), so a tight loop of requests cannot become a tight loop of log lines.
        if code != grpc.StatusCode.RESOURCE_EXHAUSTED or n % 1000 == 1:
            log.warning("refused certificate: node=%s identity=%s code=%s reason=%s", printable(node or "-", 256),
                        printable(requested, 512), code.name, printable(reason, 2048))
        # Bounded for the client too: gRPC clients refuse trailers past 8-16 KiB, and then see
        # RESOURCE_EXHAUSTED about metadata instead of the reason.
        await context.abort(code, printable(reason, 2048))
        raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def add_to_server(server: grpc.aio.Server, servicer: CertificateServicer) -> None:
    ca_pb2_grpc.add_CertificateServiceServicer_to_server(servicer, server)
