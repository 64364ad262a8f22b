"""An accept layer in front of the controller's gRPC port: the per-peer connection bound grpc lacks.

grpcio bounds a port's connections only in all (`grpc.max_allowed_incoming_connections`) and tells
Python nothing per connection: an interceptor sees calls, and a connection that makes none (a TLS
handshake, an HTTP/2 preface) is held until grpc's idle timeout. So one address could hold every
slot of the port, reconnecting as they time out, and lock every ztunnel, waypoint and agent out.

The gate listens on the public address itself and admits each connection at accept, by its peer
address (controller.fairness.ConnectionAdmission: at most so many per address, so many in all),
before any TLS work; a refused one is reset at once. An admitted one is spliced byte for byte to
grpc, which listens on a unix socket in a private directory (0700): TLS, the handshake and idle
timeouts, HTTP/2 and its bounds all stay grpc's. Splicing costs a copy per byte in this process
(measured in docs/operations.md); a unix `--listen` (the lab) is served by grpc directly.

grpc sees each spliced connection come from an abstract unix address that names the real peer
(`@ambit-gate-<pid>-<random>/<n>/ipv4:10.0.0.1:4567`) and reports it as `context.peer()`;
`peer_of(context)` turns it back into `ipv4:10.0.0.1:4567` for logs and the subscribers' status,
and `authenticated(context)` tells the gate that connection <n> carried a call whose credential
verified (controller/grpcgate.py calls it): at a bound, a new connection evicts the oldest one that
never did, past a grace, instead of being refused (ConnectionAdmission), so a few addresses holding
idle TLS connections cannot lock the nodes out either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ambit import rlimits
from controller import fairness
from controller.fairness import AUTH_GRACE, ConnectionAdmission

log = logging.getLogger("ambit.controller.acceptgate")

# One address holds at most this many connections to the gRPC port. A node holds a few per
# ztunnel worker (its config stream and its CA channel; one worker per CPU by default, so up to
# about 400 on the largest nodes), one for its agent and one per waypoint on it. One address is
# one node in a cluster (pods and host-network pods alike keep their source address to a
# ClusterIP); nodes behind a NAT (another network's egress) share one, and need this raised to
# their number times their connections (docs/operations.md). A tenth of the port's default bound:
# one address can never take more than that.
MAX_CONNECTIONS_PER_PEER = 1000
BACKLOG = 4096
_GATES: dict[str, AcceptGate] = {}     # this process's gates by their abstract-name prefix


def _spliced(context: Any) -> tuple[AcceptGate, str, str] | None:
    """(gate, connection number, client address) of a call that came through a gate, else None."""
    peer = str(context.peer())
    if not peer.startswith("unix-abstract:"):
        return None
    prefix, _, rest = peer[len("unix-abstract:"):].partition("/")
    gate = _GATES.get(prefix)
    if gate is None:
        return None
    n, _, client = rest.partition("/")
    return gate, n, client


def peer_of(context: Any) -> str:
    """The caller's address as the client sent from (`ipv4:HOST:PORT`), through the gate or not."""
    spliced = _spliced(context)
    return spliced[2] if spliced is not None else str(context.peer())


def authenticated(context: Any) -> None:
    """The call of `context` presented a credential that verified: its connection (through a gate)
    is never evicted for a new one. A connection served directly (a unix `--listen`) has no gate."""
    spliced = _spliced(context)
    if spliced is not None:
        gate, n, _ = spliced
        gate.authenticated(n)


def gated(listen: str, per_peer: int) -> bool:
    """Does `listen` go through a gate? Only a TCP address with a per-peer bound does."""
    return per_peer > 0 and not listen.startswith(("unix:", "unix-abstract:"))


