"""Local HTTP endpoints (admin, metrics): the same handler served on TCP and/or a unix socket.

ztunnel runs in the node netns; a unix socket in the lab dir lets tools in the host netns reach
the same endpoint without entering it. Subclasses implement `_serve` for one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

LISTEN_BACKLOG = 4096       # asyncio.start_server defaults to 100


class LocalEndpoint:
    def __init__(self) -> None:
        self._servers: list[asyncio.Server] = []
        self._unix_path: Path | None = None

    async def start(self, host: str | None, port: int, unix_path: Path | None = None) -> None:
        if host is not None and port:
            self._servers.append(await asyncio.start_server(self._serve, host, port, reuse_address=True,
                                                                    backlog=LISTEN_BACKLOG))
        if unix_path is not None:
            unix_path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                unix_path.unlink()
            self._servers.append(await asyncio.start_unix_server(self._serve, str(unix_path), backlog=LISTEN_BACKLOG))
            unix_path.chmod(0o600)
            self._unix_path = unix_path

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        for s in self._servers:
            await s.wait_closed()
        self._servers.clear()
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._unix_path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
