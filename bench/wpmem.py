"""What a waypoint's and a node agent's config costs at bench.ctrlscale's cluster sizes.

    python -m bench.ctrlscale --pods 1000 10000 --stage waypoint_memory     # in process (tracemalloc)
    python -m bench.wpmem --pods 0 1000 10000 --rss                         # + a real waypoint's RSS

In process, the waypoint's scoped view of the snapshot (the config server's `Snapshot.view` for a
waypoint subscriber, so what the server would send it) goes through what the waypoint's config
client does with a response: the received bodies kept (`TypeState.encoded`, for versions and the
file cache), decoded (`TypeState.stage`), handed to `WaypointConfig.apply`, committed. Each step's
retained memory is tracemalloc's current size after a collection, so only what stays held counts.
ztunnel's config (`MeshState`, its own scope) is measured the same way, for comparison.

`--rss` runs a real `python -m waypoint` process (one worker, no certificate: config only) against
a real controller's config server in another process, and reads its VmRSS once it has synced.

The agent's part: a node agent's view is its node's Workloads (about 100 at 10,000 pods over 100
nodes), and every update of them rebuilds its whole pod list (`workload_pods`) and compares a JSON
signature of it (agent/streamsource.py); `agent_delta` times that for one node.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bench.ctlmem import rss_mib
from bench.ctrlscale import cluster

WAYPOINT = "ns-0/waypoint"      # a waypoint Gateway of bench.ctrlscale's cluster


def translated(pods: int) -> dict[str, list[Any]]:
    """The controller's translation of the `pods`-pod cluster, by type."""
    from controller.sources.cache import LastGoodCache
    from controller.translate import translate
    cache = LastGoodCache()
    cache.replace(cluster(pods), owns=lambda _k: True)
    return translate(cache.objects()).by_type()


def scoped(by_type: Mapping[str, list[Any]], kind: str, name: str, types: Iterable[str],
           waypoint: str = "") -> dict[str, list[Any]]:
    """What the config server sends a subscriber: its view of each type, as `Encoded`s."""
    from ambit.configclient.node import NodeInfo
    from controller.configserver.snapshot import Snapshot
    snap = Snapshot.build(by_type, "v1", 1)
    node = NodeInfo(kind, name, waypoint, "bench")
    return {t: list(snap.view(node, t).values()) for t in types}


def _retained() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def client_apply(views: Mapping[str, list[Any]], apply: Callable[[Any], None]) -> tuple[list[tuple[str, int]], Any]:
    """Hand `views` to `apply` as the config client would (one response per type) under
    tracemalloc; (step, bytes retained) after each step, and what stays held."""
    from ambit.configclient.codec import Encoded
    from ambit.configclient.state import TypeState
    gc.collect()
    tracemalloc.start()
    try:
        t0 = _retained()
        # bodies as received (their own bytes, as grpc hands them over), kept by the client
        got = {t: [Encoded(e.name, e.version, bytes(bytearray(e.body))) for e in es] for t, es in views.items()}
        t1 = _retained()
        states = {t: TypeState(t) for t in views}
        staged = {t: states[t].stage("v1", es, ()) for t, es in got.items()}
        t2 = _retained()
        for s in staged.values():
            apply(s.update)
        t3 = _retained()
        for t, s in staged.items():
            states[t].commit(s)
        del staged, got
        t4 = _retained()
    finally:
        tracemalloc.stop()
    steps = [("bodies", t1 - t0), ("decoded", t2 - t1), ("apply", t3 - t2), ("total held", t4 - t0)]
    return steps, states


def waypoint_memory(by_type: Mapping[str, list[Any]]) -> tuple[list[tuple[str, int]], Any]:
    """The waypoint's config at this snapshot: the client's state and `WaypointConfig`."""
    from waypoint.authz import Waypoint
    from waypoint.config import TYPES, WaypointConfig
    views = scoped(by_type, "waypoint", "waypoint-0", TYPES, WAYPOINT)
    ns, name = WAYPOINT.split("/")
    cfg = WaypointConfig(Waypoint(ns, name), "cluster.local")
    steps, states = client_apply(views, cfg.apply)
    return steps, (cfg, states)


