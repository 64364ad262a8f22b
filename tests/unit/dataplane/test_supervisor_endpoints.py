"""A supervisor's admin endpoint asks its workers (ambit/dataplane/workers.py). It runs on the loop
that also carries the supervisor's work (ztunnel's zds fan-out, the waypoint's HBONE dealer), so a
worker that does not answer (wedged, stopped) must hold up only the request that asked it, never
the loop: here, another request to the same endpoint is answered meanwhile."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from ambit.dataplane.endpoint import HealthEndpoint
from ambit.dataplane.workers import SupervisorAdmin, SupervisorMetrics, WorkerProcess


async def get(path: Path, target: str) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def test_a_worker_that_does_not_answer_blocks_only_the_request_that_asked_it(tmp_path: Path) -> None:
    wedged = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)   # accepts connections, never answers
    wedged.bind(str(tmp_path / "w0.admin.sock"))
    wedged.listen()
    wedged.setblocking(False)
    worker = WorkerProcess(0, tmp_path / "w0.admin.sock", tmp_path / "w0.metrics.sock")
    adm, metrics = SupervisorAdmin([worker]), SupervisorMetrics([worker], "test_restarts")
    status = HealthEndpoint(adm)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await adm.start(None, 0, tmp_path / "admin.sock")
        await status.start(None, 0, tmp_path / "status.sock")
        await metrics.start(None, 0, tmp_path / "metrics.sock")
        try:
            for ep, target in ((adm, "/healthz/ready"), (status, "/healthz/ready"), (adm, "/config_dump")):
                sock = tmp_path / ("status.sock" if ep is status else "admin.sock")
                probe = asyncio.ensure_future(get(sock, target))
                conn, _ = await loop.sock_accept(wedged)             # the supervisor is asking the worker now
                listing = await get(tmp_path / "admin.sock", "/workers")
                assert b" 200 " in listing.split(b"\r\n", 1)[0] and b'"index": 0' in listing
                assert not probe.done(), "answered only once the probe's question to the worker was over"
                conn.close()                                          # the worker goes away
                answer = await probe
                assert b" 503 " in answer.split(b"\r\n", 1)[0], answer
            scrape = asyncio.ensure_future(get(tmp_path / "metrics.sock", "/metrics"))
            listing = await get(tmp_path / "admin.sock", "/workers")
            assert not scrape.done() and b" 200 " in listing.split(b"\r\n", 1)[0]
            assert b"test_restarts_total" in await scrape
        finally:
            for ep in (adm, status, metrics):
                await ep.close()
            wedged.close()

    asyncio.run(main())
