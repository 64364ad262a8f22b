"""A connection that reaches the waypoint while it drains is served, and told to go.

After SIGTERM the waypoint's HBONE listener keeps accepting for `--http-drain-accept` seconds
(`HBONEServer.close(accept_for=...)`): its peers still send it tunnels until they hear it is going.
The engine serves what arrives then as draining, as Envoy does during a graceful drain: an HTTP/1.1
response says `Connection: close`, an HTTP/2 client gets GOAWAY after its streams. Before, the
engine closed every connection that arrived while it drained, so those requests failed.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.unit.waypoint.harness import Origin, Proxy, by_header


@pytest.fixture()
def draining() -> Iterator[Proxy]:
    origin = Origin()
    proxy = Proxy(by_header({"default": origin.port}))
    marked = threading.Event()

    def mark() -> None:
        assert proxy.engine is not None
        proxy.engine.draining = True        # what Engine.shutdown sets first; the listener stays
        marked.set()
    proxy.loop.call_soon_threadsafe(mark)
    assert marked.wait(5)
    yield proxy
    proxy.close()
    origin.close()


def curl(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "-m", "10", "-D", "-", "-o", "/dev/null", *args,
                           f"http://127.0.0.1:{port}/late"], capture_output=True, text=True, timeout=20)


def test_an_http1_request_arriving_during_the_drain_is_answered_with_connection_close(draining: Proxy) -> None:
    r = curl(draining.port, "--http1.1")
    assert r.returncode == 0, r.stderr
    head = r.stdout.lower()
    assert head.startswith("http/1.1 200") and "connection: close" in head


def test_an_http2_request_arriving_during_the_drain_is_answered(draining: Proxy) -> None:
    r = curl(draining.port, "--http2-prior-knowledge")
    assert r.returncode == 0, r.stderr
    assert r.stdout.lower().startswith("http/2 200")
