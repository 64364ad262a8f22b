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
  from the others (an error event with `replica` set does not end the reader's tap: `ambit tap`);
- the replicas change during a tap (a rolling update replaces every one of them): a replica that
  appears is joined (`join`), said once its first line names the proxies it taps, and one that
  ended while it is still listed (its container restarted in place) is opened again after a
  backoff (`REOPEN_AFTER`, doubling to `REOPEN_MAX` while it keeps failing); a reopening that
  fails before it started says nothing, so a replica that stays down is named once, not at every
  try.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ambit.dataplane.tap import QUEUE_SIZE

Event = dict[str, Any]
REOPEN_AFTER = 2.0          # seconds after a peer's tap ended before it is opened again (if still listed)
REOPEN_MAX = 30.0


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
    ended_at: float = 0.0
    backoff: float = REOPEN_AFTER      # before the next reopening
    late: str = ""                     # "joined" / "tapped again": said with its first line ("": from the start)


class TapMerge:
    """The peers' parts of one merged tap. `wake` is called whenever there is something to take."""

    def __init__(self, peers: Sequence[tuple[str, str]], skipped: Sequence[str] = (),
                 queue_size: int = QUEUE_SIZE, wake: Callable[[], None] = lambda: None) -> None:
        self.parts = {name: PeerPart(name, address) for name, address in peers}
        self.queue_size = queue_size
        self.wake = wake
        self.notices: list[Event] = []           # a peer's end, join or return, and one for `skipped`
        self.gone_dropped = 0                    # what forgotten peers had dropped (the count never goes back)
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
                if part.late:
                    self.notices.append({"type": "error", "replica": peer, "error": (
                        f"{part.late} ({part.address}): tapping {', '.join(part.feeds) or 'no proxy yet'}")})
                    part.backoff = REOPEN_AFTER
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

    def ended(self, peer: str, why: str, now: float = 0.0) -> None:
        """`peer`'s stream is over (`why`: its gRPC failure, or that it closed the tap)."""
        part = self.parts[peer]
        if part.ended:
            return
        part.ended = why or "it closed the tap"
        part.ended_at = now
        if part.late == "tapped again" and part.feeds is None:     # a reopening that failed: said already
            part.backoff = min(part.backoff * 2, REOPEN_MAX)
            return
        self.notices.append({"type": "error", "replica": peer, "error": (
            f"stopped ({part.address}): {part.ended}; the proxies connected to it are no longer tapped, "
            "the tap goes on from the other replicas (and from it again if it comes back)")})
        self.wake()

    def join(self, peer: str, address: str, now: float) -> bool:
        """`peer` is listed now: True when its tap is to be opened (the caller opens it and feeds
        this merge): a replica not seen before in this tap, or one whose tap ended at least its
        backoff ago (at once if it came back at another address)."""
        part = self.parts.get(peer)
        if part is None:
            self.parts[peer] = PeerPart(peer, address, late="joined")
            return True
        if not part.ended or (part.address == address and now - part.ended_at < part.backoff):
            return False
        # what it sent before it ended and the reader has not taken yet is still delivered
        part.address, part.ended, part.feeds, part.late = address, "", None, "tapped again"
        return True

    def forget(self, listed: set[str]) -> None:
        """Drop the parts of peers that ended, are no longer listed and have nothing left to take
        (a rolling update's old replicas), so a long tap's bound counts the replicas there are."""
        for name in [n for n, p in self.parts.items() if p.ended and n not in listed and not p.queue]:
            part = self.parts.pop(name)
            self.gone_dropped += part.dropped_here + part.dropped_there

    # -- what the merged stream sends ------------------------------------------------------------
    def started(self) -> bool:
        """Has every peer the tap began with sent its first status line, or ended?"""
        return all(p.feeds is not None or p.ended or p.late for p in self.parts.values())

    def feeds(self, own: Sequence[str], me: str) -> tuple[list[str], dict[str, list[str]]]:
        """The merged first status line's feeds (each proxy once) and the feeds by replica."""
        by_replica = {me: list(own)}
        for p in self.parts.values():
            if p.feeds is not None:
                by_replica[p.name] = p.feeds
        return sorted({f for fs in by_replica.values() for f in fs}), by_replica

    def silent(self) -> list[str]:
        """Peers the tap began with that have neither started nor ended (their first line is late)."""
        return sorted(p.name for p in self.parts.values() if p.feeds is None and not p.ended and not p.late)

    def dropped(self) -> int:
        """Events of the peers lost so far: by this replica (a slow reader) and by the peers."""
        return self.gone_dropped + sum(p.dropped_here + p.dropped_there for p in self.parts.values())

    def take(self) -> list[Event]:
        """What is queued: the notices first (a replica's end is news), then each peer's events."""
        out, self.notices = self.notices, []
        for p in self.parts.values():
            out.extend(p.queue)
            p.queue.clear()
        return out

    def open(self) -> list[str]:
        return [p.name for p in self.parts.values() if not p.ended]
