"""Rotating the mesh root without a client losing the controller (docs/operations.md, "Rotating the
root"): the real CA service on a real TLS socket, restarted at each step as a controller rollout
would, and a client that keeps one `PinnedChannel` and re-reads its pinned bundle file.

0. Old root signs; the new root is added to `extra-roots.crt`: the published bundle is old + new.
1. The new root signs (the controller's certificate moves to it); the old root stays in the bundle.
2. After a workload lifetime, the old root is dropped.
A client pinned to the old root alone is refused after step 1: the overlap is what keeps it working.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from ambit.configclient import tls
from ambit.dataplane.identity import CertificateFetchError, GrpcCertificateFetcher, make_key_and_csr
from controller.ca import (
    BootstrapTokens,
    CertificateAuthority,
    DirectoryStorage,
    generate_root,
    load_or_create,
)
from controller.ca.authority import CAMaterial
from controller.ca.service import CertificateServicer, add_to_server
from controller.ca_setup import ServingCertificate, serving_hosts

TD = "cluster.local"
ID = "spiffe://cluster.local/ns/default/sa/frontend"
CONTROLLER = tls.controller_identity(TD, "ambit-system")


async def serve(sock: Path, material: CAMaterial, tokens: BootstrapTokens) -> grpc.aio.Server:
    """The controller's CA endpoint as `python -m controller` mounts it (controller/ca_setup.py)."""
    ca = CertificateAuthority(material, TD)
    server = grpc.aio.server()
    add_to_server(server, CertificateServicer(ca, tokens, lambda node: [("default", "frontend")]))
    server.add_secure_port(f"unix:{sock}", ServingCertificate(ca, CONTROLLER, serving_hosts(CONTROLLER, TD)).credentials())
    await server.start()
    return server


def test_overlapping_bundles_keep_clients_through_a_root_rotation(tmp_path: Path) -> None:
    store = DirectoryStorage(tmp_path / "ca")
    old = load_or_create(store, TD)
    tokens = BootstrapTokens()
    token = tokens.issue("node-1")
    sock, bundle_file = tmp_path / "ctl.sock", tmp_path / "root-cert.pem"
    only_old = tmp_path / "only-old.pem"

    def publish(material: CAMaterial) -> None:             # what controller/ca/publish.py writes
        bundle_file.write_text("".join(material.trust_bundle().pems()))

    async def go() -> list[str]:
        pinned = tls.PinnedChannel(f"unix:{sock}", tls.ControllerTrust(bundle_file, CONTROLLER))
        stale = tls.PinnedChannel(f"unix:{sock}", tls.ControllerTrust(only_old, CONTROLLER))
        outcomes = []

        async def step(material: CAMaterial) -> None:
            store.save(material)                          # the Secret / directory edit ...
            material = store.load()                       # ... and the controller restart reading it
            assert material is not None
            publish(material)
            server = await serve(sock, material, tokens)
            try:
                for name, ch in (("pinned", pinned), ("old-only", stale)):
                    _, csr = make_key_and_csr(ID)
                    try:
                        await GrpcCertificateFetcher(ch, "node-1", lambda: token, timeout=5).fetch(ID, csr, 600)
                        outcomes.append(f"{name}: ok")
                    except CertificateFetchError as e:
                        outcomes.append(f"{name}: {e.code}")
            finally:
                await server.stop(None)

        only_old.write_text("".join(old.trust_bundle().pems()))
        new = generate_root(TD)
        await step(CAMaterial(old.cert, old.key, extra_roots=[new.cert]))       # 0: bundle old + new
        await step(CAMaterial(new.cert, new.key, extra_roots=[old.cert]))       # 1: the new root signs
        await step(CAMaterial(new.cert, new.key))                               # 2: the old root dropped
        await pinned.close()
        await stale.close()
        return outcomes

    assert asyncio.run(go()) == [
        "pinned: ok", "old-only: ok",
        "pinned: ok", "old-only: UNAVAILABLE",      # without the overlap a client loses the controller
        "pinned: ok", "old-only: UNAVAILABLE",
    ]


def test_a_pinned_channel_keeps_its_channel_while_the_bundle_is_unchanged(tmp_path: Path) -> None:
    (tmp_path / "r.pem").write_text("".join(generate_root(TD).trust_bundle().pems()))
    pc = tls.PinnedChannel("unix:/nonexistent", tls.ControllerTrust(tmp_path / "r.pem", CONTROLLER))

    async def go() -> None:
        first = pc()
        assert pc() is first
        (tmp_path / "r.pem").write_text("".join(generate_root(TD).trust_bundle().pems()))
        assert pc() is not first
        (tmp_path / "r.pem").unlink()                 # unreadable: keep what we have
        assert pc() is pc()
        await pc.close()
    asyncio.run(go())


def test_a_malformed_controller_identity_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="spiffe"):
        tls.ControllerTrust(Path("/x"), "ambit-controller")
