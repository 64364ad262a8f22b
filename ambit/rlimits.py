"""The descriptor limit every long-running Ambit process starts with.

Container runtimes may start a process at a soft RLIMIT_NOFILE of 1,024 below a far higher hard
limit (containerd 2 under systemd: 1024:524288), and a pod spec cannot change it. A proxy bounded
at thousands of connections (the waypoint's --max-connections, ztunnel's per-pod bounds) or the
controller's gRPC port would then fail accept() with EMFILE near a thousand, far below the bounds
its documentation promises. So each raises its soft limit to the hard one at start, as Go's runtime
does for every Go program (and Istio's ztunnel does for itself).
"""

from __future__ import annotations

import contextlib
import resource


def raise_nofile() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one; returns (soft, hard) as they now are."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft, hard


def short_of(needed: int) -> int | None:
    """After `raise_nofile`: the soft limit when even it is below `needed`, else None."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if hard != resource.RLIM_INFINITY and soft < needed else None
