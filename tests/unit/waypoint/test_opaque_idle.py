"""tcp.idleTimeout for opaque tunnels (waypoint/http/opaque.py): a tunnel that carries no bytes
either way for the idle timeout is closed on both sides; traffic keeps it open."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.unit.waypoint.harness import Proxy, by_header
from tests.unit.waypoint.test_opaque import TcpEcho
from waypoint.http.settings import HttpSettings

pytestmark = pytest.mark.timeout(30)


def test_an_idle_opaque_tunnel_is_closed_and_a_busy_one_is_not() -> None:
    echo = TcpEcho()
    p = Proxy(by_header({"default": 1}), opaque_port=echo.port,
              settings=HttpSettings(detect_timeout=0.2, tcp_idle_timeout=0.6))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as busy, \
                socket.create_connection(("127.0.0.1", p.port), timeout=5) as idle:
            for s in (busy, idle):
                s.sendall(b"\x16\x03\x01hello")        # not HTTP: relayed at once
            t0 = time.monotonic()
            assert read_until(idle, b"hello").startswith(b"220 banner")
            read_until(busy, b"hello")      # the banner and the echo may arrive in one read or two
            eof_at: list[float] = []

            def wait_eof() -> None:
                idle.settimeout(5)
                while idle.recv(100):
                    pass
                eof_at.append(time.monotonic() - t0)
            reader = threading.Thread(target=wait_eof)
            reader.start()
            for _ in range(6):                          # 1.2 s of traffic every 0.2 s
                time.sleep(0.2)
                busy.sendall(b"ping")
                assert read_until(busy, b"ping").endswith(b"ping")
            reader.join(5)
            assert eof_at and 0.5 <= eof_at[0] <= 1.1, eof_at     # closed for idleness
            busy.sendall(b"still")                      # the busy one lived past that
            assert read_until(busy, b"still") == b"still"
        rec = p.find(lambda r: r.detail == "idle timeout")
        assert len(rec) == 1 and rec[0].protocol == "TCP"
    finally:
        p.close()
        echo.sock.close()


def read_until(s: socket.socket, marker: bytes) -> bytes:
    """Everything received until `marker` ends it (TCP may split or join the peer's writes)."""
    got = b""
    while not got.endswith(marker):
        chunk = s.recv(100)
        if not chunk:
            break
        got += chunk
    return got
