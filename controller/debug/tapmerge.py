"""One reader's `Tap` across controller replicas (pure): the other replicas' events joined to the
asked replica's own stream.

Each proxy keeps its feed open to one replica, so a replica taps only its own proxies. The one a
reader asks also opens the same tap (`local_only`) to every other replica (controller/debug/
fanout.py) and merges what they send into the reader's stream (controller/debug/service.py). This
module holds what that merge decides, with no I/O:

- every event of a peer is labelled with its replica (`replica` in the event; TapEvent.replica);
- each peer has its own bounded queue: the peers' streams are read as fast as they come, and a
  reader slower than them loses events (counted, and said in the next status line, as the proxies'
  feeds and the replica's own reader queue do: controller/debug/feeds.py), never makes the
  replica buffer without bound. One chatty replica cannot crowd out another's events either;
- a peer's status lines are not passed on: their drop counts join the merged status line's, and
  their first one (the feeds it taps) joins the merged stream's first line;
- a peer that fails or ends becomes an explicit error event naming it, once; the stream goes on
  from the others (an error event with `replica` set does not end the reader's tap: `ambit tap`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ambit.dataplane.tap import QUEUE_SIZE

Event = dict[str, Any]


@dataclass
class PeerPart:
    """What one peer replica has sent this reader so far."""

    name: str
    address: str
    queue: deque[Event] = field(default_factory=deque)
    dropped_here: int = 0              # its events this replica dropped (the reader was too slow)
    dropped_there: int = 0             # what it said it dropped (its own reader queue, its proxies')
    feeds: list[str] | None = None     # from its first status line (None: none yet)
    ended: str = ""                    # why its stream is over ("": still open)


class TapMerge:
    """The peers' parts of one merged tap. `wake` is called whenever there is something to take."""

    def __init__(self, peers: Sequence[tuple[str, str]], skipped: Sequence[str] = (),
                 queue_size: int = QUEUE_SIZE, wake: Callable[[], None] = lambda: None) -> None:
        self.parts = {name: PeerPart(name, address) for name, address in peers}
        self.queue_size = queue_size
        self.wake = wake
        self.notices: list[Event] = []           # at most one per peer (its end) and one for `skipped`
        if skipped:
            self.notices.append({"type": "error", "replica": "", "error": (
                f"{', '.join(skipped)} not tapped: more than {len(self.parts)} other replicas")})

    # -- what a peer's stream delivers -----------------------------------------------------------
    def event(self, peer: str, ev: Event) -> None:
        """One event of `peer`'s stream; never waits (a full queue drops and counts)."""
        part = self.parts[peer]
        if part.ended:
            return
        if ev.get("type") == "status":
            part.dropped_there = max(part.dropped_there, int(ev.get("dropped", 0) or 0))
            if part.feeds is None:
                part.feeds = [str(f) for f in ev.get("feeds", [])]
                self.wake()
            return
        if len(part.queue) >= self.queue_size:
            part.dropped_here += 1
            return
        ev = dict(ev)
        ev.setdefault("replica", peer)
        if ev.get("type") == "error":            # its own warning (e.g. a proxy not yet tapping)
            ev["replica"] = peer
        part.queue.append(ev)
        self.wake()

    def ended(self, peer: str, why: str) -> None:
        """`peer`'s stream is over (`why`: its gRPC failure, or that it closed the tap)."""
        part = self.parts[peer]
        if part.ended:
            return
        part.ended = why or "it closed the tap"
        self.notices.append({"type": "error", "replica": peer, "error": (
            f"stopped ({part.address}): {part.ended}; the proxies connected to it are no longer tapped, "
            "the tap goes on from the other replicas")})
        self.wake()

    # -- what the merged stream sends ------------------------------------------------------------
    def started(self) -> bool:
        """Has every peer sent its first status line, or ended?"""
        return all(p.feeds is not None or p.ended for p in self.parts.values())

    def feeds(self, own: Sequence[str], me: str) -> tuple[list[str], dict[str, list[str]]]:
        """The merged first status line's feeds (each proxy once) and the feeds by replica."""
        by_replica = {me: list(own)}
        for p in self.parts.values():
            if p.feeds is not None:
                by_replica[p.name] = p.feeds
        return sorted({f for fs in by_replica.values() for f in fs}), by_replica

    def silent(self) -> list[str]:
        """Peers that have neither started nor ended (their first line is late)."""
        return sorted(p.name for p in self.parts.values() if p.feeds is None and not p.ended)

    def dropped(self) -> int:
        """Events of the peers lost so far: by this replica (a slow reader) and by the peers."""
        return sum(p.dropped_here + p.dropped_there for p in self.parts.values())

    def take(self) -> list[Event]:
        """What is queued: the notices first (a replica's end is news), then each peer's events."""
        out, self.notices = self.notices, []
        for p in self.parts.values():
            out.extend(p.queue)
            p.queue.clear()
        return out

    def open(self) -> list[str]:
        return [p.name for p in self.parts.values() if not p.ended]
