"""Real servers and the engine on loopback, for tests that drive them with real clients.

- `Origin`: an HTTP/1.1 origin (the standard library's threading server) that echoes what it got
  as JSON, streams, dies mid-response, answers with N extra headers (`/headers=N`), or upgrades to
  a raw echo (WebSocket-style handshake).
- `H2Origin`: an h2c origin (the `h2` library) that echoes (or answers `/headers=N` with N extra
  headers), for HTTP/2 backends.
- `GrpcOrigin`: a grpcio server with unary and streaming echo methods on raw bytes.
- `RawOrigin`: an HTTP/1.1 origin that records what it got and answers canned bytes, to misbehave
  on purpose (responses framed wrong, bytes after a response, answers held back).
- `address_origins`: one HTTP/1.1 origin per loopback address, all on one port, each answering with
  its own address and counting its requests (which endpoint a waypoint chose).
- `Proxy`: the engine on its own event loop thread, listening on 127.0.0.1, with a stub `decide`
  and an `upstream` that maps `Forward.port` to a local backend.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import httptools

from waypoint.http.engine import Engine, UpstreamTarget
from waypoint.http.plug import connect_tcp
from waypoint.http.record import RequestRecord
from waypoint.http.settings import HttpSettings
from waypoint.request import Decision, Downstream, Forward, RequestHead


def new_loop() -> asyncio.AbstractEventLoop:
    """asyncio's loop, or uvloop's with AMBIT_TEST_LOOP=uvloop (the waypoint binary runs uvloop)."""
    if os.environ.get("AMBIT_TEST_LOOP") == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _any(self) -> None:
        self.server.requests += 1           # type: ignore[attr-defined]
        self.server.peers.add(self.client_address)  # type: ignore[attr-defined]
        path = self.path
        if path.startswith("/ws") and self.headers.get("upgrade", "").lower() == "websocket":
            return self._websocket()
        body = self._body()
        if path.startswith("/die"):
            self.send_response(200)
            self.send_header("content-length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if path.startswith("/nohead"):
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if path.startswith("/stream"):
            n = int(path.split("=", 1)[1]) if "=" in path else 5
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.send_header("x-origin", "h1")
            self.end_headers()
            for i in range(n):
                chunk = f"chunk-{i}\n".encode()
                self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if path.startswith("/big"):
            size = int(path.split("=", 1)[1])
            self.send_response(200)
            self.send_header("content-length", str(size))
            self.end_headers()
            self.wfile.write(b"b" * size)
            return
        if path.startswith("/headers="):
            self.send_response(200)
            for i in range(int(path.split("=", 1)[1])):
                self.send_header(f"x-h{i}", "v")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        if path.startswith("/status="):      # an answer with that status (429, 503, ...)
            self.send_response(int(path.split("=", 1)[1]))
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if path.startswith("/slow"):
            time.sleep(float(path.split("=", 1)[1]))
        out = json.dumps({"method": self.command, "path": path, "headers": [[k.lower(), v] for k, v in self.headers.items()],
                          "body_len": len(body), "body_sha": hashlib.sha256(body).hexdigest(),
                          "version": self.request_version}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.send_header("x-origin", "h1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _any

    def _websocket(self) -> None:
        key = self.headers["sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:     # raw echo of whatever comes (frames are opaque to the proxy)
            data = self.connection.recv(65536)
            if not data:
                break
            self.connection.sendall(data)


class _Server(ThreadingHTTPServer):
    request_queue_size = 512        # the default 5 turns a burst of connects into SYN retries


class Origin:
    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.requests = 0            # type: ignore[attr-defined]
        self.server.peers = set()           # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def requests(self) -> int:
        return self.server.requests         # type: ignore[attr-defined]

    @property
    def connections(self) -> int:
        return len(self.server.peers)       # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _H2OriginProtocol(asyncio.Protocol):
    """Echo over h2c: answers each request with its method, path, headers and body length."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.c.initiate_connection()
        self.t.write(self.c.data_to_send())  # type: ignore[attr-defined]
        self.reqs: dict[int, dict] = {}

    def data_received(self, data: bytes) -> None:
        for ev in self.c.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.reqs[ev.stream_id] = {"headers": ev.headers, "body": 0}
            elif isinstance(ev, h2.events.DataReceived):
                self.reqs[ev.stream_id]["body"] += len(ev.data)
                self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                r = self.reqs.pop(ev.stream_id)
                path = dict(r["headers"])[":path"]
                if path == "/rst-before":           # RST_STREAM before any response
                    self.c.reset_stream(ev.stream_id, 8)
                    continue
                if path == "/rst-after":            # a response head and some body, then RST_STREAM
                    self.c.send_headers(ev.stream_id, [(":status", "200")])
                    self.c.send_data(ev.stream_id, b"partial")
                    self.c.reset_stream(ev.stream_id, 8)
                    continue
                if path.startswith("/headers="):
                    extra = [(f"x-h{i}", "v") for i in range(int(path.split("=", 1)[1]))]
                    self.c.send_headers(ev.stream_id, [(":status", "200"), *extra], end_stream=True)
                    continue
                out = json.dumps({"headers": r["headers"], "body_len": r["body"]}).encode()
                self.c.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "application/json"),
                                                   ("x-origin", "h2"), ("content-length", str(len(out)))])
                self.c.send_data(ev.stream_id, out, end_stream=True)
        self.t.write(self.c.data_to_send())  # type: ignore[attr-defined]


