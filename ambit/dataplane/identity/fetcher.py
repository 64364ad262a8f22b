"""How a certificate is obtained: the `CertificateFetcher` protocol and its gRPC implementation
against the controller's CA (node credential in the metadata)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ambit.api import ca_grpc, ca_pb2
from ambit.configclient import rpc

if TYPE_CHECKING:
    from grpclib.client import Channel


class CertificateFetchError(Exception):
    """The CA refused or could not be reached; `code` is the gRPC status name (UNAVAILABLE when
    the CA could not be reached, DEADLINE_EXCEEDED when it did not answer in time)."""

    def __init__(self, identity: str, code: str, detail: str) -> None:
        super().__init__(f"fetching certificate for {identity} failed: {code}: {detail}")
        self.identity = identity
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class FetchResult:
    chain_pem: list[str]
    trust_bundle: list[str]


class CertificateFetcher(Protocol):
    async def fetch(self, identity: str, csr_pem: bytes, ttl_seconds: int) -> FetchResult: ...


class GrpcCertificateFetcher:
    """Calls `ambit.ca.v1.CertificateService/CreateCertificate` as node `node`.

    `token` is a callable so a rotating projected service-account token is re-read on every call.
    `channel` may be a callable giving the channel for each call (ambit.configclient.tls.PinnedChannel:
    rebuilt when the pinned root changes, as during a root rotation).
    """

    def __init__(self, channel: Channel | Callable[[], Channel], node: str,
                 token: Callable[[], str], *, timeout: float = 10.0) -> None:
        self._channel = channel
        self.node = node
        self._token = token
        self.timeout = timeout

    async def fetch(self, identity: str, csr_pem: bytes, ttl_seconds: int) -> FetchResult:
        req = ca_pb2.CSRRequest(csr_pem=csr_pem.decode(), identity=identity, ttl_seconds=int(ttl_seconds))
        md = (("authorization", f"Bearer {self._token()}"), ("x-ambit-node", self.node))
        channel = self._channel() if callable(self._channel) else self._channel
        try:
            resp = await ca_grpc.CertificateServiceStub(channel).CreateCertificate(req, metadata=md,
                                                                                  timeout=self.timeout)
        except Exception as e:
            f = rpc.failure(e)
            if f is None:
                raise
            raise CertificateFetchError(identity, *f) from None
        return FetchResult(list(resp.cert_chain), list(resp.trust_bundle))
