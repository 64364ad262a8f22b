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

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import grpc

from controller.ca import (
    BootstrapTokens,
    CertificateAuthority,
    CertificateServicer,
    DirectoryStorage,
    NodeCredentialVerifier,
    Unauthenticated,
    add_to_server,
    load_or_create,
)
from controller.ca.service import PodsOnNode

log = logging.getLogger("ambit.controller.ca")

TOKEN_FILE = "bootstrap-token"
TOKEN_DIGESTS = "node-token-digests.json"


def mount_ca(server: grpc.aio.Server, ca_dir: Path, trust_domain: str, verifier: NodeCredentialVerifier,
             pods_on_node: PodsOnNode) -> CertificateServicer:
    """Load (or create, on first start) the CA kept in `ca_dir` and serve CreateCertificate; the
    servicer (its `.ca`, its issuance counts) is returned for the controller's metrics."""
    material = load_or_create(DirectoryStorage(ca_dir), trust_domain)
    ca = CertificateAuthority(material, trust_domain)
    servicer = CertificateServicer(ca, verifier, pods_on_node)
    add_to_server(server, servicer)
    log.info("CA for trust domain %s from %s (root %s)", trust_domain, ca_dir,
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
