"""Accepted connections handed from a supervisor to its workers over a unix socket (SCM_RIGHTS).

Why not SO_REUSEPORT, as ztunnel's workers do: a waypoint's clients are the mesh's ztunnels, which
pool their streams, so it holds a few long-lived HBONE connections rather than many short ones.
The kernel's reuseport hash spreads connections, not load, and with a handful of connections two
of them land on the same worker as often as not. Here the supervisor owns the listener and deals
each accepted connection to the next live worker in turn, so N connections over N workers are
exactly one each. Owning the listener has two more effects:
- a worker that dies or restarts takes only its own connections with it. New connections keep
  being accepted by the others, and none waits in a dead listener's queue to be reset;
- while no worker is linked (at start-up), connections wait in the listener's backlog and are
  dealt once one links, rather than being refused.
The cost is one `accept` and one `sendmsg` in the supervisor per connection, which is negligible
for long-lived HBONE connections. The listener gets TCP_DEFER_ACCEPT (ambit/dataplane/acceptloop.py),
so peers that connect and send nothing are neither accepted nor handed out; the worker bounds the
handshakes under way (`HBONEServer.adopt`).

The protocol, on a SOCK_SEQPACKET socket the supervisor binds:
- a worker connects and sends `w<index>` (its link);
- the supervisor sends one message `c` carrying one descriptor per handed connection;
- a link that reaches EOF (the worker exited) is dropped, and its connections are not its any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from ambit.dataplane.acceptloop import AcceptLoop
from ambit.dataplane.hbone.limits import HANDSHAKE_TIMEOUT

log = logging.getLogger("ambit.dataplane.handoff")

HELLO_TIMEOUT = 1.0         # a worker sends its hello right after connecting


class Dealer:
    """The supervisor's side: a listening TCP socket whose connections go to linked workers in turn."""

    def __init__(self, listener: socket.socket, path: Path) -> None:
        self.listener = listener
        self.path = path
        self.links: dict[int, socket.socket] = {}       # worker index -> its link
        self.handed: dict[int, int] = {}                # worker index -> connections handed so far
        self.dropped = 0                                # accepted, but no worker could take them
        # accept() out of descriptors pauses it (ambit/accept.py): `ambit_accept_backoffs_total{listener="hbone_handoff"}`
        self._accept = AcceptLoop(listener, self._accepted, HANDSHAKE_TIMEOUT, backoff_key="hbone_handoff",
                                  ready=lambda: bool(self.links))
        self._next = 0
        self._unix: socket.socket | None = None
        self._inode = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._unix = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._unix.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        self._unix.listen(16)
        self._unix.setblocking(False)
        self._accept.start(reading=False)       # once a worker links
        self._loop.add_reader(self._unix.fileno(), self._on_link)

    def close(self) -> None:
        """Stop accepting (the listener is closed: the supervisor is stopping) and drop every link."""
        assert self._loop is not None
        self._accept.close()
        if self._unix is not None:
            self._loop.remove_reader(self._unix.fileno())
            self._unix.close()
            with contextlib.suppress(OSError):      # unless a successor bound the same path since
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
        for index in list(self.links):
            self._drop(index)

    # --- links ----------------------------------------------------------------------------------
    def _on_link(self) -> None:
        assert self._unix is not None
        try:
            conn, _ = self._unix.accept()
        except BlockingIOError:
            return
        conn.settimeout(HELLO_TIMEOUT)
        try:
            hello = conn.recv(32)
        except OSError as e:
            log.warning("hand-off link without a hello: %s", e)
            conn.close()
            return
        if not hello.startswith(b"w") or not hello[1:].isdigit():
            log.warning("hand-off link refused: hello %r is not w<index>", hello[:32])
            conn.close()
            return
        index = int(hello[1:])
        self._drop(index)                       # a restarted worker replaces its predecessor's link
        conn.setblocking(False)
        self.links[index] = conn
        self.handed.setdefault(index, 0)
        assert self._loop is not None
        self._loop.add_reader(conn.fileno(), self._on_link_readable, index, conn)
        log.info("worker %d linked for connection hand-off", index)
        self._accept.resume()

    def _on_link_readable(self, index: int, conn: socket.socket) -> None:
        """A worker never writes after its hello: readable means EOF (it exited) or an error."""
        try:
            data = conn.recv(16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data and self.links.get(index) is conn:
            log.info("worker %d's hand-off link closed", index)
            self._drop(index)

    def _drop(self, index: int) -> None:
        conn = self.links.pop(index, None)
        if conn is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(conn.fileno())
        conn.close()
        if not self.links:
            self._accept.pause()

    # --- connections ------------------------------------------------------------------------------
    def _accepted(self, conn: socket.socket, _source: str) -> None:
        try:
            self.deal(conn)
        finally:
            conn.close()                # the worker holds its own copy now
        if not self.links:
            self._accept.pause()        # no worker: leave new connections in the backlog

    def deal(self, conn: socket.socket) -> int | None:
        """Hand `conn` to the next linked worker; which one, or None if none could take it."""
        order = sorted(self.links)
        for i in range(len(order)):
            index = order[(self._next + i) % len(order)]
            try:
                socket.send_fds(self.links[index], [b"c"], [conn.fileno()])
            except BlockingIOError:         # that worker is not reading its link: try another
                continue
            except OSError as e:
                log.warning("worker %d's hand-off link failed: %s", index, e)
                self._drop(index)
                return self.deal(conn)
            self._next = (self._next + i + 1) % len(order)
            self.handed[index] += 1
            return index
        self.dropped += 1
        log.warning("connection from %s dropped: no worker could take it", _peer(conn))
        return None


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


class Receiver:
    """A worker's side: the link to its supervisor, and each handed connection given to `on_conn`."""

    def __init__(self, path: Path, index: int, on_conn: Callable[[socket.socket], None]) -> None:
        self.path, self.index, self.on_conn = path, index, on_conn
        self.sock: socket.socket | None = None
        self.received = 0
        self.closed: asyncio.Future[None] | None = None

    async def start(self, attempts: int = 50) -> None:
        """Link up: the supervisor binds its socket before it starts any worker, so one try is the
        normal case; a few more cover a supervisor still starting."""
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        for i in range(attempts):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                s.connect(str(self.path))
            except OSError:
                s.close()
                if i == attempts - 1:
                    raise
                await asyncio.sleep(0.1)
                continue
            s.send(b"w%d" % self.index)
            s.setblocking(False)
            self.sock = s
            loop.add_reader(s.fileno(), self._on_readable)
            return

    def _on_readable(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 64, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("hand-off link: %s", e)
                data, fds = b"", []
            if not data and not fds:     # the supervisor is stopping (or gone: PDEATHSIG stops us too)
                log.info("hand-off link to the supervisor closed: no new connections will come")
                self.close()
                return
            for fd in fds:
                self.received += 1
                try:
                    conn = socket.socket(fileno=fd)
                except OSError:
                    os.close(fd)
                    continue
                self.on_conn(conn)

    def close(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
