"""The lab's echo app with what Gateway API's conformance backend (echo-basic) adds to it, so
upstream's retry, h2c and WebSocket tests run against lab pods as they do against echo-basic:

- `/retry/...?uuid=U&succeedAfter=N[&responseCode=C][&delayRetry=D]`: the first N requests of U
  fail (after D, a Go duration such as `300ms`), with status C, or without C by a TCP reset
  (SO_LINGER 0) after the request was read; then the echo reply. Upstream counts per uuid too.
- `/ws`: a WebSocket endpoint echoing every text and binary message (RFC 6455, no extensions).
- `--h2c-port`: HTTP/2 with prior knowledge (RFC 9113 3.3) answering the echo reply with
  `proto: HTTP/2.0`; an HTTP/1.1 request there gets 400 ("Expected h2c request"), as upstream's.
- `/_conformance/seen?contains=S`: the requests this pod received (path and headers, the last
  1,000) whose path contains S. Upstream reads its backends' logs to see a mirrored request;
  the lab's tests ask the pod.

Everything else is ambitctl.lab.apps.echo's reply (its `pod` names the backend).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time
from collections import deque
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events

from ambit.duration import parse_go_duration
from ambitctl.lab.apps.echo import EchoHandler, Server, _headers

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class ConformanceHandler(EchoHandler):
    """EchoHandler, with echo-basic's retry simulation and WebSocket echo."""

    def _reply(self) -> None:
        path = urlsplit(self.path).path
        srv: ConformanceServer = self.server  # type: ignore[assignment]
        if path == "/_conformance/seen":
            want = parse_qs(urlsplit(self.path).query).get("contains", [""])[0]
            with srv.retry_lock:
                out = json.dumps([r for r in srv.seen if want in r["path"]]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        with srv.retry_lock:
            srv.seen.append({"path": self.path, "headers": _headers(self.headers.items())})
        if path.startswith("/retry/") and self._retry_failed():
            return
        if path == "/ws" and (self.headers.get("upgrade") or "").lower() == "websocket":
            self._websocket()
            return
        super()._reply()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _reply

    def _retry_failed(self) -> bool:
        """echo-basic's retrySimulationHandler: True when this try failed (answered or reset)."""
        q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        srv: ConformanceServer = self.server  # type: ignore[assignment]
        with srv.retry_lock:
            n = srv.attempts.get(q.get("uuid", ""), 0)
            fail = n < int(q.get("succeedAfter") or 0)
            if fail:
                srv.attempts[q.get("uuid", "")] = n + 1
        if not fail:
            return False
        delay = q.get("delayRetry", "")
        time.sleep(parse_go_duration(delay) if delay else 0.0)
        if q.get("responseCode"):
            self.send_response(int(q["responseCode"]))
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        return True

    def _websocket(self) -> None:
        key = (self.headers.get("sec-websocket-key") or "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while (frame := self._ws_frame()) is not None:
            opcode, payload = frame
            head = bytes([0x80 | opcode])
            n = len(payload)
            head += bytes([n]) if n < 126 else (b"\x7e" + struct.pack("!H", n) if n < 65536
                                                 else b"\x7f" + struct.pack("!Q", n))
            self.wfile.write(head + payload)
            self.wfile.flush()
            if opcode == 0x8:
                return

    def _ws_frame(self) -> tuple[int, bytes] | None:
        """One client frame (opcode, unmasked payload); None at the end of the stream."""
        h = self.rfile.read(2)
        if len(h) < 2:
            return None
        n = h[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.rfile.read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if h[1] & 0x80 else b"\0\0\0\0"
        data = self.rfile.read(n)
        return h[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class ConformanceServer(Server):
    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)
        self.attempts: dict[str, int] = {}
        self.seen: deque[dict[str, object]] = deque(maxlen=1000)
        self.retry_lock = threading.Lock()


def h2c_reply(headers: dict[str, str]) -> bytes:
    """The echo reply of an HTTP/2 request, as upstream's h2c port answers (`proto` says HTTP/2)."""
    return json.dumps({"pod": os.environ.get("POD_NAME", socket.gethostname()),
                       "namespace": os.environ.get("POD_NAMESPACE", ""), "proto": "HTTP/2.0",
                       "method": headers.get(":method", ""), "path": headers.get(":path", ""),
                       "headers": {k: v for k, v in headers.items() if not k.startswith(":")}}).encode() + b"\n"


def serve_h2c(conn: socket.socket) -> None:
    """One h2c connection: every request stream gets the echo reply when its request ends."""
    with conn:
        first = b""
        while len(first) < len(PREFACE) and PREFACE.startswith(first):
            chunk = conn.recv(len(PREFACE) - len(first))
            if not chunk:
                return
            first += chunk
        if first != PREFACE:
            body = b"Expected h2c request"
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(body), body))
            return
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        h2c.initiate_connection()
        events = h2c.receive_data(first)
        heads: dict[int, dict[str, str]] = {}
        while True:
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    heads[ev.stream_id] = {str(k): str(v) for k, v in ev.headers}
                elif isinstance(ev, h2.events.DataReceived):
                    h2c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if isinstance(ev, h2.events.StreamEnded) and ev.stream_id in heads:
                    out = h2c_reply(heads.pop(ev.stream_id))
                    h2c.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "application/json"),
                                                    ("content-length", str(len(out)))])
                    h2c.send_data(ev.stream_id, out, end_stream=True)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    conn.sendall(h2c.data_to_send())
                    return
            conn.sendall(h2c.data_to_send())
            data = conn.recv(65536)
            if not data:
                return
            events = h2c.receive_data(data)


def h2c_listen(port: int) -> None:
    lsn = socket.create_server(("0.0.0.0", port), reuse_port=False, backlog=128)
    while True:
        conn, _ = lsn.accept()
        threading.Thread(target=serve_h2c, args=(conn,), daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=3000)
    ap.add_argument("--h2c-port", type=int, default=3001)
    args = ap.parse_args()
    threading.Thread(target=h2c_listen, args=(args.h2c_port,), daemon=True).start()
    ConformanceServer(("0.0.0.0", args.port), ConformanceHandler).serve_forever()


if __name__ == "__main__":
    main()
