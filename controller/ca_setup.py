"""Mounting the CA (controller/ca) on the controller's gRPC server, and the lab's node credentials.

The CA shares the config stream's grpc.aio server, so a node needs one address for config and
certificates. Node authorization asks the controller which pods run on a node, from the same
translation the config stream serves (so a ztunnel can get a pod's certificate as soon as the pod
is in its config, and not before).

Lab credentials: every Node in the store gets a bootstrap token, written (0600) to
`<token_dir>/<node>/bootstrap-token` for that node's ztunnel to present; the CA keeps only digests.
A token that still verifies is kept across controller restarts, so ztunnels need not re-read it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import grpc

from controller.ca import (
    BootstrapTokens,
    CAStorage,
    CertificateAuthority,
    CertificateServicer,
    NodeCredentialVerifier,
    Unauthenticated,
    add_to_server,
    load_or_create,
)
from controller.ca.authority import CAExpired
from controller.ca.service import PodsOnNode
from controller.fairness import RequestRate

SERVING_TTL = dt.timedelta(days=30)
EXPIRED_RETRY = 60.0    # seconds before a serving certificate refused by an expired CA is tried again

log = logging.getLogger("ambit.controller.ca")

TOKEN_FILE = "bootstrap-token"
TOKEN_DIGESTS = "node-token-digests.json"


def mount_ca(server: grpc.aio.Server, storage: CAStorage, trust_domain: str, verifier: NodeCredentialVerifier,
             pods_on_node: PodsOnNode, rate: RequestRate | None = None) -> CertificateServicer:
    """Load (or create, on first start) the CA kept in `storage` (a directory, or a Secret) and
    serve CreateCertificate (`rate`: each credential's request bound; None: the defaults); the servicer (its `.ca`, its issuance counts) is returned for the
    controller's metrics."""
    material = load_or_create(storage, trust_domain)
    ca = CertificateAuthority(material, trust_domain)
    servicer = CertificateServicer(ca, verifier, pods_on_node, rate)
    add_to_server(server, servicer)
    log.info("CA for trust domain %s from %s (root %s)", trust_domain, getattr(storage, "where", storage),
             material.root.subject.rfc4514_string() or "<empty subject>")
    return servicer


def token_file(token_dir: Path, node: str) -> Path:
    return token_dir / node / TOKEN_FILE


def ensure_node_tokens(tokens: BootstrapTokens, nodes: Iterable[str], token_dir: Path) -> list[str]:
    """Give every node a valid token file; returns the nodes that got a new one."""
    issued = []
    for node in sorted(set(nodes)):
        path = token_file(token_dir, node)
        try:
            tokens.check(path.read_text().strip(), node)
            continue
        except (OSError, Unauthenticated):
            pass
        token = tokens.issue(node)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, token.encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
        issued.append(node)
        log.info("issued a bootstrap token for node %s (%s)", node, path)
    return issued


def serving_hosts(identity: str, cluster_domain: str, extra: Iterable[str] = ()) -> list[str]:
    """The DNS names of the controller's serving certificate: `<sa>.<ns>.svc` (what clients check,
    ambit.configclient.tls.server_name), its cluster-domain form, and any `extra` (--serving-host)."""
    from ambit.configclient.tls import server_name
    short = server_name(identity)
    return list(dict.fromkeys([short, f"{short}.{cluster_domain}", *extra]))


class ServingCertificate:
    """The controller's TLS certificate, issued by its own CA for `identity` and re-issued at half
    its life: gRPC asks `fetch` on every new handshake (grpc.dynamic_ssl_server_credentials), so a
    long-running controller never serves an expired certificate and needs no restart for it."""

    def __init__(self, ca: CertificateAuthority, identity: str, hosts: list[str], ttl: dt.timedelta = SERVING_TTL,
                 clock=time.time) -> None:
        self.ca, self.identity, self.hosts, self.ttl, self.clock = ca, identity, hosts, ttl, clock
        self.renew_at = 0.0
        self.issued = 0

    def issue_pem(self) -> tuple[str, str]:
        """A new certificate now: (its chain, its key), PEM. Raises CAExpired."""
        chain, key = self.ca.issue_serving_certificate(self.hosts, self.ttl, identity=self.identity)
        self.renew_at = self.clock() + self.ttl.total_seconds() / 2
        self.issued += 1
        log.info("serving certificate for %s (%s), renewed in %s", self.identity, ", ".join(self.hosts), self.ttl / 2)
        return "".join(chain), key

    @staticmethod
    def _grpc(chain: str, key: str) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key.encode(), chain.encode())])

    def pem_if_due(self) -> tuple[str, str] | None:
        """A new (chain, key) when the current one is past half its life, else None (keep it). A
        CA that has expired meanwhile issues nothing: the current one is kept, and the next try is
        a minute later (a reload may bring a renewed CA: controller/ca/reload.py)."""
        if self.clock() < self.renew_at:
            return None
        try:
            return self.issue_pem()
        except CAExpired as e:
            log.error("serving certificate not renewed: %s", e)
            self.renew_at = self.clock() + EXPIRED_RETRY
            return None

    def renew_now(self) -> None:
        """Issue a new certificate at the next handshake (the CA was reloaded: sign under it)."""
        self.renew_at = 0.0

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """`pem_if_due` as grpc's dynamic credentials ask it, at every new handshake."""
        pem = self.pem_if_due()
        return self._grpc(*pem) if pem is not None else None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._grpc(*self.issue_pem()), self.fetch,
                                                   require_client_authentication=False)
