"""open_from's connect: finished at once when the kernel completed it inside connect() (a local
destination), waited for otherwise; a refused connect raises either way. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ztunnel.proxy import connect_finished, connect_started, open_from


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
                await connect_finished(asyncio.get_running_loop(), s, ("127.0.0.1", port))

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
