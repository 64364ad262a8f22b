"""A root rotation as the data plane lives it (docs/operations.md, "Rotating the root").

Peers are verified against the bundle each certificate came with. The operator adds the new root to
the pinned bundle (the `ambit-root-cert` ConfigMap), waits for it to reach the nodes, and then lets
the new root sign. Before, a certificate fetched before the first step kept trusting the old root
alone until its half-life (up to 12 h later), and refused every peer the new root had signed
meanwhile: cross-node mTLS failed for hours. Now a certificate whose bundle is not the pinned one is
renewed at once.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from ambit.configclient import tls as ctl_tls
from ambit.dataplane import tls
from ambit.dataplane.identity import CertStore, IdentityManager, WorkloadCertificate
from ambit.dataplane.identity import manager as manager_mod
from controller.ca import (
    BootstrapTokens,
    CertificateAuthority,
    DirectoryStorage,
    generate_root,
    load_or_create,
)
from controller.ca.authority import CAMaterial
from tests.unit.conftest import TD, LocalCAFetcher, issue, sid
from tests.unit.controller.test_root_rotation_tls import CONTROLLER, serve
from tests.unit.dataplane.memtls import handshake
from tests.unit.dataplane.test_identity_manager import FakeClock, settle
from ztunnel import identity_setup

CLIENT, SERVER = sid("demo", "client"), sid("demo", "server")


def publish(path: Path, material: CAMaterial) -> None:
    """What controller/ca/publish.py writes to the ConfigMap the nodes mount."""
    path.write_text("".join(material.trust_bundle().pems()))


def talks(client: WorkloadCertificate, server: WorkloadCertificate) -> bool:
    """Does an mTLS handshake between the two succeed, both ways round?"""
    try:
        handshake(tls.client_context(client), tls.server_context(server))
        handshake(tls.client_context(server), tls.server_context(client))
    except ssl.SSLError:
        return False
    return True


def roots(cert: WorkloadCertificate) -> int:
    return len(cert.bundle.roots)


def test_a_root_added_to_the_pinned_bundle_reaches_every_certificate_before_the_new_root_signs(tmp_path) -> None:
    async def run() -> None:
        clock = FakeClock()
        old, new = generate_root(TD), generate_root(TD)
        pinned = tmp_path / "root-cert.pem"
        publish(pinned, old)
        fetcher = LocalCAFetcher(CertificateAuthority(old, TD))
        node_a = IdentityManager(fetcher, ttl=24 * 3600, clock=clock, pinned_roots=pinned.read_bytes,
                                 store=CertStore(tmp_path / "certs"))
        before = await node_a.get(CLIENT, timeout=5)
        assert roots(before) == 1

        # 0. The new root joins the bundle while the old one still signs; the nodes see the file change.
        step0 = CAMaterial(old.cert, old.key, extra_roots=[new.cert])
        fetcher.ca = CertificateAuthority(step0, TD)
        publish(pinned, step0)
        await clock.advance_to(clock.now() + manager_mod.ROOTS_POLL)        # the next poll sees it
        await clock.advance_to(clock.now() + manager_mod.ROOTS_SPREAD)      # the renewal's spread
        renewed = node_a.current(CLIENT)
        assert renewed is not None and renewed.serial != before.serial and roots(renewed) == 2

        # 1. The new root signs: a peer's fresh certificate chains to it, and node A accepts it.
        fetcher.ca = CertificateAuthority(CAMaterial(new.cert, new.key, extra_roots=[old.cert]), TD)
        publish(pinned, fetcher.ca.material)          # the same two roots, in another order: nothing to do
        peer = issue(fetcher.ca, SERVER)
        assert not talks(before, peer), "the stale bundle is what broke the rotation"
        assert talks(renewed, peer)
        calls = fetcher.calls
        await clock.advance_to(clock.now() + 3 * manager_mod.ROOTS_POLL)
        assert fetcher.calls == calls, "the same pinned set of roots renews nothing"
        await node_a.close()

        # A restart between the steps: the stored certificate holds the bundle it was issued with.
        (tmp_path / "certs").mkdir(exist_ok=True)
        CertStore(tmp_path / "certs").save(before)
        restarted = IdentityManager(fetcher, ttl=24 * 3600, clock=clock, pinned_roots=pinned.read_bytes,
                                    store=CertStore(tmp_path / "certs"))
        assert (await restarted.get(CLIENT, timeout=1)).serial == before.serial   # served at once
        await settle()
        await clock.advance_to(clock.now() + manager_mod.ROOTS_SPREAD)
        assert talks(restarted.current(CLIENT), peer)
        await restarted.close()

    asyncio.run(run())


def test_a_pinned_bundle_the_ca_does_not_serve_renews_once_and_a_bad_file_changes_nothing(tmp_path) -> None:
    async def run() -> None:
        clock = FakeClock()
        ca_material = generate_root(TD)
        fetcher = LocalCAFetcher(CertificateAuthority(ca_material, TD))
        pinned = tmp_path / "root-cert.pem"
        pinned.write_text("not a certificate")
        mgr = IdentityManager(fetcher, ttl=24 * 3600, clock=clock, pinned_roots=pinned.read_bytes)
        await mgr.get(CLIENT, timeout=5)
        for _ in range(3):
            await clock.advance_to(clock.now() + manager_mod.ROOTS_POLL + manager_mod.ROOTS_SPREAD)
        assert fetcher.calls == 1, "an unreadable bundle keeps the certificates as they are"
        publish(pinned, generate_root(TD))                # a root the CA never returns
        for _ in range(5):
            await clock.advance_to(clock.now() + manager_mod.ROOTS_POLL + manager_mod.ROOTS_SPREAD)
        assert fetcher.calls == 2, "renewed once for that bundle, not in a loop"
        await mgr.close()

    asyncio.run(run())


def test_ztunnels_identities_follow_the_pinned_root_file(tmp_path, monkeypatch) -> None:
    """The wiring: ztunnel's identity manager (ztunnel/identity_setup.py) against the real CA service
    over TLS, pinned to the file the node mounts."""
    monkeypatch.setattr(manager_mod, "ROOTS_POLL", 0.05, raising=False)
    monkeypatch.setattr(manager_mod, "ROOTS_SPREAD", 0.05, raising=False)
    store = DirectoryStorage(tmp_path / "ca")
    old = load_or_create(store, TD)
    new = generate_root(TD)
    tokens = BootstrapTokens()
    (tmp_path / "token").write_text(tokens.issue("node-1"))
    sock, pinned = tmp_path / "ctl.sock", tmp_path / "root-cert.pem"
    publish(pinned, old)

    async def run() -> None:
        server = await serve(sock, old, tokens)
        mgr, channel = identity_setup.build(f"unix:{sock}", "node-1", tmp_path / "token",
                                            trust=ctl_tls.ControllerTrust(pinned, CONTROLLER))
        try:
            before = await mgr.get(sid("default", "frontend"), timeout=10)
            assert roots(before) == 1
            await server.stop(None)
            step0 = CAMaterial(old.cert, old.key, extra_roots=[new.cert])
            server = await serve(sock, step0, tokens)          # the controller restarted with the new root
            publish(pinned, step0)                             # and the ConfigMap followed

            async def follows() -> bool:
                cur = mgr.current(sid("default", "frontend"))
                return cur is not None and roots(cur) == 2
            for _ in range(200):
                if await follows():
                    break
                await asyncio.sleep(0.05)
            assert await follows(), "the certificate kept the old bundle"
        finally:
            await mgr.close()
            await channel.close()
            await server.stop(None)

    asyncio.run(run())



def test_a_stored_certificate_of_a_foreign_root_is_not_served(tmp_path) -> None:
    """The store re-verified a file against the bundle stored in it: a self-consistent file from
    another CA (its own root in its bundle) was served after a restart, and its root trusted for
    every peer of that identity."""
    async def run() -> None:
        clock = FakeClock()
        mesh, foreign = CertificateAuthority(generate_root(TD), TD), CertificateAuthority(generate_root(TD), TD)
        pinned = tmp_path / "root-cert.pem"
        publish(pinned, mesh.material)
        CertStore(tmp_path / "certs").save(issue(foreign, CLIENT))
        fetcher = LocalCAFetcher(mesh)
        fetcher.fail_next = 1                               # the CA is down as we start
        mgr = IdentityManager(fetcher, ttl=3600, clock=clock, pinned_roots=pinned.read_bytes,
                              store=CertStore(tmp_path / "certs"))
        mgr.prefetch([CLIENT])
        await settle()
        assert mgr.current(CLIENT) is None, "the foreign certificate was served"
        await clock.advance_to(clock.next_wake)             # the CA is back
        got = await mgr.get(CLIENT, timeout=5)
        mesh.trust_bundle().verify_pems(list(got.chain_pem))
        await mgr.close()

        good = issue(mesh, CLIENT)                          # the mesh's own stored certificate: served at once
        CertStore(tmp_path / "certs").save(good)
        fetcher.fail_next = 1
        again = IdentityManager(fetcher, ttl=3600, clock=clock, pinned_roots=pinned.read_bytes,
                                store=CertStore(tmp_path / "certs"))
        assert (await again.get(CLIENT, timeout=0.1)).serial == good.serial
        await again.close()

    asyncio.run(run())
