"""Settings every proxy built on the data-plane library shares (ztunnel now, the waypoint next).

Each binary nests these in its own settings dataclass (see ambit/settings.py), so the flags read
the same everywhere: `--tunnel-connect-timeout`, `--tunnel-cert-wait`, ...
"""

from __future__ import annotations

from dataclasses import dataclass

from ambit.settings import non_negative, option, positive


@dataclass(frozen=True)
class TunnelSettings:
    connect_timeout: float = option(10.0, "seconds to connect to an app or an HBONE peer before giving up",
                                    check=positive)
    cert_wait: float = option(5.0, "seconds a connection waits for its workload's first certificate",
                              check=non_negative)
    drain: float = option(5.0, "seconds a pod's HBONE connections get to finish after it leaves (GOAWAY first)",
                          check=non_negative)
