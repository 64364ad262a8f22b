"""DestinationRule `trafficPolicy.tls.caCrl` at TLS origination, on the wire: a ServiceEntry bound to
a waypoint and a DestinationRule SIMPLE with `caCertificates` and `caCrl` files, through the
controller's real translation into a real `WaypointProxy`; curl speaks plain HTTP to it and the
endpoint is a Python TLS server.

A CRL revoking the server's certificate fails the upstream handshake: 503 with `UF`, as any other
origination failure. Before, `caCrl` was accepted with a warning and not checked."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.support.testca import make_ca, pem
from tests.support.wait import wait_for
from tests.unit.waypoint import test_backendtls_wire as wire
from tests.unit.waypoint.test_backendtls_wire import HOST, NS, TlsOrigin, run

pytestmark = pytest.mark.timeout(60)
Obj = dict[str, Any]


class Origin(TlsOrigin):
    """TlsOrigin, with its CA's key kept to sign CRLs and its certificate's serial number."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        keys = []

        def keeping(cn: str):  # type: ignore[no-untyped-def]
            ca, key = make_ca(cn)
            keys.append(key)
            return ca, key
        monkeypatch.setattr(wire, "make_ca", keeping)
        super().__init__(tmp)
        self.ca_key = keys[0]
        self.serial = x509.load_pem_x509_certificate((tmp / "origin.crt").read_bytes()).serial_number

    def crl(self, *serials: int) -> bytes:
        now = datetime.datetime.now(datetime.UTC)
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.ca.subject)
             .last_update(now - datetime.timedelta(minutes=5)).next_update(now + datetime.timedelta(hours=1)))
        for s in serials:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(s)
                                          .revocation_date(now - datetime.timedelta(minutes=1)).build())
        return b.sign(self.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture()
def origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Origin]:
    o = Origin(tmp_path, monkeypatch)
    yield o
    o.close()


def objects(port: int, tls: Obj) -> list[Obj]:
    """The ServiceEntry and waypoint of test_backendtls_wire, and a DestinationRule SIMPLE with `tls`."""
    entry = [o for o in wire.objects(port, None) if o["kind"] in ("ServiceEntry", "Gateway")]
    return [*entry, {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                     "metadata": {"name": "api", "namespace": NS},
                     "spec": {"host": HOST, "trafficPolicy": {"tls": {"mode": "SIMPLE", **tls}}}}]


def test_a_revoked_server_certificate_fails_origination_with_503_uf(origin: Origin, tmp_path: Path) -> None:
    ca, crl = tmp_path / "ca.pem", tmp_path / "ca.crl"
    ca.write_text(pem(origin.ca))
    crl.write_bytes(origin.crl(origin.serial + 1))          # another certificate revoked: served
    tls = {"caCertificates": str(ca), "caCrl": str(crl)}
    status, body, _ = run(objects(origin.port, tls))
    assert status == 200, body
    crl.write_bytes(origin.crl(origin.serial))              # the server's own: refused
    status, _, flags = run(objects(origin.port, tls))
    assert status == 503 and "UF" in flags.split(","), flags
    # TLS was attempted (and refused), not plaintext; the origin's thread records it after the waypoint's answer
    wait_for(lambda: origin.failed_handshakes >= 1, timeout=10, what="the origin seeing a refused handshake")


def test_a_crl_file_without_a_crl_fails_every_connection(origin: Origin, tmp_path: Path) -> None:
    """A caCrl file that holds no CRL (here: the CA certificate, which would otherwise have been
    loaded as one more trusted CA) is not a check to skip: the connection fails."""
    ca = tmp_path / "ca.pem"
    ca.write_text(pem(origin.ca))
    status, _, flags = run(objects(origin.port, {"caCertificates": str(ca), "caCrl": str(ca)}))
    assert status == 503 and "UF" in flags.split(","), flags


def test_ca_crl_is_no_longer_warned() -> None:
    """(credentialName, warned as not supported next to it before, is applied now: a Secret in the
    waypoint's namespace, tests/unit/waypoint/test_origination_credential_wire.py.)"""
    from controller.translate import translate
    from controller.waypoints.advisories import advisories
    objs = objects(8443, {"caCertificates": "/etc/certs/ca.pem", "caCrl": "/etc/certs/ca.crl"})
    found = {a.path for a in advisories(objs, translation=translate(objs))}
    assert not {p for p in found if p.startswith("spec.trafficPolicy.tls")}, found
