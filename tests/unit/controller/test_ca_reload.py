"""Taking up a changed CA without a restart (controller/ca/reload.py), driven without sockets.

A renewed intermediate under the same root (what cert-manager does before its CA Certificate
expires) is signed with from the next request on; the steps of a root rotation (publish the new
root, sign under it, drop the old one) each pass; a root swapped outright, a signing root published
in the same edit, an expired or not-yet-valid CA, unreadable material and a deleted store are
refused, and the CA keeps signing with what it had. A CA whose own certificate expired refuses to
sign rather than hand out certificates that expired at birth.
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambit.dataplane.identity import make_key_and_csr
from controller.ca import CertificateAuthority, generate_root
from controller.ca.authority import CAConfigError, CAExpired, CAMaterial
from controller.ca.reload import APPLIED, FAILED, REFUSED, UNCHANGED, CAReloader, judge

TD = "cluster.local"
IDENTITY = "spiffe://cluster.local/ns/default/sa/frontend"
NOW = dt.datetime.now(dt.UTC)


def intermediate(root: CAMaterial, name: str = "ambit intermediate", *, start: dt.datetime | None = None,
                 lifetime: dt.timedelta = dt.timedelta(days=90)) -> CAMaterial:
    """An intermediate CA under `root`, as cert-manager issues one (a new key each time)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = start or NOW - dt.timedelta(minutes=1)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(root.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False)
            .sign(root.key, root.cert.signature_hash_algorithm))
    return CAMaterial(cert=cert, key=key, chain=[root.cert])


def with_extra(m: CAMaterial, *roots: CAMaterial) -> CAMaterial:
    return CAMaterial(cert=m.cert, key=m.key, chain=list(m.chain), extra_roots=[r.cert for r in roots])


def issuer_of_new_leaf(ca: CertificateAuthority) -> str:
    _, csr = make_key_and_csr(IDENTITY)
    chain = ca.sign_csr(csr, IDENTITY)
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    return leaf.issuer.rfc4514_string()


@pytest.fixture(scope="module")
def roots() -> tuple[CAMaterial, CAMaterial]:
    return generate_root(TD, path_length=1), generate_root(TD, path_length=1)


def test_the_same_material_read_again_changes_nothing(roots: tuple[CAMaterial, CAMaterial]) -> None:
    a, _ = roots
    again = CAMaterial(cert=a.cert, key=a.key)
    assert judge(a, again, NOW).result == UNCHANGED


def test_a_renewed_intermediate_under_the_same_root_is_signed_with_from_the_next_request(
        roots: tuple[CAMaterial, CAMaterial]) -> None:
    a, _ = roots
    first, renewed = intermediate(a, "ambit intermediate 1"), intermediate(a, "ambit intermediate 2")
    ca = CertificateAuthority(first, TD)
    assert issuer_of_new_leaf(ca) == "CN=ambit intermediate 1"
    changed: list[bool] = []
    r = CAReloader(ca, lambda: renewed, "Secret ambit-system/ambit-ca", changed.append)
    v = r.check()
    assert v.result == APPLIED and not v.root_changed and "ambit intermediate 2" in v.reason
    assert changed == [False], "the serving certificate is re-issued; the roots are not republished"
    assert ca.material is renewed and issuer_of_new_leaf(ca) == "CN=ambit intermediate 2"
    chain = ca.sign_csr(make_key_and_csr(IDENTITY)[1], IDENTITY)
    assert [x509.load_pem_x509_certificate(c.encode()).subject for c in chain[1:]] == [renewed.cert.subject], \
        "the leaf travels with the new intermediate, not the old one"
    assert r.check().result == UNCHANGED and r.counts == {APPLIED: 1, REFUSED: 0, FAILED: 0}


def test_each_step_of_a_root_rotation_is_taken_up(roots: tuple[CAMaterial, CAMaterial]) -> None:
    a, b = roots
    step1 = with_extra(a, b)            # publish B beside A, still signing under A
    step2 = with_extra(b, a)            # sign under B, A still trusted
    step4 = CAMaterial(cert=b.cert, key=b.key)      # drop A
    v1 = judge(a, step1, NOW)
    assert v1.result == APPLIED and v1.root_changed and "roots 1 -> 2" in v1.reason
    v2 = judge(step1, step2, NOW)
    assert v2.result == APPLIED and not v2.root_changed, "the same two roots: nothing to republish"
    v4 = judge(step2, step4, NOW)
    assert v4.result == APPLIED and v4.root_changed and "roots 2 -> 1" in v4.reason