def ztunnel_memory(by_type: Mapping[str, list[Any]]) -> tuple[list[tuple[str, int]], Any]:
    """ztunnel's config at this snapshot (its scope: every type in full), for comparison."""
    from ztunnel.meshstate import TYPES, MeshState
    views = scoped(by_type, "ztunnel", "node-0", TYPES)
    state = MeshState()
    steps, states = client_apply(views, state.apply)
    return steps, (state, states)


def agent_delta(by_type: Mapping[str, list[Any]], repeat: int = 20) -> tuple[int, float]:
    """(pods on node-0, best ms) of what a node agent does per update of its Workloads: its pod
    list rebuilt and its signature compared (agent/streamsource.py, paths "controller")."""
    from agent.streamsource import WorkloadView, view_signature, workload_pods
    from ambit.configclient.node import NodeInfo
    from ambit.model import Workload
    from controller.configserver.snapshot import Snapshot
    snap = Snapshot.build(by_type, "v1", 1)
    names = set(snap.view(NodeInfo("agent", "node-0", "", "bench"), Workload.TYPE))
    mine = {w.uid: w for w in by_type.get(Workload.TYPE, []) if w.uid in names}
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        view = WorkloadView("v", workload_pods("node-0", mine.values()))
        view_signature(view)
        best = min(best, (time.perf_counter() - t0) * 1000)
    return len(mine), best


def waypoint_delta(by_type: Mapping[str, list[Any]], objs: list[dict[str, Any]],
                   repeat: int = 5) -> dict[str, float]:
    """Best ms of what a waypoint does with one churn's responses (50 pods gone, 50 new: the
    Workload and the Service responses), step by step as its config client takes them: decode
    and stage the delta, `WaypointConfig.apply`, commit, and record it in the config cache
    (`--config-cache`, which the manifests set; `ConfigClient._save_cache`, once per response: the
    event loop's part of a journal append, `cache_churn`)."""
    import asyncio
    import random
    from pathlib import Path

    from ambit.configclient import cache
    from ambit.configclient.state import TypeState
    from ambit.model import Service, Workload
    from bench.ctrlscale import churn
    from controller.sources.cache import LastGoodCache
    from controller.translate import translate
    from waypoint.authz import Waypoint
    from waypoint.config import TYPES, WaypointConfig
    c = LastGoodCache()
    c.replace(churn(objs, 50, random.Random(2)), owns=lambda _k: True)
    after = scoped(translate(c.objects()).by_type(), "waypoint", "waypoint-0", TYPES, WAYPOINT)
    before = scoped(by_type, "waypoint", "waypoint-0", TYPES, WAYPOINT)
    ns, name = WAYPOINT.split("/")
    path = Path(tempfile.mkdtemp(prefix="wpmem-")) / "config-cache.json"
    best: dict[str, float] = {}
    loop = asyncio.new_event_loop()
    for _ in range(repeat):
        writer = cache.CacheWriter(path, "waypoint")
        cfg = WaypointConfig(Waypoint(ns, name), "cluster.local")
        states = {t: TypeState(t) for t in TYPES}
        for t in TYPES:
            staged = states[t].stage("v1", before[t], ())
            cfg.apply(staged.update)
            states[t].commit(staged)
        loop.run_until_complete(writer.save(lambda s=states: full(s), cache.Delta(t, "v1", [], replace=False)))
        gc.collect()
        took = dict.fromkeys(("decode", "apply", "cache write"), 0.0)
        for t in (Workload.TYPE, Service.TYPE):
            held = states[t].versions()
            changed = [e for e in after[t] if held.get(e.name) != e.version]
            removed = set(held) - {e.name for e in after[t]}
            t0 = time.perf_counter()
            staged = states[t].stage("v2", changed, removed)
            t1 = time.perf_counter()
            cfg.apply(staged.update)
            states[t].commit(staged)
            t2 = time.perf_counter()
            c0 = time.thread_time()
            loop.run_until_complete(writer.save(lambda s=states: full(s), cache.Delta(
                t, "v2", [staged.encoded[n] for n in staged.update.changed], sorted(staged.update.removed))))
            c1 = time.thread_time()
            for k, v in (("decode", t1 - t0), ("apply", t2 - t1), ("cache write", c1 - c0)):
                took[k] += v * 1000
        loop.run_until_complete(writer.close())
        for k, v in took.items():
            best[k] = min(best.get(k, v), v)
    loop.close()
    shutil.rmtree(path.parent)
    return best


