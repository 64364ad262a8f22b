"""The controller's gRPC port holds a bounded number of connections.

Any pod can reach the config stream and CA port, and a connection costs the controller about 50 KB
before any credential is checked (a TLS connection, measured). Without a bound, enough connections
that never make a call would take the controller to its memory limit. With `--max-connections N`
the N+1st connection is closed at accept, the held ones keep working, and a slot freed is usable
again.
"""

from __future__ import annotations

import asyncio
import socket

from prometheus_client import CollectorRegistry

from ambit.configclient import fetch_status
from controller.app import StatusServer

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")   # + empty SETTINGS


def connect_from(source: str, port: int) -> socket.socket:
    """A connection to 127.0.0.1:`port` from the loopback address `source`, its HTTP/2 preface sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(PREFACE)
    return s


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the peer closed `sock` (EOF or reset) within `seconds`, reading what it sent before."""
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_connection_beyond_the_bound_is_closed_at_accept_and_a_freed_slot_is_reused() -> None:
    async def go() -> None:
        server = StatusServer(lambda: [], debounce=0.0, registry=CollectorRegistry())
        port = await server.start("127.0.0.1:0", max_connections=2)
        loop = asyncio.get_running_loop()
        held = []
        try:
            for _ in range(2):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(PREFACE)
                held.append(s)
            await asyncio.sleep(0.2)            # both accepted before the third arrives
            third = socket.create_connection(("127.0.0.1", port))
            third.sendall(PREFACE)
            assert await loop.run_in_executor(None, _closed_within, third, 5.0), "the third connection was held"
            assert not await loop.run_in_executor(None, _closed_within, held[0], 0.5), "a held connection was cut"
            held.pop().close()
            await asyncio.sleep(0.2)
            resp = await fetch_status(f"127.0.0.1:{port}")      # a real client gets the freed slot
            assert resp is not None
        finally:
            for s in held:
                s.close()
            await server.stop()
    asyncio.run(go())
