"""TLS contexts: caching across rotation, identity extraction, and rotation seen by new handshakes."""

from __future__ import annotations

import asyncio

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ambit.dataplane import tls
from ambit.dataplane.identity import WorkloadCertificate
from ambit.dataplane.libcrypto.x509 import Certificate
from controller.ca import generate_root
from tests.unit.conftest import TD, issue
from tests.unit.dataplane.memtls import handshake
from tests.unit.dataplane.test_hbone import CLIENT, SERVER, HBONEClientPool, Mesh, echo


def test_context_cache_reuses_until_rotation_or_bundle_change(ca) -> None:
    cache = tls.ContextCache()
    cert = issue(ca, CLIENT)
    c1 = cache.client(cert)
    assert cache.client(cert) is c1
    assert cache.server(cert) is not c1
    rotated = issue(ca, CLIENT)
    c2 = cache.client(rotated)
    assert c2 is not c1 and cache.client(rotated) is c2
    # Same certificate, but a new root joined the bundle: the context must trust it too.
    new_root = generate_root(TD)
    widened = WorkloadCertificate(rotated.identity, rotated.key_pem, rotated.chain_pem,
                                  rotated.bundle.with_root(Certificate.load_pems(new_root.cert.public_bytes(Encoding.PEM))[0]), rotated.serial,
                                  rotated.not_before, rotated.not_after)
    assert cache.client(widened) is not c2


def test_peer_identity_check_on_a_real_handshake(ca) -> None:
    """In-memory TLS (no sockets): verify_peer accepts the right id and names both on mismatch."""
    client_ctx = tls.client_context(issue(ca, CLIENT))
    server_ctx = tls.server_context(issue(ca, SERVER))
    c, s = handshake(client_ctx, server_ctx)
    tls.check_negotiated(c)
    assert tls.verify_peer(c, SERVER).uri == SERVER
    assert tls.peer_identity(s).uri == CLIENT
    with pytest.raises(tls.PeerIdentityError, match=f"peer identity is {SERVER}, expected {CLIENT}"):
        tls.verify_peer(c, CLIENT)


def test_rotated_server_certificate_is_used_by_the_next_handshake(ca) -> None:
    async def main() -> None:
        async with Mesh(ca, echo) as m:
            first = await m.open()
            old_serial = _peer_serial(first)
            assert old_serial == m.server_cert.serial
            m.server_cert = issue(ca, SERVER)             # rotation on the server side
            other_pool = HBONEClientPool(m.pool._client_context, port=m.port)
            try:
                second = await other_pool.connect(CLIENT, SERVER, "127.0.0.1", "10.0.0.2:80")
                assert _peer_serial(second) == m.server_cert.serial != old_serial
                # The connection made before the rotation keeps working.
                first.write(b"old")
                assert await first.readexactly(3) == b"old"
                second.close()
            finally:
                await other_pool.close()
            first.close()

    asyncio.run(main())


def _peer_serial(stream) -> int:
    der = stream.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number
