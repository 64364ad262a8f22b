"""ztunnel's memory over pod churn, in one process, without the lab.

Why: the lab soak (tests/lab/test_soak.py, docs/operations.md "Memory over time") churns a few
hundred pods a run at ~1.5 pods/s, and a slope of a KB or two per pod is within its RSS noise. This
drives the same ztunnel objects much faster: each churned pod's Workload arrives on the config
stream (`MeshState.apply`, a delta as the controller sends it), the pod is served (its HBONE
`:15008` server and its outbound listener on a loopback address of its own, registered and
announced to the registry's listeners as `PodRegistry.add` does, minus the netns: see
bench/inproc_ztunnel.py's `LoopbackPod`), it makes one connection out (through a Service VIP to a
fixed echo pod, over HBONE with its own certificate) and receives one (from a fixed client pod, over
HBONE to its own :15008, delivered to its app), then is removed (`PodRegistry.remove`) and its
Workload deleted. As in the soak, each pod has its own app/version labels and namespace every third
pod, and three service accounts take turns, so identities are fetched and forgotten.

    .venv/bin/python bench/inproc_churn.py [--pods 3000] [--every 250] [--warm 500] [--expiry 20] [--ips 250]

Every `--every` pods (after a full collection and malloc_trim, as ztunnel trims every 10 s) it
prints the live objects tracked by the collector, RSS and glibc's bytes in use, and at the end the
slopes fitted from `--warm` pods on, and the object types that grew (`--trace N`: and the
allocation sites, by tracemalloc, that grew most). Series expire after
`--expiry` pods (the metrics' clock advances a second a pod) as with `--metrics-expiry`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import socket
import tracemalloc

from ambit.configclient import ConfigUpdate
from ambit.dataplane.identity import IdentityManager
from ambit.dataplane.memory import heap_trimmer, malloc_stats
from ambit.dataplane.settings import TunnelSettings
from ambit.dataplane.telemetry.accesslog import PolicySink, StreamSink
from ambit.dataplane.telemetry.metrics import Metrics
from ambit.model import Endpoint, Service, ServicePort, Workload
from ambit.zds import PodInfo
from bench.inproc_ztunnel import (
    APP_PORT,
    HBONE_PORT,
    REQUEST,
    RESPONSE,
    SVC_PORT,
    TD,
    LoopbackPod,
    _Fetcher,
    pod_listener,
    run,
)
from controller.ca import CertificateAuthority, generate_root
from ztunnel.meshstate import MeshState
from ztunnel.pods import serve_plaintext
from ztunnel.proxy import Proxy

CLIENT_IP, SERVER_IP, VIP = "127.60.0.2", "127.60.0.3", "127.60.0.100"


class App(asyncio.Protocol):
    """A pod's app: one HTTP/1.0 response per connection, then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(RESPONSE)      # type: ignore[attr-defined]
        self.transport.close()


def workload(name: str, ns: str, ip: str, sa: str, labels: dict[str, str],
             services: dict[str, list[int]] | None = None) -> Workload:
    return Workload(uid=f"uid-{ns}-{name}", name=name, namespace=ns, ips=[ip], node="node1", service_account=sa,
                    identity=f"spiffe://{TD}/ns/{ns}/sa/{sa}", labels=labels, enrolled=True, protocol="HBONE",
                    services=services or {})


async def fetch(port: int) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(REQUEST)
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    if not data.startswith(b"HTTP/1.0 200"):
        raise SystemExit(f"a churned pod's connection failed: {data[:80]!r}")


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def slope(points: list[tuple[int, float]]) -> float:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