class GrpcOrigin:
    """grpcio server: /echo.Echo/Unary echoes; /echo.Echo/Stream echoes each message; a request
    b"fail" gets NOT_FOUND with a message (status and trailers must cross the proxy)."""

    def __init__(self) -> None:
        def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
            if req == b"fail":
                ctx.set_trailing_metadata((("x-trailer", "yes"),))
                ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
            return b"echo:" + req

        def stream(reqs: object, ctx: grpc.ServicerContext) -> object:
            for r in reqs:  # type: ignore[attr-defined]
                yield b"echo:" + r

        handler = grpc.method_handlers_generic_handler("echo.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(0)


class _RawOriginConn(asyncio.Protocol):
    """One connection to a `RawOrigin`."""

    def __init__(self, origin: RawOrigin) -> None:
        self.o = origin
        self.skip = 0           # body bytes of an upgrade request still to read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.o.conns.append(self)
        self.n = len(self.o.raw) + 1
        self.o.raw[self.n] = bytearray()
        self.p = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.o.raw[self.n] += data
        while data:
            if self.skip:
                part, data = data[:self.skip], data[self.skip:]
                self.skip -= len(part)
                self.body += part
                if not self.skip:
                    self._record()
                continue
            try:
                self.p.feed_data(data)
                data = b""
            except httptools.HttpParserUpgrade as e:    # answered at once; a Content-Length body follows
                data = data[e.args[0]:]
                self.p = httptools.HttpRequestParser(self)
                self.skip = int(dict(self.headers).get("content-length", "0"))
                self._answer(self.target, f"{self.method} {self.target} upgrade {self.n}".encode())
                if not self.skip:
                    self._record()
            except httptools.HttpParserError:
                self.t.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")  # type: ignore[attr-defined]
                self.t.close()
                return

    def on_message_begin(self) -> None:
        self.target, self.headers, self.body = "", [], b""

    def on_url(self, url: bytes) -> None:
        self.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.method = self.p.get_method().decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.p.should_upgrade():
            return      # (HttpParserUpgrade follows)
        self._record()
        self._answer(self.target, f"{self.method} {self.target} {len(self.body)} {self.n}".encode())

    def _record(self) -> None:
        self.o.requests.append((self.n, self.method, self.target, self.body))

    def _answer(self, target: str, default: bytes) -> None:
        if target.startswith("/hold/"):
            self.o.held.append((self, target[len("/hold"):], default))
            return
        canned = self.o.canned.get(target)
        if canned is None:
            canned = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(default), default)
        elif isinstance(canned, tuple):     # the first part now, the second once released
            self.o.held.append((self, None, canned[1]))
            canned = canned[0]
        self.send(canned)

    def send(self, data: bytes) -> None:
        if not self.t.is_closing():
            self.t.write(data)  # type: ignore[attr-defined]