def full(states: Mapping[str, Any]) -> dict[str, Any]:
    """The cache's full state (a snapshot's content) from the client's per-type states, as the
    client hands it over (`ConfigClient._save_cache`: the committed maps, not copies)."""
    return {t: (s.system_version, s.encoded.values()) for t, s in states.items()}


def whole_file_json(path: Any, node_key: str, types: Mapping[str, Any]) -> None:
    """The cache as it was written before the journal (format 1: the whole file, JSON, after
    every response), kept here to measure against."""
    import json
    doc = {"format": 1, "node": node_key,
           "types": {t: {"system_version": sv, "resources": {e.name: {"version": e.version, "body": e.body.decode()}
                                                             for e in res}}
                     for t, (sv, res) in types.items()}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True))
    os.replace(tmp, path)


def off_cpu() -> float:
    """Seconds this thread has been neither running nor blocked: runnable, waiting for a CPU
    (the kernel's schedstat, brought up to date when the thread was last scheduled in, so exact
    when the running thread reads it); 0 where it is not available."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def layout_step(types: Mapping[str, Any], repeat: int = 7) -> float | None:
    """Best of `repeat`: the longest CPU ms the snapshot's layout runs between two of its pieces,
    the checksums left out (crc32 releases the GIL for the pieces it is given): the longest the
    writer's thread holds the GIL in a snapshot, whatever the machine's load. None for a layout
    that is not in pieces (before 2026-12-06, one `snapshot_payloads` call: time that instead)."""
    from ambit.configclient import cachelog
    if not hasattr(cachelog, "snapshot_pieces"):
        return None
    real = cachelog.zlib

    class NoCrc:
        @staticmethod
        def crc32(data: bytes, crc: int = 0) -> int:
            return 0
    best = None
    try:
        cachelog.zlib = NoCrc      # type: ignore[assignment]
        for _ in range(repeat):
            longest, last = 0.0, time.thread_time()
            for _piece in cachelog.snapshot_pieces("bench", "id", types):
                now = time.thread_time()
                longest, last = max(longest, now - last), now
            best = longest if best is None else min(best, longest)
    finally:
        cachelog.zlib = real
    return None if best is None else best * 1000


def cache_churn(objs: list[dict[str, Any]], kind: str, rounds: int = 10) -> dict[str, Any]:
    """What the config cache costs a `kind` ("waypoint" or "ztunnel") on its event loop, per
    response, over `rounds` successive churns (50 pods gone, 50 new; each a Workload and a Service
    response): the whole-file JSON rewrite of before (wall time: all of it ran on the loop, its
    write included), and the journal's append. Loop time is the
    main thread's CPU time over the save (the writer's thread runs on its own); "stall" is the
    longest the loop went without running a ready task meanwhile, with a task ready all the time
    (a ticker), so a thread that held the GIL would show there. On a loaded machine much of that
    gap can be the loop's thread waiting for a CPU, so "held" is the longest time it was blocked
    instead: the gap less its own CPU time and its run-queue wait (schedstat), which in a loop that
    only ticks is the time it waited for the GIL. (A GIL holder preempted by the machine's load
    still counts: the loop waits for it all the same.) A snapshot (the first write after a start, and each compaction) is timed
    the same way, ten times."""
    import asyncio
    import random
    import statistics
    from pathlib import Path

    from ambit.configclient import cache
    from ambit.configclient.state import TypeState
    from ambit.model import Service, Workload
    from bench.ctrlscale import churn
    from controller.sources.cache import LastGoodCache
    from controller.translate import translate
    from waypoint.config import TYPES as WP_TYPES
    from ztunnel.meshstate import TYPES as ZT_TYPES
    types, name, wp = (WP_TYPES, "waypoint-0", WAYPOINT) if kind == "waypoint" else (ZT_TYPES, "node-0", "")
    rng = random.Random(3)
    snaps = []
    for _ in range(rounds + 1):
        c = LastGoodCache()
        c.replace(objs, owns=lambda _k: True)
        snaps.append(scoped(translate(c.objects()).by_type(), kind, name, types, wp))
        objs = churn(objs, 50, rng)
    tmp = Path(tempfile.mkdtemp(prefix="cachechurn-"))
    states = {t: TypeState(t) for t in types}
    for t in types:
        states[t].commit(states[t].stage("v0", snaps[0][t], ()))
    out: dict[str, Any] = {"before": [], "append": [], "append stall": [], "append held": [], "snapshot": [],
                           "snapshot stall": [], "snapshot held": [], "record bytes": []}

    async def run() -> None:
        gaps = [0.0, 0.0]           # the longest gap; the longest the loop's thread was blocked
        done, ticking = asyncio.Event(), asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                await ticking.wait()
                last, cpu, waited = time.perf_counter(), time.thread_time(), off_cpu()
                while ticking.is_set():
                    await asyncio.sleep(0)
                    now, c, w = time.perf_counter(), time.thread_time(), off_cpu()
                    gaps[0] = max(gaps[0], now - last)
                    gaps[1] = max(gaps[1], now - last - (c - cpu) - (w - waited))
                    last, cpu, waited = now, c, w

        async def timed(save: Callable[[], Any]) -> tuple[float, float, float]:
            """(main thread CPU ms of one save, the loop idle otherwise; longest stall of another,
            the ticker running, wall and held). A record is idempotent, so saving it twice leaves
            the same state."""
            c0 = time.thread_time()
            await save()
            ms = (time.thread_time() - c0) * 1000
            ticking.set()
            for _ in range(3):          # the ticker's gap over the caller's own work is not ours
                await asyncio.sleep(0)
            gaps[:] = [0.0, 0.0]
            await save()
            ticking.clear()
            return ms, gaps[0] * 1000, gaps[1] * 1000

        tick = asyncio.create_task(ticker())
        writer = cache.CacheWriter(tmp / "new.cache", kind)

        async def snapshot() -> None:
            writer.plan.lost()
            await writer.save(lambda: full(states), cache.Delta(Workload.TYPE, "v0", []))

        for _ in range(10):         # a snapshot: what a start's first write and each compaction cost
            ms, stall, held = await timed(snapshot)
            out["snapshot"].append(ms)
            out["snapshot stall"].append(stall)
            out["snapshot held"].append(held)
        for i in range(1, rounds + 1):
            for t in (Workload.TYPE, Service.TYPE):
                held = states[t].versions()
                changed = [e for e in snaps[i][t] if held.get(e.name) != e.version]
                removed = sorted(set(held) - {e.name for e in snaps[i][t]})
                staged = states[t].stage(f"v{i}", changed, removed)
                states[t].commit(staged)
                c0 = time.perf_counter()        # all of it on the loop, its writes included
                whole_file_json(tmp / "old.json", kind, full(states))
                out["before"].append((time.perf_counter() - c0) * 1000)
                delta = cache.Delta(t, f"v{i}", changed, removed)
                out["record bytes"].append(len(cache.cachelog.record(delta)))
                ms, stall, held = await timed(lambda d=delta: writer.save(lambda: full(states), d))
                out["append"].append(ms)
                out["append stall"].append(stall)
                out["append held"].append(held)
        done.set()
        ticking.set()
        ticking.clear()
        await tick
        await writer.close()
        assert cache.load(tmp / "new.cache", kind) is not None
        out["snapshot bytes"] = (tmp / "new.cache").stat().st_size
        out["old file bytes"] = (tmp / "old.json").stat().st_size

    gc.collect()
    out["layout step"] = layout_step(full(states))
    asyncio.run(run())
    shutil.rmtree(tmp)
    summary = {k: (statistics.median(v), max(v)) for k, v in out.items() if isinstance(v, list)}
    summary["snapshot bytes"] = out["snapshot bytes"]
    summary["layout step"] = out["layout step"]
    summary["old file bytes"] = out["old file bytes"]
    summary["responses per compaction"] = out["snapshot bytes"] / statistics.mean(out["record bytes"])
    return summary


def report(pods: int) -> None:
    """Print the in-process figures for one cluster size."""
    objs = cluster(pods)
    by_type = translated(pods)
    for what, fn in (("waypoint", waypoint_memory), ("ztunnel", ztunnel_memory)):
        steps, held = fn(by_type)
        print(f"pods={pods:6d} {what:8s} " + "  ".join(f"{k} {v / 2**20:6.1f} MiB" for k, v in steps), flush=True)
        del held
    costs = waypoint_delta(by_type, objs)
    print(f"pods={pods:6d} waypoint one churn's Workload and Service responses: "
          + "  ".join(f"{k} {v:.1f} ms" for k, v in costs.items()), flush=True)
    for kind in ("waypoint", "ztunnel"):
        c = cache_churn(objs, kind)
        print(f"pods={pods:6d} {kind:8s} config cache per response, loop ms median/max: whole-file JSON (before) "
              f"{c['before'][0]:.1f}/{c['before'][1]:.1f}, journal append {c['append'][0]:.2f}/{c['append'][1]:.2f} "
              f"(stall {c['append stall'][0]:.2f}/{c['append stall'][1]:.2f}, held {c['append held'][0]:.2f}/"
              f"{c['append held'][1]:.2f}, record {c['record bytes'][0] / 1024:.0f} KiB); "
              f"snapshot {c['snapshot'][0]:.1f}/{c['snapshot'][1]:.1f} (stall {c['snapshot stall'][0]:.1f}/"
              f"{c['snapshot stall'][1]:.1f}, held {c['snapshot held'][0]:.1f}/{c['snapshot held'][1]:.1f}, "
              f"longest GIL-held layout step {c['layout step'] or 0:.2f} ms CPU, "
              f"{c['snapshot bytes'] / 2**20:.1f} MiB, old file "
              f"{c['old file bytes'] / 2**20:.1f} MiB) every ~{c['responses per compaction']:.0f} responses", flush=True)
    n, ms = agent_delta(by_type)
    print(f"pods={pods:6d} agent    node-0's {n} pods: pod list + signature per update {ms:.2f} ms", flush=True)


# --- a real waypoint process --------------------------------------------------------------------

def _controller(pods: int, ready: Any, stop: Any) -> None:
    """A controller's config server holding the `pods`-pod cluster, until `stop` is set."""
    import asyncio

    from bench.ctrlscale import on_snapshot

    async def go() -> None:
        ctl = on_snapshot(cluster(pods) if pods else [])
        ctl.server.debounce = 0.0
        gc.collect()
        port = await ctl.server.start("127.0.0.1:0", max_connections=0, max_connections_per_peer=1000)
        ready.put(port)
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await ctl.server.stop(None)
    asyncio.run(go())


