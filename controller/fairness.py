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
  take every slot of the port from the mesh's nodes; and at a bound the oldest connection that
  never authenticated gives way to a new one, so a few addresses cannot either.

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
# - `unauthenticated_evicted`: at either of those bounds, a connection that had made no authenticated
#   call within AUTH_GRACE was closed for a new one (ConnectionAdmission);
# - `memory`: a config stream opened while the process held --memory-guard-fraction of its cgroup's
#   memory limit (controller/memguard.py).
REFUSED: dict[str, int] = dict.fromkeys(
    ("ca_request_rate", "report_rate", "config_streams_per_client", "feeds_per_client", "connections_per_peer",
     "max_connections", "unauthenticated_evicted", "memory"), 0)

# How long a connection to the gRPC port may go without an authenticated call before, at a bound,
# a new connection may evict it. A legitimate client's first call comes right after its TLS
# handshake (ztunnel's config stream and CSR, an agent's stream, the CLI's debug call), and its
# credential check is a cached or bootstrap token compare, or a TokenReview (milliseconds; under
# load, in line behind at most 64 in flight). grpc itself closes a connection whose TLS handshake
# and HTTP/2 preface are not done in 10 s (configserver/server.py HANDSHAKE_TIMEOUT_MS): the same
# span covers the call. A client evicted all the same (an API server stalled past it) reconnects,
# as grpc clients do. Shorter would risk such evictions; longer lets a flood that reconnects keep
# the port full with fewer connections per second (it must open max_connections per grace).
AUTH_GRACE = 10.0

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
    bound), and which of them authenticated.

    `admit(conn, address)` returns None (admitted: pair it with one `release(conn)`) or the name of
    the bound that refused it. `authenticated(conn)`: a call on `conn` presented a credential that
    verified. A port full of connections that never do (TLS, an HTTP/2 preface, then nothing: ten
    pods of any tenant could hold 10,000, reconnecting as grpc's timeouts close them) must not lock
    the mesh's nodes out. So at a bound a new connection is admitted by evicting the oldest
    connection that has not authenticated and is older than `grace` (`evicted` names it: the caller
    closes it; its slot is already given to the new one): under pressure, shed the least valuable
    connections first, as a production proxy's overload manager does, not every newcomer; only when every connection under the bound authenticated, or
    is too young to have had its chance, is the new one refused. At the per-peer bound the victim
    is that peer's own (a host-network pod shares its node's address with the node's ztunnel: its
    idle connections give way to the node's, and one address never gains by another's), at
    `max_total` anyone's. An authenticated connection is never evicted.
    """

    def __init__(self, max_total: int, per_peer: int, clock: Monotonic, grace: float = AUTH_GRACE) -> None:
        if max_total < 0:
            raise ValueError(f"max_connections: must be >= 0, got {max_total}")
        if grace < 0:
            raise ValueError(f"unauthenticated connection grace: must be >= 0, got {grace}")
        self.max_total, self.clock, self.grace = max_total, clock, grace
        self.per_peer = ConnLimiter(per_peer, "connections per peer address")
        # connections not (yet) authenticated, oldest first: in all, and per peer
        self._unauthenticated: dict[Hashable, tuple[str, float]] = {}      # conn -> (peer, admitted at)
        self._peer_unauthenticated: dict[str, dict[Hashable, float]] = {}
        self._authenticated: dict[Hashable, str] = {}                      # conn -> peer
        self.evicted: Hashable | None = None        # set by admit(): the connection the caller must close
        self.evicted_age = 0.0                      # how long it had been held
        self.evicted_at = ""                        # and the bound that was full

    @property
    def total(self) -> int:
        return len(self._unauthenticated) + len(self._authenticated)

    def admit(self, conn: Hashable, address: str) -> str | None:
        self.evicted = None
        peer, now = peer_key(address), self.clock()
        if self.per_peer.limit and self.per_peer.count(peer) >= self.per_peer.limit:
            if not self._evict(self._oldest(peer), now, "connections_per_peer"):
                REFUSED["connections_per_peer"] += 1
                return "connections_per_peer"
        elif self.max_total and self.total >= self.max_total:
            if not self._evict(self._oldest(None), now, "max_connections"):
                REFUSED["max_connections"] += 1
                return "max_connections"
        self.per_peer.acquire(peer)
        self._unauthenticated[conn] = (peer, now)
        self._peer_unauthenticated.setdefault(peer, {})[conn] = now
        return None

    def _oldest(self, peer: str | None) -> tuple[Hashable, float] | None:
        """The oldest unauthenticated connection (of `peer`, or of anyone) and when it came: dicts
        keep insertion order and the clock is monotonic, so it is the first (O(1))."""
        if peer is not None:
            return next(iter(self._peer_unauthenticated.get(peer, {}).items()), None)
        first = next(iter(self._unauthenticated.items()), None)
        return None if first is None else (first[0], first[1][1])

    def _evict(self, oldest: tuple[Hashable, float] | None, now: float, bound: str) -> bool:
        """Evict `oldest` if it is past the grace (False: it is not, so no other is either)."""
        if oldest is None or now - oldest[1] < self.grace:
            return False
        self.release(oldest[0])
        self.evicted, self.evicted_age, self.evicted_at = oldest[0], now - oldest[1], bound
        REFUSED["unauthenticated_evicted"] += 1
        return True

    def authenticated(self, conn: Hashable) -> None:
        """A call on `conn` authenticated: it is never evicted (a conn not held is ignored)."""
        held = self._unauthenticated.pop(conn, None)
        if held is None:
            return
        peer = held[0]
        self._forget(peer, conn)
        self._authenticated[conn] = peer

    def is_authenticated(self, conn: Hashable) -> bool:
        return conn in self._authenticated

    def release(self, conn: Hashable) -> None:
        """`conn` closed (a conn not held, e.g. one already evicted, is ignored)."""
        held = self._unauthenticated.pop(conn, None)
        if held is not None:
            peer = held[0]
            self._forget(peer, conn)
        elif (peer := self._authenticated.pop(conn, None)) is None:
            return
        self.per_peer.release(peer)

    def _forget(self, peer: str, conn: Hashable) -> None:
        mine = self._peer_unauthenticated[peer]
        del mine[conn]
        if not mine:
            del self._peer_unauthenticated[peer]
