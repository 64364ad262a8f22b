"""The accept gate's cost: `python -m bench.gatesync [SUBSCRIBERS] [WORKLOADS] [RUNS]`.

The controller's config server (in this process) serves an initial sync, SUBSCRIBERS ztunnel
streams of WORKLOADS workloads each, to real grpc clients in another process; once served directly
by grpc (`max_connections_per_peer=0`), once through the accept gate (controller/acceptgate.py),
RUNS times each, alternating. Prints the wall time and this process's CPU (the controller's) for
each: what docs/operations.md ("Per-client bounds") quotes.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import sys
import time
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from ambit.api import config_pb2, config_pb2_grpc
from ambit.configclient import NodeInfo
from ambit.model import Workload, spiffe_id


def _clients(port: int, subscribers: int, out: Any) -> None:
    async def go() -> None:
        async def one(i: int) -> int:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                                 options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
                call = config_pb2_grpc.ConfigServiceStub(ch).DeltaStream()
                await call.write(config_pb2.DeltaRequest(node=NodeInfo("ztunnel", f"n{i}").to_proto(),
                                                         type_url=Workload.TYPE, subscribe=True))
                resp = await call.read()
                call.cancel()
                return int(resp.ByteSize())
        started = time.perf_counter()
        sizes = await asyncio.gather(*(one(i) for i in range(subscribers)))
        out.put((time.perf_counter() - started, sum(sizes)))
    asyncio.run(go())


def _workload(i: int) -> Workload:
    return Workload(uid=f"w{i}", name=f"pod-{i}", namespace="default", node=f"node-{i % 50}",
                    ips=[f"10.{i // 62500}.{(i // 250) % 250}.{i % 250}"], service_account="default",
                    identity=spiffe_id("cluster.local", "default", "default"), labels={"app": f"w{i}"}, enrolled=True)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _run(per_peer: int, subscribers: int, workloads: int) -> tuple[float, float, int]:
    from controller.configserver import ConfigServer
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
    server.update({Workload.TYPE: [_workload(i) for i in range(workloads)]}, "v1")
    port = await server.start("127.0.0.1:0", max_connections_per_peer=per_peer)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    before = _cpu()
    proc = ctx.Process(target=_clients, args=(port, subscribers, out))
    proc.start()
    loop = asyncio.get_running_loop()
    wall, total = await loop.run_in_executor(None, out.get)
    cpu = _cpu() - before
    await loop.run_in_executor(None, proc.join)
    await server.stop(None)
    return wall, cpu, total


async def main(subscribers: int, workloads: int, runs: int) -> None:
    for _ in range(runs):
        for label, per_peer in (("direct", 0), ("gated", 1000)):
            wall, cpu, total = await _run(per_peer, subscribers, workloads)
            print(f"{label}: {subscribers} subscribers x {workloads} workloads ({total / 1e6:.0f} MB): "
                  f"{wall:.2f} s wall, controller CPU {cpu:.2f} s", flush=True)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:4]]
    asyncio.run(main(*(args + [200, 10_000, 3][len(args):])))
