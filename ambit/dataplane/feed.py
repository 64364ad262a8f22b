"""A proxy's feed to the controller's debug API (ambit.debug.v1 Feed): the cluster path of `ambit tap`,
`stat` and `top`.

The controller cannot dial a proxy, so the proxy opens the feed (same target, channel kind and node
credential as its config stream and status reports) and keeps it open, reconnecting with backoff.
The controller sends the tap filters of the readers tapping now and, now and then, a scrape id:

- while some reader taps, the feed holds one subscriber of the proxy's own TapHub (the same
  bounded, drop-and-count queue as the admin `GET /tap`), applies the filters here, on the node,
  and uploads only the matching flows plus how many were dropped. With no reader it holds no
  subscriber, so the data path does not even build events (TapHub.publish);
- a scrape is answered with the proxy's istio_* metric families (what stat/top read).

A feed that cannot reach the controller logs once per failure kind and never affects the data path.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ambit.aiotask import cancel
from ambit.api import debug_grpc, debug_pb2
from ambit.configclient import rpc, tls
from ambit.configclient.node import NodeInfo
from ambit.dataplane.tap import Subscriber, TapHub
from ambit.tapfilter import Filter, from_proto, matches_any

log = logging.getLogger("ambit.dataplane.feed")

BATCH = 500                 # flows per upload
MAX_METRICS = 2 * 1024 * 1024


def istio_families(exposition: str) -> str:
    """The istio_* families of a Prometheus exposition (their samples, HELP and TYPE lines): what
    stat/top use, without the proxy's process and config metrics."""
    keep = []
    for ln in exposition.splitlines():
        name = ln.split(" ", 3)[2] if ln.startswith("# ") and len(ln.split(" ", 3)) > 2 else ln
        if name.startswith("istio_"):
            keep.append(ln)
    return "\n".join(keep) + ("\n" if keep else "")


class TapFeed:
    """The feed of `node` to the controller at `target`: taps from `hub`, metrics from `metrics()`."""

    def __init__(self, target: str, node: NodeInfo, hub: TapHub, metrics: Callable[[], str], *,
                 metadata: Callable[[], Sequence[tuple[str, str]]] | None = None,
                 trust: tls.ControllerTrust | None = None,
                 backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        self.target, self.node, self.hub, self.metrics = target, node.validate(), hub, metrics
        self._metadata, self.trust = metadata, trust
        self.backoff = backoff
        self.filters: list[Filter] = []
        self.sub: Subscriber | None = None
        self.uploaded = 0                       # flows sent to the controller
        self.connected = False
        self._wake = asyncio.Event()
        self._scrape = 0
        self._dropped = 0                       # the subscriber's drops already reported
        self._generation = 0                    # the filters' generation to acknowledge
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.last_error = ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"feed:{self.node.key}")

    async def stop(self) -> None:
        self._stopping = True       # (read by `_run`: see there)
        try:
            await cancel(self._task)
        finally:
            self._stopping = False
        self._task = None
        self._set_filters([])

    # -- what the controller says ------------------------------------------------------------------
    def _set_filters(self, filters: list[Filter]) -> None:
        self.filters = filters
        if filters and self.sub is None:
            self.sub = self.hub.subscribe()
            if self.sub is None:
                log.warning("tap feed: %d taps already open on this proxy; the controller's readers get nothing "
                            "until one closes", self.hub.max_subscribers)
            self._dropped = 0
        elif not filters and self.sub is not None:
            self.hub.unsubscribe(self.sub)
            self.sub = None
        self._wake.set()

    def control(self, c: debug_pb2.FeedControl) -> None:
        filters = []
        for m in c.filters:
            try:
                filters.append(from_proto(m))
            except ValueError as e:
                log.warning("tap feed: ignoring a filter the controller sent: %s", e)
        self._set_filters(filters)
        self._generation = c.generation
        if c.scrape:
            self._scrape = c.scrape
            self._wake.set()

    # -- what the proxy sends ----------------------------------------------------------------------
    def next_upload(self) -> debug_pb2.FeedUpload | None:
        """The upload due now (pure apart from draining the subscriber), or None."""
        up = debug_pb2.FeedUpload(generation=self._generation)
        self._generation = 0
        if self._scrape:
            up.scrape, self._scrape = self._scrape, 0
            try:
                text = istio_families(self.metrics())
            except Exception as e:  # noqa: BLE001 - a scrape failure is the reader's to see, not ours
                text = f"# error: {e}\n"
            up.metrics = text if len(text) <= MAX_METRICS else f"# error: metrics over {MAX_METRICS} bytes\n"
        s = self.sub
        if s is not None:
            sent = [json.dumps(ev, separators=(",", ":"), default=str).encode()
                    for ev in s.drain(BATCH) if matches_any(ev, self.filters)]
            up.events_json.extend(sent)
            up.dropped, self._dropped = s.dropped - self._dropped, s.dropped
            self.uploaded += len(sent)
        return up if (up.scrape or up.events_json or up.dropped or up.generation) else None

    async def _uploads(self) -> AsyncIterator[debug_pb2.FeedUpload]:
        yield debug_pb2.FeedUpload(node=self.node.to_proto())
        while True:
            up = self.next_upload()
            if up is not None:
                yield up
                continue
            self._wake.clear()
            waits = [asyncio.ensure_future(self._wake.wait())]
            if self.sub is not None:
                waits.append(asyncio.ensure_future(self.sub.wait(5.0)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def _send(self, call: Any) -> None:
        async for up in self._uploads():
            await call.send_message(up)

    async def _run(self) -> None:
        delay = self.backoff[0]
        while True:
            channel = tls.channel(self.target, self.trust)      # the pinned root, read anew each time
            try:
                md = tuple(self._metadata()) if self._metadata is not None else None   # re-read: tokens rotate
                async with debug_grpc.DebugServiceStub(channel).Feed.open(metadata=md) as call:
                    await call.send_request()
                    sending = asyncio.ensure_future(self._send(call))
                    try:
                        async for c in call:
                            if not self.connected:
                                self.connected, delay = True, self.backoff[0]
                                if self.last_error:
                                    log.info("tap feed to %s: open again", self.target)
                                self.last_error = ""
                            self.control(c)
                    finally:
                        sending.cancel()
                        await asyncio.wait([sending])
                        if not sending.cancelled() and sending.exception() is not None:
                            log.debug("tap feed to %s: upload failed: %s", self.target, sending.exception())
                    await rpc.end_status(call)
                why = "closed by the controller"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - best effort; say it once per failure kind
                why = rpc.describe(e) if rpc.failure(e) is not None else f"{e}"
            finally:
                self.connected = False
                self._set_filters([])
                channel.close()
            if self._stopping:
                # `stop()` cancelled us, but the call turned the cancellation into its own error
                # or ended as if the controller had closed it: retrying made `stop()` wait for ever.
                raise asyncio.CancelledError()
            if why != self.last_error:
                log.warning("tap feed to %s: %s; retrying", self.target, why)
            self.last_error = why
            await asyncio.sleep(delay)
            delay = min(self.backoff[1], delay * 2)


def exposition(registry: object) -> Callable[[], str]:
    """A proxy's metrics registry as the scrape answer (Prometheus text format)."""
    from prometheus_client import generate_latest

    def text() -> str:
        return generate_latest(registry).decode()  # type: ignore[arg-type]
    return text
