"""ConfigClient: the data plane's end of the config stream (agent, ztunnel, waypoint).

It keeps the last good state per type, applies the server's deltas through the component's
callback, ACKs what the component accepted and NACKs (with the exception text) what it rejected.
When the controller is unreachable it keeps serving what it has and reconnects with jittered
exponential backoff, telling the server which versions it holds so that only differences flow.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ambit.aiotask import cancel
from ambit.api import config_grpc, config_pb2
from ambit.backoff import Backoff
from ambit.configclient import cache, rpc, tls
from ambit.configclient.codec import DecodeError, Encoded, resource_class
from ambit.configclient.node import NodeInfo
from ambit.configclient.state import ConfigUpdate, TypeState
from ambit.model import Resource

# How long to wait for the controller's headers before writing anyway (an older controller sends
# none until its first response).
ADMISSION_WAIT = 2.0

# stop(): how long the stream task gets to end after a cancellation before it is cancelled again
# (ambit/aiotask.py `cancel`: grpclib may swallow one; the session's own unwinding is immediate)
RECANCEL = 1.0

log = logging.getLogger("ambit.configclient")

ApplyCallback = Callable[[ConfigUpdate], "None | Awaitable[None]"]

if TYPE_CHECKING:
    from grpclib.client import Channel, Stream


class StreamClosed(ConnectionError):
    """The server ended the stream cleanly (e.g. it is shutting down)."""


class ConfigClient:
    """Subscribe to `types` as `node` at `target` ("host:port") and feed `on_change`.

    `on_change(update)` may be a plain function or a coroutine function. Raising rejects the
    update: the client NACKs with the exception text and keeps (and keeps reporting) its previous
    state for that type. With `cache_path`, the last good state survives restarts and is applied
    (update.from_cache = True) in `start()` before the controller answers. With `trust`, the
    stream runs over TLS and the controller must prove its identity (ambit.configclient.tls).
    """

    def __init__(
        self,
        target: str,
        node: NodeInfo,
        types: Sequence[str],
        on_change: ApplyCallback,
        *,
        cache_path: str | Path | None = None,
        trust: tls.ControllerTrust | None = None,
        metadata: Callable[[], Sequence[tuple[str, str]]] | None = None,
        backoff: Backoff | None = None,
    ):
        self.target = target
        self.node = node.validate()
        if not types:
            raise ValueError("ConfigClient.types: empty; subscribe to at least one type URL")
        for t in types:
            resource_class(t)  # raises naming the unknown type URL
        self.types = list(dict.fromkeys(types))
        self._on_change = on_change
        self._cache_path = Path(cache_path) if cache_path else None
        self._cache = cache.CacheWriter(self._cache_path, self.node.key) if self._cache_path else None
        self._trust = trust             # pinned root + the controller's identity; None: plaintext
        self._metadata = metadata       # e.g. credential.node_metadata(token_file, node); called per attempt
        self._backoff = (backoff or Backoff(initial=0.1, maximum=5.0)).attempts()
        self._states = {t: TypeState(t) for t in self.types}
        self._synced: set[str] = set()
        self._accepted: set[str] = set()   # types holding a state the component accepted (controller or cache)
        self._synced_event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._connected = False
        self.connected_since: float | None = None
        self.last_error = ""
        self.connects = 0
        self.updates = 0                # responses applied (ACKed), for metrics
        self.last_update = 0.0          # unix time of the last applied response (0: none yet)

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Apply the file cache (if any), then connect in the background."""
        if self._task is not None:
            raise RuntimeError("ConfigClient.start: already started")
        self._synced_event = asyncio.Event()
        if self._cache_path and self._cache_path.exists():
            await self._apply_cache()
        self._task = asyncio.create_task(self._run(), name=f"configclient:{self.node.key}")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stopping = True       # (read by `_run`: see there)
        try:
            await cancel(self._task, again_after=RECANCEL)
        finally:
            self._stopping = False
        self._task = None
        self._connected = False
        if self._cache is not None:
            await self._cache.close()

    async def __aenter__(self) -> ConfigClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Return once every subscribed type has accepted a response from the server.

        Components use this for readiness: until then they serve only cached config (if any).
        """
        if self._synced_event is None:
            raise RuntimeError("ConfigClient.wait_synced: call start() first")
        await asyncio.wait_for(self._synced_event.wait(), timeout)

    # ----- accessors for admin dumps --------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a stream is up and the server has answered on it."""
        return self._connected

    def state(self, type_url: str) -> dict[str, Resource]:
        """The last good state of one type (a copy: name -> resource)."""
        return dict(self._type(type_url).resources)

    def versions(self) -> dict[str, str]:
        """type URL -> the controller's system version the current state of that type came from."""
        return {t: s.system_version for t, s in self._states.items()}

    def dump(self) -> dict[str, Any]:
        """Everything an admin endpoint shows: connection, versions and bodies, JSON-ready."""
        return {
            "target": self.target,
            "node": self.node.key,
            "connected": self._connected,
            "connected_since": self.connected_since,
            "last_error": self.last_error,
            "types": {
                t: {
                    "system_version": s.system_version,
                    "synced": t in self._synced,
                    "resources": {n: {"version": s.encoded[n].version, "body": r.to_dict()}
                                  for n, r in sorted(s.resources.items())},
                }
                for t, s in self._states.items()
            },
        }

    def _type(self, type_url: str) -> TypeState:
        try:
            return self._states[type_url]
        except KeyError:
            raise KeyError(f"type_url {type_url!r}: not subscribed (subscribed: {', '.join(self.types)})") from None

    # ----- the stream ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._stopping:
                    # `stop()` cancelled us, but the stream's teardown turned the cancellation into
                    # an error of its own (grpclib does). Retrying here made `stop()` wait forever
                    # while the loop kept dialling (seen once in `make test`, 158 attempts). A flag,
                    # not `Task.cancelling()`: grpclib cancels the task itself to wake a reader on
                    # a lost connection and never takes it back, so that count is not ours.
                    raise asyncio.CancelledError() from e
                self._failed(e)
            if self._stopping:
                # `stop()` cancelled us and the stream's teardown swallowed it (the session
                # returned as if the controller had ended the stream): reconnecting here kept the
                # loop dialling while `stop()` waited for it (seen in `make test`: the test's 60 s ran out)
                raise asyncio.CancelledError()
            delay = self._backoff.next_delay()
            log.info("config stream to %s: reconnecting in %.2fs", self.target, delay)
            await asyncio.sleep(delay)

    def _failed(self, e: Exception) -> None:
        """One attempt failed: keep the old config, say why; the loop reconnects."""
        if isinstance(e, (StreamClosed, OSError)):   # OSError: no credential file, no socket yet, refused
            self._note_failure(str(e) if not isinstance(e, ssl.SSLError) else rpc.describe(e))
            return
        if rpc.failure(e) is None:      # not the call's failure (a status, a lost stream): ours
            log.error("config stream to %s failed", self.target, exc_info=e)
        self._note_failure(rpc.describe(e))

    def _note_failure(self, why: str) -> None:
        if self._connected:
            log.warning("config stream to %s lost (%s); serving last good config", self.target, why)
        elif why != self.last_error:         # say it once, not on every retry (e.g. a refused credential)
            log.warning("config stream to %s: %s", self.target, why)
        self._connected = False
        self.connected_since = None
        self.last_error = why

    def _channel(self) -> Channel:
        # A fresh channel (one connection) per attempt keeps our backoff the only one in play.
        return tls.channel(self.target, self._trust)

    async def _session(self) -> None:
        md = tuple(self._metadata()) if self._metadata is not None else None
        if self._trust is not None:     # prove it is the controller before the credential goes out
            await tls.check_identity(self.target, self._trust)
        async with self._channel() as channel, \
                config_grpc.ConfigServiceStub(channel).DeltaStream.open(metadata=md) as call:
            await call.send_request()
            headers: asyncio.Future[None] | None = None
            try:
                for i, t in enumerate(self.types):
                    await call.send_message(config_pb2.DeltaRequest(
                        node=self.node.to_proto(),
                        type_url=t,
                        subscribe=True,
                        initial_resource_versions=self._states[t].versions(),
                    ))
                    if i == 0:
                        headers = await self._admitted(call)
                assert headers is not None
                await headers                # the controller's headers (or its refusal) first
                while True:
                    resp = await call.recv_message()
                    if resp is None:
                        await rpc.end_status(call)   # raises the controller's status, if not OK
                        raise StreamClosed("the controller closed the config stream")
                    if not self._connected:
                        self._connected = True
                        self.connected_since = time.time()
                        self.connects += 1
                        self.last_error = ""
                        self._backoff.reset()
                        log.info("config stream to %s up", self.target)
                    await call.send_message(await self._handle(resp))
            finally:
                if headers is not None and not headers.done():
                    await cancel(headers)

    async def _admitted(self, call: Stream[config_pb2.DeltaRequest, config_pb2.DeltaResponse]) -> asyncio.Future[None]:
        """After the first request, wait for the controller's headers: it sends them once it has
        authenticated the node and authorized what the request subscribes as. Returns the wait,
        for the caller to finish before it reads.

        A refusal arrives here with its own status (UNAUTHENTICATED or PERMISSION_DENIED, and why,
        raised as GRPCError); a write sent into a stream the controller is closing would fail
        instead and lose the reason. A controller that predates early headers sends none until its
        first response, so after ADMISSION_WAIT the client writes anyway.
        """
        headers = asyncio.ensure_future(call.recv_initial_metadata())
        try:
            await asyncio.wait_for(asyncio.shield(headers), ADMISSION_WAIT)
        except TimeoutError:
            pass
        return headers

    async def _handle(self, resp: config_pb2.DeltaResponse) -> config_pb2.DeltaRequest:
        """Apply one response; return the ACK or NACK to send."""
        reply = config_pb2.DeltaRequest(type_url=resp.type_url, response_nonce=resp.nonce)
        state = self._states.get(resp.type_url)
        if state is None:
            reply.error_detail.message = f"type_url {resp.type_url!r}: not subscribed"
            return reply
        try:
            changed = [Encoded(r.name, r.version, r.body) for r in resp.resources]
            staged = state.stage(resp.system_version_info, changed, resp.removed_resources)
            await self._call(staged.update)
        except Exception as e:  # noqa: BLE001 - the component's rejection becomes the NACK message
            msg = str(e) if isinstance(e, DecodeError) else f"{type(e).__name__}: {e}"
            log.warning("rejected %s version %s: %s", resp.type_url, resp.system_version_info, msg)
            reply.error_detail.message = msg
            return reply
        state.commit(staged)
        # the type's first accepted state (since the start, or since its cached state was refused)
        # replaces what the cache may hold of it; later ones are deltas over it
        first = resp.type_url not in self._accepted
        self._accepted.add(resp.type_url)
        self.updates += 1
        self.last_update = time.time()
        # recorded before it counts as synced: a component stopped once synced has it cached
        await self._save_cache(cache.Delta(resp.type_url, state.system_version,
                                           state.encoded.values() if first else changed,
                                           sorted(staged.update.removed), replace=first))
        self._mark_synced(resp.type_url)
        return reply

    async def _call(self, update: ConfigUpdate) -> None:
        result = self._on_change(update)
        if inspect.isawaitable(result):
            await result

    def _mark_synced(self, type_url: str) -> None:
        self._synced.add(type_url)
        if self._synced_event is not None and self._synced.issuperset(self.types):
            self._synced_event.set()

    # ----- file cache ------------------------------------------------------------------------

    async def _save_cache(self, delta: cache.Delta) -> None:
        """Record an accepted response in the cache, which then holds the accepted state of each
        type. A type never accepted (not answered yet, or rejected since the start) is left out,
        not written empty: replayed, an empty policy type would read "no policy" after a restart,
        where the running component had refused to serve without one. Awaited before the ACK;
        the event loop serves meanwhile (cache.CacheWriter). The committed maps are handed over as
        they are, not copied (a commit replaces a type's map, never edits it): the loop's part
        then does not grow with the state."""
        if self._cache is None:
            return
        await self._cache.save(
            lambda: {t: (s.system_version, s.encoded.values()) for t, s in self._states.items()
                     if t in self._accepted},
            delta)

    async def _apply_cache(self) -> None:
        """Replay the cache, all of it or nothing: every subscribed type must be in it and decode.

        A partial replay would serve some types without the others (workloads and routes without
        their authorization policies) until the controller answers, indefinitely while it is away.
        A cache from another version (a type it did not subscribe to, a field it set that this
        version does not know) or one damaged on disk is therefore ignored whole, with a warning:
        the component starts as without a cache. A type its component rejects stays unapplied
        (ztunnel then takes no pod before the controller answers: MeshState.populated)."""
        assert self._cache_path is not None
        try:
            cached = cache.load(self._cache_path, self.node.key)
        except (OSError, ValueError) as e:
            log.warning("ignoring config cache: %s", e)
            return
        staged = {}
        for t in self.types:
            # No system version: a type never accepted, which earlier versions wrote out empty.
            if t not in cached or not cached[t][0]:
                log.warning("ignoring config cache %s: it holds no state of %s (written by another version, or "
                            "before that type was accepted); starting without it", self._cache_path, t)
                return
            system_version, resources = cached[t]
            try:
                staged[t] = self._states[t].stage(system_version, resources, (), from_cache=True)
            except ValueError as e:
                log.warning("ignoring config cache %s: %s; starting without it", self._cache_path, e)
                return
        for t, st in staged.items():
            try:
                await self._call(st.update)
            except Exception as e:  # noqa: BLE001 - a bad cache must not stop the component
                log.warning("ignoring cached %s: %s", t, e)
                continue
            self._states[t].commit(st)
            self._accepted.add(t)