def test_a_root_swapped_outright_is_refused_and_the_old_ca_keeps_signing(
        roots: tuple[CAMaterial, CAMaterial], caplog: pytest.LogCaptureFixture) -> None:
    a, b = roots
    ca = CertificateAuthority(a, TD)
    r = CAReloader(ca, lambda: b, "Secret ambit-system/ambit-ca")
    with caplog.at_level(logging.ERROR, logger="ambit.controller.ca"):
        v = r.check()
        r.check()
    assert v.result == REFUSED and "neither contain nor are contained" in v.reason and "Rotating the root" in v.reason
    assert ca.material is a and r.problem == v.reason and r.counts[REFUSED] == 2
    assert len([m for m in caplog.messages if "not taken up" in m]) == 1, "logged once per distinct reason"


def test_signing_under_a_root_published_in_the_same_edit_is_refused(roots: tuple[CAMaterial, CAMaterial]) -> None:
    """Steps 1 and 2 at once: proxies still pinning {A} would refuse every certificate from B."""
    a, b = roots
    v = judge(a, with_extra(b, a), NOW)
    assert v.result == REFUSED and "do not pin yet" in v.reason


@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_a_ca_outside_its_validity_is_refused(roots: tuple[CAMaterial, CAMaterial], when: str) -> None:
    a, _ = roots
    start = NOW - dt.timedelta(days=100) if when == "expired" else NOW + dt.timedelta(days=1)
    v = judge(a, intermediate(a, start=start), NOW)
    assert v.result == REFUSED
    assert ("expired at" if when == "expired" else "is not valid before") in v.reason


def test_unreadable_or_deleted_material_keeps_the_ca_and_a_fix_clears_the_problem(
        roots: tuple[CAMaterial, CAMaterial]) -> None:
    a, _ = roots
    ca = CertificateAuthority(a, TD)
    stored: list[object] = [CAConfigError("Secret ambit-system/ambit-ca: CA key: does not match the CA "
                                          "certificate's public key")]

    def load() -> CAMaterial | None:
        x = stored[0]
        if isinstance(x, Exception):
            raise x
        return x  # type: ignore[return-value]
    r = CAReloader(ca, load, "Secret ambit-system/ambit-ca")
    v = r.check()
    assert v.result == FAILED and "does not match" in v.reason and ca.material is a and r.problem
    stored[0] = None
    v = r.check()
    assert v.result == FAILED and "gone" in v.reason and ca.material is a
    stored[0] = OSError("connection refused")
    assert r.check().result == FAILED and "OSError" in r.problem
    stored[0] = renewed = intermediate(a)
    assert r.check().result == APPLIED and ca.material is renewed and r.problem == ""
    assert r.counts == {APPLIED: 1, REFUSED: 0, FAILED: 3}


def test_what_follows_a_reload_failing_does_not_undo_it(roots: tuple[CAMaterial, CAMaterial]) -> None:
    a, _ = roots
    ca = CertificateAuthority(a, TD)
    renewed = intermediate(a)

    def boom(_root_changed: bool) -> None:
        raise RuntimeError("API server away")
    assert CAReloader(ca, lambda: renewed, "x", boom).check().result == APPLIED
    assert ca.material is renewed


def test_an_expired_ca_refuses_to_sign_instead_of_issuing_dead_certificates(
        roots: tuple[CAMaterial, CAMaterial]) -> None:
    a, _ = roots
    old = intermediate(a, start=NOW - dt.timedelta(days=100))
    ca = CertificateAuthority(old, TD)
    with pytest.raises(CAExpired, match="expired at .*renew it"):
        ca.sign_csr(make_key_and_csr(IDENTITY)[1], IDENTITY)
    with pytest.raises(CAExpired):
        ca.issue_serving_certificate(["ambit-controller.ambit-system.svc"])


def test_an_interval_of_zero_starts_no_thread(roots: tuple[CAMaterial, CAMaterial]) -> None:
    import threading
    a, _ = roots
    assert CAReloader(CertificateAuthority(a, TD), lambda: a, "x", interval=0).start(threading.Event()) is None


