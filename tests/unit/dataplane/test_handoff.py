"""Connections handed from a supervisor to workers (ambit/dataplane/handoff.py), over real TCP and
unix sockets in one event loop: the deal is in turn, a gone worker gets nothing more, connections
made while no worker is linked wait and are served, and an HBONE server serves handed connections
over real mTLS on asyncio and uvloop (the waypoint's workers, waypoint/workers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket

import pytest

from ambit.accept import BACKOFFS
from ambit.dataplane.handoff import Dealer, Receiver
from ambit.dataplane.hbone import HBONEServer
from ambit.dataplane.workers import SupervisorMetrics
from tests.unit.dataplane.test_hbone import CLIENT, LOOPS, SERVER, Mesh, echo, listener, run
from tests.unit.scrape import sample


class Worker:
    """A stand-in worker: reads the client's first byte, writes its index into every connection it
    is handed, then closes it."""

    def __init__(self, path, index: int) -> None:
        self.receiver = Receiver(path, index, self.on_conn)
        self.index = index
        self.got = 0

    def on_conn(self, conn: socket.socket) -> None:
        self.got += 1
        with contextlib.suppress(BlockingIOError):     # there already: the listener defers accept
            conn.recv(1, socket.MSG_DONTWAIT)
        conn.setblocking(True)
        conn.sendall(b"%d" % self.index)
        conn.close()


async def who(port: int) -> int:
    """Connect, send a byte (a TLS client speaks first: the listener defers silent connections),
    and read which worker answered."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"\x16")
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    return int(data)


