"""The on-disk certificate cache (0600 files, written atomically), so a restarted proxy serves its
pods during a CA outage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ambit.dataplane.identity.certificate import WorkloadCertificate

log = logging.getLogger("ambit.dataplane.identity")


class CertStore:
    """Keeps each identity's current key and chain in `directory` (0700; files 0600), so that a
    restarted ztunnel serves at once with still-valid certificates, even while the CA is down.

    Trade-off: the keys are on the node's disk. They are the keys the node holds anyway (it is
    authorized for exactly these identities), for at most one certificate lifetime; put the
    directory on tmpfs (an emptyDir with medium Memory) to keep them off persistent storage.
    Everything read back is re-verified (`WorkloadCertificate.from_pems`): a tampered file (a chain
    that is not for its key or identity, or does not verify against the bundle stored with it) is
    ignored. A foreign but self-consistent file brings its own bundle, so the identity manager also
    requires the chain to lead to a pinned root (`IdentityManager._chains_to_pinned`).

    A file goes when its identity is forgotten (its last pod left the node). An identity whose pods
    left while no ztunnel ran (a restart, an upgrade, a crash) is never forgotten, so `prune`
    removes the files that can no longer serve: expired, unreadable, or half-written.
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def _path(self, identity: str) -> Path:
        return self.dir / (hashlib.sha256(identity.encode()).hexdigest()[:32] + ".json")

    def save(self, cert: WorkloadCertificate) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"identity": cert.identity, "key_pem": cert.key_pem.decode(), "chain_pem": list(cert.chain_pem),
               "bundle_pems": cert.bundle.pems()}
        path = self._path(cert.identity)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")   # per process: ztunnel workers share the dir
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(doc).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def load(self, identity: str, now: float) -> WorkloadCertificate | None:
        """The stored certificate for `identity` if it is still valid at `now` and verifies."""
        path = self._path(identity)
        try:
            doc = _document(json.loads(path.read_text()))
            cert = WorkloadCertificate.from_pems(identity, doc["key_pem"].encode(), doc["chain_pem"],
                                                 doc["bundle_pems"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring stored certificate %s for %s: %s", path, identity, e)
            return None
        return cert if cert.valid_at(now) else None

    def prune(self, now: float, stale_tmp: float = 300.0) -> int:
        """Remove the stored certificates no longer valid at `now` (or unreadable), and temporary
        files older than `stale_tmp` seconds (a write cut short); returns how many went. A file
        replaced meanwhile (another worker renewing it) is left alone."""
        if not self.dir.is_dir():
            return 0
        gone = 0
        for path in self.dir.iterdir():
            try:
                st = path.stat()
                if path.name.endswith(".tmp"):
                    stale = now - st.st_mtime > stale_tmp
                elif path.suffix == ".json":
                    stale = not self._usable(path, now)
                else:
                    continue
                if stale and path.stat().st_ino == st.st_ino:
                    path.unlink()
                    gone += 1
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("certificate cache %s: %s", path, e)
        if gone:
            log.info("certificate cache %s: removed %d expired or unusable files", self.dir, gone)
        return gone

    @staticmethod
    def _usable(path: Path, now: float) -> bool:
        try:
            doc = json.loads(path.read_text())
            cert = WorkloadCertificate.from_pems(doc["identity"], doc["key_pem"].encode(), doc["chain_pem"],
                                                 doc["bundle_pems"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        return cert.not_after > now

    def remove(self, identity: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(identity).unlink()


def _document(doc: object) -> dict[str, Any]:
    """The stored document, if it has the fields of this version's `save` with their types; else
    ValueError. A file of another version or a damaged one (`"key_pem": null`) raised an
    AttributeError out of `load`, which the proxy's start did not survive: it crash-looped on the
    file, since an emptyDir outlives the container."""
    if not isinstance(doc, dict):
        raise ValueError(f"not a JSON object but {type(doc).__name__}")
    if not isinstance(doc.get("key_pem"), str):
        raise ValueError("key_pem: not a string")
    for name in ("chain_pem", "bundle_pems"):
        v = doc.get(name)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ValueError(f"{name}: not a list of strings")
    return doc
