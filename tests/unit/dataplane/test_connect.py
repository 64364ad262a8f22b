"""The event loop's TCP connect without `loop.sock_connect` (ambit/dataplane/connect.py), and
ztunnel's `open_from` on it: finished at once when the kernel completed the handshake inside
connect() (a local destination), waited for otherwise, no resolver thread; a refused connect
raises either way. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from ambit.dataplane.connect import connect_finished, connect_started
from ztunnel.proxy import open_from


def _socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    return s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_loopback_connect_is_established_when_connect_returns() -> None:
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        with _socket() as s:
            assert connect_started(s, lst.getsockname()) is True
            assert s.getpeername() == lst.getsockname()


def test_a_refused_connect_is_left_pending_and_then_raised() -> None:
    port = _free_port()

    async def main() -> None:
        with _socket() as s:
            assert connect_started(s, ("127.0.0.1", port)) is False
            with pytest.raises(ConnectionRefusedError):
                await connect_finished(s)

    asyncio.run(main())


def test_open_from_relays_to_a_listener_and_refuses_a_closed_port() -> None:
    async def main() -> None:
        got: list[bytes] = []

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            got.append(await r.read(100))
            w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        leg = await open_from(_socket, srv.sockets[0].getsockname()[:2], timeout=5)
        leg.write(b"hello")
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.01)
        leg.close()
        srv.close()
        await srv.wait_closed()
        assert got == [b"hello"]
        with pytest.raises(ConnectionRefusedError):
            await open_from(_socket, ("127.0.0.1", _free_port()), timeout=5)

    asyncio.run(main())


def test_connect_needs_no_resolver_thread() -> None:
    """uvloop's sock_connect starts libuv's thread pool (getaddrinfo) even for an IP address;
    ours must not. In a fresh interpreter, so no earlier test has started the pool already."""
    code = """
import asyncio, os, socket, uvloop
from ambit.dataplane.connect import connect
async def main():
    lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(1)
    s = socket.socket(); s.setblocking(False)
    await connect(s, lst.getsockname())
    assert s.getpeername() == lst.getsockname()
    print(len(os.listdir("/proc/self/task")))
uvloop.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"      # the main thread only: no resolver pool
