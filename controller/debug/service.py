"""The gRPC edge of the debug API (ambit.debug.v1.DebugService), on the controller's one gRPC server.

- Report: a proxy's periodic state. It presents the node credential of the config stream, and is
  scoped the same way (controller/configserver/auth.py): a ztunnel reports as its own node only,
  a waypoint as a waypoint pod on its node (or as its own service account) only.
- Feed: a proxy's feed (the same node credential and scoping as Report): tap filters and metrics
  scrapes down, matching flows and metrics up (controller/debug/feeds.py).
- ProxyStatus / ProxyConfig / Tap / Metrics: for readers (`authorization: Bearer <token>`, checked by a ReaderAuth:
  the lab's admin token, or TokenReview plus an allow-list in a cluster). With several replicas,
  ProxyStatus (and ProxyConfig of a proxy connected elsewhere), Metrics and the config service's
  Status also ask the other replicas, with the reader's own token, and merge their answers
  (controller/debug/replicas.py, scrapemerge.py, statusmerge.py, fanout.py); Tap opens the same tap
  on each and merges their events into the reader's stream (tapmerge.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from ambit.aiotask import wait_set
from ambit.api import config_pb2, debug_pb2, debug_pb2_grpc
from ambit.configclient.node import NodeInfo
from ambit.dataplane.hbone.limits import ConnLimiter
from ambit.dataplane.tap import HEARTBEAT
from ambit.tapfilter import from_proto, to_proto
from ambit.version import VERSION
from controller import fairness
from controller.acceptgate import peer_of
from controller.ca.credentials import CredentialCheckBusy, scope_of
from controller.configserver.auth import StreamRefused, metadata_of
from controller.configserver.server import STATUS, ConfigServer
from controller.debug.feeds import FeedHub, control
from controller.debug.proxystatus import proxy_status
from controller.debug.readers import Forbidden, ReaderAuth, Unauthenticated
from controller.debug.replicas import merge, pick_config
from controller.debug.reports import ReportStore, load_json
from controller.debug.scrapemerge import merge_metrics, own_metrics
from controller.debug.statusmerge import label_own, merge_status
from controller.debug.tapmerge import TapMerge
from controller.fairness import Refusal, RequestRate
from controller.grpcgate import CallRefused, Guard, method_path
from controller.msgsize import SMALL

log = logging.getLogger("ambit.controller.debug")
MAX_REPORT = 256 * 1024
FILTER_WAIT = 5.0            # seconds a new tap waits for every proxy to apply its filter
MAX_UPLOAD_EVENTS = 1000      # flows per feed upload; more are counted as dropped
MAX_WAITED_OBJECTS = 500      # objects one ProxyStatus asks about (it fits the SMALL message bound)
# Status reports per credential: a burst, then a rate (controller/fairness.py). Each proxy process
# reports every `report_interval` (10 s), so a node of 192 ztunnel workers, its agent and its
# waypoints makes about 20 a second, all at once when it starts. Parsing one costs the event loop
# up to 2.5 ms (256 KiB of JSON): one credential reporting in a loop took 85% of it (338 a second,
# measured), and now takes at most 30 a second.
REPORT_BURST = 512
REPORT_RATE = 30.0
READER_METHODS = ("ProxyStatus", "ProxyConfig", "Tap", "Metrics")
PROXY_METHODS = {"Report": "status report", "Feed": "feed"}     # method -> how refusals name it


class DebugServicer(debug_pb2_grpc.DebugServiceServicer):
    def __init__(self, config: ConfigServer, readers: ReaderAuth | None, reports: ReportStore | None = None,
                 report_interval: float = 10.0, feeds: FeedHub | None = None,
                 report_rate: RequestRate | None = None,
                 observed: Callable[[list[tuple[str, str, str]]], dict[tuple[str, str, str], str] | None] | None = None,
                 replica: str = "", peers: Any = None, ca_problem: Callable[[], str] | None = None) -> None:
        self.config = config
        # What is wrong with the CA ("" when nothing: controller/ca/reload.py), for `ambit status`.
        self.ca_problem = ca_problem
        # This replica's name (its pod's), and the other replicas (controller.debug.fanout.Replicas;
        # None: this controller is the only one, as in the lab).
        self.replica = replica
        self.peers = peers
        # The controller's Controller.observed: what `ambit apply --wait` asks about its objects.
        self.observed = observed
        self.report_rate = (report_rate if report_rate is not None
                            else RequestRate(REPORT_RATE, REPORT_BURST, time.monotonic, limit="report_rate"))
        self.feeds = feeds or FeedHub()
        self.readers = readers
        self.reports = reports or ReportStore(ttl=max(60.0, 6 * report_interval))
        self.report_interval = report_interval
        # Feeds one credential holds open at once: the config stream's bound, counted apart (a proxy
        # opens one of each). Every scrape asks every feed, so feeds without bound are work without bound.
        self.feeds_per_client = ConnLimiter(config.streams_per_client.limit, "feeds per client")

    def add_to_server(self, server: grpc.aio.Server) -> None:
        debug_pb2_grpc.add_DebugServiceServicer_to_server(self, server)
        # The config service's older Status RPC (`ambit status`) shows every subscriber and every
        # rejected object: it takes the same reader credential as the debug API.
        self.config.status_guard = self._reader
        self.config.status_fanout = self.status_fanout

    def guards(self) -> dict[str, Guard]:
        """The credential checks of every method (and of the config service's Status), for the
        server's CallGate: a caller without the credential is refused before its request is read."""
        out = {method_path(debug_pb2.DESCRIPTOR, "DebugService", m): Guard(self.reader_of, max_message=SMALL)
               for m in READER_METHODS}
        out[STATUS] = Guard(self.reader_of, max_message=SMALL)
        for m, label in PROXY_METHODS.items():
            # a report: its state (MAX_REPORT) and a node; a feed upload: up to the server's 4 MiB
            # (a scrape answer carries up to 2 MiB of metrics, ambit/dataplane/feed.py MAX_METRICS)
            out[method_path(debug_pb2.DESCRIPTOR, "DebugService", m)] = Guard(
                functools.partial(self._proxy_credential, label=label, rated=m == "Report"),
                max_message=MAX_REPORT + SMALL if m == "Report" else 0)
        return out

    def _over_rate(self, node: NodeInfo | None, client: tuple[str, str], over: Refusal) -> str:
        who = f"node {client[0]!r}" + (f" (service account {client[1]})" if client[1] else "")
        return (f"{node.key + ': ' if node else ''}the credential of {who} is over the controller's per-client limit "
                f"({over.limit}: {self.report_rate.burst} status reports at once, then {self.report_rate.rate:g} per "
                f"second); retry in {over.retry_after:g} s")

    async def _proxy_credential(self, metadata: Mapping[str, str], label: str, rated: bool = False) -> str:
        """The node a proxy's credential authenticates, or StreamRefused naming `label`. `rated`:
        also refuse a credential over its report rate, before its report (up to 256 KiB) is read."""
        auth = self.config.authenticator
        if auth is None:
            return ""
        try:
            caller = await auth.authenticate(metadata)
        except StreamRefused as e:
            raise StreamRefused(e.code, str(e).replace("config stream", label)) from None
        client = (str(caller), scope_of(caller))
        over = self.report_rate.check(client) if rated else None
        if over is not None:
            raise StreamRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, self._over_rate(None, client, over))
        return caller

    # -- proxies ---------------------------------------------------------------------------------
    async def _proxy_client(self, msg: Any, context: Any, what: str, label: str) -> tuple[NodeInfo, tuple[str, str]]:
        """The proxy a report or feed speaks for: its node, checked against its node credential
        (scoped as the config stream is), or the call aborted; and the credential it came with
        (node, "ns/sa" of a waypoint's own token), which its per-client bounds count by."""
        try:
            node = NodeInfo.from_proto(msg).validate()
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what}.{e}")
        auth = self.config.authenticator
        client = (node.name, "")
        if auth is not None:
            try:
                caller = await self._proxy_credential(metadata_of(context), label)
                node = auth.authorize(caller, node)
                client = (str(caller), scope_of(caller))
            except StreamRefused as e:
                log.warning("%s refused from %s: %s", label, peer_of(context), e)
                await context.abort(e.code, str(e).replace("config stream", label))
        return node, client

    async def Report(self, request, context):  # noqa: N802 - gRPC method name
        node, client = await self._proxy_client(request.node, context, "ProxyReport", "status report")
        over = self.report_rate.take(client)
        if over is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._over_rate(node, client, over))
        if len(request.state_json) > MAX_REPORT:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"ProxyReport.state_json: {len(request.state_json)} bytes, over {MAX_REPORT}")
        try:
            state = load_json(request.state_json or b"{}")
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ProxyReport.state_json: {e}")
        try:
            self.reports.put(node, request.version, state)
        except OverflowError as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        return debug_pb2.ReportReply(controller_version=VERSION, interval=self.report_interval)

    # -- readers ---------------------------------------------------------------------------------
    async def reader_of(self, metadata: Mapping[str, str]) -> str:
        """The reader the metadata's bearer token authenticates, or CallRefused saying why."""
        if self.readers is None:
            raise CallRefused(grpc.StatusCode.UNAVAILABLE,
                              "the debug API has no readers configured (controller --debug-token-file, "
                              "or --kube for TokenReview)")
        auth = metadata.get("authorization", "")
        token = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else ""
        try:
            return await self.readers.check(token)
        except Unauthenticated as e:
            raise CallRefused(grpc.StatusCode.UNAUTHENTICATED, f"debug API: {e}") from None
        except Forbidden as e:
            raise CallRefused(grpc.StatusCode.PERMISSION_DENIED, f"debug API: {e}") from None
        except CredentialCheckBusy as e:
            raise CallRefused(grpc.StatusCode.UNAVAILABLE, f"debug API: {e}") from None

    async def _reader(self, context: Any) -> str:
        try:
            return await self.reader_of(metadata_of(context))
        except CallRefused as e:
            await context.abort(e.code, str(e))
        raise AssertionError("unreachable")

    def status_response(self, objects: Sequence[Any] = ()) -> debug_pb2.ProxyStatusResponse:
        # The objects are read before the subscribers: the controller publishes a snapshot's objects
        # only after the config server holds its version, so a proxy shown in sync with the current
        # version holds config built from (at least) the snapshot these come from.
        seen = self.observed([(r.kind, r.namespace, r.name) for r in objects]) if self.observed else None
        reports = {r.node.key: r for r in self.reports.all()}
        out = debug_pb2.ProxyStatusResponse(controller_version=VERSION, config_version=self.config.version,
                                            snapshot_applied=seen is not None, replica=self.replica)
        for r in objects if seen is not None else ():
            rv = seen.get((r.kind, r.namespace, r.name))
            out.observed.add(ref=r, present=rv is not None, resource_version=rv or "")
        for row in proxy_status(self.config.status(), self.config.version, reports, self.reports.age):
            out.proxies.add(node=row.sub.node.to_proto(), connected=row.sub.connected, state=row.state,
                            acked_version=row.acked_version, nack=row.nack,
                            proxy_version=row.report.version if row.report else "",
                            report_age=row.report_age,
                            report_json=json.dumps(row.report.state).encode() if row.report else b"",
                            replica=self.replica)
        out.replicas.add(name=self.replica, answered=True, controller_version=VERSION,
                         config_version=out.config_version, snapshot_applied=out.snapshot_applied,
                         observed=list(out.observed), proxies=len(out.proxies),
                         ca_problem=self.ca_problem() if self.ca_problem is not None else "")
        return out

    def _peer_time(self, context: Any) -> float:
        """Seconds the peers may take: a little less than what the reader's deadline leaves."""
        left = context.time_remaining()
        return 30.0 if left is None else max(0.05, left - 0.2)

    async def ProxyStatus(self, request, context):  # noqa: N802
        await self._reader(context)
        if len(request.objects) > MAX_WAITED_OBJECTS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ProxyStatus: {len(request.objects)} objects; "
                                f"at most {MAX_WAITED_OBJECTS} per request")
        own = self.status_response(request.objects)
        if request.local_only or self.peers is None:
            return own
        peers, skipped = self.peers.peers()
        if not peers and not skipped:
            return own
        answers = await self.peers.ask(
            "ProxyStatus", debug_pb2.ProxyStatusRequest(objects=request.objects, local_only=True),
            metadata_of(context).get("authorization", ""), self._peer_time(context))
        return merge(own, answers, skipped)

    def find(self, proxy: str) -> list[NodeInfo]:
        """Subscribers matching `proxy`: "kind/name", a NodeInfo key, a bare name, or a waypoint's
        Gateway ("waypoint/ns/name" or "ns/name": its pods)."""
        subs = [s.node for s in self.config.status() if s.connected]
        return [n for n in subs if proxy in (n.key, f"{n.kind}/{n.name}", n.name)
                or (n.waypoint and proxy in (n.waypoint, f"waypoint/{n.waypoint}"))]

    async def ProxyConfig(self, request, context):  # noqa: N802
        await self._reader(context)
        found = self.find(request.proxy)
        if not found:
            known = ", ".join(sorted(f"{s.node.kind}/{s.node.name}" for s in self.config.status() if s.connected))
            peers = self.peers.peers()[0] if self.peers is not None and not request.local_only else []
            if not peers:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"no connected proxy {request.proxy!r} (connected: {known or 'none'})")
            answers = await self.peers.ask(
                "ProxyConfig", debug_pb2.ProxyConfigRequest(proxy=request.proxy, local_only=True),
                metadata_of(context).get("authorization", ""), self._peer_time(context))
            outcome = pick_config(request.proxy, self.replica or "this replica", answers, known)
            if outcome.doc:
                return debug_pb2.JsonDocument(json=outcome.doc)
            await context.abort(getattr(grpc.StatusCode, outcome.code), outcome.message)
        if len(found) > 1:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{request.proxy!r} is ambiguous: {', '.join(n.key for n in found)}; name it kind/name")
        node = found[0]
        report = self.reports.get(node.key)
        doc = {"node": node.key, "replica": self.replica, "config_version": self.config.version,
               "config": self.config.subscriber_config(node.key),
               "report": None if report is None else {"version": report.version, "age": self.reports.age(report),
                                                      **report.state}}
        return debug_pb2.JsonDocument(json=json.dumps(doc, sort_keys=True, default=str).encode())

    # -- feeds (ambit tap, stat, top in a cluster) --------------------------------------------------
    async def Feed(self, request_iterator, context):  # noqa: N802
        uploads = request_iterator.__aiter__()
        try:
            first = await uploads.__anext__()
        except StopAsyncIteration:
            return
        node, client = await self._proxy_client(first.node, context, "FeedUpload", "feed")
        if not self.feeds_per_client.acquire(client):
            fairness.REFUSED["feeds_per_client"] += 1
            who = f"node {client[0]!r}" + (f" (service account {client[1]})" if client[1] else "")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{node.key}: the credential of {who} holds {self.feeds_per_client.limit} feeds, the "
                                "controller's per-client bound (feeds_per_client, --max-config-streams-per-client); "
                                "retry once one of them has ended")
        feed = self.feeds.open_feed(node.key)
        log.info("feed open: %s", node.key)

        async def receive() -> None:
            async for m in uploads:
                await self._upload(feed, m)
        reading = asyncio.ensure_future(receive())
        changed: asyncio.Future[Any] | None = None
        try:
            while not reading.done() and not self.feeds.closing:
                changed = asyncio.ensure_future(feed.changed.wait())
                await asyncio.wait({reading, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if feed.changed.is_set() and not self.feeds.closing:
                    c = control(self.feeds, feed)
                    yield debug_pb2.FeedControl(filters=[to_proto(f) for f in c["filters"]], scrape=c["scrape"],
                                                generation=c["generation"])
        finally:
            if changed is not None:     # the stream ended (or the server stopped) mid-wait: no task left pending
                changed.cancel()
            reading.cancel()
            if reading.done() and not reading.cancelled() and reading.exception() is not None:
                log.info("feed %s: %s", node.key, reading.exception())
            self.feeds.close_feed(feed)
            self.feeds_per_client.release(client)
            log.info("feed closed: %s", node.key)

    async def _upload(self, feed: Any, m: Any) -> None:
        if m.generation:
            await self.feeds.applied(feed, m.generation)
        events = []
        for raw in m.events_json[:MAX_UPLOAD_EVENTS]:
            try:
                ev = load_json(raw)
            except ValueError:      # not JSON, or nested too deep to encode again for the readers
                continue
            if isinstance(ev, dict):
                events.append(ev)
        self.feeds.deliver(feed, events, m.dropped + max(0, len(m.events_json) - MAX_UPLOAD_EVENTS))
        if m.scrape:
            self.feeds.answer(feed, m.scrape, m.metrics)

    async def Tap(self, request, context):  # noqa: N802
        await self._reader(context)
        try:
            flt = from_proto(request.filter)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        reader = self.feeds.add_reader(flt)
        if reader is None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.feeds.max_readers} taps already open on the controller")
        assert reader is not None
        # With peers, the same tap (local_only) on each, merged into this stream (tapmerge.py).
        peers, skipped = ([], []) if request.local_only or self.peers is None else self.peers.peers()
        started = asyncio.Event()
        merge = TapMerge([(p.name, p.address) for p in peers], skipped, self.feeds.queue_size)

        def wake() -> None:
            reader.sub.wake()
            if merge.started():
                started.set()
        merge.wake = wake
        wake()
        ask = debug_pb2.TapRequest(filter=request.filter, local_only=True)
        auth = metadata_of(context).get("authorization", "")
        parts = [asyncio.ensure_future(self.peers.tap(p, ask, auth, merge)) for p in peers]
        peers_by = time.monotonic() + FILTER_WAIT + 1.0
        try:
            late = await self.feeds.wait_applied(self.feeds.generation, FILTER_WAIT)
            if parts:                  # each peer's first line comes after its own proxies apply the filter
                await wait_set(started, max(0.0, peers_by - time.monotonic()))
            feeds, by_replica = merge.feeds(sorted(f.key for f in self.feeds.feeds.values()), self.replica)
            first = {"type": "status", "source": "controller", "dropped": 0, "feeds": feeds}
            if parts or skipped:
                first["replicas"] = by_replica
            yield _event(first, self.replica)
            if late:
                yield _event({"type": "error", "error": f"not yet tapping (no answer in {FILTER_WAIT:.0f}s): "
                                                        f"{', '.join(late)}"}, self.replica)
            for name in merge.silent():
                yield _event({"type": "error", "replica": name, "error": (
                    f"no answer in {FILTER_WAIT + 1.0:.0f}s; its flows join once it answers")}, name)
            reported = 0
            while not self.feeds.closing:
                if self.peers is not None and not request.local_only:
                    # replicas that appeared, or came back, since: a rolling update replaces them all
                    parts = [t for t in parts if not t.done()]
                    listed, _ = self.peers.peers()
                    merge.forget({p.name for p in listed})
                    for p in listed:
                        if len(merge.parts) < self.peers.max_peers or p.name in merge.parts:
                            if merge.join(p.name, p.address, time.monotonic()):
                                parts.append(asyncio.ensure_future(self.peers.tap(p, ask, auth, merge)))
                await reader.sub.wait(HEARTBEAT)
                batch = reader.sub.drain()
                for ev in batch:
                    yield _event(ev, self.replica)
                theirs = merge.take()
                for ev in theirs:
                    yield _event(ev, str(ev.get("replica", "")))
                dropped = reader.sub.dropped + merge.dropped()
                if dropped != reported or not (batch or theirs):
                    reported = dropped
                    yield _event({"type": "status", "source": "controller", "dropped": reported}, self.replica)
        finally:
            for t in parts:             # the reader went away (or the server stops): the peers' streams end too
                t.cancel()
            self.feeds.remove_reader(reader)

    def close(self) -> None:
        """The controller is stopping: end the feed and tap streams (`FeedHub.close`)."""
        self.feeds.close()

    async def Metrics(self, request, context):  # noqa: N802
        await self._reader(context)
        timeout = request.timeout if 0 < request.timeout <= 30 else 3.0
        peers, skipped = ([], []) if request.local_only or self.peers is None else self.peers.peers()
        if not peers and not skipped:
            got, missing = await self.feeds.scrape(timeout)
            return own_metrics(got, missing, self.replica)
        # every replica scrapes its own proxies at once; each peer may take the scrape's time too
        (got, missing), answers = await asyncio.gather(self.feeds.scrape(timeout), self.peers.ask(
            "Metrics", debug_pb2.MetricsRequest(timeout=timeout, local_only=True),
            metadata_of(context).get("authorization", ""), self._peer_time(context), slower=timeout))
        return merge_metrics(own_metrics(got, missing, self.replica), answers, skipped)

    async def status_fanout(self, request: Any, context: Any, own: Any) -> Any:
        """The config service's Status (`ambit status`) for the whole mesh: this replica's answer
        labelled, merged with every other replica's (statusmerge.py); `local_only`: its own."""
        label_own(own, self.replica, self.ca_problem() if self.ca_problem is not None else "")
        peers, skipped = ([], []) if request.local_only or self.peers is None else self.peers.peers()
        if not peers and not skipped:
            return own
        answers = await self.peers.ask("Status", config_pb2.StatusRequest(local_only=True),
                                       metadata_of(context).get("authorization", ""), self._peer_time(context),
                                       service="config")
        return merge_status(own, answers, skipped)


def _event(ev: dict[str, Any], replica: str = "") -> Any:
    return debug_pb2.TapEvent(json=json.dumps(ev, separators=(",", ":"), default=str).encode(), replica=replica)
