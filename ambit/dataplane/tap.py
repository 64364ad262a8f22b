"""Live taps of a proxy's finished flows: a fan-out to bounded per-subscriber queues.

`ambit tap` subscribes over a component's admin endpoint (`GET /tap`, newline-delimited JSON that
stays open). The data path calls `publish(make_event)` when a connection or request ends; that is
all the data path ever does, so:
- nobody tapping costs one attribute test (`if not self.subscribers`): the event is never built;
- a slow reader never slows the proxy: each subscriber has a bounded queue, and an event that does
  not fit is dropped and counted (the stream reports the count, as `linkerd tap` and Hubble report
  lost events), never awaited.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from ambit.aiotask import wait_set

Event = dict[str, Any]
QUEUE_SIZE = 1000           # events buffered per subscriber before they are dropped
MAX_SUBSCRIBERS = 16        # a bound on what tapping can cost a proxy
HEARTBEAT = 5.0             # seconds: a quiet stream writes a heartbeat, to notice a gone reader


class Subscriber:
    """One reader's queue: `offer` never blocks (drops when full), `next_batch` waits."""

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        self.queue: deque[Event] = deque()
        self.size = size
        self.dropped = 0
        self._wake = asyncio.Event()

    def offer(self, ev: Event) -> None:
        if len(self.queue) >= self.size:
            self.dropped += 1
            return
        self.queue.append(ev)
        self._wake.set()

    def drain(self, limit: int = 0) -> list[Event]:
        """Take what is queued (at most `limit` events when given)."""
        if limit and len(self.queue) > limit:
            out = [self.queue.popleft() for _ in range(limit)]
        else:
            out = list(self.queue)
            self.queue.clear()
            self._wake.clear()
        return out

    def wake(self) -> None:
        """End a `wait` now (the server is shutting down: its reader stops waiting)."""
        self._wake.set()

    async def wait(self, timeout: float) -> None:
        if self.queue:
            return
        await wait_set(self._wake, timeout)


class TapHub:
    """What a proxy holds: its current subscribers. `publish` is the data path's only call."""

    def __init__(self, source: str, queue_size: int = QUEUE_SIZE, max_subscribers: int = MAX_SUBSCRIBERS) -> None:
        self.source = source            # e.g. "ztunnel/node-a", "waypoint/demo/waypoint"
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.subscribers: list[Subscriber] = []
        self.published = 0

    @property
    def active(self) -> bool:
        return bool(self.subscribers)

    def publish(self, make_event: Callable[[], Event]) -> None:
        """Hand a finished flow to every subscriber. `make_event` is only called when someone taps,
        and an error in it is the tap's problem, never the flow's."""
        if not self.subscribers:
            return
        try:
            ev = make_event()
        except Exception:  # noqa: BLE001 - a mapping bug must not break the data path
            return
        ev.setdefault("source", self.source)
        self.published += 1
        for s in self.subscribers:
            s.offer(ev)

    def subscribe(self) -> Subscriber | None:
        """A new subscriber, or None when `max_subscribers` already tap."""
        if len(self.subscribers) >= self.max_subscribers:
            return None
        s = Subscriber(self.queue_size)
        self.subscribers.append(s)
        return s

    def unsubscribe(self, s: Subscriber) -> None:
        if s in self.subscribers:
            self.subscribers.remove(s)

    def stream(self, s: Subscriber, heartbeat: float = HEARTBEAT) -> TapStream:
        return TapStream(self, s, heartbeat)


class TapStream:
    """NDJSON for one subscriber: events, and, when events were dropped or the stream is quiet, a
    `{"type": "status", "dropped": N}` line. `aclose()` (the endpoint calls it when the reader
    goes) unsubscribes, whether or not the stream was ever iterated."""

    def __init__(self, hub: TapHub, sub: Subscriber, heartbeat: float) -> None:
        self.hub, self.sub, self.heartbeat = hub, sub, heartbeat
        self._reported = 0
        self._started = False

    def __aiter__(self) -> TapStream:
        return self

    async def __anext__(self) -> bytes:
        s = self.sub
        if s not in self.hub.subscribers:
            raise StopAsyncIteration
        if not self._started:
            self._started = True
            return _line({"type": "status", "source": self.hub.source, "dropped": 0,
                          "subscribers": len(self.hub.subscribers)})
        await s.wait(self.heartbeat)
        batch = s.drain()
        out = b"".join(_line(ev) for ev in batch)
        if s.dropped != self._reported or not batch:
            self._reported = s.dropped
            out += _line({"type": "status", "source": self.hub.source, "dropped": s.dropped})
        return out

    async def aclose(self) -> None:
        self.hub.unsubscribe(self.sub)


def _line(obj: Event) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


TAP_PATH = "/tap"


def tap_response(hub: TapHub) -> Any:
    """The admin endpoint's answer to `GET /tap`: a streamed NDJSON response, or 503 when the
    proxy already has `max_subscribers` taps."""
    from ambit.dataplane.endpoint import Response
    s = hub.subscribe()
    if s is None:
        return Response(503, _line({"error": f"{hub.max_subscribers} taps already open"}))
    return Response(200, b"", "application/x-ndjson", stream=hub.stream(s))
