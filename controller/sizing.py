"""The controller's memory, from measured per-item costs (docs/operations.md, "Sizing the
controller"; measured with `python -m bench.ctlmem`, docs/performance.md). The manifests' request and
limit are computed here, so a default that grows (more connections, a bigger push) moves them, and
tests/unit/deploy checks the rendered numbers against these figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.configserver.server import MAX_CONNECTIONS
from controller.memguard import MEMORY_GUARD_FRACTION

# The process with nothing in view: the real controller idle (lab store, CA, dashboard) measured
# 62 MiB RSS.
BASE_MIB = 64
# The translated model and the server's snapshot: 62.3, 92.9 and 131.9 MiB RSS at 1,000, 5,000
# and 10,000 pods of bench.ctrlscale's cluster (a Service per 5 pods): 7.7 MiB per 1,000 pods,
# and since then 0.9 MB per 1,000 pods for what a running controller keeps to reuse the next
# snapshot's Workloads and encodings (tracemalloc, 9.1 MB at 10,000 pods; docs/performance.md,
# "Reusing the translation of unchanged pods").
PER_1000_PODS_MIB = 9
# A held gRPC connection over TLS (BoringSSL's buffers included); plaintext through the accept
# gate measured 20.4 KiB (2,000 held: +40 MiB).
CONNECTION_KIB = 50
# A ztunnel's config subscription (all six types, ACKing): per subscriber with its plaintext
# connection, 51 KiB at 1,000 and at 5,000 pods (least squares over 1,000/2,000/4,000 held) and
# 58 KiB at 10,000 pods (1,000 to 2,000): views and encodings are shared among subscribers, so it
# barely grows with the cluster. Beyond its 20 KiB connection: up to 38 KiB.
SUBSCRIPTION_KIB = 40
# A push round's transient: 100 MB for 200 subscribers getting one churn delta at 10,000 pods.
PUSH_MIB = 100


@dataclass(frozen=True)
class Load:
    """What the controller holds: pods in the cluster, config subscriptions, gRPC connections
    (each ztunnel worker holds a config stream and a CA channel, an agent a config stream)."""

    pods: int
    subscriptions: int
    connections: int


# A typical cluster, for the request: 1,000 pods on 100 nodes of 8 ztunnel workers and an agent.
TYPICAL = Load(pods=1_000, subscriptions=100 * 9, connections=100 * (8 * 2 + 1))
# The defaults' full house, for the limit: every one of --max-connections carrying a subscription,
# at 10,000 pods. Past it (or a larger cluster) the memory guard refuses new streams.
FULL_HOUSE = Load(pods=10_000, subscriptions=MAX_CONNECTIONS, connections=MAX_CONNECTIONS)


def working_set_mib(load: Load) -> float:
    """The controller's resident memory under `load`, a push round included."""
    return (BASE_MIB + load.pods / 1000 * PER_1000_PODS_MIB + load.connections * CONNECTION_KIB / 1024
            + load.subscriptions * SUBSCRIPTION_KIB / 1024 + PUSH_MIB)


def _round_up(mib: float, step: int) -> int:
    return int(math.ceil(mib / step) * step)


def memory_request_mib(load: Load = TYPICAL) -> int:
    """The request: the working set of `load`, rounded up to 64 MiB."""
    return _round_up(working_set_mib(load), 64)


def memory_limit_mib(load: Load = FULL_HOUSE, fraction: float = MEMORY_GUARD_FRACTION) -> int:
    """The limit: `load`'s working set within the guard's fraction of it (so the defaults are
    served before the guard refuses anything), rounded up to 512 MiB."""
    return _round_up(working_set_mib(load) / fraction, 512)