def test_an_intermediate_under_a_root_that_allows_none_is_refused_as_unusable() -> None:
    """The controller's own root is pathlen:0: an intermediate under it signs certificates every
    verifier refuses ("path length constraint exceeded"), so such material is not a CA at all,
    at start or on reload."""
    from cryptography.hazmat.primitives import serialization

    from ambit.dataplane.trust import TrustBundle
    from controller.ca.authority import load_user_provided
    strict = generate_root(TD)                      # path_length=0, as the controller makes it
    inter = intermediate(strict)

    def p(c: x509.Certificate) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)
    key = inter.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    with pytest.raises(CAConfigError, match=r"chain\[0\].*pathLenConstraint 0 allows 0.*puts 1"):
        load_user_provided(p(inter.cert), key, p(strict.cert))
    # What it guards against: a leaf from it does not verify against the root.
    chain = CertificateAuthority(inter, TD).sign_csr(make_key_and_csr(IDENTITY)[1], IDENTITY)
    bundle = TrustBundle.from_pems([p(strict.cert)])
    with pytest.raises(ValueError, match="path length constraint exceeded"):
        bundle.verify_pems(chain)
    # One level of room is enough.
    loose = generate_root(TD, path_length=1)
    ok = intermediate(loose)
    load_user_provided(p(ok.cert), ok.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()), p(loose.cert))


def test_a_ca_whose_certificates_the_data_plane_would_refuse_is_refused_with_its_reason() -> None:
    """A path length without keyCertSign: OpenSSL's strict verifier (the handshakes') refuses every
    certificate under it, so loading it says so rather than the mesh failing every handshake."""
    from cryptography.hazmat.primitives import serialization

    from controller.ca.authority import load_user_provided
    root = generate_root(TD, path_length=1)
    key = ec.generate_private_key(ec.SECP256R1())
    bad = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no key usage")]))
           .issuer_name(root.cert.subject).public_key(key.public_key())
           .serial_number(x509.random_serial_number())
           .not_valid_before(NOW - dt.timedelta(minutes=1)).not_valid_after(NOW + dt.timedelta(days=30))
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(root.key, root.cert.signature_hash_algorithm))
    with pytest.raises(CAConfigError, match="does not verify against its own root.*keyCertSign"):
        load_user_provided(bad.public_bytes(serialization.Encoding.PEM),
                           key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()),
                           root.cert.public_bytes(serialization.Encoding.PEM))


def test_what_ambit_status_is_told_about_the_ca(roots: tuple[CAMaterial, CAMaterial]) -> None:
    """Nothing while the chain has more than a week; its expiry within a week (cert-manager renews
    with a third of the life left, so the renewal did not happen), or past; and a stored CA that
    was not taken up, which says why."""
    a, b = roots
    fine = CAReloader(CertificateAuthority(intermediate(a), TD), lambda: None, "Secret ambit-system/ambit-ca")
    assert fine.status() == ""
    soon = intermediate(a, start=NOW - dt.timedelta(days=87))          # 3 days left
    r = CAReloader(CertificateAuthority(soon, TD), lambda: soon, "Secret ambit-system/ambit-ca")
    assert r.status().startswith("the CA's certificate chain expires at ")
    assert "(in 2 days" in r.status() or "(in 3 days" in r.status(), r.status()
    gone = intermediate(a, start=NOW - dt.timedelta(days=91))
    r = CAReloader(CertificateAuthority(gone, TD), lambda: gone, "Secret ambit-system/ambit-ca")
    assert "expired at" in r.status() and "requests are refused" in r.status()
    r = CAReloader(CertificateAuthority(a, TD), lambda: b, "Secret ambit-system/ambit-ca")
    r.check()
    assert r.status().startswith("the CA in Secret ambit-system/ambit-ca changed but is not taken up: its roots")


def test_ambit_status_lists_each_replicas_ca_problem_and_exits_1() -> None:
    from ambit.api import config_pb2
    from ambitctl.commands.mesh import format_status
    from controller.debug.replicas import Peer, PeerAnswer
    from controller.debug.statusmerge import label_own, merge_status
    own = label_own(config_pb2.StatusResponse(version="v1"), "ctl-a")
    peer = label_own(config_pb2.StatusResponse(version="v1"), "ctl-b", "the CA's certificate chain expired at X")
    merged = merge_status(own, [PeerAnswer(Peer("ctl-b", "10.0.0.2:15012"), peer)])
    assert [r.ca_problem for r in merged.replicas] == ["", "the CA's certificate chain expired at X"]
    text = format_status(merged, "10.0.0.1:15012", now=0)
    assert "CA PROBLEM" in text and "  controller replica ctl-b: the CA's certificate chain expired at X" in text
    assert "CA PROBLEM" not in format_status(own, "x", now=0)


