"""The controller process takes up an edited CA Secret without a restart, against the API-server
emulator (real HTTP, the official client, TokenReview), as a platform team meets it: cert-manager
renews the intermediate CA in the Secret, and an operator walks a root rotation.

* The Secret becomes cert-manager's layout with an intermediate under the same root: the next
  certificate is signed by the intermediate, a client pinning the published root still verifies
  the controller (its serving certificate is re-issued under the intermediate), and istiod's
  `citadel_server_*` expiry gauges and `ambit_ca_reloads_total` say so.
* The Secret gets a root swapped outright: refused (the gauge `ambit_ca_reload_problem` is 1, the
  log says why), the controller keeps signing under the intermediate, the ConfigMap keeps the
  pinned root.
* Rotation step 1 (the new root in extra-roots.crt): taken up, and the leader republishes the
  ambit-root-cert ConfigMap with both roots without any other change in the cluster.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ambit.configclient import tls
from controller.ca import generate_root
from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for
from tests.unit.controller.test_ca_reload import intermediate
from tests.unit.controller.test_ca_secret import IDENTITY, NS, ROOT, TD, free_port, pem, stop
from tests.unit.controller.test_ca_secret import cluster as cluster  # noqa: F401 - a fixture


def key_pem(k: Any) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def start(c: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str, int, Any]:
    port, metrics = free_port(), free_port()
    log = open(c["tmp"] / "ctl.log", "w")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen([sys.executable, "-m", "controller", "--kube", "--kube-host", c["emu"].url,
                             "--listen", f"127.0.0.1:{port}", "--ca-secret", "ambit-ca", "--pod-name", "ctl-a",
                             "--debounce", "0.01", "--dashboard-address", "", "--ca-reload-interval", "1",
                             "--metrics-port", str(metrics), "--metrics-address", "127.0.0.1"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    import socket

    def up() -> bool:
        assert proc.poll() is None, (c["tmp"] / "ctl.log").read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_for(up, timeout=60, what="controller listening")
    return proc, f"127.0.0.1:{port}", metrics, log


def metric(port: int, name: str, labels: str = "") -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def serving_issuer(address: str) -> str:
    """The issuer of the controller's serving certificate, as a fresh TLS handshake shows it."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    import socket
    with socket.create_connection((host, int(port)), timeout=5) as s, ctx.wrap_socket(s) as t:
        der = t.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


async def ask(address: str, trust: tls.ControllerTrust, token: str) -> tuple[str, str]:
    """(status code name, the issued leaf's issuer or the error) of a CreateCertificate as node-1,
    over TLS to the controller checked against `trust`."""
    from grpclib.exceptions import GRPCError

    from ambit.api import ca_grpc, ca_pb2
    from ambit.dataplane.identity import make_key_and_csr
    await tls.check_identity(address, trust)
    async with tls.channel(address, trust) as ch:
        _, csr = make_key_and_csr(IDENTITY)
        try:
            r = await ca_grpc.CertificateServiceStub(ch).CreateCertificate(
                ca_pb2.CSRRequest(csr_pem=csr.decode(), identity=IDENTITY),
                metadata=(("authorization", f"Bearer {token}"), ("x-ambit-node", "node-1")), timeout=10)
        except GRPCError as e:
            return e.status.name, e.message or ""
        return "OK", x509.load_pem_x509_certificate(r.cert_chain[0].encode()).issuer.rfc4514_string()


def put_secret(emu: KubeEmulator, data: dict[str, bytes]) -> None:
    secret = emu.get("v1", "Secret", "ambit-ca", NS)
    assert secret is not None
    secret["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}
    emu.update(secret)


def configmap_roots(emu: KubeEmulator) -> list[x509.Certificate]:
    cm = emu.get("v1", "ConfigMap", "ambit-root-cert", NS)
    return x509.load_pem_x509_certificates(cm["data"]["root-cert.pem"].encode()) if cm else []


@pytest.fixture
def controller(cluster: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, int]]:  # noqa: F811
    """The controller on a CA Secret the organisation made: a root with room for an intermediate
    (the controller's own root is pathlen:0, for a CA that signs workloads directly)."""
    root = generate_root(TD, path_length=1)
    cluster["emu"].create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ambit-ca", "namespace": NS},
                           "type": "Opaque", "data": {"ca.crt": base64.b64encode(pem(root.cert)).decode(),
                                                      "ca.key": base64.b64encode(key_pem(root.key)).decode()}})
    proc, address, metrics, log = start(cluster)
    try:
        yield cluster, address, metrics
    finally:
        stop(proc, log)


