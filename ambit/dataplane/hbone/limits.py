"""Sans-IO bookkeeping for the limits that keep one hostile or noisy peer from starving the rest.

Nothing here does I/O or reads a clock on its own: the clock is injected, so every limit can be
unit-tested without sleeping, and the asyncio edge only asks "may I?" and says "done".

- `ResetBudget`: a token bucket on the stream resets a peer causes (RST_STREAM it sends, streams we
  must refuse, streams we must reset for its protocol errors: "MadeYouReset", CVE-2025-8671).
  Rapid reset (CVE-2023-44487) costs the server a stream setup per pair while the peer pays two
  tiny frames; past the budget the connection gets GOAWAY(ENHANCE_YOUR_CALM), as
  Envoy's premature-reset check and nginx's `keepalive_requests`-style limits do.
- `ConnLimiter`: counts concurrent connections per key (source identity, source IP, destination
  pod) against one limit, so one noisy pod cannot take every fd of a node's ztunnel.
- `PendingHandshakes`: TLS handshakes under way (accepted, not yet handshaken), at most `limit` in
  all (the oldest one is dropped for a new one) and `per_source` per source (a new one is
  refused), so peers that need no certificate cannot pin memory without bound. A source is
  `ambit.accept.peer_key`'s: an IPv4 address, an IPv6 /64 (as the controller's accept gate).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from ambit.accept import peer_key
from ambit.clock import Monotonic

log = logging.getLogger("ambit.dataplane.limits")

Clock = Monotonic

# Defaults for HTTP/2 (HBONE) connections; see docs/operations.md for the flags that set them.
MAX_CONCURRENT_STREAMS = 100        # as Istio ztunnel's HBONE pool; see connection.py
MAX_HEADER_LIST_SIZE = 64 * 1024    # decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE)
MAX_HEADER_BLOCK = 64 * 1024        # encoded header block (HEADERS + CONTINUATIONs) before decoding
MAX_CONTINUATIONS = 16              # CONTINUATION frames per header block
RESET_BURST = 400                   # resets a peer may cause at once ...
RESET_RATE = 100.0                  # ... and per second after that
# Answers (PING and SETTINGS ACKs, RST_STREAMs) a peer may make us queue while it does not read
# them: past this the connection ends (ENHANCE_YOUR_CALM), as Go's maxQueuedControlFrames does.
MAX_UNSENT_ANSWERS = 10_000


# Protocol-level defences this process has applied, by name: `ambit_protocol_defenses_total{defense}`
# (ambit/dataplane/telemetry/health.py, docs/observability.md). Incremented in place where the
# defence fires (one dict store, no lock: each process has one event loop), read at scrape time.
# - `reset_budget`: a peer reset (or made us reset) too many streams: GOAWAY(ENHANCE_YOUR_CALM);
# - `header_flood`: a header block over its size or CONTINUATION bound: GOAWAY(ENHANCE_YOUR_CALM);
# - `unread_flood`: a peer made us queue answers it does not read: connection aborted.
DEFENSES: dict[str, int] = dict.fromkeys(("reset_budget", "header_flood", "unread_flood"), 0)
# Connections this process's HBONE/ingress listeners refused or closed by a process-wide bound, by
# bound: `ambit_connections_refused_total{limit}` (kept here, not per listener, so the counter never
# goes down when a listener goes away with its pod).
# - `max_connections`: the listener had `max_connections` open: the new one was reset;
# - `preface_timeout`: no HTTP/2 preface within the deadline after the TLS handshake: closed;
# - `per_identity`: the peer's identity already held its limit of connections: the new one was
#   reset (ztunnel reads its node-wide limiter's own count instead);
# - `pending_handshakes`: `PendingHandshakes.limit` handshakes were under way: the oldest was aborted;
# - `pending_handshakes_per_source`: its source IP had `per_source` under way: the new one was closed;
# - `per_source`: an ingress gateway's client source (an IPv4 address, an IPv6 /64) held its limit
#   of open connections: the new one was reset.
REFUSED: dict[str, int] = dict.fromkeys(("max_connections", "preface_timeout", "per_identity", "pending_handshakes",
                                         "pending_handshakes_per_source", "per_source"), 0)
# Inbound handshakes that arrived before their server certificate and waited for it
# (ambit/dataplane/acceptloop.py, `Handshakes`): `ambit_handshake_certificate_waits_total{outcome}`.
# - `came`: the certificate came within the bound and the handshake went on;
# - `none`: still none at the bound: the servername callback refused the handshake, as it did
#   without a wait. A rising `none` is a CA that does not sign for this node's pods.
CERTIFICATE_WAITS: dict[str, int] = dict.fromkeys(("came", "none"), 0)


def refused_at_bound(n: int, where: str, limit: int, action: str, bound: str = "max_connections") -> None:
    """The `n`th connection `where` refused at `bound` (`limit` connections): counted in
    REFUSED[bound], and logged the first time and every 1,000th after, so a flood says so without
    flooding the log. One place for the HBONE listener, the ingress's ports and their handshakes."""
    REFUSED[bound] += 1
    if n % 1000 == 1:
        log.warning("%s at its limit of %d %s: new connections are %s (%d so far)", where, limit,
                    "connections" if bound == "max_connections" else bound.replace("_", " "), action, n)


