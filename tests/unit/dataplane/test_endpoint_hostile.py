"""The local endpoints (admin, metrics) against hostile clients. ztunnel's metrics port listens on
every address of the node, so any pod can reach it: a client trickling its request a byte at a
time, or opening connection after connection, must not hold the proxy's fds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ambit.dataplane import endpoint
from ambit.dataplane.endpoint import LocalEndpoint, Response


class Hello(LocalEndpoint):
    def handle(self, method: str, path: str) -> Response:
        return Response(200 if path == "/" else 404, b"{}")


async def _served(tmp_path: Path, **kw) -> tuple[Hello, str]:
    ep = Hello(**kw)
    sock = tmp_path / "ep.sock"
    await ep.start(None, 0, sock)
    return ep, str(sock)


async def _ask(sock: str, request: bytes) -> bytes:
    r, w = await asyncio.open_unix_connection(sock)
    w.write(request)
    try:
        return await asyncio.wait_for(r.read(), 5)
    except ConnectionResetError:
        return b""
    finally:
        w.close()


def test_a_request_trickled_a_byte_at_a_time_is_cut_at_the_request_deadline(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint, "READ_TIMEOUT", 0.5)

    async def main() -> bool:
        ep, sock = await _served(tmp_path)
        r, w = await asyncio.open_unix_connection(sock)
        cut = False
        for b in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"x" * 200:    # one byte per 0.05 s: 10 s
            try:
                w.write(bytes([b]))
                await w.drain()
            except ConnectionError:
                cut = True
                break
            await asyncio.sleep(0.05)
            if r.at_eof():
                cut = True
                break
        w.close()
        await ep.close()
        return cut
    assert asyncio.run(main())


def test_connections_over_the_limit_are_reset_and_the_endpoint_keeps_serving(tmp_path: Path) -> None:
    async def main() -> None:
        ep, sock = await _served(tmp_path, max_connections=4)
        held = [await asyncio.open_unix_connection(sock) for _ in range(4)]
        for _, w in held:
            w.write(b"GET / HTTP/1.1\r\n")        # incomplete: each holds its slot
        await asyncio.sleep(0.1)
        assert await _ask(sock, b"GET / HTTP/1.1\r\n\r\n") == b""      # reset, unanswered
        assert ep.refused == 1
        held.pop()[1].close()
        await asyncio.sleep(0.1)
        assert (await _ask(sock, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
        for _, w in held:
            w.close()
        await ep.close()
    asyncio.run(main())