def _grpc_peer(peername: Any) -> str:
    host, port = peername[0], peername[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _host_port(listen: str) -> tuple[str | None, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen: {listen!r} is not HOST:PORT or unix:PATH")
    host = host.strip("[]")
    # "[::]" (as grpc takes it) is every address of both families; asyncio binds an IPv6 socket
    # IPv6-only, so ask it for all interfaces instead.
    return (None if host in ("", "::") else host), int(port)


class _Splice:
    """One admitted connection and its connection to grpc: bytes each way, each side's flow control
    pausing the other's reads, and either side's end closing both (after what is buffered)."""

    def __init__(self, gate: AcceptGate, address: str) -> None:
        self.gate, self.address = gate, address
        self.n = ""                        # its number in grpc's view of its address (AcceptGate.number)
        self.client: asyncio.Transport | None = None
        self.backend: asyncio.Transport | None = None
        self.early: list[bytes] = []       # what the client sent before grpc's side was up
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.gate.admission.release(self)
        self.gate.splices.discard(self)
        self.gate.numbered.pop(self.n, None)
        for t in (self.client, self.backend):
            if t is not None:
                t.close()


class _Side(asyncio.Protocol):
    def __init__(self, splice: _Splice, backend: bool) -> None:
        self.splice, self.is_backend = splice, backend

    def _other(self) -> asyncio.Transport | None:
        return self.splice.client if self.is_backend else self.splice.backend

    def data_received(self, data: bytes) -> None:
        other = self._other()
        if other is not None:
            other.write(data)
        elif not self.is_backend:
            self.splice.early.append(data)

    def pause_writing(self) -> None:
        other = self._other()
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self._other()
        if other is not None and not self.splice.closed:
            other.resume_reading()

    def eof_received(self) -> bool:
        self.splice.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.close()


class _Client(_Side):
    """The public side: admitted or reset at accept; then reads wait until grpc's side is up."""

    def __init__(self, gate: AcceptGate) -> None:
        super().__init__(_Splice(gate, ""), backend=False)
        self.gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        address = peer[0] if peer else ""
        refused = self.gate.admission.admit(self.splice, address)
        if refused is not None:
            self.splice.closed = True           # nothing admitted, nothing to release
            self.gate.refused(refused, address)
            transport.abort()
            return
        self.gate.evict(self.gate.admission.evicted)
        self.splice.address, self.splice.client = address, transport
        self.gate.number(self.splice)
        # No reads until grpc's side is up. Python 3.11 starts reading *after* connection_made (a
        # pause here is undone), so pause on the next turn; what came before is kept in `early`.
        asyncio.get_running_loop().call_soon(self._wait_for_backend, transport)
        task = asyncio.ensure_future(self.gate.connect(self.splice, _grpc_peer(peer)))
        self.gate.tasks.add(task)
        task.add_done_callback(self.gate.tasks.discard)

    def _wait_for_backend(self, transport: asyncio.Transport) -> None:
        if self.splice.backend is None and not self.splice.closed:
            transport.pause_reading()


class AcceptGate:
    """Admit connections to `listen` by peer address and splice them to grpc (see the module doc).

    Create it, add `backend` (a unix address) to the grpc server before it starts, then `start`.
    """

    def __init__(self, max_connections: int, per_peer: int, grace: float = AUTH_GRACE) -> None:
        self.admission = ConnectionAdmission(max_connections, per_peer, time.monotonic, grace)
        self.prefix = f"ambit-gate-{os.getpid()}-{secrets.token_hex(4)}"
        self._dir = tempfile.mkdtemp(prefix="ambit-grpc-")        # 0700: only this user reaches grpc
        self.backend_path = os.path.join(self._dir, "grpc.sock")
        self.splices: set[_Splice] = set()
        self.numbered: dict[str, _Splice] = {}      # the open ones by number (str: as grpc names it)
        self.tasks: set[asyncio.Task[None]] = set()
        self._n = 0
        self._server: asyncio.Server | None = None
        _GATES[self.prefix] = self

    @property
    def backend(self) -> str:
        return f"unix:{self.backend_path}"

    async def start(self, listen: str) -> int:
        """Listen on `listen` (HOST:PORT); returns the bound port."""
        host, port = _host_port(listen)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Client(self), host, port, backlog=BACKLOG)
        return int(self._server.sockets[0].getsockname()[1])

    async def connect(self, splice: _Splice, peer: str) -> None:
        """Open grpc's side of an admitted connection, from an abstract address naming `peer`."""
        loop = asyncio.get_running_loop()
        name = f"\0{self.prefix}/{splice.n}/{peer}"[:107]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind(name)
            await loop.sock_connect(sock, self.backend_path)
            transport, _ = await loop.create_unix_connection(lambda: _Side(splice, backend=True), sock=sock)
        except OSError as e:
            sock.close()
            log.warning("gRPC port: cannot pass a connection from %s to grpc: %s", peer, e)
            splice.close()
            return
        except BaseException:           # cancelled (the gate is stopping)
            sock.close()
            splice.close()
            raise
        if splice.closed:               # the client left meanwhile
            transport.close()
            return
        splice.backend = transport
        for data in splice.early:
            transport.write(data)
        splice.early.clear()
        assert splice.client is not None
        if not splice.client.is_reading():
            splice.client.resume_reading()

    def number(self, splice: _Splice) -> None:
        """Hold an admitted connection and give it the number grpc will name its calls' peer by."""
        self._n += 1
        splice.n = str(self._n)
        self.splices.add(splice)
        self.numbered[splice.n] = splice

    def authenticated(self, n: str) -> None:
        """Connection `n` carried a call whose credential verified (see `authenticated`)."""
        splice = self.numbered.get(n)
        if splice is not None:
            self.admission.authenticated(splice)

    def evict(self, victim: Any) -> None:
        """Close the connection the admission evicted for a new one (None: it evicted none)."""
        if not isinstance(victim, _Splice):
            return
        victim.close()
        n = fairness.REFUSED["unauthenticated_evicted"]
        if n % 1000 == 1:   # a flood says so without flooding the log
            log.warning("gRPC port: closed a connection from %s that made no authenticated call in %.0f s, for a new "
                        "one at the %s bound (%d closed so far)",
                        victim.address, self.admission.evicted_age, self.admission.evicted_at, n)

    def refused(self, limit: str, address: str) -> None:
        n = fairness.REFUSED[limit]
        if n % 1000 == 1:   # a flood says so without flooding the log
            bound = self.admission.per_peer.limit if limit == "connections_per_peer" else self.admission.max_total
            log.warning("gRPC port: a connection from %s refused at accept: %s bound of %d, every connection under it "
                        "authenticated or younger than %.0f s (%d refused so far)",
                        address, limit, bound, self.admission.grace, n)

    async def stop(self) -> None:
        """Stop accepting and end every spliced connection (call after grpc's server stopped)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for s in list(self.splices):
            s.close()
        for t in list(self.tasks):
            t.cancel()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        _GATES.pop(self.prefix, None)
        shutil.rmtree(self._dir, ignore_errors=True)


def descriptors_needed(max_connections: int, per_peer: int, listen: str) -> int:
    """File descriptors the gRPC port may hold: one per connection served directly, three through
    the gate (the client's, the gate's side of grpc's socket, grpc's), and 1,024 for the rest."""
    return (3 if gated(listen, per_peer) else 1) * max_connections + 1024


def raise_descriptor_limit(needed: int) -> str:
    """Raise this process's soft descriptor limit to its hard limit, as Go's runtime does for every
    Go program (container runtimes may start processes at a soft limit of 1,024, which would stop
    accepting far below --max-connections). A warning when even the hard limit is below `needed`."""
    rlimits.raise_nofile()
    soft = rlimits.short_of(needed)
    if soft is not None:
        return (f"the descriptor limit is {soft}, below the {needed} the gRPC port may need "
                "(--max-connections; three per connection with --max-connections-per-peer): connections past it "
                "wait in the backlog; raise the container's nofile limit or lower --max-connections")
    return ""


def make_server(listen: str, max_connections: int, per_peer: int,
                options: Callable[[int], Sequence[tuple[str, Any]]],
                interceptors: Sequence[grpc.aio.ServerInterceptor]) -> tuple[grpc.aio.Server, AcceptGate | None]:
    """A grpc.aio server for `listen`, with a gate in front when `gated`. `options(n)`: the server's
    channel options with grpc's own bound of n connections (0: none; the gate holds the bound)."""
    if not gated(listen, per_peer):
        return grpc.aio.server(options=options(max_connections), interceptors=interceptors), None
    return grpc.aio.server(options=options(0), interceptors=interceptors), AcceptGate(max_connections, per_peer)


async def serve(server: grpc.aio.Server, gate: AcceptGate | None, listen: str,
                credentials: grpc.ServerCredentials | None) -> int:
    """Bind (grpc to `listen`, or to the gate's private socket and the gate to `listen`) and start;
    returns the bound port. OSError when the address cannot be bound."""
    target = gate.backend if gate is not None else listen
    port = (server.add_secure_port(target, credentials) if credentials is not None
            else server.add_insecure_port(target))
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    if gate is None:
        return port
    try:
        return await gate.start(listen)
    except OSError as e:
        await server.stop(None)
        raise OSError(f"cannot listen on {listen}: {e}") from None
