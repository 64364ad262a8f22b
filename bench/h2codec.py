"""Microbench: CPU per request/response exchange through each HTTP/2 codec, in memory.

    python -m bench.h2codec [-n 20000] [--reps 5] [--concurrency 1 10] [--shape request connect]

A client and a server connection of the same codec are wired back to back in one process (no
sockets, no event loop), and each exchange is what the waypoint's two HTTP/2 legs do per request:
the client sends HEADERS (h2load's request headers, END_STREAM), the server decodes them and answers
HEADERS (nginx's response headers for the bench's 1 KiB) plus 1 KiB of DATA with END_STREAM, the
client decodes that and acknowledges the DATA. `--concurrency 10` sends 10 streams per round trip
(h2load -m 10). `--shape connect` is HBONE's control path instead: a CONNECT tunnel opened (HEADERS
both ways, no END_STREAM) and closed (empty DATA with END_STREAM both ways), no payload. CPU is `time.process_time()`; codecs alternate within each rep and the cell is
the median over reps. This is a measurement tool, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web.bench-mesh.svc.cluster.local"),
           (b":path", b"/1k"), (b"user-agent", b"h2load nghttp2/1.52.0"), (b"x-canary", b"true")]
RESPONSE = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Thu, 03 Dec 2026 07:00:00 GMT"),
            (b"content-type", b"application/octet-stream"), (b"content-length", b"1024"),
            (b"last-modified", b"Wed, 02 Dec 2026 10:00:00 GMT"), (b"etag", b"\"6929a0e0-400\""),
            (b"accept-ranges", b"bytes"), (b"x-version", b"v2")]
BODY = b"x" * 1024
CONNECT = [(b":method", b"CONNECT"), (b":authority", b"10.42.1.7:8080"),
           (b"forwarded", b"for=10.42.0.5"), (b"baggage", b"k8s.namespace.name=bench-mesh")]
WINDOW = 1024 * 1024


def h2_pair() -> tuple[Any, Any]:
    def make(client: bool) -> Any:
        return h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))
    return make(True), make(False)


def nghttp2_pair() -> tuple[Any, Any]:
    from ambit.dataplane.nghttp2 import NgHttp2Connection
    return (NgHttp2Connection(True, initial_window=WINDOW), NgHttp2Connection(False, initial_window=WINDOW))


CODECS: dict[str, Callable[[], tuple[Any, Any]]] = {"h2": h2_pair, "nghttp2": nghttp2_pair}


def connect(make: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    c, s = make()
    c.initiate_connection()
    s.initiate_connection()
    for _ in range(3):      # SETTINGS both ways, then their ACKs
        s.receive_data(c.data_to_send())
        c.receive_data(s.data_to_send())
    return c, s


def run(make: Callable[[], tuple[Any, Any]], n: int, concurrency: int) -> float:
    """CPU seconds for `n` exchanges on one connection pair."""
    c, s = connect(make)
    RR, DR, SE = h2.events.RequestReceived, h2.events.DataReceived, h2.events.StreamEnded
    done = 0
    t0 = time.process_time()
    while done < n:
        for _ in range(concurrency):
            c.send_headers(c.get_next_available_stream_id(), REQUEST, end_stream=True)
        for ev in s.receive_data(c.data_to_send()):
            if isinstance(ev, RR):
                s.send_headers(ev.stream_id, RESPONSE)
                s.send_data(ev.stream_id, BODY, end_stream=True)
        for ev in c.receive_data(s.data_to_send()):
            if isinstance(ev, DR):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, SE):
                done += 1
        s.receive_data(c.data_to_send())     # the WINDOW_UPDATEs
    return time.process_time() - t0


def run_connect(make: Callable[[], tuple[Any, Any]], n: int, concurrency: int) -> float:
    """CPU seconds for `n` CONNECT tunnels opened and closed on one connection pair."""
    c, s = connect(make)
    SE = h2.events.StreamEnded
    done = 0
    t0 = time.process_time()
    while done < n:
        sids = []
        for _ in range(concurrency):
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, CONNECT)
            sids.append(sid)
        for ev in s.receive_data(c.data_to_send()):
            s.send_headers(ev.stream_id, [(b":status", b"200")])
        c.receive_data(s.data_to_send())
        for sid in sids:
            c.send_data(sid, b"", end_stream=True)
        for ev in s.receive_data(c.data_to_send()):
            if isinstance(ev, SE):
                s.send_data(ev.stream_id, b"", end_stream=True)
        done += sum(isinstance(ev, SE) for ev in c.receive_data(s.data_to_send()))
    return time.process_time() - t0


SHAPES = {"request": run, "connect": run_connect}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20000, help="exchanges per rep and codec")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 10])
    p.add_argument("--codec", nargs="+", default=list(CODECS), choices=list(CODECS))
    p.add_argument("--shape", nargs="+", default=["request"], choices=list(SHAPES))
    a = p.parse_args(argv)
    print(f"python {sys.version.split()[0]}, n={a.n}, reps={a.reps}: CPU µs per exchange (client+server legs)")
    for shape in a.shape:
        for conc in a.concurrency:
            samples: dict[str, list[float]] = {k: [] for k in a.codec}
            for _ in range(a.reps):
                for name in a.codec:
                    samples[name].append(SHAPES[shape](CODECS[name], a.n, conc) / a.n * 1e6)
            cells = {k: statistics.median(v) for k, v in samples.items()}
            line = ", ".join(f"{k} {v:.1f} [{min(samples[k]):.1f}–{max(samples[k]):.1f}]" for k, v in cells.items())
            ratio = f"; h2/nghttp2 {cells['h2'] / cells['nghttp2']:.1f}×" if len(cells) == 2 else ""
            print(f"  {shape}, {conc:>3} stream(s) per round trip: {line}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
