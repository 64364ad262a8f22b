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
- 1,024 TLS handshakes under way per process, 128 from one source IP: they need no certificate and
  pin ~50-70 KiB each, so without a cap a few thousand connections a second that never finish
  their ClientHello held gigabytes; a legitimate one is pending for a round trip.
- Per-source and per-pod connection caps: far above what one workload needs (the lab holds 10,000
  tunnels from one pod), far below what exhausts a node (fds, ~7 kB per idle connection).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ambit.dataplane.hbone import limits as hl
from ambit.settings import option


@dataclass(frozen=True)
class ProxyLimits:
    """Flags without a group prefix (`--hbone-max-streams`, `--max-inbound-per-pod`, ...); counts of 0
    mean unlimited."""

    hbone_max_streams: int = option(hl.MAX_CONCURRENT_STREAMS,
                                    "concurrent tunnels per HBONE connection (SETTINGS_MAX_CONCURRENT_STREAMS)")
    hbone_idle_timeout: float = option(3600.0, "seconds an inbound HBONE connection may carry no tunnel before GOAWAY")
    tls_handshake_timeout: float = option(10.0, "seconds for an inbound TLS handshake on :15008")
    hbone_preface_timeout: float = option(10.0, "seconds from the TLS handshake to the peer's HTTP/2 preface")
    max_pending_handshakes: int = option(hl.MAX_PENDING_HANDSHAKES,
                                         "inbound TLS handshakes under way on :15008, all pods of this process "
                                         "(each worker) together; past it the oldest is aborted (0: unlimited)")
    max_pending_handshakes_per_source: int = option(hl.MAX_PENDING_HANDSHAKES_PER_SOURCE,
                                                    "inbound TLS handshakes under way on :15008 from one source "
                                                    "(an IPv4 address, an IPv6 /64); past it a new connection "
                                                    "is reset (0: unlimited)")
    max_hbone_conns_per_identity: int = option(1024, "inbound HBONE connections per source identity, node-wide "
                                                     "(0: unlimited)")
    max_plaintext_per_source_ip: int = option(4096, "inbound plaintext connections per source IP, node-wide "
                                                    "(0: unlimited)")
    max_inbound_per_pod: int = option(16384, "inbound tunnels + plaintext connections per destination pod "
                                             "(0: unlimited)")
    max_outbound_per_pod: int = option(16384, "outbound connections per source pod (0: unlimited)")

    def __post_init__(self) -> None:
        for fl in fields(self):
            v = getattr(self, fl.name)
            if fl.type == "float" and not v > 0:
                raise ValueError(f"{fl.name} must be > 0 seconds, got {v}")
            if fl.type == "int" and v < 0:
                raise ValueError(f"{fl.name} must be >= 0 (0: unlimited), got {v}")
        if not 1 <= self.hbone_max_streams <= 2**31 - 1:
            raise ValueError(f"hbone_max_streams must be >= 1, got {self.hbone_max_streams}")
