"""Hold N open connections to an HTTP server: `python -m bench.holdconns HOST PORT N`.

`python -m bench.holdconns HOST PORT N [DEADLINE_S]`. Run inside a client pod. Each connection completes one keep-alive request (so, through the mesh,
it is established end to end: captured, tunnelled, delivered) and then stays open, idle. Prints
`READY <n> <failed>` once all are up and holds them until stdin closes; then closes them and
exits. This is what "ztunnel RSS with 1000 open connections" is measured against.

A connection that fails (refused, reset, no answer within 3 s) is retried up to twice and counted:
the count is a finding about the mesh, but it must not stop the memory measurement. Past the
deadline (default 20 s) no more connections are opened and READY reports how many are open.
"""

from __future__ import annotations

import resource
import socket
import sys
import time

REQUEST = b"GET /1k HTTP/1.1\r\nHost: bench\r\n\r\n"
TIMEOUT = 3.0
ATTEMPTS = 3


def read_response(s: socket.socket) -> int:
    """Read one response with a Content-Length body; return its status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection before the response headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for h in lines[1:]:
        k, _, v = h.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection mid-body")
        body += chunk
    return status


def open_one(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        s.settimeout(TIMEOUT)
        s.connect((host, port))
        s.sendall(REQUEST)
        status = read_response(s)
        if status != 200:
            raise ConnectionError(f"HTTP {status}")
        return s
    except BaseException:
        s.close()
        raise


def main(argv: list[str]) -> int:
    host, port, n = argv[0], int(argv[1]), int(argv[2])
    deadline = time.monotonic() + (float(argv[3]) if len(argv) > 3 else 20.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
    socks: list[socket.socket] = []
    failed = 0
    last = ""
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        for _attempt in range(ATTEMPTS):
            try:
                socks.append(open_one(host, port))
                break
            except OSError as e:   # ConnectionError and TimeoutError are OSErrors
                failed += 1
                last = f"{type(e).__name__}: {e}"
        else:
            print(f"ERROR connection {len(socks) + 1} failed {ATTEMPTS} times (last: {last}); "
                  f"{len(socks)} open, {failed} failed attempts", flush=True)
            return 1
    print(f"READY {len(socks)} {failed}", flush=True)
    sys.stdin.read()  # hold until the harness closes our stdin
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
