"""Sans-IO bounds that keep one client of the controller (a greedy node, a stolen node credential)
from starving the others. Nothing here does I/O or reads a clock of its own: the clock is
injected, so each bound is unit-tested without sleeping, and the gRPC edge only asks "may it?".

- `RequestRate`: a token bucket per requester (the CA's: one per authenticated credential). Signing
  a CSR costs the CA's event loop about half a millisecond of CPU, so one credential asking in a
  tight loop would take the CA (and the config pushes sharing its loop) from every other node.
- Concurrent holdings per key (the config stream's open streams per credential, each costing the
  controller memory and push work) are counted by the data plane's `ConnLimiter`.
- `ConnectionAdmission`: the gRPC port's connections, at most so many in all and so many per peer
  address (controller/acceptgate.py asks it at accept, before any TLS work), so one address cannot
  take every slot of the port from the mesh's nodes.

Refusals are counted in `REFUSED` by limit: `ambit_controller_limited_total{limit}`
(controller/health.py, docs/observability.md).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from ambit.accept import peer_key
from ambit.clock import Monotonic
from ambit.dataplane.hbone.limits import ConnLimiter

# Refusals by limit, read at scrape time (one event loop per controller: plain increments).
# - `ca_request_rate`: a credential asked for certificates faster than its bucket refills;
# - `config_streams_per_client`: a credential held its bound of open config streams;
# - `feeds_per_client`: a credential held as many debug feeds (the same bound, counted apart);
# - `report_rate`: a credential sent status reports faster than its bucket refills;
# - `connections_per_peer`: a peer address held its bound of connections to the gRPC port;
# - `max_connections`: the gRPC port held its bound of connections in all;
# - `memory`: a config stream opened while the process held --memory-guard-fraction of its cgroup's
#   memory limit (controller/memguard.py).
REFUSED: dict[str, int] = dict.fromkeys(
    ("ca_request_rate", "report_rate", "config_streams_per_client", "feeds_per_client", "connections_per_peer",
     "max_connections", "memory"), 0)

# How many requesters' buckets are remembered (each key is an authenticated credential, so only
# the mesh's own nodes and waypoints make them); past this the least recently used is forgotten,
# which at worst gives that requester a fresh burst: never a refusal it did not earn.
MAX_BUCKETS = 65_536


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused, for the client's message: which limit, and when to retry."""

    limit: str
    retry_after: float       # seconds until the requester may ask again


class RequestRate:
    """A token bucket per key: `burst` requests at once, then `rate` per second.

    `take(key)` spends one token and returns None, or returns a Refusal (spending nothing) when the
    key's bucket is empty; `retry_after` is when one token will be back. `check(key)` is `take`
    without spending: whether a request would pass, asked before it is read. rate 0: no bound.
    """

    def __init__(self, rate: float, burst: int, clock: Monotonic, *, limit: str = "ca_request_rate",
                 max_keys: int = MAX_BUCKETS) -> None:
        if rate < 0 or burst < 1:
            raise ValueError(f"{limit}: needs rate >= 0 and burst >= 1, got rate {rate}, burst {burst}")
        self.rate, self.burst, self.clock, self.limit, self.max_keys = rate, burst, clock, limit, max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()   # key -> (tokens, at)

    def take(self, key: Hashable) -> Refusal | None:
        return self._ask(key, spend=True)

    def check(self, key: Hashable) -> Refusal | None:
        return self._ask(key, spend=False)

    def _ask(self, key: Hashable, spend: bool) -> Refusal | None:
        if self.rate == 0:
            return None
        now = self.clock()
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            REFUSED[self.limit] += 1
            return Refusal(self.limit, math.ceil((1 - tokens) / self.rate * 10) / 10)
        self._buckets[key] = (tokens - 1 if spend else tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return None

    def __len__(self) -> int:
        return len(self._buckets)


class ConnectionAdmission:
    """Connections held at once: at most `max_total` in all and `per_peer` per `peer_key` (0: no
    bound). `admit(address)` returns None (admitted: pair it with one `release(address)`) or the
    name of the bound that refused it."""

    def __init__(self, max_total: int, per_peer: int) -> None:
        if max_total < 0:
            raise ValueError(f"max_connections: must be >= 0, got {max_total}")
        self.max_total = max_total
        self.per_peer = ConnLimiter(per_peer, "connections per peer address")
        self.total = 0

    def admit(self, address: str) -> str | None:
        if self.max_total and self.total >= self.max_total:
            REFUSED["max_connections"] += 1
            return "max_connections"
        if not self.per_peer.acquire(peer_key(address)):
            REFUSED["connections_per_peer"] += 1
            return "connections_per_peer"
        self.total += 1
        return None

    def release(self, address: str) -> None:
        self.per_peer.release(peer_key(address))
        self.total -= 1
