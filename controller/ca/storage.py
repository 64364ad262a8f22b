"""Where the CA keeps its key material between controller restarts.

A small interface so the lab can use a directory and a cluster can later use a Kubernetes Secret
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


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
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
        _write_atomic(self.dir / KEY_FILE, key_pem, 0o600)
        _write_atomic(self.dir / CERT_FILE, _pem([material.cert]), 0o644)
        for name, certs in ((CHAIN_FILE, material.chain), (EXTRA_ROOTS_FILE, material.extra_roots)):
            p = self.dir / name
            if certs:
                _write_atomic(p, _pem(certs), 0o644)
            elif p.exists():
                p.unlink()


def load_or_create(storage: CAStorage, trust_domain: str) -> CAMaterial:
    """Load the stored CA, or create and store a self-signed root on first start."""
    material = storage.load()
    if material is None:
        material = generate_root(trust_domain)
        storage.save(material)
    return material
