"""Reaching the controller over TLS: whom to trust, and how to check it is the controller.

The config stream and the CA carry every workload's policy and every node's certificates, so a
client must know it talks to the real controller before it sends its credential or believes what
comes back. As istiod's clients do:

* The root is *pinned*: read from a file the client was given out of band (in a cluster the
  `ambit-root-cert` ConfigMap mounted into the pod; in the lab `<labdir>/controller-root.pem`,
  written by the lab from the CA before the controller starts), never taken from the channel it
  protects. The file is re-read on every connection attempt, so a root rotation that adds the new
  root to the mounted bundle (docs/operations.md) is picked up without a restart.
* The controller's certificate must chain to that root and name the controller's SPIFFE id
  (`spiffe://<td>/ns/<ns>/sa/<sa>`) as a URI SAN. The gRPC channel checks the chain and a host
  name (ambit.configclient.rpc); Python's ssl has no hook for URI SANs, so the identity is checked in two ways: the certificate must carry the DNS
  name derived from the id (`<sa>.<ns>.svc`, `server_name`), which the CA never puts in a workload
  certificate (they carry exactly one URI SAN, controller/ca/authority.py), and `check_identity`
  looks at the URI SAN of the certificate the controller presents, before a stream is opened.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ambit import identity as ident
from ambit.settings import option, parsed_by

# grpclib is imported where a channel is made, so a process that only parses settings (a workers'
# supervisor) never loads it.
if TYPE_CHECKING:
    from grpclib.client import Channel

DEFAULT_IDENTITY = "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller"


class ControllerUntrusted(ConnectionError):
    """The controller's certificate did not verify; the message says against what and why."""


def controller_identity(trust_domain: str, namespace: str, service_account: str = "ambit-controller") -> str:
    """The controller's SPIFFE id: its service account in the mesh root namespace."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def server_name(identity: str) -> str:
    """The DNS name the controller's certificate carries for `identity`: `<sa>.<ns>.svc` (the
    controller's Service is named after its service account, as istiod's is)."""
    sid = ident.parse(identity)
    if sid.namespace is None or sid.service_account is None:
        raise ValueError(f"controller identity {identity!r}: need spiffe://<td>/ns/<ns>/sa/<sa>")
    return f"{sid.service_account}.{sid.namespace}.svc"


@dataclass(frozen=True)
class ControllerTrust:
    """The pinned root file (or, for a one-shot CLI call, its PEM read from the ambit-root-cert
    ConfigMap through the API server) and the identity the controller must prove."""

    root_file: Path | None
    identity: str
    root_pem: bytes = b""

    def __post_init__(self) -> None:
        server_name(self.identity)         # raises naming a malformed id at start-up, not per connection

    def roots(self) -> bytes:
        if self.root_pem or self.root_file is None:
            if b"-----BEGIN CERTIFICATE-----" not in self.root_pem:
                raise ControllerUntrusted("controller root: no PEM certificate given")
            return self.root_pem
        try:
            pem = self.root_file.read_bytes()
        except OSError as e:
            raise ControllerUntrusted(f"controller root {self.root_file}: {e.strerror or e}") from None
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise ControllerUntrusted(f"controller root {self.root_file}: no PEM certificate in it")
        return pem

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.roots().decode())
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


_identity = parsed_by(server_name)


@dataclass(frozen=True)
class ControllerTLSSettings:
    """The flags every controller client shares (`--controller-root-cert`, `--controller-identity`;
    a settings group of the agent, ztunnel and waypoint)."""

    root_cert: Path | None = option(
        help="the controller's pinned root bundle (PEM; cluster: the ambit-root-cert ConfigMap, lab: "
             "<labdir>/controller-root.pem): config stream and CA over TLS. Without it: plaintext, only for "
             "a controller run with --insecure-config-stream")
    identity: str = option(DEFAULT_IDENTITY, "the SPIFFE id the controller must prove (its service account)",
                           check=_identity)

    def trust(self) -> ControllerTrust | None:
        return ControllerTrust(self.root_cert, self.identity) if self.root_cert is not None else None


def tls_field() -> ControllerTLSSettings:
    """The settings field of a controller client: flags --controller-root-cert / --controller-identity."""
    return field(default_factory=ControllerTLSSettings, metadata={"prefix": "controller_"})  # type: ignore[no-any-return]


class PinnedChannel:
    """A long-lived channel to the controller (the CA's, the status reporter's) that follows the
    pinned root file: called, it returns the channel for the roots in the file now, rebuilding it
    when the file changed (a root rotation adds the new root to the mounted bundle before the
    controller's certificate moves to it, docs/operations.md). A file that cannot be read keeps the
    channel as it is; the next call tries again."""

    def __init__(self, target: str, trust: ControllerTrust | None) -> None:
        self.target, self.trust = target, trust
        self._roots = b""
        self._channel: Channel | None = None
        self._old: list[Channel] = []

    def __call__(self) -> Channel:
        roots = self._roots
        if self.trust is not None:
            try:
                roots = self.trust.roots()
            except ControllerUntrusted:
                pass
        if self._channel is None or roots != self._roots:
            if self._channel is not None:
                self._old.append(self._channel)      # calls in flight finish on it; closed in close()
            self._roots = roots
            self._channel = channel(self.target, self.trust)
        return self._channel

    async def close(self) -> None:
        for ch in [*self._old, *([self._channel] if self._channel is not None else [])]:
            ch.close()
        self._old, self._channel = [], None


def channel(target: str, trust: ControllerTrust | None) -> Channel:
    """A channel to the controller at `target` (host:port or unix:PATH): TLS against `trust`
    (chain to the pinned root, the controller's DNS name), or plaintext when `trust` is None (only
    for a controller run with --insecure-config-stream). Call it in a running loop; close it (or use
    `async with`) when done."""
    from ambit.configclient import rpc
    if trust is None:
        return rpc.channel(target)
    return rpc.channel(target, trust.ssl_context(), server_name(trust.identity))


async def check_identity(target: str, trust: ControllerTrust, timeout: float = 10.0) -> None:
    """Handshake with `target` and check its certificate chains to the pinned root, carries the
    controller's DNS name and names `trust.identity` as a URI SAN. Raises ControllerUntrusted."""
    ctx = trust.ssl_context()
    name = server_name(trust.identity)
    try:
        if target.startswith("unix:"):
            path = target[len("unix:"):].removeprefix("//")
            conn = asyncio.open_unix_connection(path, ssl=ctx, server_hostname=name)
        else:
            host, _, port = target.rpartition(":")
            conn = asyncio.open_connection(host.strip("[]"), int(port), ssl=ctx, server_hostname=name)
        _reader, writer = await asyncio.wait_for(conn, timeout)
    except ssl.SSLCertVerificationError as e:
        raise ControllerUntrusted(f"controller at {target}: certificate not trusted by the pinned root "
                                  f"{trust.root_file} for {name}: {e.verify_message}") from None
    except ssl.SSLError as e:
        raise ControllerUntrusted(f"controller at {target}: TLS handshake failed: {e}") from None
    try:
        cert = writer.get_extra_info("ssl_object").getpeercert()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
    uris = ident.peercert_uris(cert)
    if trust.identity not in uris:
        raise ControllerUntrusted(f"controller at {target}: certificate names {', '.join(uris) or 'no SPIFFE id'}, "
                                  f"not the controller's {trust.identity}")
