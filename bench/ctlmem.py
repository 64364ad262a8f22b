"""The controller's memory by what it holds: `python -m bench.ctlmem --pods 1000 5000 --subscribers 0 1000 2000 4000`.

For each cluster size a fresh controller process (bench.ctrlscale's synthetic cluster through
`Controller.on_snapshot`, its config server on the accept gate as deployed) is measured (VmRSS) at
steps: empty, then `--connections` idle gRPC connections held (HTTP/2 up, no call), then N ztunnel
config streams, each on its own connection (as a ztunnel worker holds it), subscribed to the
ztunnel's types and ACKing every response, up to each count in `--subscribers`. The clients are
real grpc.aio channels in another process (one connection each: a local subchannel pool). Prints
one line per step and the fitted costs: what docs/operations.md ("Sizing the controller") quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import queue
import resource
import time
from typing import Any

BATCH = 100         # subscribers opened at once
STEP_SETTLE = 2.0   # seconds after a step for the controller's pushes and frees to settle


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, n), hard), hard))


def _controller(pods: int, ready: Any, stop: Any) -> None:
    """The controller: translate the cluster, serve it on the accept gate until `stop` is set."""
    _raise_nofile(65_536)
    from bench.ctrlscale import cluster, on_snapshot

    async def go() -> None:
        objs = cluster(pods)
        ctl = on_snapshot(objs)
        del objs
        server = ctl.server
        server.debounce = 0.0
        gc.collect()
        port = await server.start("127.0.0.1:0", max_connections=0, max_connections_per_peer=100_000)
        ready.put(port)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, stop.wait)
        await server.stop(None)
    asyncio.run(go())


def _clients(port: int, commands: Any, done: Any) -> None:
    """Hold what the parent asks for: ("conns", n) idle connections, ("subs", n) ztunnel streams."""
    _raise_nofile(65_536)
    import grpc

    from ambit.api import config_pb2, config_pb2_grpc
    from ambit.configclient import NodeInfo
    from ztunnel.meshstate import TYPES

    opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 256 << 20)]

    async def go() -> None:
        idle: list[Any] = []
        streams: list[asyncio.Task[None]] = []
        synced: list[int] = []

        async def subscriber(i: int) -> None:
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts)
            call = config_pb2_grpc.ConfigServiceStub(ch).DeltaStream()
            node = NodeInfo("ztunnel", f"node-{i % 100}", instance_id=f"w{i}").to_proto()
            for t in TYPES:
                await call.write(config_pb2.DeltaRequest(node=node, type_url=t, subscribe=True))
            seen: set[str] = set()
            while (resp := await call.read()) is not grpc.aio.EOF:
                await call.write(config_pb2.DeltaRequest(type_url=resp.type_url, response_nonce=resp.nonce))
                if len(seen) < len(TYPES):
                    seen.add(resp.type_url)
                    if len(seen) == len(TYPES):
                        synced.append(i)
        loop = asyncio.get_running_loop()
        while True:
            kind, n = await loop.run_in_executor(None, commands.get)
            if kind == "stop":
                break
            if kind == "conns":
                while len(idle) < n:
                    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts)
                    await ch.channel_ready()
                    idle.append(ch)
                while len(idle) > n:
                    await idle.pop().close()
            else:
                while len(synced) < n:
                    # In batches, each synced before the next opens: one client process parsing
                    # thousands of initial syncs at once misses the controller's keepalive pings.
                    while len(streams) < min(n, len(synced) + BATCH):
                        streams.append(asyncio.create_task(subscriber(len(streams))))
                    if any(t.done() for t in streams):
                        raise RuntimeError([t.exception() for t in streams if t.done()][:1])
                    await asyncio.sleep(0.1)
            done.put(len(synced))
        for t in streams:
            t.cancel()
    asyncio.run(go())


def measure(pods: int, connections: int, subscribers: list[int]) -> list[tuple[str, int, float]]:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    ctl = ctx.Process(target=_controller, args=(pods, ready, stop))
    ctl.start()
    port = ready.get()
    commands, done = ctx.Queue(), ctx.Queue()
    cli = ctx.Process(target=_clients, args=(port, commands, done))
    cli.start()
    out: list[tuple[str, int, float]] = []

    def step(kind: str, n: int) -> None:
        started = time.perf_counter()
        if kind != "empty":
            commands.put((kind, n))
            while True:                      # the clients' process may die (descriptors): say so, do not hang
                try:
                    done.get(timeout=1)
                    break
                except queue.Empty:
                    if not cli.is_alive():
                        raise RuntimeError(f"the clients' process ended at {kind} {n}") from None
        time.sleep(STEP_SETTLE)
        mib = rss_mib(ctl.pid)
        out.append((kind, n, mib))
        print(f"pods={pods:6d} {kind:5s} {n:6d}  controller RSS {mib:8.1f} MiB  "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
    try:
        step("empty", 0)
        if connections:
            step("conns", connections)
            step("conns", 0)
        for n in subscribers:
            if n:
                step("subs", n)
    finally:
        commands.put(("stop", 0))
        cli.join(30)
        stop.set()
        ctl.join(30)
        for p in (cli, ctl):
            if p.is_alive():
                p.kill()
    return out


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares MiB per item."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--connections", type=int, default=2000, help="idle connections held at the second step")
    ap.add_argument("--subscribers", type=int, nargs="+", default=[0, 1000, 2000, 4000])
    a = ap.parse_args()
    for pods in a.pods:
        rows = measure(pods, a.connections, sorted(a.subscribers))
        base = rows[0][2]
        if a.connections:
            conn = next(m for k, n, m in rows if k == "conns" and n)
            print(f"pods={pods}: empty {base:.1f} MiB; per idle connection "
                  f"{(conn - base) * 1024 / a.connections:.1f} KiB")
        subs = [(n, m) for k, n, m in rows if k == "subs"]
        if len(subs) > 1:
            print(f"pods={pods}: per subscriber (its connection included) {slope(subs) * 1024:.1f} KiB")


if __name__ == "__main__":
    main()