def test_an_edited_ca_secret_is_taken_up_without_a_restart(controller: tuple[dict[str, Any], str, int]) -> None:
    c, address, metrics = controller
    emu = c["emu"]
    wait_for(lambda: configmap_roots(emu), timeout=30, what="ambit-root-cert published")
    (root_a,) = configmap_roots(emu)
    (c["tmp"] / "root.pem").write_bytes(pem(root_a))
    trust = tls.ControllerTrust(c["tmp"] / "root.pem", tls.controller_identity(TD, NS))
    code, issuer = asyncio.run(ask(address, trust, "zt-1"))
    assert code == "OK" and issuer == root_a.subject.rfc4514_string()

    # cert-manager renews the CA: its layout, an intermediate under the same root, a new key.
    from controller.ca.storage import material_from_secret_data
    stored = emu.get("v1", "Secret", "ambit-ca", NS)
    a = material_from_secret_data({k: base64.b64decode(v) for k, v in stored["data"].items()}, "ambit-ca")
    inter = intermediate(a, "ambit intermediate 2026")
    put_secret(emu, {"tls.crt": pem(inter.cert), "tls.key": key_pem(inter.key), "ca.crt": pem(root_a)})

    def signed_by_intermediate() -> bool:
        return asyncio.run(ask(address, trust, "zt-1")) == ("OK", "CN=ambit intermediate 2026")
    wait_for(signed_by_intermediate, timeout=15, what="certificates signed by the renewed intermediate")
    assert serving_issuer(address) == "CN=ambit intermediate 2026", "the serving certificate is re-issued too"
    assert configmap_roots(emu) == [root_a], "the same root: nothing republished"
    assert metric(metrics, "ambit_ca_reloads_total", '{result="applied"}') == 1.0
    assert metric(metrics, "citadel_server_cert_chain_expiry_timestamp") == \
        pytest.approx(inter.cert.not_valid_after_utc.timestamp())
    assert metric(metrics, "citadel_server_root_cert_expiry_timestamp") == \
        pytest.approx(root_a.not_valid_after_utc.timestamp())

    # A root swapped outright (a CA re-made from scratch): refused, nothing changes.
    other = generate_root(TD)
    put_secret(emu, {"ca.crt": pem(other.cert), "ca.key": key_pem(other.key)})
    wait_for(lambda: metric(metrics, "ambit_ca_reload_problem") == 1.0, timeout=15, what="the swap refused")
    assert metric(metrics, "ambit_ca_reloads_total", '{result="refused"}') >= 1.0
    assert asyncio.run(ask(address, trust, "zt-1")) == ("OK", "CN=ambit intermediate 2026")
    assert configmap_roots(emu) == [root_a]
    assert "Rotating the root" in (c["tmp"] / "ctl.log").read_text()

    # Rotation step 1: the new root beside the signing CA; the ConfigMap gets both, unprompted.
    put_secret(emu, {"ca.crt": pem(inter.cert), "ca.key": key_pem(inter.key), "chain.crt": pem(root_a),
                     "extra-roots.crt": pem(other.cert)})
    wait_for(lambda: len(configmap_roots(emu)) == 2, timeout=15, what="both roots republished")
    assert set(configmap_roots(emu)) == {root_a, other.cert}
    assert metric(metrics, "ambit_ca_reload_problem") == 0.0
    assert asyncio.run(ask(address, trust, "zt-1")) == ("OK", "CN=ambit intermediate 2026")


