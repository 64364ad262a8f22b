"""The lab's TCP server that speaks no HTTP, like Istio's samples/tcp-echo: each line a client sends
comes back with a prefix ("hello ping" for "ping"), so a test sees its own bytes cross the mesh on
the opaque (L4) path. `python -m ambitctl.lab.apps.tcp_echo --port 9000 --prefix hello`.
"""

from __future__ import annotations

import argparse
import asyncio


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: bytes) -> None:
    try:
        while line := await reader.readline():
            writer.write(prefix + b" " + line)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(port: int, prefix: str, host: str = "0.0.0.0") -> asyncio.Server:
    """The server, listening (port 0 picks one: `sockets[0].getsockname()[1]`)."""
    p = prefix.encode()
    return await asyncio.start_server(lambda r, w: _serve(r, w, p), host, port)


async def _main(port: int, prefix: str) -> None:
    server = await serve(port, prefix)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--prefix", default="hello")
    a = ap.parse_args(argv)
    asyncio.run(_main(a.port, a.prefix))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
