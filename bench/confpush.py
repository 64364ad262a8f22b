"""Controller config push latency with 1000 synthetic pods (real gRPC on loopback, in process).

A ConfigServer is given a 1000-Workload state; a ConfigClient subscribed as a ztunnel receives it.
Then one Workload changes at a time and we time `update()` -> the client's `on_change` seeing that
change. This is the path a pod event takes from the controller's translation to a node's ztunnel,
including the server's debounce (its default), delta computation, encoding, the wire and the
client's decode/stage/apply.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry

from ambit.configclient import Backoff, ConfigClient, ConfigUpdate, NodeInfo
from ambit.model import Workload, spiffe_id
from bench import stats


@dataclass(frozen=True)
class PushResult:
    pods: int
    initial_s: float
    latencies_ms: list[float]

    def summary(self) -> dict[str, float]:
        s = sorted(self.latencies_ms)
        return {"initial_s": self.initial_s, "p50_ms": stats.percentile(s, 50, "push latencies"),
                "p99_ms": stats.percentile(s, 99, "push latencies"), "max_ms": s[-1]}


def synthetic_workloads(n: int, nodes: int = 2) -> list[Workload]:
    out = []
    for i in range(n):
        ns, sa = f"ns-{i % 20}", f"sa-{i % 50}"
        out.append(Workload(uid=f"uid-{i:05d}", name=f"pod-{i}", namespace=ns, ips=[f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"],
                            node=f"node{i % nodes + 1}", service_account=sa,
                            identity=spiffe_id("cluster.local", ns, sa), labels={"app": f"app-{i % 40}", "rev": "0"},
                            enrolled=True))
    return out


async def measure(pods: int = 1000, changes: int = 50, timeout: float = 30.0) -> PushResult:
    from controller.configserver import ConfigServer

    srv = ConfigServer(registry=CollectorRegistry())
    port = await srv.start()
    state = synthetic_workloads(pods)
    seen: dict[str, float] = {}          # "uid@rev" -> perf_counter when on_change saw it
    got_version: dict[str, float] = {}
    arrived = asyncio.Event()

    def on_change(u: ConfigUpdate) -> None:
        now = time.perf_counter()
        got_version.setdefault(u.system_version, now)
        for name, res in u.changed.items():
            if isinstance(res, Workload):
                seen[f"{name}@{res.labels.get('rev')}"] = now
        arrived.set()

    client = ConfigClient(f"127.0.0.1:{port}", NodeInfo("ztunnel", "node1", instance_id="bench"),
                          [Workload.TYPE], on_change, backoff=Backoff(0.05, 0.5))

    async def until(pred, what: str) -> None:  # noqa: ANN001
        deadline = time.perf_counter() + timeout
        while not pred():
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"config push: timed out after {timeout}s waiting for {what}")
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), left)
            except TimeoutError:
                pass

    try:
        t0 = time.perf_counter()
        srv.update({Workload.TYPE: state}, "v0")
        await client.start()
        await until(lambda: "v0" in got_version, f"the initial {pods}-pod snapshot")
        initial = got_version["v0"] - t0
        lat: list[float] = []
        for i in range(1, changes + 1):
            k = (i * 7919) % pods
            w = state[k]
            state[k] = replace(w, labels={**w.labels, "rev": str(i)})
            key = f"{w.uid}@{i}"
            t = time.perf_counter()
            srv.update({Workload.TYPE: state}, f"v{i}")
            await until(lambda key=key: key in seen, f"change {i} ({key})")
            lat.append((seen[key] - t) * 1000.0)
        return PushResult(pods=pods, initial_s=initial, latencies_ms=lat)
    finally:
        await client.stop()
        # Let the server see the stream end before it shuts down; stopping it mid-stream makes
        # grpc print a CancelledError traceback from its RPC task (harmless, but alarming).
        await asyncio.sleep(0.2)
        await srv.stop(1.0)


def run(pods: int = 1000, changes: int = 50) -> PushResult:
    return asyncio.run(measure(pods, changes))