def test_the_labs_ca_directory_is_taken_up_and_new_roots_are_written_where_clients_pin_them(tmp_path: Path) -> None:
    """The lab keeps its CA in a directory and pins the roots from a file (--root-cert-file, the
    ConfigMap's stand-in): an intermediate renewed in the directory signs the serving certificate,
    a root added for a rotation reaches the pinned file without a restart, and a stored CA that
    cannot be taken up is what `ambit status` reports (exit 1) until it is put right."""
    import os
    import socket

    from ambitctl.lab import components
    from controller.ca.storage import DirectoryStorage
    root = generate_root(TD, path_length=1)
    DirectoryStorage(tmp_path / "ca").save(root)
    (tmp_path / "store.json").write_text("{}")
    pinned, sock = components.controller_root_file(tmp_path), components.controller_socket(tmp_path)
    pinned.write_bytes(pem(root.cert))
    log = open(tmp_path / "ctl.log", "w")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen([sys.executable, "-m", "controller", "--lab-store", str(tmp_path / "store.json"),
                             "--listen", f"unix:{sock}", "--ca-dir", str(tmp_path / "ca"),
                             "--node-token-dir", str(tmp_path), "--dashboard-address", "",
                             "--debug-token-file", str(components.debug_token_file(tmp_path)),
                             "--ca-reload-interval", "1", "--root-cert-file", str(pinned)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def issuer() -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(sock))
            with ctx.wrap_socket(s) as t:
                der = t.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).issuer.rfc4514_string()

    def status() -> tuple[int, str]:
        r = subprocess.run([sys.executable, "-m", "ambitctl", "status"], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "AMBIT_LAB_DIR": str(tmp_path)}, timeout=60)
        return r.returncode, r.stdout + r.stderr
    try:
        wait_for(lambda: sock.exists() and components.debug_token_file(tmp_path).exists() and proc.poll() is None,
                 timeout=60, what="controller listening")
        assert issuer() == root.cert.subject.rfc4514_string()
        inter = intermediate(root, "lab intermediate")
        DirectoryStorage(tmp_path / "ca").save(inter)
        wait_for(lambda: issuer() == "CN=lab intermediate", timeout=15, what="the renewed intermediate serving")
        assert x509.load_pem_x509_certificates(pinned.read_bytes()) == [root.cert], "same root: file untouched"
        rc, out = status()
        assert rc == 0 and "CA PROBLEM" not in out, out
        new_root = generate_root(TD)
        (tmp_path / "ca" / "extra-roots.crt").write_bytes(pem(new_root.cert))
        wait_for(lambda: len(x509.load_pem_x509_certificates(pinned.read_bytes())) == 2, timeout=15,
                 what="the added root written to the pinned file")
        assert set(x509.load_pem_x509_certificates(pinned.read_bytes())) == {root.cert, new_root.cert}

        # A key that is not the certificate's: refused, reported by `ambit status`, then put right.
        (tmp_path / "ca" / "ca.key").write_bytes(key_pem(new_root.key))
        wait_for(lambda: "CA PROBLEM" in status()[1], timeout=15, what="ambit status reporting the CA")
        rc, out = status()
        assert rc == 1 and "not taken up" in out and "does not match" in out, out
        assert issuer() == "CN=lab intermediate", "still serving under the CA it had"
        (tmp_path / "ca" / "ca.key").write_bytes(key_pem(inter.key))
        wait_for(lambda: status()[0] == 0, timeout=15, what="the problem cleared")
        assert proc.poll() is None
    finally:
        stop(proc, log)


def test_a_controller_whose_ca_has_expired_says_so_and_exits(tmp_path: Path) -> None:
    """Nothing an expired CA signs verifies, its serving certificate included: the controller says
    why and exits 2 (it is restarted, and reads the renewed CA then), rather than serve TLS that no
    client accepts."""
    import datetime as dt

    from controller.ca.storage import DirectoryStorage
    from tests.unit.controller.test_ca_reload import intermediate
    root = generate_root(TD, path_length=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=200))
    DirectoryStorage(tmp_path / "ca").save(intermediate(root, "expired intermediate",
                                                       start=dt.datetime.now(dt.UTC) - dt.timedelta(days=100)))
    (tmp_path / "store.json").write_text("{}")
    p = subprocess.run([sys.executable, "-m", "controller", "--lab-store", str(tmp_path / "store.json"),
                        "--listen", f"unix:{tmp_path / 'ctl.sock'}", "--ca-dir", str(tmp_path / "ca"),
                        "--node-token-dir", str(tmp_path), "--dashboard-address", ""],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "CA: the CA certificate (CN=expired intermediate) expired at" in p.stderr, p.stderr[-2000:]
