"""Loopback ports for tests that start real processes: a free one to hand out, and whether one listens."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (the OS's pick; the process given it binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connectable(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class StubServer:
    """A TCP server on 127.0.0.1 that accepts every connection and, per connection, reads the
    request and sends `answer` (raw bytes), or nothing at all when `answer` is None: an API server
    or admin port that hangs, or one that answers garbage. `accepted` counts the connections."""

    def __init__(self, answer: bytes | None = None):
        import threading
        self.answer = answer
        self.accepted = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(c)
            if self.answer is not None:
                try:
                    c.recv(65536)
                    c.sendall(self.answer)
                except OSError:
                    pass

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)     # wakes the blocked accept()
        except OSError:
            pass
        self._sock.close()
        for c in self._conns:
            c.close()


def http_answer(body: bytes, status: str = "200 OK", content_type: str = "application/json") -> bytes:
    """A complete HTTP/1.1 response for StubServer."""
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body