def _admin_synced(port: int) -> bool:
    """Whether the waypoint says it is synced (its readiness is 503 without a certificate; the
    body says it all the same). Not /config_dump: at 10,000 pods its JSON would grow the heap."""
    import json
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready", timeout=5) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        body = e.read()
    except OSError:
        return False
    return bool(json.loads(body).get("synced"))


def waypoint_rss(pods: int, settle: float = 5.0, timeout: float = 300.0) -> tuple[float, float]:
    """(VmRSS MiB of a real waypoint process synced to the `pods`-pod cluster, seconds to sync)."""
    import socket
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    ctl = ctx.Process(target=_controller, args=(pods, ready, stop))
    ctl.start()
    wp = None
    try:
        port = ready.get(timeout=timeout)
        socks = [socket.socket() for _ in range(3)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        admin, metrics, listen = (s.getsockname()[1] for s in socks)
        for s in socks:
            s.close()
        tmp = tempfile.mkdtemp(prefix="wpmem-")
        cmd = [sys.executable, "-m", "waypoint", "--waypoint", WAYPOINT, "--pod-name", "waypoint-0",
               "--node", "node-0", "--controller", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{listen}",
               "--admin-address", f"127.0.0.1:{admin}", "--metrics-address", f"127.0.0.1:{metrics}",
               "--status-address", "", "--workers", "1"]
        wp = subprocess.Popen(cmd, stdout=open(os.path.join(tmp, "out"), "w"), stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
        started = time.monotonic()
        while not _admin_synced(admin):
            if wp.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(f"waypoint did not sync (exit {wp.poll()}); see {tmp}/out")
            time.sleep(0.5)
        synced = time.monotonic() - started
        time.sleep(settle)
        mib = rss_mib(wp.pid)
        shutil.rmtree(tmp)          # its log, kept only when it did not sync
        return mib, synced
    finally:
        if wp is not None:
            wp.terminate()
            try:
                wp.wait(30)
            except subprocess.TimeoutExpired:
                wp.kill()
                wp.wait()
        stop.set()
        ctl.join(60)
        if ctl.is_alive():
            ctl.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--rss", action="store_true", help="also a real waypoint process's RSS at each size")
    a = ap.parse_args()
    for n in a.pods:
        if n:
            report(n)
        if a.rss:
            mib, s = waypoint_rss(n)
            print(f"pods={n:6d} waypoint process VmRSS {mib:6.1f} MiB (synced in {s:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
