"""ztunnel's resource limits against hostile or noisy peers: one place for their defaults, their
flags and their validation (a bad value is refused at start-up, never silently ignored).

Why these defaults:
- 100 streams per HBONE connection: Istio ztunnel's pool uses 100 (`POOL_MAX_STREAMS_PER_CONNECTION`);
  with a 4 MiB stream window and a 64 MiB connection window, 15 stalled streams still leave the
  rest a full window, and a client moves new streams to another connection before then.
- 1 h HBONE idle timeout: Istio's default for HBONE; the client pool closes unused connections
  much sooner (60 s), so this only reaps peers that hold connections open on purpose.
- 10 s TLS handshake and HTTP/2 preface timeouts: a handshake on a loaded node takes milliseconds;
  ~46 kB is pinned per pending handshake, so a slow-loris peer must not keep them.
- Per-source and per-pod connection caps: far above what one workload needs (the lab holds 10,000
  tunnels from one pod), far below what exhausts a node (fds, ~7 kB per idle connection).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from ztunnel.hbone import limits as hl

_HELP = {
    "hbone_max_streams": "concurrent tunnels per HBONE connection (SETTINGS_MAX_CONCURRENT_STREAMS)",
    "hbone_idle_timeout": "seconds an inbound HBONE connection may carry no tunnel before GOAWAY",
    "tls_handshake_timeout": "seconds for an inbound TLS handshake on :15008",
    "hbone_preface_timeout": "seconds from the TLS handshake to the peer's HTTP/2 preface",
    "max_hbone_conns_per_identity": "inbound HBONE connections per source identity, node-wide (0: unlimited)",
    "max_plaintext_per_source_ip": "inbound plaintext connections per source IP, node-wide (0: unlimited)",
    "max_inbound_per_pod": "inbound tunnels + plaintext connections per destination pod (0: unlimited)",
    "max_outbound_per_pod": "outbound connections per source pod (0: unlimited)",
}


@dataclass(frozen=True)
class ProxyLimits:
    hbone_max_streams: int = hl.MAX_CONCURRENT_STREAMS   # per HBONE connection, advertised + enforced
    hbone_idle_timeout: float = 3600.0                   # s without tunnels before GOAWAY
    tls_handshake_timeout: float = 10.0                  # s for an inbound TLS handshake
    hbone_preface_timeout: float = 10.0                  # s from handshake to the HTTP/2 preface
    max_hbone_conns_per_identity: int = 1024             # inbound HBONE connections per source identity
    max_plaintext_per_source_ip: int = 4096              # inbound plaintext connections per source IP
    max_inbound_per_pod: int = 16384                     # inbound tunnels + plaintext per destination pod
    max_outbound_per_pod: int = 16384                    # outbound connections per source pod

    def __post_init__(self) -> None:
        for fl in fields(self):
            v = getattr(self, fl.name)
            if fl.type == "float" and not v > 0:
                raise ValueError(f"{fl.name} must be > 0 seconds, got {v}")
            if fl.type == "int" and v < 0:
                raise ValueError(f"{fl.name} must be >= 0 (0: unlimited), got {v}")
        if not 1 <= self.hbone_max_streams <= 2**31 - 1:
            raise ValueError(f"hbone_max_streams must be >= 1, got {self.hbone_max_streams}")

    @staticmethod
    def add_arguments(ap: argparse.ArgumentParser) -> None:
        """One flag per field (`--hbone-max-streams` ...); 0 means unlimited for the counts."""
        d = ProxyLimits()
        for fl in fields(ProxyLimits):
            flag = "--" + fl.name.replace("_", "-")
            kind = float if fl.type == "float" else int
            ap.add_argument(flag, type=kind, default=getattr(d, fl.name),
                            help=f"{_HELP[fl.name]} (default {getattr(d, fl.name)})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ProxyLimits:
        return cls(**{fl.name: getattr(args, fl.name) for fl in fields(cls)})
