"""The lab's Gateway API conformance backend (ambitctl.lab.apps.conformance_echo), run as the lab
runs it: echo-basic's retry simulation, WebSocket echo and h2c port, with real clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import websocket

from tests.unit.ambitctl.test_apps import free_port


@pytest.fixture
def echo() -> Iterator[tuple[int, int]]:
    port, h2c = free_port(), free_port()
    p = subprocess.Popen([sys.executable, "-m", "ambitctl.lab.apps.conformance_echo", "--port", str(port),
                          "--h2c-port", str(h2c)], env={**os.environ, "POD_NAME": "infra-backend-v1"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if curl(f"http://127.0.0.1:{port}/")[0] == "200":
                break
            time.sleep(0.05)
        yield port, h2c
    finally:
        p.terminate()
        p.wait(10)


def curl(url: str, *opts: str) -> tuple[str, str]:
    p = subprocess.run(["curl", "-s", "-m", "5", *opts, "-w", "\n%{http_code}", url], capture_output=True, text=True)
    body, _, code = p.stdout.rpartition("\n")
    return code, body


def test_retry_simulation_fails_succeed_after_tries_then_echoes(echo: tuple[int, int]) -> None:
    port, _ = echo
    url = f"http://127.0.0.1:{port}/retry/x?uuid=a&succeedAfter=2&responseCode=503"
    assert [curl(url)[0] for _ in range(3)] == ["503", "503", "200"]
    # without responseCode a failing try is a reset connection: curl gets no status
    reset = f"http://127.0.0.1:{port}/retry/x?uuid=b&succeedAfter=1"
    assert [curl(reset)[0] for _ in range(2)] == ["000", "200"]


def test_h2c_port_answers_prior_knowledge_only(echo: tuple[int, int]) -> None:
    _, h2c = echo
    code, body = curl(f"http://127.0.0.1:{h2c}/", "--http2-prior-knowledge")
    assert (code, json.loads(body)["proto"], json.loads(body)["pod"]) == ("200", "HTTP/2.0", "infra-backend-v1")
    assert curl(f"http://127.0.0.1:{h2c}/") == ("400", "Expected h2c request")


def test_websocket_echoes_text_and_binary(echo: tuple[int, int]) -> None:
    port, _ = echo
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=5)
    try:
        ws.send("Websocket Support!")
        assert ws.recv() == "Websocket Support!"
        ws.send_binary(bytes(range(1, 8)))
        assert ws.recv() == bytes(range(1, 8))
        ws.send("x" * 70_000)               # a 64-bit length
        assert ws.recv() == "x" * 70_000
    finally:
        ws.close()


def test_seen_lists_what_the_pod_received(echo: tuple[int, int]) -> None:
    port, _ = echo
    curl(f"http://127.0.0.1:{port}/mirror?rid=r1", "-H", "X-Probe: 1")
    [req] = json.loads(curl(f"http://127.0.0.1:{port}/_conformance/seen?contains=r1")[1])
    assert (req["path"], req["headers"]["x-probe"]) == ("/mirror?rid=r1", "1")
