"""Where the CA keeps its key material between controller restarts.

A small interface so the lab can use a directory and a cluster a Kubernetes Secret (`SecretStorage`)
without the CA caring. Losing the key means every workload must be re-issued and every node must
trust a new root, so `load_or_create` never overwrites existing material.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller.ca.authority import CAConfigError, CAMaterial, generate_root, load_user_provided

CERT_FILE = "ca.crt"
KEY_FILE = "ca.key"
CHAIN_FILE = "chain.crt"           # certificates above ca.crt, up to the root (intermediate CAs only)
EXTRA_ROOTS_FILE = "extra-roots.crt"  # older roots still trusted during a root rotation


class CAStorage(Protocol):
    def load(self) -> CAMaterial | None:
        """The stored material, or None if nothing is stored yet."""

    def save(self, material: CAMaterial) -> None: ...


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """`path` replaced whole (fsynced first): a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by umask; the key must be exactly 0600
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class DirectoryStorage:
    """`ca.crt`, `ca.key` (0600), and optional `chain.crt` / `extra-roots.crt` in one directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)

    @property
    def where(self) -> str:
        return f"directory {self.dir}"

    def load(self) -> CAMaterial | None:
        cert_p, key_p = self.dir / CERT_FILE, self.dir / KEY_FILE
        if not cert_p.exists() and not key_p.exists():
            return None
        if not cert_p.exists() or not key_p.exists():
            missing = cert_p if not cert_p.exists() else key_p
            raise CAConfigError(f"CA storage {self.dir}: {missing.name} is missing")
        chain_p, extra_p = self.dir / CHAIN_FILE, self.dir / EXTRA_ROOTS_FILE
        try:
            material = load_user_provided(
                cert_p.read_bytes(), key_p.read_bytes(), chain_p.read_bytes() if chain_p.exists() else b""
            )
        except CAConfigError as e:
            raise CAConfigError(f"CA storage {self.dir}: {e}") from None
        if extra_p.exists() and extra_p.read_bytes().strip():
            material.extra_roots = x509.load_pem_x509_certificates(extra_p.read_bytes())
        return material

    def save(self, material: CAMaterial) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_pem = material.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_atomic(self.dir / KEY_FILE, key_pem, 0o600)
        write_atomic(self.dir / CERT_FILE, _pem([material.cert]), 0o644)
        for name, certs in ((CHAIN_FILE, material.chain), (EXTRA_ROOTS_FILE, material.extra_roots)):
            p = self.dir / name
            if certs:
                write_atomic(p, _pem(certs), 0o644)
            elif p.exists():
                p.unlink()


def load_or_create(storage: CAStorage, trust_domain: str) -> CAMaterial:
    """Load the stored CA, or create and store a self-signed root on first start."""
    material = storage.load()
    if material is None:
        material = generate_root(trust_domain)
        try:
            storage.save(material)
        except StorageConflict:
            stored = storage.load()      # the replica that won the race made the root; use theirs
            if stored is None:
                raise CAConfigError("CA storage: created concurrently, then gone") from None
            return stored
    return material


class StorageConflict(Exception):
    """Another writer stored CA material first (a second controller replica starting at the same
    time): load theirs rather than overwrite it."""


# The keys of a CA Secret. Ambit's own (written when it generates the root): ca.crt, ca.key, and
# optionally chain.crt / extra-roots.crt, as the directory holds them. A user-provided CA may also
# come cert-manager style (a `kubernetes.io/tls` Secret of an issuing Certificate with isCA: true):
# tls.crt (the CA, optionally followed by its chain), tls.key, and ca.crt (the root).
TLS_CRT, TLS_KEY = "tls.crt", "tls.key"


def material_from_secret_data(data: dict[str, bytes], where: str) -> CAMaterial:
    """CA material from a Secret's (decoded) data, in Ambit's layout or cert-manager's."""
    if TLS_CRT in data or TLS_KEY in data:
        if TLS_CRT not in data or TLS_KEY not in data:
            raise CAConfigError(f"{where}: a cert-manager style CA needs both {TLS_CRT} and {TLS_KEY}")
        certs = x509.load_pem_x509_certificates(data[TLS_CRT])
        chain = _pem(certs[1:]) + data.get(CERT_FILE, b"")   # tls.crt's chain, then ca.crt (the root)
        cert_pem, key_pem = _pem(certs[:1]), data[TLS_KEY]
    else:
        if CERT_FILE not in data or KEY_FILE not in data:
            missing = CERT_FILE if CERT_FILE not in data else KEY_FILE
            raise CAConfigError(f"{where}: data key {missing} is missing (need {CERT_FILE} and {KEY_FILE}, "
                                f"or cert-manager's {TLS_CRT}, {TLS_KEY} and {CERT_FILE})")
        cert_pem, key_pem, chain = data[CERT_FILE], data[KEY_FILE], data.get(CHAIN_FILE, b"")
    try:
        material = load_user_provided(cert_pem, key_pem, _dedupe(chain, cert_pem))
    except (CAConfigError, ValueError) as e:
        raise CAConfigError(f"{where}: {e}") from None
    if data.get(EXTRA_ROOTS_FILE, b"").strip():
        material.extra_roots = x509.load_pem_x509_certificates(data[EXTRA_ROOTS_FILE])
    return material


def _dedupe(chain_pem: bytes, cert_pem: bytes) -> bytes:
    """cert-manager's ca.crt of a self-signed CA is tls.crt itself: drop the CA from its own chain."""
    if not chain_pem.strip():
        return b""
    own = x509.load_pem_x509_certificate(cert_pem)
    return _pem([c for c in x509.load_pem_x509_certificates(chain_pem) if c != own])


class SecretStorage:
    """The CA in a Kubernetes Secret (`namespace/name`), so every replica and every restart signs
    with the same root. Created once (POST: a concurrent creator gets 409 and `StorageConflict`),
    never overwritten by the controller; a user-provided Secret is only read."""

    def __init__(self, api_client: object, namespace: str, name: str) -> None:
        from kubernetes import client as k8s
        self._api = k8s.CoreV1Api(api_client)
        self._k8s = k8s
        self.namespace, self.name = namespace, name

    @property
    def where(self) -> str:
        return f"Secret {self.namespace}/{self.name}"

    def load(self) -> CAMaterial | None:
        import base64

        from kubernetes.client.exceptions import ApiException
        try:
            secret = self._api.read_namespaced_secret(self.name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise CAConfigError(f"{self.where}: cannot read it: {e.status} {e.reason}") from None
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return material_from_secret_data(data, self.where)

    def save(self, material: CAMaterial) -> None:
        import base64

        from kubernetes.client.exceptions import ApiException
        key_pem = material.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        raw = {KEY_FILE: key_pem, CERT_FILE: _pem([material.cert]), CHAIN_FILE: _pem(material.chain),
               EXTRA_ROOTS_FILE: _pem(material.extra_roots)}
        body = self._k8s.V1Secret(
            metadata=self._k8s.V1ObjectMeta(name=self.name, namespace=self.namespace,
                                            labels={"app.kubernetes.io/managed-by": "ambit"}),
            type="Opaque", data={k: base64.b64encode(v).decode() for k, v in raw.items() if v})
        try:
            self._api.create_namespaced_secret(self.namespace, body)
        except ApiException as e:
            if e.status == 409:
                raise StorageConflict(f"{self.where} was created meanwhile") from None
            raise CAConfigError(f"{self.where}: cannot create it: {e.status} {e.reason}") from None