async def settle(cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


def dealing(tmp_path) -> tuple[Dealer, int]:
    """A started dealer on a fresh loopback listener, and the listener's port."""
    dealer = Dealer(listener(), tmp_path / "handoff.sock")
    dealer.start()
    return dealer, dealer.listener.getsockname()[1]


def test_connections_are_dealt_in_turn_and_a_gone_worker_gets_none(tmp_path) -> None:
    async def main() -> None:
        dealer, port = dealing(tmp_path)
        w0, w1 = Worker(dealer.path, 0), Worker(dealer.path, 1)
        await w0.receiver.start()
        await w1.receiver.start()
        await settle(lambda: len(dealer.links) == 2)
        assert [await who(port) for _ in range(4)] == [0, 1, 0, 1]
        assert dealer.handed == {0: 2, 1: 2}
        w1.receiver.close()                                   # worker 1 exits
        await settle(lambda: list(dealer.links) == [0])
        assert [await who(port) for _ in range(3)] == [0, 0, 0]
        assert (w0.got, w1.got, dealer.dropped) == (5, 2, 0)
        dealer.close()
        w0.receiver.close()

    asyncio.run(main())


def test_connections_made_before_any_worker_links_wait_and_are_served(tmp_path) -> None:
    async def main() -> None:
        dealer, port = dealing(tmp_path)
        early = asyncio.ensure_future(who(port))
        await asyncio.sleep(0.2)
        assert not early.done()                               # in the backlog, not refused
        w = Worker(dealer.path, 3)
        await w.receiver.start()
        assert await asyncio.wait_for(early, 5) == 3
        dealer.close()
        w.receiver.close()

    asyncio.run(main())


def test_a_restarted_worker_replaces_its_predecessors_link(tmp_path) -> None:
    async def main() -> None:
        dealer, port = dealing(tmp_path)
        old, new = Worker(dealer.path, 0), Worker(dealer.path, 0)
        await old.receiver.start()
        await settle(lambda: 0 in dealer.links)
        await new.receiver.start()
        await settle(lambda: old.receiver.sock is None or old.receiver.closed.done())
        assert await who(port) == 0 and (old.got, new.got) == (0, 1)
        dealer.close()
        new.receiver.close()

    asyncio.run(main())


def test_a_bad_hello_is_refused(tmp_path) -> None:
    async def main() -> None:
        dealer, _ = dealing(tmp_path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(dealer.path))
        s.send(b"hello")
        s.setblocking(False)
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.sock_recv(s, 16), 5) == b""      # closed on us
        assert dealer.links == {}
        s.close()
        dealer.close()

    asyncio.run(main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_hbone_over_handed_connections(ca, tmp_path, loop_kind: str) -> None:
    """The real thing: a client pool dials the supervisor's listener; a worker's HBONEServer that
    listens on nothing does the TLS handshake on the handed socket (its ClientHello already
    queued), authenticates the client and serves the tunnel."""
    async def main() -> None:
        async with Mesh(ca, echo) as m:         # gives the certificates and the pool; its own server idles
            dealer = Dealer(listener(), tmp_path / "handoff.sock")
            m.pool.port = dealer.listener.getsockname()[1]
            dealer.start()
            seen = []

            async def record(st, peer, authority, headers):
                seen.append((peer, authority))
                await echo(st, peer, authority, headers)

            worker = HBONEServer(None, lambda: m.cache.server(m.server_cert), record)
            await worker.start()
            rx = Receiver(dealer.path, 0, worker.adopt)
            await rx.start()
            st = await m.open("10.0.0.2:8080")
            assert st.peer_identity == SERVER
            st.write(b"through the hand-off")
            await st.drain()
            assert await st.readexactly(20) == b"through the hand-off"
            st.write_eof()
            assert await st.read() == b""
            assert seen == [(CLIENT, "10.0.0.2:8080")] and dealer.handed == {0: 1} and m.seen == []
            await m.pool.close()
            rx.close()
            await worker.close(grace=1)
            dealer.close()

    run(loop_kind, main)


def test_a_silent_connection_is_not_handed_to_a_worker(tmp_path) -> None:
    """A peer that connects and sends nothing stays in the kernel (TCP_DEFER_ACCEPT): the dealer
    hands it to no worker, where it used to hold a TLS handshake for its whole timeout."""
    async def main() -> None:
        dealer, port = dealing(tmp_path)
        w0 = Worker(dealer.path, 0)
        await w0.receiver.start()
        await settle(lambda: len(dealer.links) == 1)
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        assert await who(port) == 0             # accepted and dealt after the silent ones connected
        assert w0.got == 1
        for s in silent:
            s.close()
        dealer.close()
        w0.receiver.close()

    asyncio.run(main())


def test_out_of_descriptors_the_dealer_backs_off_and_recovers(tmp_path, caplog) -> None:
    """At the fd limit accept() fails with EMFILE while the listener stays readable. Before, the
    dealer retried at every wakeup: a core spun and a warning was logged each time. It now pauses
    (once, logged once), and once descriptors are free again the waiting connection is served."""
    async def main() -> None:
        before = BACKOFFS.get("hbone_handoff", 0)
        dealer, port = dealing(tmp_path)
        w0 = Worker(dealer.path, 0)
        await w0.receiver.start()
        await settle(lambda: len(dealer.links) == 1)
        client = socket.create_connection(("127.0.0.1", port))   # waits in the backlog
        client.sendall(b"\x16")         # TCP_DEFER_ACCEPT: a silent one would not be accepted at all
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers: list[int] = []
        try:
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
            with contextlib.suppress(OSError):
                while True:
                    fillers.append(os.open("/dev/null", os.O_RDONLY))
            with caplog.at_level(logging.WARNING, logger="ambit.dataplane.handoff"):
                for _ in range(200):            # 200 turns of the loop with the listener readable
                    await asyncio.sleep(0)
            failures = [r for r in caplog.records if "accept failed" in r.getMessage()]
            assert 1 <= len(failures) <= 2, len(failures)
            # An operator sees it in the supervisor's metrics, not only in its log.
            text = SupervisorMetrics([], "ambit_waypoint_worker_restarts").handle("GET", "/metrics").body.decode()
            assert sample(text, "ambit_accept_backoffs_total", listener="hbone_handoff") == before + len(failures)
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        client.setblocking(False)
        await settle(lambda: w0.got == 1)       # accepted once the backoff is over
        client.close()
        dealer.close()
        w0.receiver.close()

    asyncio.run(main())
