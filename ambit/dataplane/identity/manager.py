"""The identity manager: one certificate per workload identity on this node, kept fresh.

For each SPIFFE id ztunnel serves (the service accounts of pods on its node) it generates an ECDSA
P-256 key and CSR, asks the CA through a pluggable fetcher, and rotates at half of the
certificate's actual validity, so a CA outage of up to half a lifetime (12 h by default) is
invisible to traffic. Failures retry with jittered exponential backoff, so a fleet of nodes does
not stampede a recovering CA. Connections for a pod whose first certificate has not arrived yet
(outbound, and inbound handshakes: ambit/dataplane/identity/wait.py) wait for it with a bound and
then fail with `CertificateUnavailable`, which names the reason. A connection that waits while the
identity sits out a backoff has the next attempt start now (`get`), at most once per
`DEMAND_RETRY` per identity: a waiting client is a reason to ask, but a flood of them must not
become a flood of CSRs at a CA that is down.

Peers are verified against the trust bundle that came with each certificate. A root rotation
changes the pinned bundle (the `ambit-root-cert` ConfigMap, read through `pinned_roots`) first;
waiting for half-lives to carry the new root would leave certificates trusting the old root alone
for up to 12 h, and refusing every peer the new root signs once it does. So the pinned bundle is
polled, and a certificate whose bundle differs from it is renewed at once (spread over
`ROOTS_SPREAD` so a fleet does not hit the CA together), once per pinned bundle.

Time comes from an injected `Clock`, so the schedule is tested without real sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ambit import identity as ident
from ambit.aiotask import wait_set
from ambit.backoff import Backoff
from ambit.clock import Clock, SystemClock
from ambit.dataplane.identity.certificate import WorkloadCertificate
from ambit.dataplane.identity.fetcher import (
    CertificateFetcher,
)
from ambit.dataplane.identity.store import CertStore
from ambit.dataplane.libcrypto.csr import make_key_and_csr
from ambit.dataplane.libcrypto.x509 import Certificate
from ambit.dataplane.trust import TrustBundle, UntrustedCertificate

log = logging.getLogger("ambit.dataplane.identity")

DEFAULT_TTL = 24 * 3600.0
ROOTS_POLL = 10.0       # how often the pinned root bundle is re-read
ROOTS_SPREAD = 30.0     # renewals for a changed bundle start within this many seconds
DEMAND_RETRY = 1.0      # a waiting connection cuts a backoff short at most this often per identity


class CertificateUnavailable(Exception):
    """No valid certificate for `identity` within the wait bound; `reason` says why."""

    def __init__(self, identity: str, reason: str) -> None:
        super().__init__(f"no certificate for {identity}: {reason}")
        self.identity = identity
        self.reason = reason



def next_delay(cert: WorkloadCertificate | None, failures: int, now: float, backoff: Backoff, rand: float,
               min_delay: float = 0.1) -> float:
    """When to try again: at half-life after a success, with backoff after failures.

    While a still-valid certificate exists, a retry is never scheduled after its expiry.
    """
    if failures == 0 and cert is not None:
        return max(min_delay, cert.refresh_at - now)
    delay = backoff.delay(failures, rand)
    if cert is not None and cert.not_after > now:
        delay = min(delay, max(min_delay, (cert.not_after - now) / 2))
    return max(min_delay, delay)


# --- the manager ----------------------------------------------------------------------------------------

class State:
    INITIALIZING = "INITIALIZING"        # first fetch in flight
    VALID = "VALID"
    ROTATION_FAILING = "ROTATION_FAILING"  # still valid, but refreshing keeps failing
    UNAVAILABLE = "UNAVAILABLE"          # never got one; the last attempt failed
    EXPIRED = "EXPIRED"


@dataclass
class _Entry:
    identity: str
    cert: WorkloadCertificate | None = None
    failures: int = 0
    last_error: str = ""
    next_attempt: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    renewed_for_roots: str = ""     # the pinned bundle (fingerprint) a renewal was started for
    fetching: bool = False          # an attempt is in flight (not sleeping out a delay)
    last_attempt: float = float("-inf")     # when the last attempt started (clock.now())


class IdentityManager:
    """Fetches, caches and rotates workload certificates; see the module docstring."""

    def __init__(
        self,
        fetcher: CertificateFetcher,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_update: Callable[[WorkloadCertificate], Any] | None = None,
        store: CertStore | None = None,
        pinned_roots: Callable[[], bytes] | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.ttl = ttl
        self.clock = clock or SystemClock()
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.on_update = on_update
        self.store = store
        self.pinned_roots = pinned_roots
        self._entries: dict[str, _Entry] = {}
        self._closed = False
        self._roots_task: asyncio.Task[None] | None = None

    # public API

    def prefetch(self, identities: Iterable[str]) -> None:
        """Start managing these identities now, so the first connection finds a certificate."""
        for i in identities:
            self._ensure(i)

    def forget(self, identity: str) -> None:
        """Stop rotating an identity no pod on this node uses any more."""
        e = self._entries.pop(identity, None)
        if e and e.task:
            e.task.cancel()
        if self.store is not None:
            self.store.remove(identity)

    def identities(self) -> list[str]:
        return sorted(self._entries)

    def retry_failed(self) -> list[str]:
        """Retry at once every identity that has no certificate and is waiting out a backoff.

        For events that make success likely (the CA came up, the node's credential appeared, the
        control plane learnt of a new pod), so a first certificate does not wait a whole backoff
        interval. Returns the identities retried.
        """
        if self._closed:
            return []
        retried = []
        for e in self._entries.values():
            if e.cert is None and e.failures > 0 and e.task is not None:
                e.task.cancel()
                e.task = asyncio.get_running_loop().create_task(self._run(e), name=f"cert:{e.identity}")
                retried.append(e.identity)
        return retried

    def check_roots(self) -> list[str]:
        """Renew every certificate whose trust bundle is not the pinned one (a root was added or
        dropped), once per pinned bundle; returns the identities renewed. An unreadable or
        malformed pinned bundle changes nothing: the certificates keep the bundle they have."""
        if self._closed or self.pinned_roots is None:
            return []
        try:
            pinned = TrustBundle.from_pems([self.pinned_roots()]).fingerprint()
        except Exception as exc:  # noqa: BLE001 - a missing or half-written file: try at the next poll
            log.debug("pinned root bundle not readable: %s", exc)
            return []
        renewed = []
        for e in self._entries.values():
            if e.cert is None or e.cert.bundle.fingerprint() == pinned or e.renewed_for_roots == pinned:
                continue
            e.renewed_for_roots = pinned
            if e.task is not None:
                e.task.cancel()
            e.task = asyncio.get_running_loop().create_task(
                self._run(e, first_delay=self.rng.random() * ROOTS_SPREAD), name=f"cert:{e.identity}")
            renewed.append(e.identity)
        if renewed:
            log.info("the pinned root bundle (%s) differs from the certificates' own: renewing %s", pinned,
                     ", ".join(renewed))
        return renewed

    def _chains_to_pinned(self, cert: WorkloadCertificate) -> bool:
        """May a stored certificate be served? The store re-verifies it against the bundle stored
        with it, which a foreign file brings along; so it must also chain to a pinned root (when
        the pinned bundle can be read: if not, the stored bundle is all there is to go by)."""
        if self.pinned_roots is None:
            return True
        try:
            pinned = TrustBundle.from_pems([self.pinned_roots()])
        except Exception:  # noqa: BLE001 - unreadable: as without a pinned bundle
            return True
        try:
            pinned.verify([c for p in cert.chain_pem for c in Certificate.load_pems(p)])
        except (UntrustedCertificate, ValueError) as exc:
            log.warning("stored certificate for %s (serial %x) ignored: not under the pinned roots: %s",
                        cert.identity, cert.serial, exc)
            return False
        return True

    async def _watch_roots(self) -> None:
        while True:
            self.check_roots()
            await self.clock.sleep(ROOTS_POLL)

    def expiries(self) -> dict[str, float | None]:
        """identity -> its certificate's notAfter (unix time), None while it has none (metrics)."""
        return {i: (e.cert.not_after if e.cert else None) for i, e in self._entries.items()}

    def current(self, identity: str) -> WorkloadCertificate | None:
        """The valid certificate now, without waiting."""
        e = self._entries.get(identity)
        if e and e.cert and e.cert.valid_at(self.clock.now()):
            return e.cert
        return None

    async def get(self, identity: str, timeout: float) -> WorkloadCertificate:
        """A valid certificate for `identity`, waiting at most `timeout` seconds for one. The fetch
        starts if the identity was not managed yet, or now if it was waiting out a backoff
        (`_on_demand`)."""
        entry = self._ensure(identity)
        cert = entry.cert
        if cert is not None and cert.valid_at(self.clock.now()):
            return cert             # the common case: every outbound connection asks
        self._on_demand(entry)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if entry.cert and entry.cert.valid_at(self.clock.now()):
                return entry.cert
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise CertificateUnavailable(identity, self._why(entry, timeout))
            entry.changed.clear()
            await wait_set(entry.changed, remaining)
            if self._entries.get(identity) is not entry:
                raise CertificateUnavailable(identity, "identity is no longer managed on this node")

    def dump(self) -> list[dict[str, Any]]:
        """Per identity: serial, validity, state, error — for the admin endpoint."""
        now = self.clock.now()
        out = []
        for i in sorted(self._entries):
            e = self._entries[i]
            c = e.cert
            out.append({
                "identity": i,
                "state": self._state(e, now),
                "serial": f"{c.serial:x}" if c else None,
                "not_before": _iso(c.not_before) if c else None,
                "not_after": _iso(c.not_after) if c else None,
                "next_attempt": _iso(e.next_attempt) if e.next_attempt else None,
                "failures": e.failures,
                "last_error": e.last_error or None,
                # What a root rotation moves (docs/operations.md "Rotating the root"): the roots this
                # certificate came with, and its chain (public), to check which root it is under.
                "roots": c.bundle.fingerprint() if c else None,
                "chain": list(c.chain_pem) if c else [],
            })
        return out

    async def close(self) -> None:
        self._closed = True
        tasks = [e.task for e in self._entries.values() if e.task]
        if self._roots_task is not None:
            tasks.append(self._roots_task)
            self._roots_task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._entries.clear()

    # internals

    def _ensure(self, identity: str) -> _Entry:
        if self._closed:
            raise CertificateUnavailable(identity, "identity manager is closed")
        e = self._entries.get(identity)
        if e is None:
            ident.parse(identity)  # refuse garbage early, with the reason
            e = _Entry(identity)
            if self.store is not None:
                e.cert = self.store.load(identity, self.clock.now())
                if e.cert is not None and not self._chains_to_pinned(e.cert):
                    e.cert = None
                if e.cert is not None:
                    log.info("certificate for %s: serial %x from the store, valid until %s", identity,
                             e.cert.serial, _iso(e.cert.not_after))
            self._entries[identity] = e
            e.task = asyncio.get_running_loop().create_task(self._run(e), name=f"cert:{identity}")
            if self.pinned_roots is not None and self._roots_task is None:
                self._roots_task = asyncio.get_running_loop().create_task(self._watch_roots(), name="cert-roots")
        return e

    def _on_demand(self, e: _Entry) -> None:
        """A connection waits for `e`'s certificate: if no attempt is in flight and the last one
        failed, start the next now instead of at the end of its backoff, unless one started less
        than `DEMAND_RETRY` ago (then the waiter waits for the scheduled one, or its bound)."""
        if (self._closed or e.fetching or e.failures == 0 or e.task is None
                or self.clock.now() - e.last_attempt < DEMAND_RETRY):
            return
        e.task.cancel()
        e.task = asyncio.get_running_loop().create_task(self._run(e), name=f"cert:{e.identity}")

    @staticmethod
    def _state(e: _Entry, now: float) -> str:
        if e.cert is None:
            return State.UNAVAILABLE if e.failures else State.INITIALIZING
        if now >= e.cert.not_after:
            return State.EXPIRED
        return State.ROTATION_FAILING if e.failures else State.VALID

    def _why(self, e: _Entry, timeout: float) -> str:
        state = self._state(e, self.clock.now())
        if e.last_error:
            return f"{state} after {e.failures} failed attempt(s); last error: {e.last_error}"
        return f"{state}: no certificate from the CA within {timeout:g}s"

    async def _fetch_once(self, identity: str) -> WorkloadCertificate:
        key_pem, csr_pem = make_key_and_csr(identity)
        res = await self.fetcher.fetch(identity, csr_pem, int(self.ttl))
        return WorkloadCertificate.from_pems(identity, key_pem, res.chain_pem, res.trust_bundle)

    async def _run(self, e: _Entry, first_delay: float | None = None) -> None:
        if first_delay is None and e.cert is not None and e.failures == 0:
            # loaded from the store: renew at its half-life
            first_delay = next_delay(e.cert, 0, self.clock.now(), self.backoff, self.rng.random())
        if first_delay is not None:
            e.next_attempt = self.clock.now() + first_delay
            await self.clock.sleep(first_delay)
        while True:
            e.fetching, e.last_attempt = True, self.clock.now()
            try:
                cert = await self._fetch_once(e.identity)
            except asyncio.CancelledError:
                e.fetching = False
                raise
            except Exception as exc:  # any failure: keep the old cert, back off, retry
                e.failures += 1
                e.last_error = str(exc)
                # A new pod's first request often reaches the CA before the controller has seen the
                # pod ("no pod scheduled on node ..."), and the retry a moment later succeeds: the
                # first failure of an identity that never had a certificate is not yet a warning.
                level = logging.INFO if e.cert is None and e.failures == 1 else logging.WARNING
                log.log(level, "certificate fetch for %s failed (%d in a row): %s", e.identity, e.failures, exc)
            else:
                e.cert, e.failures, e.last_error = cert, 0, ""
                log.info("certificate for %s: serial %x valid until %s", e.identity, cert.serial,
                         _iso(cert.not_after))
                if self.store is not None:
                    try:
                        self.store.save(cert)
                    except OSError as exc:
                        log.warning("cannot store the certificate for %s: %s", e.identity, exc)
                if self.on_update is not None:
                    try:
                        self.on_update(cert)
                    except Exception:
                        log.exception("on_update callback failed for %s", e.identity)
            e.fetching = False
            e.changed.set()
            if self._closed:
                # `close()` cancelled us, but the CA call turned the cancellation into its own error
                # (grpclib's deadline or lost connection arriving with it): fetching on made `close()`
                # wait for ever.
                raise asyncio.CancelledError()
            now = self.clock.now()
            delay = next_delay(e.cert, e.failures, now, self.backoff, self.rng.random())
            e.next_attempt = now + delay
            await self.clock.sleep(delay)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