def test_a_read_caught_half_written_is_read_again_before_it_counts(roots: tuple[CAMaterial, CAMaterial]) -> None:
    """A directory is written file by file: the first read may see the new key beside the old
    certificate. With `settle`, the second read decides, and nothing is logged or counted."""
    a, _ = roots
    ca = CertificateAuthority(a, TD)
    renewed = intermediate(a)
    reads: list[object] = [CAConfigError("CA key: does not match the CA certificate's public key"), renewed]

    def load() -> CAMaterial | None:
        x = reads.pop(0)
        if isinstance(x, Exception):
            raise x
        return x  # type: ignore[return-value]
    r = CAReloader(ca, load, "directory ca", settle=0.01)
    assert r.check().result == APPLIED and ca.material is renewed
    assert r.counts == {APPLIED: 1, REFUSED: 0, FAILED: 0} and r.problem == ""


def test_a_change_caught_half_written_is_taken_up_only_once_two_reads_agree(
        roots: tuple[CAMaterial, CAMaterial]) -> None:
    """Rotation step 2 written file by file: for a moment the directory holds the new signing root
    beside the old extra-roots.crt, a mix that drops the old root. A mix never becomes the CA."""
    a, b = roots
    step1 = with_extra(a, b)
    mix = CAMaterial(cert=b.cert, key=b.key, extra_roots=[b.cert])     # step 2's key and cert, step 1's extras
    step2 = with_extra(b, a)
    ca = CertificateAuthority(step1, TD)
    reads = [mix, step2, step2, step2]
    r = CAReloader(ca, lambda: reads.pop(0), "directory ca", settle=0.01)
    assert r.check().result == UNCHANGED and ca.material is step1, "the mix is not taken up"
    assert r.check().result == APPLIED and ca.material.cert == b.cert and len(ca.material.extra_roots) == 1
    assert r.counts[APPLIED] == 1


def test_an_expired_ca_keeps_the_serving_certificate_it_has_and_tries_again_later(
        roots: tuple[CAMaterial, CAMaterial], caplog: pytest.LogCaptureFixture) -> None:
    from controller.ca_setup import EXPIRED_RETRY, ServingCertificate
    a, _ = roots
    ca = CertificateAuthority(intermediate(a), TD)
    now = [1000.0]
    serving = ServingCertificate(ca, "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller",
                                 ["ambit-controller.ambit-system.svc"], clock=lambda: now[0])
    serving.credentials()
    ca.material = intermediate(a, start=NOW - dt.timedelta(days=100))      # it expired meanwhile
    serving.renew_now()
    with caplog.at_level(logging.ERROR, logger="ambit.controller.ca"):
        assert serving.fetch() is None, "the certificate it has is kept"
    assert "serving certificate not renewed" in caplog.text and "expired at" in caplog.text
    assert serving.fetch() is None and serving.renew_at == now[0] + EXPIRED_RETRY
    ca.material = intermediate(a)           # renewed, taken up by a reload
    now[0] += EXPIRED_RETRY
    assert serving.fetch() is not None and serving.issued == 2


@pytest.mark.parametrize(("argv", "reason"), [
    (["--lab-store", "s.json", "--insecure-config-stream", "--ca-reload-interval", "5"], "read only with a CA"),
    (["--lab-store", "s.json", "--insecure-config-stream", "--root-cert-file", "r.pem"], "needs --ca-dir"),
    (["--kube", "--ca-secret", "ambit-ca", "--root-cert-file", "r.pem"], "ambit-root-cert ConfigMap"),
    (["--lab-store", "s.json", "--ca-dir", "ca", "--ca-reload-interval", "0.5"], "0 (off) or 1..3600"),
])
def test_reload_flags_that_would_do_nothing_are_refused(argv: list[str], reason: str) -> None:
    from controller.settings import load
    with pytest.raises((ValueError, SystemExit)) as e:
        load(argv, {})
    assert reason in str(e.value)


def test_reload_flags_where_they_act_are_taken() -> None:
    from controller.settings import load
    s = load(["--lab-store", "s.json", "--ca-dir", "ca", "--ca-reload-interval", "2", "--root-cert-file", "r.pem"], {})
    assert s.ca_reload_interval == 2 and str(s.root_cert_file) == "r.pem"
    assert load(["--lab-store", "s.json", "--insecure-config-stream"], {}).ca_reload_interval == 30
