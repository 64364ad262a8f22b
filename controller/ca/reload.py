"""Taking up a changed CA without a restart: the rules (pure) and the loop that applies them.

Why: a CA kept in a Secret changes under the controller. cert-manager renews an intermediate CA
Certificate before it expires (by default with a new key), and an operator rotating the root edits
the Secret in steps (docs/operations.md "Rotating the root"). A controller that read its CA only at
start kept signing with the old intermediate until someone restarted every replica; past the old
one's expiry every certificate it issued was dead on arrival. istiod watches its plugged-in CA files
and takes a new intermediate up the same way (pilot/pkg/bootstrap/istio_ca.go `handleEvent`).

What is taken up, and what is refused (the CA keeps signing with what it has, and says why):

* **Unchanged** material: nothing happens (the common case of every poll).
* **Unreadable** material (a key that does not match its certificate, a chain that does not lead
  to a root, a missing key: `CAConfigError`), or a Secret that is gone: refused. A reload never
  creates a CA: a new root made here would be trusted by no proxy.
* **A signing certificate (or chain certificate) that is expired or not yet valid**: refused; it
  would issue certificates no peer accepts.
* **Roots.** The trust bundle is the roots the proxies pin (the chain's root plus `extra-roots`).
  A new bundle is taken only when one of the two bundles contains the other, as istiod requires
  (`pemBundleHasSubsetRelation`): adding a root (rotation step 1) and dropping an old one (step 4)
  pass, a root swapped outright does not. Stricter than istiod, the new signing root must already
  be in the bundle the proxies hold: switching to sign under a root published in the same edit
  (steps 1 and 2 at once) would hand out certificates that peers still pinning the old bundle
  refuse, and a serving certificate the proxies refuse. A restart still loads whatever is stored
  (a deliberate swap, after a compromise); a reload never does.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller.ca.authority import CAConfigError, CAMaterial, CertificateAuthority

log = logging.getLogger("ambit.controller.ca")

DEFAULT_INTERVAL = 30.0     # seconds between reads of the stored CA (a Secret GET, or four files)

EXPIRY_WARNING = dt.timedelta(days=7)

APPLIED, UNCHANGED, REFUSED, FAILED = "applied", "unchanged", "refused", "failed"


def _days(d: dt.timedelta) -> str:
    return f"{d.days} days" if d.days >= 2 else f"{d.total_seconds() / 3600:.0f} hours"


@dataclass(frozen=True)
class Verdict:
    """What to do with the material read: `result` is one of APPLIED, UNCHANGED, REFUSED (readable,
    but against the rules) or FAILED (not readable); `reason` says why for the last two, and what
    changed for APPLIED."""

    result: str
    reason: str = ""
    root_changed: bool = False


def _der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


def _bundle(m: CAMaterial) -> frozenset[bytes]:
    return frozenset(_der(c) for c in [m.root, *m.extra_roots])


def _name(c: x509.Certificate) -> str:
    return c.subject.rfc4514_string() or f"<empty subject, serial {c.serial_number:x}>"


def same(a: CAMaterial, b: CAMaterial) -> bool:
    """The same CA: certificate, chain and extra roots (a matching key follows from the certificate,
    which `load_user_provided` checks)."""
    return (_der(a.cert) == _der(b.cert) and [_der(c) for c in a.chain] == [_der(c) for c in b.chain]
            and _bundle(a) == _bundle(b))


def judge(current: CAMaterial, loaded: CAMaterial | None, now: dt.datetime) -> Verdict:
    """The rules of the module docstring, for material `loaded` (None: nothing stored any more)."""
    if loaded is None:
        return Verdict(FAILED, "the stored CA is gone; a reload never creates one (no proxy would trust "
                               "a new root): still signing with the CA loaded before")
    if same(current, loaded):
        return Verdict(UNCHANGED)
    for i, c in enumerate([loaded.cert, *loaded.chain]):
        what = "the CA certificate" if i == 0 else f"chain[{i - 1}]"
        if c.not_valid_after_utc <= now:
            return Verdict(REFUSED, f"{what} ({_name(c)}) expired at {c.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
        if c.not_valid_before_utc > now:
            return Verdict(REFUSED, f"{what} ({_name(c)}) is not valid before "
                                    f"{c.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}")
    old, new = _bundle(current), _bundle(loaded)
    if not (old <= new or new <= old):
        return Verdict(REFUSED, "its roots neither contain nor are contained in the roots the proxies pin "
                                f"(now {', '.join(sorted(_name(x509.load_der_x509_certificate(d)) for d in old))}): "
                                "a root swapped outright would make every proxy refuse the controller and its "
                                "peers; add the new root to extra-roots.crt first (docs/operations.md "
                                "'Rotating the root'), or restart the controller to force it")
    if _der(loaded.root) not in old:
        return Verdict(REFUSED, f"it signs under root {_name(loaded.root)}, which the proxies do not pin yet: "
                                "publish it first (extra-roots.crt, beside the current signing CA), wait until "
                                "every proxy has it, then switch (docs/operations.md 'Rotating the root')")
    changed = []
    if _der(loaded.cert) != _der(current.cert):
        changed.append(f"signing CA {_name(loaded.cert)} (serial {loaded.cert.serial_number:x}, until "
                       f"{loaded.cert.not_valid_after_utc:%Y-%m-%d})")
    if new != old:
        changed.append(f"roots {len(old)} -> {len(new)}")
    return Verdict(APPLIED, "; ".join(changed) or "chain", root_changed=new != old)


class CAReloader:
    """Reads `load()` (the CA's storage) every `interval` seconds in a thread of its own (a Secret
    GET blocks; a change, or a failure, counts only when a second read `settle` seconds later agrees)
    and swaps `ca.material` when `judge` says APPLIED, then calls `on_change(root_changed)`
    (the serving certificate re-issued, the root republished). Counts each outcome for the metrics
    (`ambit_ca_reloads_total`) and keeps the last refusal or failure (`problem`, logged once per
    distinct reason, cleared by the next APPLIED or UNCHANGED)."""

    def __init__(self, ca: CertificateAuthority, load: Callable[[], CAMaterial | None], where: str,
                 on_change: Callable[[bool], None] = lambda _root_changed: None,
                 interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC), settle: float = 0.0) -> None:
        self.ca, self.load, self.where, self.on_change = ca, load, where, on_change
        self.interval, self.clock, self.settle = interval, clock, settle
        self.counts = {APPLIED: 0, REFUSED: 0, FAILED: 0}
        self.problem = ""

    def _read(self) -> tuple[Verdict, CAMaterial | None]:
        try:
            loaded = self.load()
        except CAConfigError as e:
            return Verdict(FAILED, str(e)), None
        except Exception as e:  # noqa: BLE001 - an API error or a timeout: try again next time
            return Verdict(FAILED, f"cannot read it: {type(e).__name__}: {e}"), None
        return judge(self.ca.material, loaded, self.clock()), loaded

    def check(self) -> Verdict:
        verdict, loaded = self._read()
        if verdict.result in (FAILED, APPLIED) and self.settle > 0:
            # A directory is written file by file: a new key beside the old certificate for a moment
            # (FAILED), or, worse, a readable mix that changes the roots in a way the edit does not
            # (new signing files beside the old extra-roots.crt). And an API error may be passing.
            # So a change counts only when a second read, `settle` later, finds the same material.
            time.sleep(self.settle)
            again, second = self._read()
            if verdict.result == APPLIED and not (again.result == APPLIED and second is not None
                                                  and loaded is not None and same(loaded, second)):
                return Verdict(UNCHANGED, "still being written: taken up at a later read")
            verdict, loaded = again, second
        if verdict.result == APPLIED:
            assert loaded is not None
            self.ca.material = loaded
        if verdict.result in self.counts:
            self.counts[verdict.result] += 1
        if verdict.result in (REFUSED, FAILED):
            if verdict.reason != self.problem:
                log.error("CA in %s changed but is not taken up (%s): %s", self.where, verdict.result, verdict.reason)
            self.problem = verdict.reason
            return verdict
        if self.problem:
            log.info("CA in %s: the earlier problem is gone", self.where)
        self.problem = ""
        if verdict.result == APPLIED:
            log.info("CA reloaded from %s: %s", self.where, verdict.reason)
            try:
                self.on_change(verdict.root_changed)
            except Exception:  # noqa: BLE001 - the swap stands; what follows it is retried by its owners
                log.exception("after the CA reload")
        return verdict

    def status(self) -> str:
        """What `ambit status` should say about the CA, "" when nothing: a stored CA not taken up,
        else a signing chain expired or within EXPIRY_WARNING of it (cert-manager renews with a
        third of the life left, so this means the renewal did not happen)."""
        if self.problem:
            return f"the CA in {self.where} changed but is not taken up: {self.problem}"
        end, now = self.ca.material.expires, self.clock()
        if end <= now:
            return (f"the CA's certificate chain expired at {end:%Y-%m-%dT%H:%M:%SZ}: certificate requests are "
                    f"refused until it is renewed in {self.where}")
        if end - now < EXPIRY_WARNING:
            return (f"the CA's certificate chain expires at {end:%Y-%m-%dT%H:%M:%SZ} (in {_days(end - now)}): "
                    f"renew it in {self.where}")
        return ""

    def start(self, stop: threading.Event) -> threading.Thread | None:
        """The polling thread (None when `interval` is 0: reload off)."""
        if self.interval <= 0:
            return None

        def run() -> None:
            while not stop.wait(self.interval):
                self.check()
        t = threading.Thread(target=run, name="ca-reload", daemon=True)
        t.start()
        return t