def serve_on_thread(factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.AbstractEventLoop, asyncio.Server, int]:
    """A loopback server of `factory`'s protocols on its own event loop thread: (loop, server, port)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    out: list[asyncio.Server] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        out.append(loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0)))
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return loop, out[0], out[0].sockets[0].getsockname()[1]


class RawOrigin:
    """An HTTP/1.1 origin on its own loop thread that misbehaves on purpose. Every request is
    recorded as parsed, `(connection number, method, target, body)`, and every byte received per
    connection (`raw`). A target in `canned` is answered with those bytes verbatim (a pair: the
    first part now, the second after `release()`); `/hold/<rest>` is answered as `/<rest>` would be,
    once `release()` is called; anything else 200 with `<method> <target> <body length>
    <connection>`. An upgrade request is answered at once, as one the server does not upgrade (nginx
    `return 200`), and its Content-Length body is read after it."""

    def __init__(self, canned: dict[str, bytes | tuple[bytes, bytes]] | None = None) -> None:
        self.canned = canned or {}
        self.requests: list[tuple[int, str, str, bytes]] = []
        self.raw: dict[int, bytearray] = {}
        self.held: list[tuple[_RawOriginConn, str | None, bytes]] = []
        self.conns: list[_RawOriginConn] = []
        self.loop, self.srv, self.port = serve_on_thread(lambda: _RawOriginConn(self))

    def release(self) -> None:
        """Send what is held back."""
        def go() -> None:
            held, self.held = self.held, []
            for conn, target, data in held:
                if target is None:
                    conn.send(data)
                else:
                    conn._answer(target, data)
        self.loop.call_soon_threadsafe(go)

    def wait_requests(self, n: int, timeout: float = 5.0) -> list[tuple[int, str, str, bytes]]:
        deadline = time.time() + timeout
        while len(self.requests) < n and time.time() < deadline:
            time.sleep(0.01)
        return list(self.requests)

    def close(self) -> None:
        def stop() -> None:
            self.srv.close()
            for c in self.conns:
                c.t.close()
            self.loop.call_soon(self.loop.stop)
        self.loop.call_soon_threadsafe(stop)


def by_header(backends: dict[str, int]) -> Callable[[RequestHead, Downstream], Decision]:
    """A stub `decide`: `x-to: NAME` picks the backend; no header picks "default"."""

    def decide(head: RequestHead, ds: Downstream) -> Decision:
        name = head.header("x-to") or "default"
        return Forward(service=f"test/{name}", port=backends[name], route=f"test#{name}")

    return decide


class _ByAddress(BaseHTTPRequestHandler):
    """Answers GET with the address it listens on as the body, its server's `status(ip)` as the
    status, and counts the request under that address."""

    protocol_version = "HTTP/1.1"
    wbufsize = -1       # the head and the body in one write (no Nagle / delayed-ACK stall per request)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        ip = self.server.server_address[0]
        with self.server.lock:                  # type: ignore[attr-defined]
            self.server.hits[ip] += 1           # type: ignore[attr-defined]
        body = ip.encode()
        self.send_response(self.server.status(ip))      # type: ignore[attr-defined]
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@contextlib.contextmanager
def address_origins(ips: Sequence[str], status: Callable[[str], int] = lambda ip: 200,
                    ) -> Iterator[tuple[int, Counter[str]]]:
    """Origins on each of `ips` (loopback addresses), all on one free port: yields (the port, the
    requests each address answered). Each answers `status(its address)` with its address as the
    body: the endpoints of a Service, to see which one a waypoint chose."""
    hits: Counter[str] = Counter()
    lock = threading.Lock()
    first = ThreadingHTTPServer((ips[0], 0), _ByAddress)
    port = first.server_address[1]
    servers = [first] + [ThreadingHTTPServer((ip, port), _ByAddress) for ip in ips[1:]]
    for srv in servers:
        srv.daemon_threads = True
        srv.hits, srv.lock, srv.status = hits, lock, status     # type: ignore[attr-defined]
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield port, hits
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


class Proxy:
    """The engine on a background loop, listening on 127.0.0.1:`port`."""

    def __init__(self, decide: Callable[[RequestHead, Downstream], Decision], *,
                 protocols: dict[int, str] | None = None, settings: HttpSettings | None = None,
                 opaque_port: int | None = None, cluster: Any = None,
                 upstream: Callable[..., UpstreamTarget | None] | None = None,
                 downstream: Downstream | None = None) -> None:
        """`upstream`: the engine's (a real `WaypointProxy.upstream`), instead of the stub that
        dials 127.0.0.1 on the forward's port; `downstream`: every connection's tunnel."""
        self._upstream, self._downstream = upstream, downstream or Downstream(source_ip="127.0.0.1")
        self.records: list[RequestRecord] = []
        self.stats: list[RequestRecord] = []
        self.protocols = protocols or {}
        self.settings = settings or HttpSettings()
        self.cluster = cluster          # every upstream's cluster (outlier detection, limits), if given
        self.loop = new_loop()
        self.engine: Engine | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(decide, opaque_port, ready), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, decide: Callable[[RequestHead, Downstream], Decision], opaque_port: int | None,
             ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        def upstream(fwd: Forward, head: RequestHead, down: Downstream,
                     exclude: frozenset[str] = frozenset()) -> UpstreamTarget | None:
            if fwd.port == 0:
                return None
            port = fwd.port
            return UpstreamTarget(key=f"127.0.0.1:{port}", address=f"127.0.0.1:{port}",
                                  connect=lambda: connect_tcp("127.0.0.1", port, 5),
                                  protocol=self.protocols.get(port, "http1"), cluster=self.cluster)

        async def opaque(ds: Downstream) -> object:
            return await connect_tcp("127.0.0.1", opaque_port, 5) if opaque_port else None

        async def main() -> None:
            self.engine = Engine(self.settings, decide, self._upstream or upstream,  # type: ignore[arg-type]
                                 opaque=opaque if opaque_port else None,
                                 access_log=self.records.append, stats=self.stats.append)
            self.server = await self.loop.create_server(
                lambda: self.engine.protocol(self._downstream), "127.0.0.1", 0)  # type: ignore[union-attr]
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(main())
        self.loop.run_forever()

    def call(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the engine's loop and return its result."""
        fut: futures.Future[object] = futures.Future()
        self.loop.call_soon_threadsafe(lambda: fut.set_result(fn()))
        return fut.result(10)

    def wait_records(self, n: int, timeout: float = 5.0) -> list[RequestRecord]:
        deadline = time.time() + timeout
        while len(self.records) < n and time.time() < deadline:
            time.sleep(0.02)
        return list(self.records)

    def find(self, pred: Callable[[RequestRecord], bool], timeout: float = 5.0) -> list[RequestRecord]:
        """The records matching `pred`, waiting for at least one (records are emitted just after
        the response is written, so a client can see the response first)."""
        deadline = time.time() + timeout
        while True:
            found = [r for r in list(self.records) if pred(r)]
            if found or time.time() > deadline:
                return found
            time.sleep(0.01)

    def live_exchanges(self, timeout: float = 3.0) -> int:
        """Exchanges still open once clients are gone (waits `timeout` for stragglers): a leak
        if not 0, since every request must end in a record."""
        deadline = time.time() + timeout
        while True:
            n = self.call(lambda: len(self.engine.exchanges))  # type: ignore[union-attr]
            if n == 0 or time.time() > deadline:
                return n  # type: ignore[return-value]
            time.sleep(0.05)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            assert self.engine is not None
            await self.engine.shutdown()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def start_h2_origin() -> tuple[asyncio.AbstractServer, int]:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(_H2OriginProtocol, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


class H2Origin:
    """`_H2OriginProtocol` on its own loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.srv, self.port = self.loop.run_until_complete(start_h2_origin())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.srv.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def roundtrip(port: int, payload: bytes) -> bytes:
    """Send `payload` to 127.0.0.1:`port`, half-close, and read until the other side closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got
