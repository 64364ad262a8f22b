"""A pod app for the capture-hole tests: records every byte it is sent, per connection.

Listens on each given port on `::` with IPV6_V6ONLY off, so one socket takes IPv4 and IPv6 alike:
an address family that reaches the pod reaches this app. Every accepted connection is read to EOF
(or for 3 s) and reported as one JSON line on stdout, which the lab keeps as the pod's log. The
tests assert on this app-side record: what the app really received, not what a client believes.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading


def serve(port: int) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(64)
    while True:
        c, peer = s.accept()
        threading.Thread(target=record, args=(c, peer, port), daemon=True).start()


def record(c: socket.socket, peer: tuple, port: int) -> None:
    data = b""
    c.settimeout(3.0)
    try:
        while len(data) < 65536:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        c.close()
    host = peer[0].removeprefix("::ffff:")
    print(json.dumps({"port": port, "peer": host, "bytes": len(data), "data": data[:256].decode("latin-1")}),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ports", type=int, nargs="+")
    args = ap.parse_args()
    for p in args.ports:
        threading.Thread(target=serve, args=(p,), daemon=True).start()
    print(json.dumps({"ready": args.ports}), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
