"""The waypoint's CPU per proxied request, in one process, without the lab.

Why: the lab probe (1000 req/s through ztunnels and HBONE) is a minute per run and noisy on a
shared box; this drives the same request path of `WaypointProxy` (decide: authn, authz, routing;
upstream: cluster and endpoint choice; the engine: H1 server, exchange, pools, H1 client; the
access line and Istio's metrics) over loopback TCP, with nginx as the origin and h2load as the
client in their own processes, so the process's CPU time is the waypoint's alone. HBONE is left
out (plain TCP both ways): it is measured by the probe.

    .venv/bin/python bench/inproc_waypoint.py [--rate 1000] [--seconds 5] [--runs 3] [--profile F] [--h2c] [--opcodes [--top N]] [--watchdog]

Prints the best of `--runs` windows as CPU µs per request; `--opcodes` counts the bytecodes
CPython executes per request instead (deterministic: the figure to compare on a busy box) (`--rate 0`: closed loop, as fast as
it goes). `--profile F` runs one window under cProfile and writes its stats to F, printing the
calls per request and the top functions. Compare trees by running it alternately with each on
PYTHONPATH (the box is noisy: alternate, do not run one tree's runs back to back).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from ambit.configclient import ConfigUpdate
from ambit.dataplane.process import LOG_FORMAT
from ambit.model import Endpoint, Service, ServicePort, Workload
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http import Engine, UpstreamTarget
from waypoint.http.plug import connect_tcp
from waypoint.settings import load
from waypoint.telemetry.metrics import HttpMetrics

NGINX_CONF = """daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000; location / {{ return 200 "hello from nginx\\n"; }} }} }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_origin(d: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port))
    p = subprocess.Popen(["nginx", "-c", str(d / "nginx.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p, port
        time.sleep(0.05)
    raise RuntimeError("nginx did not start")


def build_proxy(origin_port: int) -> WaypointProxy:
    """A waypoint for Service default/app (VIP 10.96.0.10:80, two mesh endpoints) with its
    Istio metrics, as `waypoint.serve` builds it."""
    from ambit.dataplane.telemetry.metrics import Metrics
    ident = "spiffe://cluster.local/ns/default/sa/app"
    wls = [Workload(uid=f"uid-{i}", name=f"app-{i}", namespace="default", ips=[f"127.0.0.{i}"], node="n1",
                    service_account="app", identity=ident, labels={"app": "app"}, protocol="HBONE",
                    services={"default/app": [80]}) for i in (1, 2)]
    svc = Service(name="app", namespace="default", hostname="app.default.svc.cluster.local", vips=["10.96.0.10"],
                  ports=[ServicePort(80, origin_port, "http", "HTTP")],
                  endpoints=[Endpoint(w.uid, w.ips[0]) for w in wls], waypoint="default/waypoint")
    s = load(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "n2"])
    cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
    cfg.apply(ConfigUpdate(Workload.TYPE, "1", {}, frozenset(), {w.uid: w for w in wls}))
    cfg.apply(ConfigUpdate(Service.TYPE, "1", {}, frozenset(), {svc.resource_name: svc}))
    metrics = Metrics()
    return WaypointProxy(s, cfg, None, http_metrics=HttpMetrics(metrics.registry), registry=metrics.registry,
                         tcp_metrics=metrics)


async def serve(proxy: WaypointProxy, origin_port: int) -> int:
    """The engine as `WaypointProxy.start` makes it, its upstream connecting over TCP to nginx
    instead of HBONE to the endpoint (the rest of the target, as chosen, is kept)."""
    made: dict[int, tuple[UpstreamTarget, UpstreamTarget]] = {}

    def upstream(fwd, head, down, exclude=frozenset()):  # type: ignore[no-untyped-def]
        t = proxy.upstream(fwd, head, down, exclude)
        if t is None:
            return None
        # one replacement per target the waypoint made (it caches them per View), so the harness
        # adds no dataclass per request that the real waypoint does not make
        hit = made.get(id(t))
        if hit is None or hit[0] is not t:
            hit = made[id(t)] = (t, UpstreamTarget(t.key, t.address, lambda: connect_tcp("127.0.0.1", origin_port, 5),
                                                   t.protocol, t.cluster, t.response_headers))
        return hit[1]

    proxy.engine = engine = Engine(proxy.settings.http, proxy.decide, upstream, access_log=proxy._access_log,
                                   stats=proxy._stats, rng=proxy.rng)
    down, why = proxy.downstream("spiffe://cluster.local/ns/default/sa/client", "10.0.2.5", "10.96.0.10:80")
    assert down is not None, why
    server = await asyncio.get_running_loop().create_server(lambda: engine.protocol(down), "127.0.0.1", 0)
    return server.sockets[0].getsockname()[1]


async def drive(port: int, rate: int, seconds: float, conns: int, h2c: bool = False) -> int:
    """h2load, `conns` connections, one request in flight on each: HTTP/1.1 (--h1), or with `h2c`
    HTTP/2 with prior knowledge (the waypoint's h2c server side; the origin leg stays HTTP/1.1);
    returns the 2xx responses."""
    url = f"http://127.0.0.1:{port}/"
    if rate:
        args = ["--rps", f"{rate / conns:g}", "-D", f"{seconds:g}"]
    else:
        args = ["-D", f"{seconds:g}"]
    proto = [] if h2c else ["--h1"]
    p = await asyncio.create_subprocess_exec("h2load", *proto, "-c", str(conns), "-m", "1", *args, url,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await p.communicate())[0].decode()
    m = re.search(r"status codes: (\d+) 2xx", out)
    if m is None:
        raise RuntimeError(out)
    return int(m.group(1))


class Opcodes:
    """Counts the bytecodes CPython executes (sys.settrace with opcode events): the Python work
    per request as one deterministic number, unmoved by what else runs on the box (which moves
    CPU time by ±20 % here, and this VM has no hardware instruction counter). Slow: use a short
    window."""

    def __init__(self, by_function: bool = False) -> None:
        self.n = 0
        self.by_function: Counter[str] | None = Counter() if by_function else None

    def _global(self, frame, event, arg):  # type: ignore[no-untyped-def]
        frame.f_trace_opcodes = True
        return self._local

    def _local(self, frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "opcode":
            self.n += 1
            if self.by_function is not None:
                code = frame.f_code
                name = f"{code.co_filename.rsplit('/', 3)[-1]}:{code.co_firstlineno}:{code.co_qualname}"
                if code.co_filename == "<string>" and "self" in frame.f_locals:
                    name += f" ({type(frame.f_locals['self']).__qualname__})"
                self.by_function[name] += 1
        return self._local

    def __enter__(self) -> Opcodes:
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


async def main(a: argparse.Namespace) -> None:
    d = Path(tempfile.mkdtemp(prefix="inproc-wp-"))
    nginx, origin_port = start_origin(d)
    try:
        proxy = build_proxy(origin_port)
        port = await serve(proxy, origin_port)
        await drive(port, 0, 1, a.conns, a.h2c)        # warm up: pools, caches, the allocator
        if a.watchdog:      # the heartbeat and thread every serving process runs (process.serve_until_stopped)
            from ambit.dataplane import watchdog
            watchdog.start(0.0)
        best = None
        for _ in range(a.runs):
            if a.opcodes:
                with Opcodes(by_function=a.top > 0) as ops:
                    n = await drive(port, a.rate, a.seconds, a.conns, a.h2c)
                print(f"opcodes: {ops.n / n:.0f} bytecodes/request ({n} requests)")
                for name, k in (ops.by_function or Counter()).most_common(a.top):
                    print(f"  {k / n:7.1f}  {name}")
                break
            prof = cProfile.Profile() if a.profile else None
            c0 = time.process_time()
            if prof:
                prof.enable()
            n = await drive(port, a.rate, a.seconds, a.conns, a.h2c)
            if prof:
                prof.disable()
            us = (time.process_time() - c0) / n * 1e6
            print(f"run: {n} requests, {us:.1f} µs CPU/request", flush=True)
            best = us if best is None else min(best, us)
            if prof:
                prof.dump_stats(a.profile)
                st = pstats.Stats(prof)
                calls = sum(v[1] for v in st.stats.values())     # type: ignore[attr-defined]
                print(f"profile: {calls / n:.0f} Python calls/request")
                st.sort_stats("tottime").print_stats(25)
                break
        if best is not None:
            print(f"best: {best:.1f} µs CPU/request (rate {a.rate or 'closed loop'}, {a.conns} connections"
                  f"{', h2c' if a.h2c else ''})")
        await proxy.engine.shutdown()   # type: ignore[union-attr]
    finally:
        nginx.terminate()
        nginx.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=1000, help="requests/s in all (0: closed loop)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--profile", help="write cProfile stats of one window here")
    ap.add_argument("--watchdog", action="store_true", help="run the event-loop watchdog, as a served waypoint does")
    ap.add_argument("--h2c", action="store_true", help="the client speaks h2c (prior knowledge) instead of HTTP/1.1")
    ap.add_argument("--opcodes", action="store_true", help="count CPython bytecodes/request in one window instead")
    ap.add_argument("--top", type=int, default=0, help="with --opcodes: also the N functions executing the most")
    args = ap.parse_args()
    # the access line as the binary writes it (ambit.dataplane.process: one LOG_FORMAT stream handler)
    logging.basicConfig(stream=open(os.devnull, "w"), format=LOG_FORMAT, level=logging.INFO)  # noqa: SIM115
    if sys.platform != "linux":
        raise SystemExit("linux only")
    try:
        import uvloop
        uvloop.run(main(args))
    except ImportError:
        asyncio.run(main(args))
