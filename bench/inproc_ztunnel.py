"""ztunnel's cost per NEW connection, in one process, without the lab.

Why: the bench's "new tunnelled connections per second" is closed-loop wrk through two ztunnels on
a shared 2-core box, where CPU per connection moves by tens of percent between neighbouring runs.
This drives the same path of `ztunnel.proxy.Proxy` over loopback (127.0.0.0/8 addresses stand for
the pods, as tests/unit/ztunnel/test_proxy_inprocess.py does): a client connects to the outbound
handler, which reads the original destination (injected), routes through a Service VIP to the
server workload, opens a tunnel on the pooled mTLS HBONE connection (real TLS 1.3, certificates
from a real in-process CA), the inbound side admits it and connects to the app, the app answers
one HTTP/1.0 request and closes, and both sides write their access line (to /dev/null) and Istio
metrics. Both ztunnel sides, the client and the app run in this one process.

    .venv/bin/python bench/inproc_ztunnel.py [--conns 2000] [--concurrency 8] [--runs 3] [--profile F]
                                             [--opcodes [--top N]] [--requests K] [--hold N [--top N]]

Prints CPU µs per connection (best of `--runs`, the whole process: both ztunnel sides plus the
in-process client and app, which are the same in every tree) and, with `--profile F`, one run
under cProfile: Python calls per connection, all and those in ztunnel/ and ambit/ (exact, not
sampled: the figure to compare on a busy box), and the top functions; with `--opcodes`, the
bytecodes CPython executes per connection (bench/inproc_waypoint.py's counter) and the N functions
executing the most. `--requests K` sends K - 1 kept-alive HTTP/1.1 requests before the last one on
each connection: the difference between K > 1 and K = 1, divided by K - 1, is the cost of a request
on an open tunnel (the L4 latency runs' steady state). Compare trees by running it alternately with
each on PYTHONPATH.

`--hold N` measures memory instead: N connections opened through both sides, each with one
kept-alive request answered, then held open; prints what they added per connection, by
tracemalloc (Python's allocator: both ztunnel sides and the in-process client and app, whose
asyncio streams appear as `asyncio/streams.py`) and by a count of live objects per type, and the
`--top` allocation sites. The bench's "ztunnel RSS with 1000 connections" is this, plus what C
libraries (OpenSSL, nghttp2) and the kernel's socket memory add.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import os
import pstats
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ambit.configclient import ConfigUpdate
from ambit.dataplane.identity import FetchResult, IdentityManager
from ambit.dataplane.settings import TunnelSettings
from ambit.dataplane.telemetry.accesslog import PolicySink, StreamSink
from ambit.dataplane.telemetry.metrics import Metrics
from ambit.model import Endpoint, Service, ServicePort, Workload
from ambit.zds import PodInfo
from controller.ca import CertificateAuthority, generate_root
from ztunnel.meshstate import MeshState
from ztunnel.pods import PodProxy, serve_plaintext
from ztunnel.proxy import Proxy

TD = "cluster.local"
CLIENT_IP, SERVER_IP, VIP = "127.0.60.2", "127.0.60.3", "127.0.60.100"
APP_PORT, SVC_PORT, HBONE_PORT = 18180, 80, 15008
REQUEST = b"GET / HTTP/1.0\r\nHost: echo\r\n\r\n"
RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024
# `--requests K`: K keep-alive requests per connection, the steady state of the L4 latency runs
KA_REQUEST = b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n"
KA_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024


class _Fetcher:
    """The CertificateFetcher protocol served by the in-process CA."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca

    async def fetch(self, identity: str, csr_pem: bytes, ttl_seconds: int) -> FetchResult:
        chain = self.ca.sign_csr(csr_pem, identity, dt.timedelta(seconds=ttl_seconds))
        return FetchResult(chain, self.ca.trust_bundle().pems())


