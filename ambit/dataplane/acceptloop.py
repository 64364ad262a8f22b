"""An accept loop of our own for a TLS listener, so that connections count from `accept()`, and
the handshakes it starts, bounded while they are under way (`Handshakes`).

Why not `loop.create_server(ssl=...)`: asyncio (and uvloop) make the protocol at accept but tell it
nothing until the handshake is done, and nothing at all when it fails, so a server cannot count,
bound or abort the connections still in their handshake; those need no certificate and pin
~50-70 KiB each (docs/security.md, "Connection floods"). Here each accepted socket is handed to
`on_conn(sock, source_ip)`, which starts the handshake itself (`loop.connect_accepted_socket`,
not `start_tls`: see ambit/dataplane/hbone/server.py) and so holds a handle it can abort.

The listening socket gets TCP_DEFER_ACCEPT (nginx's `listen ... deferred`): the kernel wakes the
listener only once a connection's first bytes arrived, so a peer that connects and sends nothing
costs a request sock in the kernel (bounded by the backlog, then SYN cookies, which cost nothing)
instead of a connection here. Linux hands such a connection over anyway when the period ends (at
the SYN-ACK retransmission after it: 1, 3, 7, 15 s...), so the period is half the handshake
deadline (`defer_for`), and a connection accepted with nothing to read gets `SILENT_GRACE` to
start its handshake rather than the whole deadline: it has been silent for the period already (or
it came through SYN cookies, which skip the deferral, and its ClientHello is a round trip away).
A silent peer is so closed within about the handshake deadline of its connect, as before.

`Handshakes.accepted(sock, source)` starts one handshake under a `PendingHandshakes` bound (which
several listeners of a process may share): a source over its cap (an IPv4 address, an IPv6 /64:
`ambit.accept.peer_key`) is reset at once, and when the
process is at its limit the oldest handshake under way is aborted for the new one. Refusals are
counted in `ambit_connections_refused_total{limit="pending_handshakes"|"pending_handshakes_per_source"}`
and logged once per 1,000. Handshake failures are logged at debug only: a flood makes thousands.

A handshake whose server certificate is not there yet (a `CertificateGate` says so) first waits
for it, within its deadline, rather than being refused: ambit/dataplane/identity/wait.py. The wait
is part of the handshake's task, so it counts toward the same bounds.

`accept()` failing for want of descriptors or memory pauses the loop for ACCEPT_RETRY_DELAY
(ambit/accept.py), counted in `ambit_accept_backoffs_total{listener}` (`tls`, or the owner's key:
the waypoint supervisor's hand-off, ambit/dataplane/handoff.py, reads its listener with this loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

from ambit.accept import ACCEPT_RETRY_DELAY, BACKOFFS, out_of_resources, peer_key
from ambit.dataplane.hbone.limits import CERTIFICATE_WAITS, PendingHandshakes, refused_at_bound

log = logging.getLogger("ambit.dataplane.accept")

ACCEPT_BATCH = 64           # connections accepted per wakeup before the loop serves other work
BACKOFF_KEY = "tls"
SILENT_GRACE = 1.0          # seconds to handshake for a connection accepted with nothing to read
HANDSHAKE_RESERVE = 1.0     # of a deadline, kept for the handshake after a certificate wait (<= half)

OnConn = Callable[[socket.socket, str], None]
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class CertificateGate(Protocol):
    """Asked before a handshake: is the server certificate there (`held`, synchronous and cheap:
    the common case), and if not, wait up to `timeout` s for it (`wait`, True: it came)."""

    def held(self) -> bool: ...

    async def wait(self, timeout: float) -> bool: ...


def wait_bound(deadline: float) -> float:
    """How long a handshake with `deadline` s may wait for its certificate: the deadline less a
    reserve for the handshake itself (`HANDSHAKE_RESERVE`, at most half of the deadline)."""
    return max(0.0, deadline - min(HANDSHAKE_RESERVE, deadline / 2))


def defer_for(handshake_timeout: float) -> int:
    """The TCP_DEFER_ACCEPT period for a listener whose handshakes have `handshake_timeout`: Linux
    ends it at a SYN-ACK retransmission (up to about twice as late), then `SILENT_GRACE` follows."""
    return max(1, math.ceil(handshake_timeout / 2))


def defer_accept(sock: socket.socket, handshake_timeout: float) -> None:
    """Set TCP_DEFER_ACCEPT on a listening socket (where the platform has it)."""
    opt = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if opt is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, opt, defer_for(handshake_timeout))


def reset(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): nothing is left in TIME_WAIT for a refused peer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


class AcceptLoop:
    """Accepts on `sock` (bound and listening) and hands each connection to `on_conn`; `pause()`
    leaves new connections in the backlog until `resume()` (also between two of one batch).
    `handshake_timeout` None: no TCP_DEFER_ACCEPT (a plaintext listener, whose protocol may have
    the server speak first: ztunnel's capture listeners, ztunnel/pods.py)."""

    def __init__(self, sock: socket.socket, on_conn: OnConn, handshake_timeout: float | None,
                 backoff_key: str = BACKOFF_KEY, ready: Callable[[], bool] = lambda: True) -> None:
        self.sock = sock
        self.ready = ready              # may it read now (the hand-off: is a worker linked)?
        self.on_conn = on_conn
        self.handshake_timeout = handshake_timeout
        self.backoff_key = backoff_key
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._backoff: asyncio.TimerHandle | None = None
        BACKOFFS.setdefault(backoff_key, 0)

    def start(self, reading: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        if self.handshake_timeout is not None:
            defer_accept(self.sock, self.handshake_timeout)
        if reading:
            self.resume()

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        self.pause()
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None
        self.sock.close()

    def resume(self) -> None:
        if (not self._reading and self._loop is not None and self._backoff is None and self.sock.fileno() >= 0
                and self.ready()):
            self._loop.add_reader(self.sock.fileno(), self._on_accept)
            self._reading = True

    def pause(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _on_accept(self) -> None:
        accept, on_conn = self.sock.accept, self.on_conn
        for _ in range(ACCEPT_BATCH):
            if not self._reading:
                return
            try:
                conn, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if out_of_resources(e):
                    self._back_off(e)
                else:
                    log.warning("accept failed: %s", e)
                return
            on_conn(conn, addr[0])

    def _back_off(self, e: OSError) -> None:
        assert self._loop is not None
        BACKOFFS[self.backoff_key] += 1
        log.warning("accept failed: %s; not accepting for %.1fs", e, ACCEPT_RETRY_DELAY)
        self.pause()
        self._backoff = self._loop.call_later(ACCEPT_RETRY_DELAY, self._retry)

    def _retry(self) -> None:
        self._backoff = None
        self.resume()


def _held(gate: CertificateGate) -> bool:
    """`gate.held()`; one that fails counts as held: the servername callback then decides, as
    without a gate."""
    try:
        return gate.held()
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("certificate gate failed: %s", e)
        return True


class Handshakes:
    """Starts the TLS handshake of accepted sockets (`loop.connect_accepted_socket`, one task each:
    the handle that aborts it) under the `pending` bound. `where` names the listener in logs.
    `gate`: the handshake waits for its server certificate first when it is not there yet."""

    def __init__(self, factory: Callable[[], asyncio.BaseProtocol], context: ssl.SSLContext,
                 handshake_timeout: float, pending: PendingHandshakes, where: str,
                 gate: CertificateGate | None = None) -> None:
        self.gate = gate
        self.factory = factory
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.pending = pending
        self.where = where
        self.tasks: set[asyncio.Task[None]] = set()

    def accepted(self, sock: socket.socket, source: str) -> None:
        timeout = self.handshake_timeout
        try:
            if not sock.recv(1, _PEEK):
                sock.close()        # gone already
                return
        except BlockingIOError:     # silent through the deferral (see the module docstring)
            timeout = min(timeout, SILENT_GRACE)
        except OSError:
            sock.close()
            return
        task = asyncio.ensure_future(self._handshake(sock, timeout))
        pending = self.pending
        if not pending.enter(task, source):
            task.cancel()           # never started: the socket is ours to close
            reset(sock)
            refused_at_bound(pending.refused, f"{self.where} (from {peer_key(source)})", pending.per_source,
                             "reset", "pending_handshakes_per_source")
            return
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._done, sock))
        oldest = pending.evicted
        if oldest is not None:
            oldest.cancel()         # type: ignore[attr-defined]    # a task of this or another listener
            refused_at_bound(pending.dropped, self.where, pending.limit,
                             "taking the place of the oldest handshake", "pending_handshakes")

    def _done(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.pending.leave(task)
        if task.cancelled():        # aborted before it ran (`_handshake` swallows a later cancel)
            sock.close()

    async def _handshake(self, sock: socket.socket, timeout: float) -> None:
        sock.setblocking(False)
        gate = self.gate
        try:
            if gate is not None and not _held(gate):
                timeout = await self._wait_for_certificate(gate, timeout)
            await asyncio.get_running_loop().connect_accepted_socket(
                self.factory, sock, ssl=self.context, ssl_handshake_timeout=timeout)
        except (OSError, asyncio.CancelledError) as e:     # ssl.SSLError and TimeoutError included
            log.debug("%s: TLS handshake failed: %s", self.where, e or type(e).__name__)
            sock.close()

    async def _wait_for_certificate(self, gate: CertificateGate, timeout: float) -> float:
        """Wait (`wait_bound` of the deadline) for the certificate; what is left of the deadline.
        Without it the handshake goes on, to be refused by the servername callback as before."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            came = await gate.wait(wait_bound(timeout))
        except Exception as e:  # noqa: BLE001 - a broken gate must not leak the socket: handshake as before
            log.warning("%s: waiting for the server certificate failed: %s", self.where, e)
            came = False
        waited = loop.time() - began
        CERTIFICATE_WAITS["came" if came else "none"] += 1
        log.debug("%s: a handshake waited %.1fs for the server certificate: %s", self.where, waited,
                  "proceeding" if came else "still none")
        return max(timeout - waited, timeout - wait_bound(timeout))

    def abort(self) -> None:
        """Abort every handshake under way (the listener is closing)."""
        for t in list(self.tasks):
            t.cancel()
