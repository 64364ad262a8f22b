"""The proxies' feeds and the readers of `ambit tap` / `stat` / `top` in a cluster (the controller's side).

Proxies cannot be dialled (no inbound port on a node for the controller), so each proxy opens a
feed to the controller and keeps it open (ambit/dataplane/feed.py). Over it the controller says
what readers want now, and the proxy answers:

- taps: the controller sends every feed the union of the current readers' filters; the proxy
  subscribes to its own tap only while that set is non-empty, and uploads only the flows that
  match one of the filters (namespace, workload, pod, status: a reader of one namespace never
  moves the rest of the mesh's flows off the node). Here each flow goes to the readers whose
  filter it matches, into a bounded queue per reader: a full queue drops and counts (the reader
  sees the count), it never waits, so a slow reader slows neither the feeds nor the proxies.
- metrics: a scrape request with an id; each proxy answers with its istio_* families.

All of it runs on the controller's event loop; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from ambit.aiotask import wait_set
from ambit.dataplane.tap import QUEUE_SIZE, Subscriber
from ambit.tapfilter import Event, Filter, event_matches

MAX_READERS = 16


@dataclass(eq=False)
class Feed:
    """One proxy's open feed: `changed` wakes its sender when the filters change or a scrape is due."""

    key: str                                   # the proxy, "ztunnel/<node>" or "waypoint/<ns>/<gw>@<pod>"
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    scrape: int = 0                            # the scrape id to send (0: none)
    dropped: int = 0                           # flows the proxy dropped in total (its queue was full)
    applied: int = 0                           # the filters' generation the proxy says it applies


@dataclass(eq=False)
class Reader:
    filter: Filter
    sub: Subscriber


class FeedHub:
    """Feeds and readers; `deliver` is what a feed's uploads call."""

    def __init__(self, queue_size: int = QUEUE_SIZE, max_readers: int = MAX_READERS) -> None:
        self.queue_size, self.max_readers = queue_size, max_readers
        self.feeds: dict[int, Feed] = {}
        self.readers: list[Reader] = []
        self._scrape_ids = itertools.count(1)
        self._scrapes: dict[int, tuple[dict[str, str], asyncio.Event, set[int]]] = {}
        self.generation = 0                    # of the filters: bumped on every reader change
        self.closing = False                   # the controller is stopping: feeds and taps end
        self._applied = asyncio.Condition()

    # -- feeds -----------------------------------------------------------------------------------
    def open_feed(self, key: str) -> Feed:
        f = Feed(key)
        self.feeds[id(f)] = f
        f.changed.set()                        # send it the current filters at once
        return f

    def close_feed(self, f: Feed) -> None:
        self.feeds.pop(id(f), None)

    def filters(self) -> list[Filter]:
        """What the feeds are told to send: each distinct reader filter once."""
        return list(dict.fromkeys(r.filter for r in self.readers))

    def deliver(self, f: Feed, events: list[Event], dropped: int) -> None:
        """Hand a feed's upload to every reader whose filter matches; never waits."""
        for ev in events:
            src = ev.get("source")
            # a proxy names itself (a waypoint "waypoint/<ns>/<gw>": its feed's key without "@<pod>");
            # a name that is not its own (another node's) is replaced by the feed's key: a node
            # cannot pass its flows off as another proxy's in `ambit tap`
            if not (type(src) is str and (src == f.key or f.key.startswith(src + "@"))):
                ev["source"] = f.key
            for r in self.readers:
                if event_matches(ev, r.filter):
                    r.sub.offer(ev)
        if dropped:
            f.dropped += dropped
            status = {"type": "status", "source": f.key, "dropped": f.dropped}
            for r in self.readers:
                r.sub.offer(status)

    # -- readers ---------------------------------------------------------------------------------
    def close(self) -> None:
        """End every feed and tap stream now, so that each RPC returns before the server's grace
        runs out (a handler grpc has to cancel is logged as an unhandled exception); proxies
        reconnect their feed to whichever controller serves next."""
        self.closing = True
        for f in self.feeds.values():
            f.changed.set()
        for r in self.readers:
            r.sub.wake()

    def add_reader(self, flt: Filter) -> Reader | None:
        if len(self.readers) >= self.max_readers:
            return None
        r = Reader(flt, Subscriber(self.queue_size))
        self.readers.append(r)
        self._changed()
        return r

    def remove_reader(self, r: Reader) -> None:
        if r in self.readers:
            self.readers.remove(r)
            self._changed()

    def _changed(self) -> None:
        self.generation += 1
        for f in self.feeds.values():
            f.changed.set()

    async def applied(self, f: Feed, generation: int) -> None:
        """The proxy of `f` applies the filters of `generation` (or a later one)."""
        async with self._applied:
            f.applied = max(f.applied, generation)
            self._applied.notify_all()

    async def wait_applied(self, generation: int, timeout: float) -> list[str]:
        """Wait until every open feed applies `generation`; the feeds that did not in time. A reader's
        tap starts once its filter is on every proxy, so no flow after "tapping" is missed."""
        def behind() -> list[str]:
            return sorted(f.key for f in self.feeds.values() if f.applied < generation)
        async with self._applied:
            try:
                await asyncio.wait_for(self._applied.wait_for(lambda: not behind()), timeout)
            except TimeoutError:
                pass
            return behind()

    # -- metrics ---------------------------------------------------------------------------------
    async def scrape(self, timeout: float) -> tuple[dict[str, str], list[str]]:
        """Ask every open feed for its metrics; (answers by proxy, proxies that did not answer)."""
        sid = next(self._scrape_ids)
        asked = list(self.feeds.values())
        got: dict[str, str] = {}
        pending = {id(f) for f in asked}
        done = asyncio.Event()
        self._scrapes[sid] = (got, done, pending)
        for f in asked:
            f.scrape = sid
            f.changed.set()
        try:
            if asked:
                await wait_set(done, timeout)
        finally:
            del self._scrapes[sid]
        return dict(got), sorted({f.key for f in asked if id(f) in pending})

    def answer(self, f: Feed, sid: int, metrics: str) -> None:
        entry = self._scrapes.get(sid)
        if entry is None:                      # too late: that scrape is over
            return
        got, done, pending = entry
        if id(f) not in pending:               # one answer per feed and scrape: a feed answering again and
            return                             # again (4 MiB each) made the answer grow until the scrape's end
        # Several feeds under one key: a ztunnel's workers (ztunnel/workers.py), or both node pods
        # of a surge roll. Each counts its own connections, so the node's answer is all of them;
        # readers sum samples with equal labels (ambitctl/commands/top.py `parse`).
        prior = got.get(f.key, "")
        got[f.key] = prior + ("" if not prior or prior.endswith("\n") else "\n") + metrics
        pending.discard(id(f))
        if not pending:
            done.set()


def control(hub: FeedHub, f: Feed) -> dict[str, Any]:
    """What to send a feed now (and clear its pending scrape)."""
    sid, f.scrape = f.scrape, 0
    f.changed.clear()
    return {"filters": hub.filters(), "scrape": sid, "generation": hub.generation}
