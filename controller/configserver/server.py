"""ConfigServer: owns the desired state and streams per-subscriber deltas over gRPC (grpc.aio).

The translation calls `update()` with full snapshots; the server works out, per subscriber, what
changed in that subscriber's scoped view and pushes only that. Updates arriving in a burst are
coalesced for at most `debounce` seconds (counted from the first update of the burst, so a steady
stream of updates can never postpone a push indefinitely).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry

from ambit.api import config_pb2, config_pb2_grpc
from ambit.configclient.codec import Encoded
from ambit.configclient.node import NodeInfo
from ambit.dataplane.hbone.limits import ConnLimiter
from ambit.model import RESOURCE_TYPES, Resource
from controller import fairness
from controller.acceptgate import MAX_CONNECTIONS_PER_PEER, AcceptGate, make_server, peer_of, serve
from controller.ca.credentials import scope_of
from controller.configserver.auth import NodeAuthenticator, StreamRefused, metadata_of
from controller.configserver.metrics import ConfigMetrics
from controller.configserver.snapshot import Snapshot
from controller.configserver.subscription import (
    MAX_GONE,
    Claim,
    Nack,
    Planned,
    SubscriberStatus,
    Subscription,
)
from controller.grpcgate import CallGate, Guard, method_path
from controller.memguard import MemoryGuard
from controller.validation import printable

log = logging.getLogger("ambit.controller.configserver")

# Unknown type URLs one stream may subscribe to before it is ended (a client knows a few types).
MAX_UNKNOWN_TYPES = 16

# How long a refused (unauthenticated) stream may take to send its first request before the refusal.
REFUSAL_DRAIN = 1.0

# What an anonymous peer can hold is bounded (docs/security.md, "The controller's ports"): the TLS
# handshake and HTTP/2 preface must be done in HANDSHAKE_TIMEOUT_MS (grpc's default is 120 s), a
# connection with no call open is closed after IDLE_CONNECTION_MS (a refused call leaves its
# connection idle; grpc clients reconnect on their next call), and at most `max_connections` are
# held at once: beyond that a new connection is closed at accept. Each held TLS connection costs
# the controller about 50 KB; the default, 10,000, suits a mesh of about 1,000 nodes of 8 ztunnel
# workers (each worker holds its own config stream); a full house of them, each carrying a config
# stream, is about 1 GiB at 10,000 pods, which the manifests' limit holds under the memory guard
# (controller/sizing.py, controller/memguard.py). One peer
# address holds at most `max_connections_per_peer` of them (controller/acceptgate.py).
MAX_CONNECTIONS = 10_000
HANDSHAKE_TIMEOUT_MS = 10_000
IDLE_CONNECTION_MS = 300_000

# Config streams one credential may hold open at once. Each stream costs the controller its own
# subscription (the versions it holds of every resource in its view) and a push per change, and
# HTTP/2 lets one connection carry thousands: without a bound one node could hold any number. A
# node holds one per ztunnel worker (one per CPU by default: up to 192 on the largest nodes), one
# for its agent and one per waypoint pod subscribing with the node's credential, twice over for a
# moment when they reconnect before the controller notices the old streams dead (keepalive: 40 s).
MAX_STREAMS_PER_CLIENT = 512

# Keepalive: find dead subscribers (node gone, partition) and accept the clients' own pings.
SERVER_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
    ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
)


def server_options(max_connections: int = MAX_CONNECTIONS) -> tuple[tuple[str, int], ...]:
    """SERVER_OPTIONS with the connection bound (0: none)."""
    if max_connections <= 0:
        return SERVER_OPTIONS
    return (*SERVER_OPTIONS, ("grpc.max_allowed_incoming_connections", max_connections))


DELTA_STREAM = method_path(config_pb2.DESCRIPTOR, "ConfigService", "DeltaStream")
STATUS = method_path(config_pb2.DESCRIPTOR, "ConfigService", "Status")


class BadRequest(Exception):
    """A client request the protocol does not allow; ends the stream with INVALID_ARGUMENT."""


@dataclass
class _Stream:
    sub: Subscription
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dirty_since: float | None = None       # monotonic time of the oldest update not yet pushed
    ended: bool = False
    error: str = ""
    unknown_types: set[str] = field(default_factory=set)   # subscribed to, not served (a newer client)


# Checks that a stream may claim `node` (e.g. that its client certificate or token belongs to that
# node); raise PermissionError with the reason to refuse it.
Authorizer = Callable[[NodeInfo, grpc.aio.ServicerContext], None]


class ConfigServer(config_pb2_grpc.ConfigServiceServicer):
    """Serve the desired state to subscribers as per-subscriber deltas.

    debounce: how long a burst of updates is coalesced, counted from its first update.
    authorize: optional extra check of a stream's claimed identity (see Authorizer).
    authenticator: require the node credential on every stream and scope it by the authenticated
        node (see controller.configserver.auth). Without it the server believes what the node says,
        which is only right when nobody untrusted can reach it (unit tests, benchmarks).
    """

    def __init__(self, *, debounce: float = 0.03, registry: CollectorRegistry | None = None,
                 keep_disconnected: float = 600.0, max_disconnected: int = 512,
                 authorize: Authorizer | None = None, authenticator: NodeAuthenticator | None = None,
                 max_streams_per_client: int = MAX_STREAMS_PER_CLIENT, memory_guard: MemoryGuard | None = None):
        if debounce < 0:
            raise ValueError(f"ConfigServer.debounce: {debounce} is negative")
        self.streams_per_client = ConnLimiter(max_streams_per_client, "config streams per client")
        # New streams are refused once the process holds its share of the cgroup's memory limit.
        self.memory_guard = memory_guard
        self.debounce = debounce
        self._authorize = authorize
        self.authenticator = authenticator
        # Awaited with the call's context before Status answers; raises (aborts) to refuse.
        self.status_guard: Callable[[Any], Awaitable[Any]] | None = None
        # Called with (request, context, response) before Status answers, to return the answer to
        # send: with several controller replicas, every replica's (controller/debug/service.py).
        self.status_fanout: Callable[[Any, Any, Any], Awaitable[Any]] | None = None
        self.metrics = ConfigMetrics(registry)
        self._keep_disconnected = keep_disconnected
        self._gone: collections.deque[Subscription] = collections.deque(maxlen=max_disconnected)
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()
        self._generation = 0
        # `_latest` is what update() last gave us; `_snapshot` is what streams are served from.
        # Only a flush (after the debounce) moves the latter, so an ACK arriving mid-burst cannot
        # pull a half-finished burst out early.
        self._latest = Snapshot({}, "empty", 0)
        self._snapshot = self._latest
        # What each snapshot was built from (the controller's source objects), opaque here: the
        # published one answers "is this object in the config being served?" (`ambit apply --wait`).
        self._latest_source: Any = None
        self._source: Any = None
        self._pending_since: float | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._accept: AcceptGate | None = None
        self.pushes = 0  # responses sent in total (also in the metrics; handy for tests and logs)
        self.claims_cut = 0  # subscribes whose claim of gone resources was cut to MAX_GONE (for the log's rate)

    # ----- the desired state -----------------------------------------------------------------

    @property
    def version(self) -> str:
        """The version being served (an update becomes visible here after the debounce)."""
        return self._snapshot.version

    def served_source(self) -> tuple[str, Any]:
        """(the version being served, what it was built from: `update`'s `source`)."""
        with self._lock:
            return self._snapshot.version, self._source

    def same_content(self, source: Any) -> None:
        """`source` builds exactly the latest snapshot's content (its version did not change):
        it becomes that snapshot's source, now if it is served, else when it is."""
        with self._lock:
            self._latest_source = source
            if self._snapshot is self._latest:
                self._source = source

    def update(self, resources_by_type: Mapping[str, Sequence[Resource]], version: str,
               encoded: Mapping[int, Encoded] | None = None, source: Any = None) -> None:
        """Replace the whole desired state. Types absent from `resources_by_type` become empty.
        `encoded`: the resources' encodings by `id`, when the caller made them already.

        Safe to call from any thread; validation errors raise here (ValueError naming the entry).
        """
        with self._lock:
            snap = Snapshot.build(resources_by_type, version, self._generation + 1, encoded)
            self._generation = snap.generation
            self._latest = snap
            self._latest_source = source
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            loop = self._loop
            if loop is None or loop.is_closed():
                # Not serving yet: publish at once, subscribers connecting later start from it.
                self._snapshot = snap
                self._source = source
                self._pending_since = None
                return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._schedule_flush()
        else:
            loop.call_soon_threadsafe(self._schedule_flush)

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            assert self._loop is not None
            self._flush_handle = self._loop.call_later(self.debounce, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        with self._lock:
            since, self._pending_since = self._pending_since, None
            self._snapshot = self._latest
            self._source = self._latest_source
        self._wake_streams(since)

    def _wake_streams(self, since: float | None) -> None:
        for st in list(self._streams.values()):
            if st.dirty_since is None:
                st.dirty_since = since
            st.wake.set()

    # ----- serving ---------------------------------------------------------------------------

    async def start(self, address: str = "127.0.0.1:0",
                    credentials: grpc.ServerCredentials | None = None,
                    max_connections: int = MAX_CONNECTIONS,
                    max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER) -> int:
        """Serve on `address` on a server of our own; return the bound port."""
        if self._server is not None:
            raise RuntimeError("ConfigServer.start: already started")
        gate = CallGate()
        gate.guard(self.guards())
        server, self._accept = make_server(address, max_connections, max_connections_per_peer, server_options, [gate])
        self.add_to_server(server)
        port = await serve(server, self._accept, address, credentials)
        self._server = server
        return port

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register on an existing grpc.aio server (the controller shares one with the CA).

        Must be called from the event loop that will run the server.
        """
        self._loop = asyncio.get_running_loop()
        config_pb2_grpc.add_ConfigServiceServicer_to_server(self, server)

    def guards(self) -> dict[str, Guard]:
        """The stream's credential check, for the server's CallGate: a caller without the node
        credential is refused before its first request is buffered (controller/grpcgate.py)."""
        return {DELTA_STREAM: Guard(self._check_credential, drain=True)}

    async def _check_credential(self, metadata: Mapping[str, str]) -> str | None:
        """The authenticated node (None: no credential to check, --insecure-config-stream)."""
        if self.authenticator is not None:
            return await self.authenticator.authenticate(metadata)
        return None

    async def stop(self, grace: float | None = None) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._accept is not None:
            await self._accept.stop()
            self._accept = None

    # ----- the stream ------------------------------------------------------------------------

    async def DeltaStream(self, request_iterator, context):  # noqa: N802 - gRPC method name
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        # The client writes its first request, then waits for our headers (sent once the node is
        # admitted) or our refusal before it writes the rest. A client write that races the
        # server's close is failed by grpc as INTERNAL, which would hide why the stream was
        # refused; so every refusal comes after the first request is read, and the headers go
        # before the stream is served.
        authenticated: str | None = None
        if self.authenticator is not None:
            try:
                authenticated = await self.authenticator.authenticate(metadata_of(context))
            except StreamRefused as e:
                log.warning("config stream refused from %s: %s: %s", peer_of(context), e.code.name, e)
                with contextlib.suppress(Exception):      # bounded: an unauthenticated peer gets 1 s
                    await asyncio.wait_for(context.read(), REFUSAL_DRAIN)
                await context.abort(e.code, str(e))
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        try:
            node = self._node_of(first)
        except BadRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if self.authenticator is not None and authenticated is not None:
            try:
                node = self.authenticator.authorize(authenticated, node)
            except StreamRefused as e:
                log.warning("config stream refused from %s: %s: %s", peer_of(context), e.code.name, e)
                await context.abort(e.code, str(e))
        if self._authorize is not None:
            try:
                self._authorize(node, context)
            except PermissionError as e:
                log.warning("config stream refused for %s from %s: %s", node.key, peer_of(context), e)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{node.key}: {e}")
        if self.memory_guard is not None and (used := self.memory_guard.over()) is not None:
            await self._refuse_for_memory(context, node, used)
        client = (str(authenticated), scope_of(authenticated)) if authenticated is not None else (node.name, "")
        if not self.streams_per_client.acquire(client):
            fairness.REFUSED["config_streams_per_client"] += 1
            who = f"node {client[0]!r}" + (f" (service account {client[1]})" if client[1] else "")
            bound = self.streams_per_client.limit
            if fairness.REFUSED["config_streams_per_client"] % 1000 == 1:   # a loop of retries is no loop of logs
                log.warning("config stream refused for %s from %s: %s holds %d streams, the per-client bound "
                            "(%d refused so far)", node.key, peer_of(context), who, bound,
                            fairness.REFUSED["config_streams_per_client"])
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{node.key}: the credential of {who} holds {bound} config streams, the "
                                "controller's per-client bound (config_streams_per_client, "
                                "--max-config-streams-per-client); retry once one of them has ended")
        try:
            box = [first]
            del first               # _read_loop takes it from the box: no frame keeps it after
            await self._serve(context, node, box)
        finally:
            self.streams_per_client.release(client)

    async def _refuse_for_memory(self, context, node: NodeInfo, used: int) -> None:
        """Refuse a new stream: the controller holds `used` bytes, past its guard. The client backs
        off and keeps its last good config; the streams already served go on."""
        guard = self.memory_guard
        assert guard is not None and guard.limit is not None
        fairness.REFUSED["memory"] += 1
        said = (f"the controller holds {used >> 20} MiB, over {guard.fraction:.0%} of its memory limit "
                f"({guard.limit >> 20} MiB, {guard.source or 'cgroup'}; --memory-guard-fraction)")
        if fairness.REFUSED["memory"] % 1000 == 1:
            log.warning("config stream refused for %s from %s: %s (%d refused so far)", node.key, peer_of(context),
                        said, fairness.REFUSED["memory"])
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"{node.key}: {said}; new config streams are refused until it has room "
                            "(docs/operations.md, \"Sizing the controller\"); retry later")

    async def _serve(self, context, node: NodeInfo, first: list[config_pb2.DeltaRequest]) -> None:
        """Serve an admitted stream until it ends (the client's, the server's, or an error)."""
        await context.send_initial_metadata(())
        st = _Stream(Subscription(node, peer_of(context), time.time()))
        self._register(st)
        reader = asyncio.create_task(self._read_loop(context, st, first))
        try:
            while True:
                await st.wake.wait()
                st.wake.clear()
                if st.error:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, st.error)
                if st.ended:
                    return
                await self._push(context, st)
        finally:
            reader.cancel()
            self._unregister(st)

    async def _read_loop(self, context, st: _Stream, first: list[config_pb2.DeltaRequest]) -> None:
        req = first.pop()       # held by no one else: a request is freed once handled, not kept
        try:                    # for the stream's life (a subscribe's parsed message is megabytes)
            while True:
                self._handle_request(st, req)
                st.wake.set()
                req = None
                req = await context.read()
                if req is grpc.aio.EOF:
                    break
        except BadRequest as e:
            st.error = str(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - transport error: the stream is over
            log.debug("config stream from %s: read failed: %s", st.sub.node.key, e)
        st.ended = True
        st.wake.set()

    def _node_of(self, req: config_pb2.DeltaRequest) -> NodeInfo:
        if not req.HasField("node"):
            raise BadRequest("DeltaRequest.node: required on the first message of a stream")
        try:
            return NodeInfo.from_proto(req.node).validate()
        except ValueError as e:
            raise BadRequest(f"DeltaRequest.{e}") from None

    def _handle_request(self, st: _Stream, req: config_pb2.DeltaRequest) -> None:
        sub = st.sub
        if req.response_nonce:
            if req.HasField("error_detail"):
                nack = sub.on_nack(req.response_nonce, req.error_detail.message, time.time())
                if nack is not None:
                    # the type of the response the nonce names: the request's own type_url is the
                    # client's word (any string: it went into the log line and the metric's labels)
                    self._record_nack(sub, nack.type_url, nack)
            else:
                sub.on_ack(req.response_nonce)
            return
        if not req.subscribe:
            raise BadRequest("DeltaRequest: neither subscribe nor response_nonce is set")
        known = set(RESOURCE_TYPES) | set(self._snapshot.resources) | set(self._latest.resources)
        if req.type_url not in known:
            self._unknown_type(st, req.type_url, known)
            return
        # kept compact (Claim), not as the dict the client could make as large as its message
        claim = Claim(req.initial_resource_versions, self._snapshot.view(sub.node, req.type_url))
        if claim.dropped:
            self.claims_cut += 1
        if claim.dropped and self.claims_cut % 1000 == 1:       # a loop of subscribes is no loop of logs
            log.warning("%s subscribed to %s claiming %d more resources outside its view than the %d it is "
                        "told to remove now; the rest are removed when a later stream claims them",
                        sub.node.key, req.type_url, claim.dropped, MAX_GONE)
        sub.subscribe(req.type_url, claim)

    def _unknown_type(self, st: _Stream, type_url: str, known: set[str]) -> None:
        """A subscription to a type this controller does not serve: a client newer than the
        controller (a controller rolled back before its data plane). Its other types are served and
        this one is never answered, as istiod ignores a type it has no generator for; ending the
        stream, as before, cut the client off every type, and it retried every 5 s forever."""
        if type_url in st.unknown_types:
            return
        if not type_url or len(type_url) > 253 or len(st.unknown_types) >= MAX_UNKNOWN_TYPES:
            raise BadRequest(f"DeltaRequest.type_url: unknown type {printable(type_url, 253)!r} (known: "
                             f"{', '.join(sorted(known))}), and {len(st.unknown_types)} unknown types already")
        st.unknown_types.add(type_url)
        self.metrics.unknown_types.labels(st.sub.node.kind).inc()
        log.warning("%s subscribed to %s, a type this controller does not serve (a client newer than the "
                    "controller?); serving it the types it knows", st.sub.node.key, printable(type_url, 253))

    def _record_nack(self, sub: Subscription, type_url: str, nack: Nack) -> None:
        self.metrics.nacks.labels(type_url, sub.node.kind).inc()
        log.warning("%s rejected %s version %s: %s", sub.node.key, type_url, nack.version, nack.message)

    async def _push(self, context, st: _Stream) -> None:
        snap = self._snapshot
        if snap.generation == 0:
            # Nothing published yet (the controller registers on its grpc server before its first
            # translation, and that goes through the debounce): the placeholder "empty" would tell
            # a reconnecting client to remove everything it holds (the agent uncaptures its pods,
            # ztunnel drops its STRICT and DENY policies). The stream waits for the first snapshot,
            # whose flush wakes it.
            return
        planned = st.sub.next_response(lambda t: snap.view(st.sub.node, t), snap.version, snap.generation)
        if planned is None:
            if not st.sub.waiting_for_answer:
                st.dirty_since = None  # everything up to this snapshot is delivered
            return
        self.pushes += 1        # before the write: a client may apply the response before write() returns
        await context.write(_response(planned))
        self.metrics.pushes.labels(planned.type_url, st.sub.node.kind).inc()
        if st.dirty_since is not None:
            self.metrics.push_latency.observe(time.monotonic() - st.dirty_since)

    # ----- registry of subscribers -----------------------------------------------------------

    def end_streams(self) -> None:
        """The server is stopping: end every config stream now (each client reconnects, to
        another replica in a cluster), so that each RPC returns before the server's grace runs
        out; a handler grpc has to cancel is logged as an unhandled exception."""
        for st in list(self._streams.values()):
            st.ended = True
            st.wake.set()

    def _register(self, st: _Stream) -> None:
        key = st.sub.node.key
        # A subscriber that came back is no longer "recently disconnected".
        kept = [s for s in self._gone if s.node.key != key]
        self._gone.clear()
        self._gone.extend(kept)
        self._streams[id(st)] = st
        self.metrics.subscribers.labels(st.sub.node.kind).inc()
        log.info("config subscriber connected: %s from %s", key, st.sub.peer)

    def _unregister(self, st: _Stream) -> None:
        if self._streams.pop(id(st), None) is None:
            return
        st.sub.disconnected_at = time.time()
        self._gone.append(st.sub)
        self.metrics.subscribers.labels(st.sub.node.kind).dec()
        log.info("config subscriber disconnected: %s", st.sub.node.key)

    # ----- status ----------------------------------------------------------------------------

    def status(self) -> list[SubscriberStatus]:
        """Connected subscribers, then those that disconnected within `keep_disconnected`."""
        snap = self._snapshot
        cutoff = time.time() - self._keep_disconnected
        subs = [st.sub for st in self._streams.values()]
        subs += [s for s in self._gone if s.disconnected_at is not None and s.disconnected_at >= cutoff]
        return [s.status(lambda t, s=s: snap.view(s.node, t)) for s in subs]

    async def Status(self, request, context):  # noqa: N802 - gRPC method name
        # It lists every subscriber and (in the controller) every rejected object: the debug API
        # guards it with its reader credential (controller/debug/service.py sets `status_guard`).
        if self.status_guard is not None:
            await self.status_guard(context)
        resp = self.status_answer()
        return resp if self.status_fanout is None else await self.status_fanout(request, context, resp)

    def status_answer(self) -> Any:
        """This server's own Status answer (the controller's adds the configuration it rejected)."""
        return status_response(self.version, self.status())

    def subscriber_config(self, key: str) -> dict[str, Any] | None:
        """What the connected subscriber `key` (NodeInfo.key) holds per the server: each type's ACKed
        version and resources, with their bodies from the current view (the debug API's config dump,
        controller/debug). None if no such subscriber is connected."""
        snap = self._snapshot
        for st in list(self._streams.values()):
            sub = st.sub
            if sub.node.key != key:
                continue
            out: dict[str, Any] = {}
            for t, ts in sub.types.items():
                view = snap.view(sub.node, t)
                held = {}
                for name, version in sorted(ts.known.items()):
                    e = view.get(name)
                    held[name] = {"version": version, "current": e is not None and e.version == version,
                                  "body": redact_keys(json.loads(e.body)) if e is not None and e.version == version
                                  else None}
                out[t] = {"acked_version": ts.acked_version, "sent_version": ts.sent_version,
                          "current_resources": len(view), "resources": held}
            return out
        return None


SECRET_FIELDS = frozenset(("key_pem",))     # private keys: IngressGateway certificates, ClientCredentials
REDACTED = "<redacted>"


def redact_keys(body: Any) -> Any:
    """`body` with every private key replaced: the debug API's config dump is for readers of the
    mesh's state (`ambit proxy-config`, bug reports), who must not get the keys the gateways
    and waypoints were sent."""
    if isinstance(body, dict):
        return {k: (REDACTED if k in SECRET_FIELDS and v else redact_keys(v)) for k, v in body.items()}
    if isinstance(body, list):
        return [redact_keys(v) for v in body]
    return body


def _response(p: Planned) -> config_pb2.DeltaResponse:
    return config_pb2.DeltaResponse(
        type_url=p.type_url,
        system_version_info=p.system_version,
        nonce=p.nonce,
        resources=[config_pb2.Resource(name=e.name, version=e.version, body=e.body) for e in p.resources],
        removed_resources=list(p.removed),
    )


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def status_response(version: str, subscribers: list[SubscriberStatus]) -> config_pb2.StatusResponse:
    out = config_pb2.StatusResponse(version=version)
    for s in subscribers:
        msg = out.subscribers.add(node=s.node.to_proto(), connected=s.connected, peer=s.peer)
        msg.connected_since.CopyFrom(_ts(s.connected_since))
        if s.disconnected_at is not None:
            msg.disconnected_at.CopyFrom(_ts(s.disconnected_at))
        for t in s.types:
            tm = msg.types.add(type_url=t.type_url, acked_version=t.acked_version, sent_version=t.sent_version,
                               in_sync=t.in_sync, resources=t.resources)
            if t.last_nack is not None:
                tm.last_nack.version = t.last_nack.version
                tm.last_nack.nonce = t.last_nack.nonce
                tm.last_nack.message = t.last_nack.message
                tm.last_nack.time.CopyFrom(_ts(t.last_nack.time))
    return out
