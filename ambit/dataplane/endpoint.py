"""Local HTTP endpoints (admin, metrics): one server and one client for both.

A proxy runs in the node netns; a unix socket in the lab dir lets tools in the host netns reach
the same endpoint without entering it. The server side reads one request with httptools (bounded
in size and in time, the whole request and not each read, so a stuck or hostile client cannot pin
it) and asks the subclass for the answer through `handle(method, path)`, a plain function that
tests call without sockets. Each listener serves at most `max_connections` at once and resets the
rest: the metrics port listens on every address of the node (Prometheus scrapes it), so any pod
can reach it, and connections trickling a byte at a time must not take the proxy's every fd. The
client side is what the CLI, the lab and the tests use to read any endpoint over its unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httptools

from ambit.dataplane.ports import LISTEN_BACKLOG

log = logging.getLogger("ambit.dataplane.endpoint")

MAX_REQUEST = 64 * 1024     # a local GET never needs more
READ_TIMEOUT = 10.0         # for the whole request
MAX_CONNECTIONS = 256       # per listener, at once: scrapers and operators need a few


class Response:
    """What `handle` returns: a status, a content type and the body (HEAD drops the body)."""

    __slots__ = ("status", "content_type", "body", "stream")

    def __init__(self, status: int, body: bytes, content_type: str = "application/json",
                 stream: AsyncIterator[bytes] | None = None) -> None:
        self.status, self.body, self.content_type = status, body, content_type
        # A long-lived body (the tap endpoint's NDJSON): written chunk by chunk until the client
        # goes away; the response then has no Content-Length and ends when the connection closes.
        self.stream = stream


class _Request:
    """httptools callbacks: collect the URL and notice the end of the message."""

    def __init__(self) -> None:
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.complete = True


def request_path(url: bytes) -> str:
    return httptools.parse_url(url).path.decode() if url else "/"


class LocalEndpoint:
    """Serves `handle(method, path)` on TCP and/or a unix socket, one request per connection."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._servers: list[asyncio.Server] = []
        self._unix_path: Path | None = None
        self._unix_ino = 0
        self.max_connections = max_connections
        self.refused = 0        # connections reset over `max_connections`

    def handle(self, method: str, path: str) -> Response:
        raise NotImplementedError

    async def respond(self, method: str, path: str) -> Response:
        """The answer to one request: `handle`'s, on the loop. An endpoint whose answer waits on
        another process (a supervisor asking its workers) runs `handle` off the loop instead: the
        loop also carries the process's traffic, and a wedged peer must not stall it."""
        return self.handle(method, path)

    async def start(self, host: str | None, port: int, unix_path: Path | None = None,
                    reuse_port: bool = False) -> None:
        """`reuse_port`: a successor may listen on the same TCP port beside this one (a surge roll
        in the lab, where both node pods share the node netns); a unix path is taken over by the
        newest, and `close()` unlinks it only while it is still this endpoint's."""
        if host is not None and port:
            self._servers.append(await asyncio.start_server(self._limited(), host, port, reuse_address=True,
                                                                    reuse_port=reuse_port or None,
                                                                    backlog=LISTEN_BACKLOG))
        if unix_path is not None:
            unix_path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                unix_path.unlink()
            self._servers.append(await asyncio.start_unix_server(self._limited(), str(unix_path),
                                                                 backlog=LISTEN_BACKLOG))
            unix_path.chmod(0o600)
            self._unix_path = unix_path
            self._unix_ino = unix_path.stat().st_ino

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        for s in self._servers:
            await s.wait_closed()
        self._servers.clear()
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                if self._unix_path.stat().st_ino == self._unix_ino:
                    self._unix_path.unlink()

    def _limited(self) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        """`_serve` for one listener, at most `max_connections` at once (the module docstring)."""
        active = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal active
            if active >= self.max_connections:
                self.refused += 1
                if self.refused % 1000 == 1:
                    log.warning("local endpoint: %d connections open, resetting more (%d so far)",
                                active, self.refused)
                writer.transport.abort()
                return
            active += 1
            try:
                await self._serve(reader, writer)
            finally:
                active -= 1
        return serve

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = _Request()
        parser = httptools.HttpRequestParser(req)
        method = "GET"
        try:
            total = 0
            async with asyncio.timeout(READ_TIMEOUT):
                while not req.complete:
                    data = await reader.read(16384)
                    if not data:
                        return
                    total += len(data)
                    if total > MAX_REQUEST:
                        resp = Response(413, b'{"error": "request too large"}\n')
                        break
                    parser.feed_data(data)
            if req.complete:
                method = parser.get_method().decode()
                resp = await self.respond(method, request_path(req.url))
            reason = http.client.responses.get(resp.status, "")
            if resp.stream is not None:
                await _stream(reader, writer, resp, reason)
                return
            writer.write(f"HTTP/1.1 {resp.status} {reason}\r\nContent-Type: {resp.content_type}\r\n"
                         f"Content-Length: {len(resp.body)}\r\nConnection: close\r\n\r\n".encode()
                         + (b"" if method == "HEAD" else resp.body))
            await writer.drain()
        except (TimeoutError, httptools.HttpParserError, ConnectionError) as e:
            log.debug("local endpoint request failed: %s", e)
        finally:
            writer.close()


class HealthEndpoint(LocalEndpoint):
    """The readiness path (`/healthz/ready`) of another endpoint, and nothing else: what a pod may
    expose on its IP for the kubelet's probe and load balancers (Istio's status port, 15021), while
    the admin endpoint (config dump, certificates, live taps) stays on loopback."""

    PATH = "/healthz/ready"

    def __init__(self, admin: LocalEndpoint) -> None:
        super().__init__()
        self.admin = admin

    def handle(self, method: str, path: str) -> Response:
        if path.rstrip("/") != self.PATH:
            return Response(404, json.dumps({"error": f"no such path {path!r}: this port serves only "
                                                      f"{self.PATH}"}).encode() + b"\n")
        return self.admin.handle(method, self.PATH)

    async def respond(self, method: str, path: str) -> Response:
        if path.rstrip("/") != self.PATH:
            return self.handle(method, path)
        return await self.admin.respond(method, self.PATH)


async def _stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, resp: Response, reason: str) -> None:
    """Write a streamed response until the client closes (noticed by a read returning EOF, or by
    a failed write), then stop the stream so its producer lets go of its subscription."""
    writer.write(f"HTTP/1.1 {resp.status} {reason}\r\nContent-Type: {resp.content_type}\r\n"
                 "Connection: close\r\n\r\n".encode())
    stream = resp.stream
    assert stream is not None

    async def pump() -> None:
        async for chunk in stream:
            writer.write(chunk)
            await writer.drain()

    pumping = asyncio.ensure_future(pump())
    gone = asyncio.ensure_future(reader.read(1))
    try:
        await asyncio.wait({pumping, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (pumping, gone):
            t.cancel()
        with contextlib.suppress(BaseException):
            await pumping
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


# --- client (the CLI, the lab's readiness checks, tests) ------------------------------------------

class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


def fetch(unix_path: str | Path, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """GET `path` from a local endpoint's unix socket: (HTTP status, body). Raises OSError if
    nothing listens there."""
    conn = _UnixHTTPConnection(str(unix_path), timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_json(unix_path: str | Path, path: str, timeout: float = 3.0) -> tuple[int, Any]:
    """GET a JSON document: (HTTP status, decoded JSON)."""
    status, body = fetch(unix_path, path, timeout)
    return status, json.loads(body or b"null")
