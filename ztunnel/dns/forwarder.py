"""Forwarding a query upstream, from inside the client pod's netns (the asyncio edge).

Why from the pod's netns: the query leaves with the pod's IP, as Istio's in-pod forwarder sends it,
so the upstream (and any NetworkPolicy in front of it) sees the real client. The sockets are
ztunnel's, and ztunnel's cgroup is not captured, so they go straight out instead of back to us.

Each attempt uses a fresh socket (a random source port, connected to one upstream so the kernel
drops datagrams from anyone else) and an id of ours; a reply is taken only if it answers the
question sent under that id. The upstreams are tried in order, each once, each within `timeout`:
a refused port (ICMP unreachable) moves to the next at once, and when none answers the caller
replies SERVFAIL (`UpstreamError`), bounded by `len(upstreams) * timeout`, never a hang.
UDP queries go over UDP, and a truncated reply (TC) goes back to the client as it is, which then
asks again over TCP; TCP queries go over TCP.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ztunnel.dns.upstream import TCP_MAX, Upstream

if TYPE_CHECKING:
    import dns.message

    from ztunnel.dns.wire import Query

__all__ = ["TCP_MAX", "Forwarder", "SocketFactory", "Upstream", "UpstreamError"]

# (family, type) -> a non-blocking socket in the client pod's netns
SocketFactory = Callable[[int, int], socket.socket]


class UpstreamError(Exception):
    """No upstream answered the query (the client gets SERVFAIL)."""


async def exchange_udp(make: SocketFactory, upstream: Upstream, wire: bytes, accept: Callable[[bytes], bytes | None],
                       timeout: float) -> bytes:
    """Send `wire` to `upstream` over UDP; what `accept` makes of the first datagram it takes (not
    None), within `timeout`."""
    loop = asyncio.get_running_loop()
    s = make(upstream.family, socket.SOCK_DGRAM)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(s, (upstream.ip, upstream.port))
            await loop.sock_sendall(s, wire)
            while True:
                taken = accept(await loop.sock_recv(s, TCP_MAX))
                if taken is not None:
                    return taken
    finally:
        s.close()


async def _read_exactly(loop: asyncio.AbstractEventLoop, s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(s, n - len(buf))
        if not chunk:
            raise ConnectionError("upstream closed the connection")
        buf += chunk
    return bytes(buf)


async def exchange_tcp(make: SocketFactory, upstream: Upstream, wire: bytes, timeout: float) -> bytes:
    """One length-prefixed query and its reply over a TCP connection of its own, within `timeout`."""
    loop = asyncio.get_running_loop()
    s = make(upstream.family, socket.SOCK_STREAM)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(s, (upstream.ip, upstream.port))
            await loop.sock_sendall(s, len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(await _read_exactly(loop, s, 2), "big")
            return await _read_exactly(loop, s, size)
    finally:
        s.close()


def _reply_or_none(sent: dns.message.Message, query: Query, max_size: int, data: bytes) -> bytes | None:
    """The client's reply from `data`; None for a stray or forged datagram (keep waiting)."""
    from ztunnel.dns.wire import relay_reply
    try:
        return relay_reply(sent, data, query, max_size)
    except ValueError:
        return None


class Forwarder:
    """The upstream resolvers and how long each gets (`timeout`, per attempt)."""

    def __init__(self, upstreams: Sequence[Upstream], timeout: float, rng: random.Random | None = None) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self._rng = rng or random.SystemRandom()

    async def forward(self, query: Query, tcp: bool, make: SocketFactory, max_size: int) -> bytes:
        """The client's reply (its id, within `max_size`) from the first upstream that answers."""
        from ztunnel.dns.wire import relay_reply, upstream_query
        problems = []
        for upstream in self.upstreams:
            sent = upstream_query(query, self._rng.getrandbits(16))
            wire = sent.to_wire()
            try:
                if tcp:
                    reply = await exchange_tcp(make, upstream, wire, self.timeout)
                    return relay_reply(sent, reply, query, max_size)
                return await exchange_udp(make, upstream, wire, functools.partial(_reply_or_none, sent, query, max_size),
                                          self.timeout)
            except TimeoutError:
                problems.append(f"{upstream}: no reply within {self.timeout:g}s")
            except (OSError, ValueError) as e:
                problems.append(f"{upstream}: {e}")
        raise UpstreamError("; ".join(problems) or "no upstream resolver configured")
