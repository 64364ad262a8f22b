"""The CA in a Kubernetes Secret, and the controller's cluster path end to end, against the
API-server emulator (real HTTP, the official client, TokenReview):

* `SecretStorage`: created once, read back unchanged (a restart, another replica), a concurrent
  creator loses with 409 and uses the winner's root; a cert-manager style Secret is read as a
  user-provided CA.
* The real controller process (`--kube --ca-secret`): it stores its CA in the Secret, publishes the
  root to the ambit-root-cert ConfigMap, takes the Lease, and serves TLS as its SPIFFE id. A client
  that pins the published root and presents a projected token gets a certificate; one without a
  valid token is refused. A second replica (a restart, a rollout) signs with the same root and
  serves while following; when the leader stops it hands the Lease over.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from grpclib.exceptions import GRPCError
from kubernetes import client as k8s

from ambit.api import ca_grpc, ca_pb2
from ambit.configclient import tls
from ambit.dataplane.identity import make_key_and_csr
from ambit.kube.client import make_api_client
from controller.ca import CertificateAuthority, generate_root, load_or_create
from controller.ca.authority import CAMaterial
from controller.ca.storage import SecretStorage, StorageConflict
from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[3]
NS = "ambit-system"
TD = "cluster.local"
IDENTITY = "spiffe://cluster.local/ns/default/sa/frontend"


def pem(c: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return c.public_bytes(serialization.Encoding.PEM)


def test_the_secret_is_created_once_and_read_back_by_a_restart(tmp_path: Path) -> None:
    with KubeEmulator() as emu:
        first = load_or_create(SecretStorage(make_api_client(emu.url), NS, "ambit-ca"), TD)
        again = load_or_create(SecretStorage(make_api_client(emu.url), NS, "ambit-ca"), TD)   # a restart
        assert again.cert == first.cert and again.root == first.root
        assert emu.get("v1", "Secret", "ambit-ca", NS) is not None
        creates = [r for r in emu.requests if r[0] == "POST" and r[1].endswith("/secrets")]
        assert len(creates) == 1, "the second start must read, not create"


def test_a_replica_losing_the_creation_race_uses_the_winners_root() -> None:
    with KubeEmulator() as emu:
        winner = generate_root(TD)

        class Racing(SecretStorage):
            """Reads "nothing yet", and meanwhile another replica stores `winner`."""
            raced = False

            def load(self) -> CAMaterial | None:
                if not self.raced:
                    self.raced = True
                    SecretStorage(make_api_client(emu.url), NS, "ambit-ca").save(winner)
                    return None
                return super().load()

        got = load_or_create(Racing(make_api_client(emu.url), NS, "ambit-ca"), TD)
        assert got.cert == winner.cert
        with pytest.raises(StorageConflict):
            SecretStorage(make_api_client(emu.url), NS, "ambit-ca").save(generate_root(TD))


def test_a_cert_manager_secret_is_a_user_provided_intermediate() -> None:
    root = generate_root(TD, path_length=1)
    ca = CertificateAuthority(root, TD)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ambit intermediate")])
    inter = (x509.CertificateBuilder().subject_name(name).issuer_name(root.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(root.cert.not_valid_before_utc).not_valid_after(root.cert.not_valid_after_utc)
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False)
             .sign(ca.material.key, ca.material.cert.signature_hash_algorithm))
    data = {"tls.crt": pem(inter), "ca.crt": pem(root.cert),
            "tls.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())}
    with KubeEmulator() as emu:
        emu.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cm-ca", "namespace": NS},
                    "type": "kubernetes.io/tls", "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})
        got = load_or_create(SecretStorage(make_api_client(emu.url), NS, "cm-ca"), TD)
        assert got.cert == inter and got.root == root.cert
        # Missing half of the pair: refused naming the Secret and the key.
        emu.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "half", "namespace": NS},
                    "data": {"tls.crt": base64.b64encode(pem(inter)).decode()}})
        with pytest.raises(ValueError, match="Secret ambit-system/half: .*tls.key"):
            load_or_create(SecretStorage(make_api_client(emu.url), NS, "half"), TD)


# -- the controller process ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    emu = KubeEmulator().start()
    for o in [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in (NS, "default")] + [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "frontend-1", "namespace": "default", "uid": "u1",
                                                         "labels": {"app": "frontend"}},
         "spec": {"nodeName": "node-1", "serviceAccountName": "frontend", "containers": [{"name": "c"}]},
         "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}]}}]:
        emu.create(o)
    emu.add_token("zt-1", NS, "ztunnel", node="node-1", pod="ztunnel-abcde")
    yield {"emu": emu, "tmp": tmp_path}
    emu.stop()


def start_controller(c: dict[str, Any], name: str) -> tuple[subprocess.Popen[bytes], str, Any]:
    port = free_port()
    log = open(c["tmp"] / f"{name}.log", "w")  # noqa: SIM115 - closed by the caller's stop()
    proc = subprocess.Popen([sys.executable, "-m", "controller", "--kube", "--kube-host", c["emu"].url,
                             "--listen", f"127.0.0.1:{port}", "--ca-secret", "ambit-ca", "--pod-name", name,
                             "--debounce", "0.01", "--dashboard-address", ""],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        assert proc.poll() is None, (c["tmp"] / f"{name}.log").read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_for(up, timeout=60, what=f"controller {name} listening")
    return proc, f"127.0.0.1:{port}", log


def stop(proc: subprocess.Popen[bytes], log: Any) -> None:
    proc.terminate()
    proc.wait(15)
    log.close()


def published_root(emu: KubeEmulator) -> bytes:
    cm = wait_for(lambda: emu.get("v1", "ConfigMap", "ambit-root-cert", NS), timeout=30, what="ambit-root-cert")
    return cm["data"]["root-cert.pem"].encode()


async def ask(address: str, trust: tls.ControllerTrust, token: str | None) -> tuple[str, str]:
    """(status code name, the issued leaf's issuer or the error) of a CreateCertificate as node-1."""
    await tls.check_identity(address, trust)
    async with tls.channel(address, trust) as ch:
        _, csr = make_key_and_csr(IDENTITY)
        md = (("authorization", f"Bearer {token}"), ("x-ambit-node", "node-1")) if token else None
        try:
            r = await ca_grpc.CertificateServiceStub(ch).CreateCertificate(
                ca_pb2.CSRRequest(csr_pem=csr.decode(), identity=IDENTITY), metadata=md, timeout=10)
        except GRPCError as e:
            return e.status.name, e.message or ""
        return "OK", x509.load_pem_x509_certificate(r.cert_chain[-1].encode()).subject.rfc4514_string()


def holder(emu: KubeEmulator) -> str | None:
    return k8s.CoordinationV1Api(make_api_client(emu.url)).read_namespaced_lease("ambit-controller", NS).spec.holder_identity


def test_replicas_share_the_secret_ca_serve_tls_and_hand_the_lease_over(cluster: dict[str, Any]) -> None:
    emu = cluster["emu"]
    identity = tls.controller_identity(TD, NS)
    a, a_address, a_log = start_controller(cluster, "ctl-a")
    b = None
    try:
        root = published_root(emu)
        (cluster["tmp"] / "root.pem").write_bytes(root)
        trust = tls.ControllerTrust(cluster["tmp"] / "root.pem", identity)
        assert asyncio.run(ask(a_address, trust, "zt-1"))[0] == "OK"
        code, why = asyncio.run(ask(a_address, trust, "forged-token"))
        assert code == "UNAUTHENTICATED", why
        code, why = asyncio.run(ask(a_address, trust, None))
        assert code == "UNAUTHENTICATED", why
        assert holder(emu) == "ctl-a"
        secret = emu.get("v1", "Secret", "ambit-ca", NS)
        assert secret is not None and "ca.key" in secret["data"]

        # A second replica (or the restarted pod of a rollout): it reads the Secret, so it signs
        # under the same root the clients pinned, and it serves while it follows.
        b, b_address, b_log = start_controller(cluster, "ctl-b")
        assert asyncio.run(ask(b_address, trust, "zt-1"))[0] == "OK"
        assert holder(emu) == "ctl-a"
        assert emu.get("v1", "Secret", "ambit-ca", NS)["data"] == secret["data"]
    finally:
        stop(a, a_log)
    try:
        # The leader stopped: it released the Lease, and the other replica takes it at its next try.
        wait_for(lambda: holder(emu) == "ctl-b", timeout=20, what="ctl-b leading")
        assert published_root(emu) == root
        assert asyncio.run(ask(b_address, trust, "zt-1"))[0] == "OK"
        # A client pinning another root refuses this controller.
        (cluster["tmp"] / "other.pem").write_bytes(pem(generate_root(TD).cert))
        with pytest.raises(tls.ControllerUntrusted, match="not trusted by the pinned root"):
            asyncio.run(tls.check_identity(b_address, tls.ControllerTrust(cluster["tmp"] / "other.pem", identity)))
    finally:
        if b is not None:
            stop(b, b_log)
    assert not holder(emu), "a stopping controller releases the Lease"
