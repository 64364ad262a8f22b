"""Asking the other controller replicas (the gRPC edge of controller/debug/replicas.py).

`Replicas.observe` is a post-snapshot hook (the source's thread): it keeps the peers the snapshot
names (`replicas.peers_of`). `Replicas.ask` calls one debug method (or the config service's Status) on every peer at once, on the
server's event loop, with `local_only` set by the caller (so a peer never asks further), the
reader's own `authorization` header (each peer authorizes the reader exactly as it would the CLI:
nothing is trusted because it comes from a replica), over the TLS the CLI uses (the peer must
present the controller's DNS name, `<sa>.<ns>.svc`, chained to the mesh root; plaintext only for
a controller run with --insecure-config-stream), within `timeout` seconds and `MAX_PEER_ANSWER`
bytes per answer. A peer that fails or is late is returned as such, never waited for longer.
`Replicas.tap` reads one peer's Tap stream into a reader's merged tap (controller/debug/tapmerge.py).

The channels are grpcio's (the controller already runs grpcio, and its client bounds the size of
what it receives, which grpclib's does not), one per peer, kept while the peer is and rebuilt when
the root bundle changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ambit.api import config_pb2_grpc, debug_pb2_grpc
from ambit.configclient.tls import server_name
from controller.debug.replicas import MAX_PEERS, Peer, PeerAnswer, peers_of
from controller.debug.tapmerge import TapMerge

log = logging.getLogger("ambit.controller.debug")
PEER_TIMEOUT = 2.0                  # seconds a peer has to answer
MAX_PEER_ANSWER = 32 * 1024 * 1024  # bytes of one peer's answer
RECONNECT_MAX_MS = 2000             # the longest a channel to a peer that went away waits to redial
# The services a peer is asked on (the same gRPC server serves both): the debug API, and the config
# service's older Status RPC (`ambit status`).
STUBS = {"debug": debug_pb2_grpc.DebugServiceStub, "config": config_pb2_grpc.ConfigServiceStub}


class Replicas:
    """The other replicas of this controller, and how to ask them.

    `trust()` returns (root bundle PEM, controller identity), or None for plaintext."""

    def __init__(self, me: str, namespace: str, service: str, default_port: int | None,
                 trust: Callable[[], tuple[bytes, str] | None], timeout: float = PEER_TIMEOUT,
                 max_peers: int = MAX_PEERS) -> None:
        self.me, self.namespace, self.service = me, namespace, service
        self.default_port = default_port
        self.trust = trust
        self.timeout = timeout
        self.max_peers = max_peers
        self._lock = threading.Lock()
        self._peers: tuple[list[Peer], list[str]] = ([], [])
        self._channels: dict[str, tuple[Any, Any]] = {}       # address -> (trust it was made for, channel)

    def observe(self, objects: Sequence[dict[str, Any]], _tr: Any = None) -> None:
        """The post-snapshot hook: the peers as this snapshot has them."""
        found = peers_of(objects, self.namespace, self.service, self.me, self.default_port, self.max_peers)
        with self._lock:
            if found != self._peers:
                log.info("controller replicas besides %s: %s%s", self.me or "this one",
                         ", ".join(f"{p.name} ({p.address})" for p in found[0]) or "none",
                         f" (and {len(found[1])} not asked, over {self.max_peers})" if found[1] else "")
            self._peers = found

    def peers(self) -> tuple[list[Peer], list[str]]:
        """(the peers to ask, the names of those over the bound)."""
        with self._lock:
            return list(self._peers[0]), list(self._peers[1])

    def _channel(self, peer: Peer) -> Any:
        trust = self.trust()
        have = self._channels.get(peer.address)
        if have is not None and have[0] == trust:
            return have[1]
        if have is not None:
            asyncio.ensure_future(have[1].close())
        # A peer that restarts in place (same pod IP) answers again within RECONNECT_MAX, not after
        # grpc's default reconnect backoff of up to 120 s.
        options = [("grpc.max_receive_message_length", MAX_PEER_ANSWER), ("grpc.enable_retries", 0),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS)]
        if trust is None:
            ch = grpc.aio.insecure_channel(peer.address, options=options)
        else:
            roots, identity = trust
            options.append(("grpc.ssl_target_name_override", server_name(identity)))
            ch = grpc.aio.secure_channel(peer.address, grpc.ssl_channel_credentials(root_certificates=roots),
                                         options=options)
        self._channels[peer.address] = (trust, ch)
        return ch

    async def _prune(self, keep: set[str]) -> None:
        for address in [a for a in self._channels if a not in keep]:
            _, ch = self._channels.pop(address)
            await ch.close()

    async def ask(self, method: str, request: Any, authorization: str, timeout: float,
                  service: str = "debug", slower: float = 0.0) -> list[PeerAnswer]:
        """`method` of every peer with `request`, at once; each peer's answer or failure. `slower`:
        seconds the method itself may take on the peer (a scrape waits for its proxies), on top of
        the usual bound."""
        peers, _ = self.peers()
        await self._prune({p.address for p in peers})
        wait = max(0.05, min(self.timeout + slower, timeout))
        metadata = (("authorization", authorization),) if authorization else ()

        async def one(peer: Peer) -> PeerAnswer:
            try:
                stub = STUBS[service](self._channel(peer))
                resp = await getattr(stub, method)(request, metadata=metadata, timeout=wait)
                return PeerAnswer(peer, resp)
            except grpc.aio.AioRpcError as e:
                return PeerAnswer(peer, None, e.code().name, e.details() or "")
            except Exception as e:  # noqa: BLE001 - a bad root, an unparsable address: this peer's failure
                return PeerAnswer(peer, None, "UNAVAILABLE", f"{type(e).__name__}: {e}")
        return list(await asyncio.gather(*(one(p) for p in peers)))

    async def tap(self, peer: Peer, request: Any, authorization: str, merge: TapMerge) -> None:
        """Read `peer`'s Tap stream (`request` with local_only) into `merge` until it ends, fails,
        or this task is cancelled (the reader went away: the peer's stream is cancelled with it).
        No deadline: it lasts as long as the reader's. Never raises but on cancellation."""
        call = None
        metadata = (("authorization", authorization),) if authorization else ()
        try:
            call = debug_pb2_grpc.DebugServiceStub(self._channel(peer)).Tap(request, metadata=metadata)
            async for m in call:
                try:
                    ev = json.loads(m.json)
                except ValueError:
                    continue
                if isinstance(ev, dict):
                    merge.event(peer.name, ev)
            merge.ended(peer.name, "it closed the tap (stopping?)", time.monotonic())
        except grpc.aio.AioRpcError as e:
            merge.ended(peer.name, f"{e.code().name}: {e.details() or ''}", time.monotonic())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bad root, an unparsable address: this peer's end
            merge.ended(peer.name, f"{type(e).__name__}: {e}", time.monotonic())
        finally:
            if call is not None:
                call.cancel()

    async def close(self) -> None:
        await self._prune(set())
