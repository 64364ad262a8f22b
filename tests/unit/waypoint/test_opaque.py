"""Tunnels that are not HTTP are relayed untouched (L4), decided early or on the detection timer,
never left hanging: client-first bytes (a TLS ClientHello), server-first protocols (a banner before
the client says anything), half-close, and no upstream at all."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.unit.waypoint.harness import Proxy, by_header
from waypoint.http.settings import HttpSettings

pytestmark = pytest.mark.timeout(30)


class TcpEcho:
    """Sends a banner first (a server-first protocol), then echoes; FIN after the client's FIN."""

    def __init__(self, banner: bytes = b"220 banner\r\n") -> None:
        self.banner = banner
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with c:
            c.sendall(self.banner)
            while data := c.recv(65536):
                c.sendall(data)
            c.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEcho]:
    e = TcpEcho()
    yield e
    e.sock.close()


@pytest.fixture(scope="module")
def proxy(echo: TcpEcho) -> Iterator[Proxy]:
    p = Proxy(by_header({"default": 1}), opaque_port=echo.port, settings=HttpSettings(detect_timeout=0.3))
    yield p
    assert p.live_exchanges() == 0
    p.close()


def _recv_until(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def test_client_first_opaque_bytes_relayed_at_once(proxy: Proxy) -> None:
    hello = b"\x16\x03\x01\x00\xa5" + bytes(range(256)) * 40
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(hello)
        s.shutdown(socket.SHUT_WR)                  # half-close: the reply still comes back
        got = _recv_until(s, 12 + len(hello))
    assert got == b"220 banner\r\n" + hello
    assert time.monotonic() - t0 < 0.3 + 1          # decided on the first byte, not the timer
    assert proxy.find(lambda r: r.protocol == "TCP" and r.bytes_received == len(hello))


def test_server_first_protocol_gets_relayed_after_detect_timeout(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        t0 = time.monotonic()
        assert _recv_until(s, 12) == b"220 banner\r\n"      # the client said nothing
        assert 0.25 < time.monotonic() - t0 < 2
        s.sendall(b"EHLO x\r\n")
        assert _recv_until(s, 8) == b"EHLO x\r\n"


def test_no_opaque_upstream_closes_instead_of_hanging() -> None:
    p = Proxy(by_header({"default": 1}), settings=HttpSettings(detect_timeout=0.3))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"\x00\x01binary")
            assert s.recv(100) == b""
        assert p.find(lambda r: r.response_flags == "NR")
    finally:
        p.close()


def test_opaque_tunnels_get_istios_tcp_metrics_reported_by_the_waypoint(echo: TcpEcho) -> None:
    """The engine's tcp_stats hook: "open" when the upstream is attached, "close" with the bytes
    at the end; the waypoint's Telemetry turns them into istio_tcp_* with reporter="waypoint"."""
    from prometheus_client import CollectorRegistry

    from ambit.dataplane.telemetry.metrics import Metrics
    from ambit.model import Workload
    from waypoint.telemetry import Telemetry

    client = Workload(uid="demo/client", name="client", namespace="demo", ips=["127.0.0.1"], node="n",
                      service_account="client", identity="spiffe://cluster.local/ns/demo/sa/client",
                      labels={"app": "client", "version": "v1"})
    tcp = Metrics(CollectorRegistry())
    tel = Telemetry(None, None, lambda ip: client if ip == "127.0.0.1" else None, tcp=tcp)
    events: list[str] = []
    p = Proxy(by_header({"default": 1}), opaque_port=echo.port, settings=HttpSettings(detect_timeout=0.3))
    try:
        assert p.engine is not None
        p.engine.tcp_stats = lambda rec, event: (events.append(event), tel.tcp(rec, event))  # type: ignore[attr-defined]
        payload = b"\x16\x03\x01" + b"x" * 1000
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            assert _recv_until(s, 12 + len(payload)) == b"220 banner\r\n" + payload
        deadline = time.monotonic() + 5
        while events != ["open", "close"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert events == ["open", "close"]
        sel = {"reporter": "waypoint", "source_workload": "client", "source_app": "client", "source_version": "v1",
               "request_protocol": "tcp", "connection_security_policy": "none", "response_flags": "-"}
        got = {s.name: s.value for fam in tcp.registry.collect() for s in fam.samples
               if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in sel.items())}
        assert got == {"istio_tcp_connections_opened_total": 1, "istio_tcp_connections_closed_total": 1,
                       "istio_tcp_received_bytes_total": len(payload), "istio_tcp_sent_bytes_total": 12 + len(payload)}
    finally:
        p.close()


def test_an_open_opaque_tunnels_bytes_show_at_each_scrape_and_are_counted_once(echo: TcpEcho) -> None:
    """Istio's proxies report a long-lived TCP connection's bytes while it is open; the waypoint
    added an opaque tunnel's at its close only (none on any dashboard until then)."""
    from prometheus_client import CollectorRegistry

    from ambit.dataplane.telemetry.metrics import Metrics
    from waypoint.telemetry import Telemetry

    tcp = Metrics(CollectorRegistry())
    tel = Telemetry(None, None, lambda ip: None, tcp=tcp)
    p = Proxy(by_header({"default": 1}), opaque_port=echo.port, settings=HttpSettings(detect_timeout=0.3))

    def scrape() -> tuple[float, float, float]:
        def read() -> tuple[float, float, float]:
            got = {s.name: s.value for fam in tcp.registry.collect() for s in fam.samples}
            return (got.get("istio_tcp_received_bytes_total", 0.0), got.get("istio_tcp_sent_bytes_total", 0.0),
                    got.get("istio_tcp_connections_closed_total", 0.0))
        return p.call(read)     # type: ignore[return-value]   # on the engine's loop, as a scrape is
    try:
        assert p.engine is not None
        p.engine.tcp_stats = tel.tcp  # type: ignore[attr-defined]
        payload = b"\x16\x03\x01" + b"x" * 1000
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(payload)
            assert _recv_until(s, 12 + len(payload)) == b"220 banner\r\n" + payload
            assert scrape() == (len(payload), 12 + len(payload), 0)     # open: its bytes so far
            s.sendall(b"more")
            assert _recv_until(s, 4) == b"more"
            assert scrape() == (len(payload) + 4, 16 + len(payload), 0)
            s.shutdown(socket.SHUT_WR)
            assert _recv_until(s, 1) == b""
        deadline = time.monotonic() + 5
        while scrape()[2] != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scrape() == (len(payload) + 4, 16 + len(payload), 1) and not tcp.live     # each byte once
    finally:
        p.close()
