"""One subscriber's stream state: what it holds, what is in flight, ACKs and NACKs (sans-IO).

Rules (docs/config-stream.md explains them):
* The server's belief of what the client holds (`known`) changes only on an ACK, or on the
  client's own statement at subscribe time (`initial_resource_versions`). So a NACK, or a stream
  that dies with a response in flight, leaves it at the client's last good state.
* At most one response is in flight per stream. The next one is computed, against the newest
  snapshot, only after the client has answered. That orders one update's types on the wire
  (policy before pods before Services) and coalesces updates that arrive meanwhile.
* A NACKed state is not resent until the snapshot changes again (a new generation), so a client
  that cannot apply something is not fed the same thing in a loop.
* Every subscription is answered at least once, even with an empty delta, so the client knows
  it is in sync.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass

from ambit.configclient.codec import Encoded
from ambit.configclient.node import NodeInfo
from controller.configserver.scope import type_rank
from controller.configserver.snapshot import Versions
from controller.validation import printable

NACK_MESSAGE_MAX = 4096
# Names a subscribe may claim outside its view (resources it holds that are gone): see Claim.
MAX_GONE = 10_000

ViewFn = Callable[[str], Mapping[str, Encoded]]  # type URL -> the subscriber's current view


@dataclass(frozen=True)
class Nack:
    version: str
    nonce: str
    message: str
    time: float
    type_url: str = ""      # the type of the response rejected (the server's, not the NACK's word)


@dataclass(frozen=True)
class Planned:
    """A response to send (the caller turns it into a DeltaResponse)."""

    type_url: str
    system_version: str
    nonce: str
    resources: tuple[Encoded, ...]
    removed: tuple[str, ...]


@dataclass
class _Inflight:
    planned: Planned
    generation: int
    target: dict[str, str]  # name -> version the client will hold once it ACKs


class Claim(Mapping[str, str]):
    """A subscribe's `initial_resource_versions` as the server keeps it until the client ACKs.

    The claim is the client's word, up to a 4 MiB message of it: 270,000 one-letter names held as a
    dict took 78 MB per stream, kept while the stream stayed open without ACKing, and one
    credential may hold 512 streams. What the server needs of it: the claimed version of each name
    in the client's view (to skip sending what it already holds: at most the view's size, the
    server's own data), and the other names only to tell the client to remove them, in the first
    response (which holds them again until it is written and ACKed). Those are kept as one string,
    about their size on the wire, and at most `MAX_GONE` of them: a client holds that many
    resources its view lost (deleted while it was away) only after a mass deletion larger than a
    whole sized cluster (10,000 pods). Past it the rest stay at the client until its next stream
    claims them again (`dropped` says how many; the server logs it). A name later in the view
    reads as not held (it is sent again: harmless). A name with a NUL is no resource name a
    client could hold: dropped."""

    __slots__ = ("_in_view", "_others", "_count", "dropped")

    def __init__(self, claimed: Mapping[str, str], current: Container[str], max_gone: int | None = None) -> None:
        max_gone = MAX_GONE if max_gone is None else max_gone
        in_view: dict[str, str] = {}
        others: list[str] = []
        self.dropped = 0
        for name, version in claimed.items():
            if name in current:
                in_view[name] = version
            elif len(others) < max_gone and "\0" not in name:
                others.append(name)
            else:
                self.dropped += 1
        self._in_view = in_view
        self._others = "\0".join(others)
        self._count = len(others)

    def __getitem__(self, name: str) -> str:
        return self._in_view[name]

    def __contains__(self, name: object) -> bool:
        return name in self._in_view

    def __iter__(self) -> Iterator[str]:
        yield from self._in_view
        if self._count:
            yield from self._others.split("\0")

    def __len__(self) -> int:
        return len(self._in_view) + self._count

    def __eq__(self, other: object) -> bool:    # Mapping's would look up the other names
        return not self._count and isinstance(other, Mapping) and self._in_view == dict(other)

    __hash__ = None     # type: ignore[assignment]


@dataclass
class TypeSub:
    type_url: str
    known: Mapping[str, str]
    acked_version: str = ""
    sent_version: str = ""
    last_nack: Nack | None = None
    nacked_generation: int | None = None
    needs_reply: bool = True
    # The client's last answer for this type was a NACK: it still shows that rejection (ztunnel's
    # `rejections`) until a response it applies, so one is sent even when the content it holds
    # is what the config has become (the bad object deleted, say).
    rejecting: bool = False


@dataclass(frozen=True)
class TypeStatus:
    type_url: str
    acked_version: str
    sent_version: str
    in_sync: bool
    resources: int
    last_nack: Nack | None


@dataclass(frozen=True)
class SubscriberStatus:
    node: NodeInfo
    connected: bool
    connected_since: float
    disconnected_at: float | None
    peer: str
    types: tuple[TypeStatus, ...]


def target_of(current: Mapping[str, Encoded]) -> dict[str, str]:
    """name -> version of `current`: what the client holds once it ACKs it. A server `View`'s own
    (shared by its subscribers, never edited; `known` is only ever replaced, never edited)."""
    shared = getattr(current, "versions", None)
    return shared if isinstance(shared, dict) else {n: e.version for n, e in current.items()}


def delta(known: Mapping[str, str], current: Mapping[str, Encoded]) -> tuple[tuple[Encoded, ...], tuple[str, ...]]:
    """(what changed, sorted by name; the names removed, sorted) from `known` to `current`.

    A server `View` remembers the answer per `known` state (by identity, holding it, so the id is
    not reused): the 100 ztunnels that ACKed the same previous view share one `known` dict
    (`target_of`), so one update costs one pass over 10,000 names, not one per subscriber."""
    # Only a view's shared `versions` are remembered: a subscriber's own (from subscribe) is
    # seen once, and keeping it would hold a copy of the state per subscriber.
    memo = getattr(current, "deltas", None) if isinstance(known, Versions) else None
    if isinstance(memo, dict):
        hit = memo.get(id(known))
        if hit is not None and hit[0] is known:
            return hit[1], hit[2]
    # Sort what changed, not the whole view: churn is a few names out of 10,000.
    changed = tuple(sorted((e for name, e in current.items() if known.get(name) != e.version), key=lambda e: e.name))
    removed = tuple(sorted(n for n in known if n not in current))
    if isinstance(memo, dict):
        memo[id(known)] = (known, changed, removed)
    return changed, removed


class Subscription:
    def __init__(self, node: NodeInfo, peer: str = "", now: float = 0.0):
        self.node = node
        self.peer = peer
        self.connected_since = now
        self.disconnected_at: float | None = None
        self.types: dict[str, TypeSub] = {}
        self._inflight: _Inflight | None = None
        self._nonces = itertools.count(1)

    # ----- requests from the client ----------------------------------------------------------

    def subscribe(self, type_url: str, initial_versions: Mapping[str, str]) -> None:
        """(Re)subscribe; the client says which versions it already holds."""
        held = initial_versions if isinstance(initial_versions, Claim) else dict(initial_versions)
        self.types[type_url] = TypeSub(type_url, held)
        self.types = dict(sorted(self.types.items(), key=lambda kv: type_rank(kv[0])))

    def on_ack(self, nonce: str) -> Planned | None:
        """Record an ACK; return the response it acknowledges, or None for a stale nonce."""
        inf = self._take(nonce)
        if inf is None:
            return None
        ts = self.types.get(inf.planned.type_url)
        if ts is not None:
            ts.known = inf.target
            ts.acked_version = inf.planned.system_version
            ts.rejecting = False
        return inf.planned

    def on_nack(self, nonce: str, message: str, now: float) -> Nack | None:
        """Record a NACK; the client keeps its previous state, so `known` stays as it was."""
        inf = self._take(nonce)
        if inf is None:
            return None
        # The client's words go to the controller's log and to `ambit proxy-status`: made printable
        # and bounded, so a NACK can neither forge log lines nor hold megabytes per subscriber.
        nack = Nack(inf.planned.system_version, nonce, printable(message, NACK_MESSAGE_MAX), now,
                    inf.planned.type_url)
        ts = self.types.get(inf.planned.type_url)
        if ts is not None:
            ts.last_nack = nack
            ts.nacked_generation = inf.generation
            ts.rejecting = True
        return nack

    def _take(self, nonce: str) -> _Inflight | None:
        if self._inflight is None or self._inflight.planned.nonce != nonce:
            return None  # stale or unknown: the client answered something already superseded
        inf, self._inflight = self._inflight, None
        return inf

    # ----- what to send next -----------------------------------------------------------------

    @property
    def waiting_for_answer(self) -> bool:
        return self._inflight is not None

    def next_response(self, view: ViewFn, version: str, generation: int) -> Planned | None:
        """The next response to send, or None if nothing is due (or one is still in flight)."""
        if self._inflight is not None:
            return None
        for ts in self.types.values():
            if ts.nacked_generation == generation:
                continue
            current = view(ts.type_url)
            changed, removed = delta(ts.known, current)
            if not changed and not removed and not ts.needs_reply and not ts.rejecting:
                ts.acked_version = version  # it already holds exactly this version's content
                continue
            planned = Planned(ts.type_url, version, str(next(self._nonces)), changed, removed)
            ts.needs_reply = False
            ts.sent_version = version
            self._inflight = _Inflight(planned, generation, target_of(current))
            return planned
        return None

    # ----- status ----------------------------------------------------------------------------

    def status(self, view: ViewFn) -> SubscriberStatus:
        types = []
        for ts in self.types.values():
            pending = self._inflight is not None and self._inflight.planned.type_url == ts.type_url
            current = target_of(view(ts.type_url))
            types.append(TypeStatus(
                type_url=ts.type_url,
                acked_version=ts.acked_version,
                sent_version=ts.sent_version,
                in_sync=not pending and not ts.needs_reply and ts.known == current,
                resources=len(ts.known),
                last_nack=ts.last_nack,
            ))
        return SubscriberStatus(self.node, self.disconnected_at is None, self.connected_since,
                                self.disconnected_at, self.peer, tuple(types))
