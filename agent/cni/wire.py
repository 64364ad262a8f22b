"""The plugin <-> agent messages: one JSON request and one JSON reply per unix stream connection,
each a single line. Standard library only (the plugin runs on the host, outside the agent image)."""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_LINE = 256 * 1024


def read_line(sock: socket.socket) -> dict[str, Any] | None:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ValueError(f"message longer than {MAX_LINE} bytes")
    if not buf.strip():
        return None
    msg = json.loads(buf)
    if not isinstance(msg, dict):
        raise ValueError("message is not a JSON object")
    return msg


def write_line(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


def call(path: str, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send `msg` to the agent at `path`, wait for its reply. Raises OSError if it cannot be asked."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        write_line(s, msg)
        reply = read_line(s)
    if reply is None:
        raise ConnectionError("the agent closed the connection without a reply")
    return reply
