"""Copy bytes both ways between two stream endpoints, counting them, with TCP half-close.

When one side finishes sending (EOF), the other side gets a FIN (write_eof) if its transport can
half-close, and the copy in the other direction goes on: request/response protocols that close
their sending side early (HTTP/1.0 clients, iperf3's control flow) keep working.
"""

from __future__ import annotations

import asyncio
import contextlib

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