class LoopbackPod(PodProxy):
    """A pod whose netns is ours: sockets are plain loopback ones bound to its address, delivery binds
    the client's address directly (what IP_TRANSPARENT does for a real pod). Shared with
    tests/unit/ztunnel/test_proxy_inprocess.py."""

    def _bound(self, ip: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        s.setblocking(False)
        s.bind((ip, 0))
        return s

    def socket(self) -> socket.socket:
        return self._bound(self.pod.ip)

    def delivery_socket(self, src_ip: str) -> socket.socket:
        return self._bound(src_ip)


def pod_listener(ip: str, port: int, backlog: int = 128) -> socket.socket:
    """A pod's listener on its loopback address (its :15008, as PodRegistry hands it to
    `_serve_hbone`). Shared with bench/inproc_churn.py and tests/unit/ztunnel/test_proxy_inprocess.py."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(backlog)
    s.setblocking(False)
    return s


def run(main: Callable[[argparse.Namespace], Coroutine[Any, Any, None]], args: argparse.Namespace) -> None:
    """`main(args)` on uvloop, as ztunnel runs (the stdlib loop with `args.asyncio`)."""
    if not args.asyncio:
        import uvloop
        uvloop.install()
    asyncio.run(main(args))
    sys.stdout.flush()


def _workload(name: str, ip: str, services: dict[str, list[int]]) -> Workload:
    return Workload(uid=f"uid-demo-{name}", name=name, namespace="demo", ips=[ip], node="node1",
                    service_account=name, identity=f"spiffe://{TD}/ns/demo/sa/{name}", labels={"app": name},
                    enrolled=True, protocol="HBONE", services=services)


def _mesh() -> tuple[MeshState, Workload, Workload]:
    client = _workload("client", CLIENT_IP, {})
    server = _workload("echo", SERVER_IP, {"demo/echo": [APP_PORT]})
    svc = Service(name="echo", namespace="demo", hostname="echo.demo.svc.cluster.local", vips=[VIP],
                  ports=[ServicePort(SVC_PORT, APP_PORT, "http")],
                  endpoints=[Endpoint(server.uid, SERVER_IP, "node1")])
    cfg = MeshState(root_namespace="ambit-system")
    for t, items in ((Workload.TYPE, {w.uid: w for w in (client, server)}), (Service.TYPE, {svc.resource_name: svc})):
        cfg.apply(ConfigUpdate(t, "v1", items, frozenset(), items))
    return cfg, client, server


class _App(asyncio.Protocol):
    """The server pod's app: one HTTP/1.0 response per connection, then close (as nginx does)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data.startswith(KA_REQUEST):
            self.transport.write(KA_RESPONSE)   # type: ignore[attr-defined]
            return
        self.transport.write(RESPONSE)      # type: ignore[attr-defined]
        self.transport.close()


async def _client(port: int, n: int, failures: list[str], requests: int = 1) -> None:
    """One wrk connection at a time: connect, `requests - 1` keep-alive requests, one last request,
    read to EOF, close."""
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(requests - 1):
            w.write(KA_REQUEST)
            if await r.readexactly(len(KA_RESPONSE)) != KA_RESPONSE:
                failures.append("keep-alive response differs")
        w.write(REQUEST)
        data = await r.read()
        w.close()
        if not data.startswith(b"HTTP/1.0 200"):
            failures.append(repr(data[:60]))


async def _setup() -> tuple[Proxy, IdentityManager, list[asyncio.AbstractServer], int]:
    cfg, client, server = _mesh()
    ca = CertificateAuthority(generate_root(TD), TD)
    identities = IdentityManager(_Fetcher(ca))
    proxy = Proxy(cfg, identities=identities, metrics=Metrics(),
                  access_log=None, original_dst=lambda s: (VIP, SVC_PORT),
                  tunnel=TunnelSettings(connect_timeout=5, cert_wait=5))
    proxy.access_log = PolicySink(StreamSink(open(os.devnull, "w")), proxy.access_log_config)  # noqa: SIM115
    cpod = LoopbackPod(PodInfo(client.uid, client.name, "demo", CLIENT_IP, "node1", client.service_account), -1)
    spod = LoopbackPod(PodInfo(server.uid, server.name, "demo", SERVER_IP, "node1", server.service_account), -1)
    proxy.registry.by_ip[CLIENT_IP] = cpod
    identities.prefetch([client.identity, server.identity])
    await identities.get(server.identity, 10)
    await identities.get(client.identity, 10)
    loop = asyncio.get_running_loop()
    app = await loop.create_server(_App, SERVER_IP, APP_PORT, reuse_address=True)
    hbone = await proxy._serve_hbone(spod, pod_listener(SERVER_IP, HBONE_PORT, 1024))
    capture = socket.create_server(("127.0.0.1", 0), backlog=1024)     # the pod's outbound listener
    out = serve_plaintext(cpod, capture, proxy.outbound)
    port = capture.getsockname()[1]
    return proxy, identities, [app, out, hbone], port  # type: ignore[list-item]


async def _window(port: int, conns: int, concurrency: int, requests: int = 1) -> float:
    failures: list[str] = []
    t0 = time.process_time()
    await asyncio.gather(*(_client(port, conns // concurrency, failures, requests) for _ in range(concurrency)))
    await asyncio.sleep(0)
    cpu = time.process_time() - t0
    if failures:
        raise SystemExit(f"{len(failures)} failed connections, e.g. {failures[0]}")
    return cpu


async def _hold(port: int, n: int, top: int) -> None:
    import collections
    import gc
    import tracemalloc

    def census() -> collections.Counter[str]:
        return collections.Counter(type(o).__name__ for o in gc.get_objects())

    gc.collect()
    tracemalloc.start(1)
    before, objs_before = tracemalloc.take_snapshot(), census()
    held = []
    try:
        for _ in range(n):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            held.append(w)
            w.write(KA_REQUEST)
            if await r.readexactly(len(KA_RESPONSE)) != KA_RESPONSE:
                raise SystemExit("keep-alive response differs")
        await asyncio.sleep(0.1)
        gc.collect()
        after, objs_after = tracemalloc.take_snapshot(), census()
    finally:
        tracemalloc.stop()
        for w in held:
            w.close()
    diff = after.compare_to(before, "lineno")
    print(f"{n} connections held: {sum(d.size_diff for d in diff) / n:.0f} traced bytes per connection "
          "(both ztunnel sides, client and app)")
    grown = sorted(((c - objs_before[t], t) for t, c in objs_after.items() if c - objs_before[t] >= n / 2),
                   reverse=True)
    print("objects per connection: " + ", ".join(f"{t} {k / n:.2f}" for k, t in grown))
    for d in diff[:top]:
        fr = d.traceback[0]
        print(f"  {d.size_diff / n:7.0f} B {d.count_diff / n:5.2f} blocks  {fr.filename.rsplit('/', 2)[-2:]}:{fr.lineno}")


def _report_profile(prof: cProfile.Profile, conns: int, path: str, top: int) -> None:
    prof.dump_stats(path)
    st = pstats.Stats(path)
    total = sum(v[1] for v in st.stats.values())      # type: ignore[attr-defined]
    ours = sum(v[1] for k, v in st.stats.items()       # type: ignore[attr-defined]
               if "/ztunnel/" in k[0] or "/ambit/" in k[0])
    print(f"Python calls per connection: {total / conns:.1f} (in ztunnel/ and ambit/: {ours / conns:.1f})")
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][1])[:top]   # type: ignore[attr-defined]
    for (f, line, name), v in rows:
        print(f"  {v[1] / conns:7.2f}/conn  {f.rsplit('/', 2)[-2:]}:{line} {name}")


async def _main(args: argparse.Namespace) -> None:
    proxy, identities, servers, port = await _setup()
    try:
        await _window(port, max(args.concurrency, 200), args.concurrency)     # warm: pool, caches
        if args.hold:
            await _hold(port, args.hold, args.top)
            return
        k = args.requests
        best = min([await _window(port, args.conns, args.concurrency, k) for _ in range(args.runs)])
        print(f"CPU per connection of {k} request(s) (best of {args.runs} x {args.conns}): "
              f"{1e6 * best / args.conns:.1f} µs")
        if args.opcodes:
            from bench.inproc_waypoint import Opcodes
            with Opcodes(by_function=True) as ops:
                await _window(port, args.conns, args.concurrency, k)
            print(f"opcodes: {ops.n / args.conns:.0f} bytecodes/connection of {k} request(s) ({args.conns} connections)")
            for name, n in (ops.by_function or {}).most_common(args.top):
                print(f"  {n / args.conns:7.1f}  {name}")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            await _window(port, args.conns, args.concurrency)
            prof.disable()
            _report_profile(prof, args.conns, args.profile, args.top)
    finally:
        for s in servers:
            s.close()
        await proxy.close()
        await identities.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=2000, help="connections per window (default 2000)")
    ap.add_argument("--concurrency", type=int, default=8, help="connections at a time, as wrk's (default 8)")
    ap.add_argument("--requests", type=int, default=1,
                    help="requests per connection, all but the last kept alive (default 1: wrk's new-connection run)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", default="", help="also one window under cProfile, stats written here")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--opcodes", action="store_true",
                    help="also one window counting CPython bytecodes per connection (deterministic, slow)")
    ap.add_argument("--hold", type=int, default=0, metavar="N",
                    help="measure the memory N held connections add instead of CPU")
    ap.add_argument("--asyncio", action="store_true", help="the stdlib loop instead of uvloop")
    run(_main, ap.parse_args())


if __name__ == "__main__":
    main()
