"""Repairing enrolled pods the agent cannot capture: when, what, and how fast (sans-IO).

Why: a pod that was already running when the agent enrolled it (from the watch, not the CNI plugin)
and whose capture keeps failing (a netlink or iptables error, a full BPF map, `EPERM`) runs
uncaptured: mesh clients cannot reach it, but plaintext from outside the mesh is not refused, a
STRICT gap. The agent retries with backoff (agent/handoff.py), which is what Istio's CNI repair
controller calls `repairPods` (re-program the running pod in place). When that does not heal the pod
within a bound, `--repair-pods` says what else to do, as Istio's `deletePods` / `labelPods` do:

label   label the pod `ambit.io/uncaptured=true` (through `pods/status`, which may write metadata
        and is the lower privilege, as Istio does) and record a Warning Event on it naming the
        error, so the owner sees it; the label is removed once capture succeeds.
delete  delete the pod, with its uid as a precondition, so its controller re-creates it through
        the CNI path, where the plugin's ADD fails closed until capture works. Only a pod owned by
        a controller comes back: a bare pod is labelled instead (deleting it would lose it).

The bound is both a duration and a count: `after` seconds since the first failed attempt AND at
least `min_attempts` failed attempts. A count of 3 alone would fire within 2 s (the backoff starts at
0.5 s), before a transient error (a netns race, a map briefly full during churn) clears; a duration
alone could fire after one slow attempt. 60 s and 3 attempts: with the 0.5 s doubling backoff 7
attempts have failed by then, and the STRICT gap of one pod is bounded to about a minute.

Rate: a token bucket (`burst` repairs at once, one more every `interval` seconds), so a node whose
capture is broken for every pod does not delete all its pods at once; the rest wait, counted as
`limited`, and an operator paged by the alert has time to act.

Everything here is a pure function of the agent's state and an injected clock; the Kubernetes calls
are in agent/repair_kube.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ambit.enrolment import opted_out

MODES = ("off", "label", "delete")
LABEL = "ambit.io/uncaptured"
LABEL_VALUE = "true"
EVENT_REASON = {"label": "UncapturedPodLabelled", "delete": "UncapturedPodDeleted",
                "unlabel": "PodCaptured"}


@dataclass(frozen=True)
class RepairSettings:
    mode: str = "off"
    after: float = 60.0         # seconds since the first failed attempt
    min_attempts: int = 3       # failed attempts, at least
    burst: int = 3              # repairs at once
    interval: float = 30.0      # one more repair allowed every this many seconds


@dataclass(frozen=True)
class Failing:
    """One enrolled pod whose capture is not in place, as the agent knows it."""

    uid: str
    namespace: str
    name: str
    failures: int
    reason: str


@dataclass(frozen=True)
class Repair:
    """A repair to carry out: `action` is the mode ("label" or "delete") or "unlabel"."""

    uid: str
    namespace: str
    name: str
    action: str
    reason: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class TokenBucket:
    burst: int
    interval: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:         # first use: full
            self.tokens, self.at = float(self.burst), now
        if self.interval > 0:
            self.tokens = min(float(self.burst), self.tokens + (now - self.at) / self.interval)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class RepairPlanner:
    """Which failing pods are due a repair now. Feed it every turn of the agent's loop (`plan`)."""

    settings: RepairSettings
    since: dict[str, float] = field(default_factory=dict)      # uid -> first failure seen
    repaired: dict[str, Repair] = field(default_factory=dict)   # uid -> what was done (once per pod)
    unlabelling: dict[str, float] = field(default_factory=dict)   # uid -> when its label removal is due again
    held: set[str] = field(default_factory=set)                # uids due but held back by the bucket
    limited: int = 0                                           # pods held back (each once while held)
    bucket: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.settings.burst, self.settings.interval)

    def plan(self, now: float, failing: list[Failing], captured: set[str], labelled: dict[str, tuple[str, str]],
             known: set[str]) -> list[Repair]:
        """The repairs due at `now`.

        `failing`: enrolled pods whose capture is not in place; `captured`: uids captured now;
        `labelled`: uid -> (namespace, name) of the captured pods that still carry the label (from
        the source's view, so a restarted agent cleans up too); `known`: every uid the agent wants."""
        s = self.settings
        out: list[Repair] = []
        failing_uids = {f.uid for f in failing}
        for uid in list(self.since):
            if uid not in failing_uids:
                del self.since[uid]
        self.held &= failing_uids
        for uid in list(self.repaired):
            if uid in captured or uid not in known:     # healed (may fail and be repaired again) or gone
                del self.repaired[uid]
        self.unlabelling = {uid: at for uid, at in self.unlabelling.items() if uid in labelled}
        for uid, (ns, name) in sorted(labelled.items(), key=lambda kv: kv[1]):
            if uid in captured and self.unlabelling.get(uid, now) <= now:     # the label would lie now
                self.unlabelling[uid] = float("inf")                         # asked: until it fails
                out.append(Repair(uid, ns, name, "unlabel", "capture is in place"))
        if s.mode == "off":
            return out
        for f in sorted(failing, key=lambda f: (f.namespace, f.name)):
            first = self.since.setdefault(f.uid, now)
            if f.uid in self.repaired or f.failures < s.min_attempts or now - first < s.after:
                continue
            if not self.bucket.take(now):
                if f.uid not in self.held:
                    self.held.add(f.uid)
                    self.limited += 1
                continue
            self.held.discard(f.uid)
            why = f"capture has failed {f.failures} times over {now - first:.0f}s: {f.reason}"
            r = Repair(f.uid, f.namespace, f.name, s.mode, why)
            self.repaired[f.uid] = r
            out.append(r)
        return out

    def undo(self, r: Repair, now: float) -> None:
        """`r` could not be carried out (the API server refused): a repair is due again at once,
        still within the rate; a label removal after `interval` (it is not rate-limited)."""
        if r.action == "unlabel":
            self.unlabelling[r.uid] = now + max(self.settings.interval, 1.0)
        else:
            self.repaired.pop(r.uid, None)


def check_pod(repair: Repair, pod: dict[str, Any] | None, node: str) -> tuple[str, str]:
    """(the action to take on the pod as the API server has it now, or "" to skip, why).

    The planner decided on the agent's view; this re-checks the pod as read just before acting, so a
    pod re-created under the same name (another uid), moved, terminating or opted out since is not
    touched, and a bare pod is labelled rather than deleted (it would not come back)."""
    if pod is None:
        return "", "the pod is gone"
    md, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if md.get("uid") != repair.uid:
        return "", f"the pod is now another one (uid {md.get('uid')}, not {repair.uid})"
    if spec.get("nodeName") != node:
        return "", f"the pod is on node {spec.get('nodeName')!r}, not this one"
    labels = md.get("labels") or {}
    if repair.action == "unlabel":
        return ("unlabel", "capture is in place") if LABEL in labels else ("", "not labelled")
    if md.get("deletionTimestamp"):
        return "", "the pod is being deleted already"
    if opted_out(labels):
        return "", "the pod opts out of the mesh now"
    if repair.action == "delete":
        if any(o.get("controller") for o in md.get("ownerReferences") or []):
            return "delete", repair.reason
        repair_why = "not owned by a controller: deleting it would lose it, labelling it instead"
        return ("label", repair_why) if labels.get(LABEL) != LABEL_VALUE else ("", repair_why)
    if labels.get(LABEL) == LABEL_VALUE:
        return "", "labelled already"
    return "label", repair.reason
