"""The controller's mesh config file (`--mesh-config`): Istio's MeshState, the fields Ambit honours.

    trustDomainAliases: [old.td, partner.mesh]

The file is optional and watched: an edit is picked up within a second and pushed to every ztunnel
as the `MeshSettings` resource, with no restart. Fields Ambit does not implement are refused (a
setting that silently did nothing would be worse than an error), and so is `trustDomain` unless it
equals `--trust-domain`: the trust domain is the CA's, and renaming it means new certificates for
every workload, which is a restart of the controller with a new `--trust-domain`, not an edit.
A file that cannot be used is reported (log and `ambit status`) and the last good one stays in force.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ambit.trustdomain import TrustDomains

KNOWN = ("trustDomain", "trustDomainAliases")


@dataclass(frozen=True)
class MeshFile:
    trust_domain_aliases: tuple[str, ...] = ()


def parse(data: Any, trust_domain: str, where: str = "mesh config") -> MeshFile:
    """Validate a parsed YAML document; ValueError names the field and the reason."""
    if data is None:
        return MeshFile()
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of MeshState fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(KNOWN))
    if unknown:
        raise ValueError(f"{where}: {', '.join(unknown)}: not supported by Ambit (supported: {', '.join(KNOWN)})")
    td = data.get("trustDomain")
    if td is not None and td != trust_domain:
        raise ValueError(f"{where}: trustDomain: {td!r} differs from the controller's --trust-domain "
                         f"{trust_domain!r}; the CA issues in one trust domain, change it with --trust-domain")
    aliases = data.get("trustDomainAliases") or []
    if not isinstance(aliases, list):
        raise ValueError(f"{where}: trustDomainAliases: expected a list of trust domains")
    try:
        tds = TrustDomains.of(trust_domain, aliases)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return MeshFile(tds.aliases)


def load(path: Path, trust_domain: str) -> MeshFile:
    """Read and validate `path`; a missing file means the defaults."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return MeshFile()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML: {e}") from None
    return parse(data, trust_domain, str(path))


class Watcher:
    """Tells when the file changed (by stat), so the main loop re-reads it only then."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._first = True

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if self._first or stamp != self._stamp:
            self._first, self._stamp = False, stamp
            return True
        return False