@dataclass
class ResetBudget:
    """Token bucket: `burst` resets at once, refilled at `rate` per second. `spend()` is False once
    the peer has gone over: the caller then ends the connection (ENHANCE_YOUR_CALM)."""

    rate: float = RESET_RATE
    burst: float = RESET_BURST
    clock: Clock = time.monotonic
    _tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst < 1:
            raise ValueError(f"reset budget needs rate >= 0 and burst >= 1, got {self.rate}/{self.burst}")
        self._tokens = float(self.burst)
        self._at = self.clock()

    def spend(self, n: int = 1) -> bool:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        return self._tokens >= 0

    @property
    def tokens(self) -> float:
        return self._tokens


class ConnLimiter:
    """Concurrent connections per key, at most `limit` each (0: unlimited).

    `acquire(key)` returns False (and counts nothing) when the key is at its limit; every True must
    be paired with one `release(key)`. `refused` counts the refusals, for metrics and tests.
    """

    def __init__(self, limit: int, what: str = "connections") -> None:
        if limit < 0:
            raise ValueError(f"limit for {what} must be >= 0, got {limit}")
        self.limit = limit
        self.what = what
        self.refused = 0
        self._n: dict[Hashable, int] = {}

    def acquire(self, key: Hashable) -> bool:
        n = self._n.get(key, 0)
        if self.limit and n >= self.limit:
            self.refused += 1
            return False
        self._n[key] = n + 1
        return True

    def release(self, key: Hashable) -> None:
        n = self._n.get(key, 0) - 1
        if n > 0:
            self._n[key] = n
        else:
            self._n.pop(key, None)

    def count(self, key: Hashable) -> int:
        return self._n.get(key, 0)

    def total(self) -> int:
        return sum(self._n.values())

    def __len__(self) -> int:
        return len(self._n)


# Seconds an inbound TLS handshake may take (HBONEServer's default, the ingress's HTTPS ports'); here,
# not in server.py, so that the waypoint supervisor's accept loop reads it without loading HBONE.
HANDSHAKE_TIMEOUT = 10.0

# Defaults for TLS handshakes under way, per process (docs/operations.md): a pending handshake pins
# ~50-70 KiB (OpenSSL's buffers, the transports, the protocol), so 1,024 of them stay near 70 MiB.
# A legitimate handshake is pending for a round trip or two, so a source with 128 at once is flooding.
MAX_PENDING_HANDSHAKES = 1024
MAX_PENDING_HANDSHAKES_PER_SOURCE = 128


class PendingHandshakes:
    """TLS handshakes under way, by token (the accepted socket), oldest first.

    `enter(token, source)` admits a handshake: False when `source` already has `per_source` under
    way (the caller closes the new connection: the flooder pays, not the others). Sources are
    counted by `peer_key`: an IPv4 address, or an IPv6 address's /64 (a v4-mapped one as its IPv4
    address). A host is given a whole /64 and may connect from any address in it, so a count per
    IPv6 address bound nothing: a flood spread over its /64 was held by `limit` alone, evicting
    legitimate handshakes as fast as it connected. When `limit` are
    under way in all it still admits, and returns the oldest token in `evicted` for the caller to
    abort: a peer that completes its handshake in a round trip is never the oldest for long, while
    a silent or dripping one is, so a flood from many sources cannot lock legitimate clients out
    as refusing the newest would (a full house of silent peers held for the whole handshake
    timeout). Every admitted token is paired with one `leave(token)`. 0 means unlimited.
    """

    def __init__(self, limit: int = MAX_PENDING_HANDSHAKES,
                 per_source: int = MAX_PENDING_HANDSHAKES_PER_SOURCE) -> None:
        for name, v in (("limit", limit), ("per_source", per_source)):
            if v < 0:
                raise ValueError(f"pending handshakes {name} must be >= 0 (0: unlimited), got {v}")
        self.limit = limit
        self.per_source = per_source
        self._pending: dict[Hashable, str] = {}     # insertion order: the oldest first
        self._per: dict[str, int] = {}
        self.evicted: Hashable | None = None        # set by enter(): the token the caller must abort
        self.dropped = 0                            # handshakes evicted at `limit`
        self.refused = 0                            # connections refused at `per_source`

    def enter(self, token: Hashable, source: str) -> bool:
        self.evicted = None
        source = peer_key(source)
        n = self._per.get(source, 0)
        if self.per_source and n >= self.per_source:
            self.refused += 1
            return False
        if self.limit and len(self._pending) >= self.limit:
            oldest = next(iter(self._pending))
            self.leave(oldest)
            self.evicted = oldest
            self.dropped += 1
            n = self._per.get(source, 0)
        self._pending[token] = source
        self._per[source] = n + 1
        return True

    def leave(self, token: Hashable) -> None:
        """The handshake of `token` ended (done, failed or aborted); a token not pending is ignored."""
        source = self._pending.pop(token, None)
        if source is None:
            return
        n = self._per[source] - 1
        if n:
            self._per[source] = n
        else:
            del self._per[source]

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, token: Hashable) -> bool:
        return token in self._pending

    def from_source(self, source: str) -> int:
        """Handshakes under way from `source`'s peer (its IPv4 address, its IPv6 /64)."""
        return self._per.get(peer_key(source), 0)
