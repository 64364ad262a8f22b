"""Copy bytes both ways between two stream endpoints, counting them, with TCP half-close.

When one side finishes sending (EOF), the other side gets a FIN (write_eof) if its transport can
half-close, and the copy in the other direction goes on: request/response protocols that close
their sending side early (HTTP/1.0 clients, iperf3's control flow) keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ztunnel.hbone.stream import HBONEStream

READ_SIZE = 256 * 1024


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: list[int], idx: int) -> None:
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            counter[idx] += len(data)
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
            else:
                writer.close()


async def relay(a_r: asyncio.StreamReader, a_w: asyncio.StreamWriter,
                b_r: asyncio.StreamReader, b_w: asyncio.StreamWriter) -> tuple[int, int]:
    """Returns (bytes a->b, bytes b->a). Errors on either side end both directions."""
    counter = [0, 0]
    t1 = asyncio.ensure_future(pump(a_r, b_w, counter, 0))
    t2 = asyncio.ensure_future(pump(b_r, a_w, counter, 1))
    try:
        done, pending = await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                for p in pending:
                    p.cancel()
                break
        await asyncio.gather(t1, t2, return_exceptions=True)
    finally:
        for w in (a_w, b_w):
            with contextlib.suppress(Exception):
                w.close()
    return counter[0], counter[1]


async def relay_tunnel(app_r: asyncio.StreamReader, app_w: asyncio.StreamWriter, tunnel: HBONEStream
                       ) -> tuple[int, int]:
    """Relay between a local TCP connection and an HBONE tunnel; returns (bytes app->tunnel,
    bytes tunnel->app).

    Zero-copy where it counts: the app's `bytes` are queued on the tunnel by reference, and the
    tunnel's received payloads are written to the app as memoryviews into the TLS records they
    arrived in (`read_chunk`). Half-close travels both ways (FIN <-> END_STREAM). An error on either
    side ends both: the tunnel is reset (RST_STREAM), never the pooled connection it rides on.
    """
    counter = [0, 0]

    async def up() -> None:
        while True:
            data = await app_r.read(READ_SIZE)
            if not data:
                break
            counter[0] += len(data)
            tunnel.write(data)
            await tunnel.drain()
        tunnel.write_eof()

    async def down() -> None:
        while True:
            chunk = await tunnel.read_chunk()
            if not chunk:
                break
            counter[1] += len(chunk)
            app_w.write(chunk)
            await app_w.drain()
        if app_w.can_write_eof() and not app_w.is_closing():
            app_w.write_eof()

    t1, t2 = asyncio.ensure_future(up()), asyncio.ensure_future(down())
    failed = False
    try:
        done, pending = await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_EXCEPTION)
        if any(t.exception() is not None for t in done):
            failed = True
            for p in pending:
                p.cancel()
        await asyncio.gather(t1, t2, return_exceptions=True)
    except BaseException:
        failed = True
        for t in (t1, t2):
            t.cancel()
        raise
    finally:
        if failed:
            tunnel.reset()
        else:
            tunnel.close()
        with contextlib.suppress(Exception):
            app_w.close()
    return counter[0], counter[1]