async def main(a: argparse.Namespace) -> None:
    now = [0.0]
    client = workload("client", "demo", CLIENT_IP, "client", {"app": "client"})
    server = workload("echo", "demo", SERVER_IP, "echo", {"app": "echo"}, {"demo/echo": [APP_PORT]})
    svc = Service(name="echo", namespace="demo", hostname="echo.demo.svc.cluster.local", vips=[VIP],
                  ports=[ServicePort(SVC_PORT, APP_PORT, "http")], endpoints=[Endpoint(server.uid, SERVER_IP, "node1")])
    state: dict[str, Workload] = {w.uid: w for w in (client, server)}
    cfg = MeshState(root_namespace="ambit-system")
    cfg.apply(ConfigUpdate(Workload.TYPE, "0", dict(state), frozenset(), dict(state)))
    cfg.apply(ConfigUpdate(Service.TYPE, "0", {svc.resource_name: svc}, frozenset(), {svc.resource_name: svc}))
    identities = IdentityManager(_Fetcher(CertificateAuthority(generate_root(TD), TD)))
    targets: dict[int, tuple[str, int]] = {}      # outbound listener port -> original destination
    proxy = Proxy(cfg, identities=identities, metrics=Metrics(expiry=a.expiry, clock=lambda: now[0]),
                  original_dst=lambda s: targets[s.getsockname()[1]],
                  tunnel=TunnelSettings(connect_timeout=5, cert_wait=5))
    proxy.access_log = PolicySink(StreamSink(open(os.devnull, "w")), proxy.access_log_config)  # noqa: SIM115
    loop = asyncio.get_running_loop()
    fixed = []
    cpod = LoopbackPod(PodInfo(client.uid, client.name, "demo", CLIENT_IP, "node1", "client"), -1)
    spod = LoopbackPod(PodInfo(server.uid, server.name, "demo", SERVER_IP, "node1", "echo"), -1)
    for p in (cpod, spod):
        proxy.registry.pods[p.pod.uid] = p
        proxy.registry.by_ip[p.pod.ip] = p
        proxy.registry._notify("add", p)
    fixed.append(await loop.create_server(App, SERVER_IP, APP_PORT, reuse_address=True))
    fixed.append(await proxy._serve_hbone(spod, pod_listener(SERVER_IP, HBONE_PORT)))
    csock = socket.create_server(("127.0.0.1", 0), backlog=128)
    fixed.append(serve_plaintext(cpod, csock, proxy.outbound))
    client_port = csock.getsockname()[1]
    trim = heap_trimmer()
    rows: list[tuple[int, int, int, int]] = []
    if a.trace:
        tracemalloc.start(8)
    census: collections.Counter[str] = collections.Counter()
    try:
        for i in range(a.pods):
            now[0] += 1.0
            ns = f"churn{i}" if i % 3 == 1 else "default"
            k = i % a.ips              # a node's pod addresses are reused as its pods come and go
            ip = f"127.61.{k // 200}.{k % 200 + 10}"
            w = workload(f"churn-{i}", ns, ip, f"churn{i % 3}", {"app": f"churn{i}", "version": f"v{i}"})
            state[w.uid] = w
            cfg.apply(ConfigUpdate(Workload.TYPE, str(i + 1), {w.uid: w}, frozenset(), dict(state)))
            pod = LoopbackPod(PodInfo(w.uid, w.name, ns, ip, "node1", w.service_account), -1)
            app = await loop.create_server(App, ip, APP_PORT, reuse_address=True)
            out = socket.create_server(("127.0.0.1", 0), backlog=16)
            out_port = out.getsockname()[1]
            targets[out_port] = (VIP, SVC_PORT)
            pod.servers.append(await proxy._serve_hbone(pod, pod_listener(ip, HBONE_PORT)))
            pod.servers.append(serve_plaintext(pod, out, proxy.outbound))
            proxy.registry.pods[w.uid] = pod
            proxy.registry.by_ip[ip] = pod
            proxy.registry._notify("add", pod)
            await fetch(out_port)                   # from the churned pod, to the echo Service
            targets[client_port] = (ip, APP_PORT)
            await fetch(client_port)                # to the churned pod, from the client
            await asyncio.sleep(0.01)              # the inbound side's records
            if i == 0:      # both connections were tunnelled, each side labelled with the churned pod
                seen = [line for line in proxy.metrics.exposition().decode().splitlines()
                        if line.startswith("istio_tcp_connections_opened_total") and "churn-0" in line
                        and 'connection_security_policy="mutual_tls"' in line]
                if len(seen) < 2:
                    raise SystemExit(f"the first churned pod's connections were not both tunnelled: {seen}")
            await proxy.registry.remove(w.uid, drain=0)
            del targets[out_port]
            app.close()
            await app.wait_closed()
            del state[w.uid]
            cfg.apply(ConfigUpdate(Workload.TYPE, f"{i + 1}r", {}, frozenset({w.uid}), dict(state)))
            del w, pod, app, out
            if (i + 1) % a.every == 0:
                await asyncio.sleep(0.1)
                gc.collect()
                if trim is not None:
                    trim()
                objs = gc.get_objects()
                if i + 1 == a.warm or (not census and i + 1 > a.warm):
                    census = collections.Counter(type(o).__name__ for o in objs)
                    if a.trace:
                        first = tracemalloc.take_snapshot()
                m = malloc_stats() or {}
                rows.append((i + 1, len(objs), rss_kb(), m.get("in_use_kb", 0)))
                del objs
                print(f"pods {i + 1:5d}: {rows[-1][1]:7d} objects, RSS {rows[-1][2]:6d} kB, "
                      f"malloc in use {rows[-1][3]:6d} kB", flush=True)
        fit = [r for r in rows if r[0] >= a.warm]
        if len(fit) >= 2:
            print(f"from pod {fit[0][0]} to {fit[-1][0]}: "
                  f"{slope([(r[0], r[1]) for r in fit]):+.3f} objects, "
                  f"{slope([(r[0], r[2]) for r in fit]) * 1024:+.0f} B RSS, "
                  f"{slope([(r[0], r[3]) for r in fit]) * 1024:+.0f} B malloc in use per pod")
            end = collections.Counter(type(o).__name__ for o in gc.get_objects())
            span = fit[-1][0] - fit[0][0]
            grown = sorted(((c - census[t], t) for t, c in end.items() if c - census[t] > span / 50), reverse=True)
            print("types grown since pod", fit[0][0], ":", ", ".join(f"{t} +{k}" for k, t in grown[:15]) or "none")
            if a.trace:
                diff = tracemalloc.take_snapshot().compare_to(first, "traceback")
                print(f"traced by tracemalloc: {sum(d.size_diff for d in diff) / span:+.0f} B per pod; the sites that grew most:")
                for d in diff[:a.trace]:
                    print(f"  {d.size_diff / span:+7.1f} B {d.count_diff / span:+6.3f} blocks per pod")
                    for fr in d.traceback.format()[-6:]:
                        print("     ", fr)
    finally:
        for s in fixed:
            s.close()
        await proxy.close()
        await identities.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=3000)
    ap.add_argument("--every", type=int, default=250, help="measure every N pods")
    ap.add_argument("--warm", type=int, default=500, help="fit the slopes from this pod on")
    ap.add_argument("--expiry", type=float, default=20.0, help="series expiry, in pods (default 20)")
    ap.add_argument("--ips", type=int, default=250,
                    help="pod addresses, reused in turn as a node's pod CIDR is (default 250)")
    ap.add_argument("--trace", type=int, default=0, metavar="N",
                    help="also trace allocations (slower) and print the N sites that grew most")
    ap.add_argument("--asyncio", action="store_true", help="the stdlib loop instead of uvloop")
    run(main, ap.parse_args())
