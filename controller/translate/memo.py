"""Workloads reused from one translation to the next, for pods whose inputs did not change.

Every snapshot is translated in full: one churned pod among 10,000 translated all 10,000 pods
again (a third of a running controller's time per snapshot). A Workload is a function of a few
inputs, and this module holds, per pod, what it was made from, so that a pod whose inputs are the
same gets the very Workload it had.

What a Workload reads (`controller.translate.workloads`) splits in two:

- **its own part**, `PodFacts`: everything taken from the pod and its namespace, plus the trust
  domain (identity). The key is the pod *object* and the Namespace *object*, by identity, and the
  trust domain by value. That is exact for the snapshots a source's cache hands out
  (`controller.validation.Validated`): the cache replaces an object on every change (a new dict)
  and never edits one it handed out, the contract the skipped validation already relies on.
  The held entry keeps the pod alive, so its `id` cannot name another object meanwhile. A plain
  list (a test, `ambit analyze`) gives no such promise and is never reused from.
- **what it shares with the rest of the snapshot**: the Services whose endpoints it backs (with
  their ports), its node's locality, and its use-waypoint reference as the waypoint Gateways make
  it effective (and whether it is a waypoint's own pod). These are computed again for every pod on
  every snapshot, cheaply from the held facts, and compared by value with what the held Workload
  has: strings, and a dict of Service names to lists of `int` ports, whose equality is exact.
  When they differ, a new Workload is made from the facts; when they are equal, the held one is
  handed out as it is.

So a reused Workload equals a full translation's field for field and type for type: the facts are
a function of the pod's own object, its Namespace's object and the trust domain (`pod_facts`
reads nothing else), and the Workload a function of the facts and the shared values compared
(`make_workload`). Nothing edits a Workload after `translate` returns it (the waypoints' part is
decided before it is made, not patched in afterwards), which is what lets the same object be
handed out again; the controller's encodings take that as given too (controller/encodings.py).

The same identity key holds each object's age (`index.age_key`: creation time, namespace, name),
the order translation sorts every kind by: parsing 16,000 timestamps was a tenth of it.

Memory: `commit` keeps only the entries of the snapshot just translated (a translation that
raised commits nothing); pods that went away are dropped with their Workloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ambit.model import Workload
from controller.translate.index import age_key

Obj = dict[str, Any]
V = TypeVar("V")
REUSED, REMADE, TRANSLATED = 0, 1, 2    # how a Workload came about (TranslationMemo.counts)


@dataclass(slots=True, frozen=True)
class PodFacts:
    """What a Workload takes from its pod, its namespace and the trust domain alone, but its labels
    and annotations: those are copied from the pod (never edited, and held with these) when a
    Workload is made."""

    uid: str
    endpoint_uid: str           # metadata.uid as endpoints name the pod ("" when unset, unlike `uid`)
    name: str
    namespace: str
    ips: tuple[str, ...]
    node: str
    service_account: str
    identity: str
    enrolled: bool
    waypoint: str               # the use-waypoint reference, before the waypoint Gateways decide
    protocol: str               # HBONE when enrolled, else TCP (a waypoint's own pod: HBONE, later)
    probe_ports: tuple[int, ...]
    netns: str
    cgroup: str
    own_locality: str           # the pod's istio-locality label as region/zone/subzone, or ""
    gateway: str                # "ns/name" of the Gateway whose pod this is (its label), or ""


@dataclass(slots=True)
class WorkloadEntry:
    """A pod's Workload and what it was made from (the pod itself is the key)."""

    namespace: Obj | None       # the Namespace object the facts were read with (None: none)
    trust_domain: str
    facts: PodFacts
    workload: Workload


class ByObject(Generic[V]):
    """Values computed from one source object alone, by the object's identity: exact for a
    `Validated` snapshot (see the module docstring). Holds the object with its value, so its `id`
    cannot name another object meanwhile; `commit` keeps what this snapshot put, nothing older."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[Obj, V]] = {}
        self._now: dict[int, tuple[Obj, V]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def get(self, obj: Obj) -> V | None:
        e = self._held.get(id(obj))
        return e[1] if e is not None and e[0] is obj else None

    def put(self, obj: Obj, value: V) -> None:
        self._now[id(obj)] = (obj, value)

    def begin(self) -> None:
        self._now = {}

    def commit(self) -> None:
        self._held, self._now = self._now, {}


class TranslationMemo:
    """What one translation keeps for the next: per pod its facts and Workload, per object its age
    (creation time, namespace, name: the order translation sorts by). Not thread-safe: the
    controller's flow (under its flow lock) is its only user."""

    def __init__(self) -> None:
        self.workloads: ByObject[WorkloadEntry] = ByObject()
        self.ages: ByObject[tuple[float, str, str]] = ByObject()
        self.counts = [0, 0, 0]     # REUSED, REMADE, TRANSLATED in the last translation
        # `id`s of the Workloads handed out again by the last translation: the very objects of the
        # one before, not edited since (controller.encodings takes them without pickling them)
        self.reused_ids: set[int] = set()

    def workload(self, pod: Obj, namespaces: Mapping[str, Obj], trust_domain: str) -> WorkloadEntry | None:
        """The held entry of `pod` when its own inputs are the ones it was translated with: the
        same pod object, the same Namespace object (or none, as then), the same trust domain."""
        e = self.workloads.get(pod)
        if e is None or e.namespace is not namespaces.get(e.facts.namespace) or e.trust_domain != trust_domain:
            return None
        return e

    def keep(self, pod: Obj, entry: WorkloadEntry, how: int) -> None:
        """Hold `entry` for the next translation. `how`: REUSED, REMADE or TRANSLATED (counted)."""
        self.workloads.put(pod, entry)
        self.counts[how] += 1
        if how == REUSED:
            self.reused_ids.add(id(entry.workload))

    @property
    def reused(self) -> int:
        """Workloads handed out again, in the last translation."""
        return self.counts[REUSED]

    @property
    def remade(self) -> int:
        """Workloads made again from held facts (a shared input changed), in the last translation."""
        return self.counts[REMADE]

    @property
    def translated(self) -> int:
        """Workloads translated from their pod, in the last translation."""
        return self.counts[TRANSLATED]

    def age_key(self, obj: Obj) -> tuple[float, str, str]:
        """`index.age_key(obj)`, computed once per object (parsing the timestamp is most of it)."""
        key = self.ages.get(obj)
        if key is None:
            key = age_key(obj)
        self.ages.put(obj, key)
        return key

    def begin(self) -> None:
        """A translation starts: nothing is kept from an unfinished one."""
        self.workloads.begin()
        self.ages.begin()
        self.counts = [0, 0, 0]
        self.reused_ids = set()

    def commit(self) -> None:
        """The translation finished: hold its entries only."""
        self.workloads.commit()
        self.ages.commit()
