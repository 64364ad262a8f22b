"""A synthetic cluster for the control plane's scaling: pods, Services with EndpointSlices,
namespaces, AuthorizationPolicies, VirtualServices and HTTPRoutes, nodes, as the Kubernetes API
would list them (plain dicts, like the tests'), and a driver that times the controller's stages on it.

    python -m bench.ctrlscale --pods 1000 5000 10000         # ms and MB per stage at each size
    python -m bench.ctrlscale --pods 10000 --profile translate
    python -m bench.ctrlscale --pods 1000 10000 --stage translate_churn on_snapshot_churn --cpu --controller-gc
    python -m bench.ctrlscale --pods 1000 10000 --stage waypoint_memory    # bench/wpmem.py
    python -m bench.ctrlscale --pods 1000 10000 --stage snapshot_gc        # bench/ctrlgc.py

Sizes scale with `pods`: the 10,000-pod cluster has 2,000 Services, 500 namespaces, 1,000
AuthorizationPolicies, 300 routes (150 VirtualServices, 150 HTTPRoutes) and 100 nodes.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from ambit.model import Workload
from controller.configserver.snapshot import Snapshot

Obj = dict[str, Any]


def _ip(n: int, base: int = 10 << 24 | 244 << 16) -> str:
    v = base + n
    return f"{v >> 24 & 255}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}"


def cluster(pods: int, seed: int = 1) -> list[Obj]:
    """The objects of a cluster of `pods` pods (see the module docstring for the proportions)."""
    rng = random.Random(seed)
    n_ns, n_svc, n_nodes = max(1, pods // 20), max(1, pods // 5), max(1, min(100, pods // 100))
    n_authz, n_routes = max(1, pods // 10), max(2, pods * 3 // 100)
    ts = "2026-12-01T00:00:00Z"
    out: list[Obj] = []
    for i in range(n_ns):
        labels = {"ambit.io/dataplane-mode": "ambient"}
        if i % 10 == 0:
            labels["ambit.io/use-waypoint"] = "waypoint"
        out.append({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": f"ns-{i}", "uid": f"ns-uid-{i}", "labels": labels,
                                 "resourceVersion": "1", "creationTimestamp": ts}})
        if i % 10 == 0:
            out.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                        "metadata": {"name": "waypoint", "namespace": f"ns-{i}", "uid": f"gw-{i}",
                                     "resourceVersion": "1", "creationTimestamp": ts},
                        "spec": {"gatewayClassName": "ambit-waypoint",
                                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
    for i in range(n_nodes):
        out.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node-{i}", "uid": f"node-uid-{i}"}})
    svc_pods: dict[int, list[Obj]] = {}
    for i in range(pods):
        s = i % n_svc
        ns = f"ns-{s % n_ns}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"app-{s}-{i}", "namespace": ns, "uid": f"pod-uid-{i}",
                            "resourceVersion": str(100 + i), "creationTimestamp": ts,
                            "labels": {"app": f"app-{s}", "version": f"v{i % 3}", "pod-template-hash": f"h{s}"},
                            "annotations": {"kubectl.kubernetes.io/restartedAt": ts}},
               "spec": {"nodeName": f"node-{rng.randrange(n_nodes)}", "serviceAccountName": f"sa-{s}",
                        "containers": [{"name": "app", "image": "app:1",
                                        "ports": [{"name": "http", "containerPort": 8080}]}]},
               "status": {"phase": "Running", "podIP": _ip(i), "podIPs": [{"ip": _ip(i)}],
                          "conditions": [{"type": "Ready", "status": "True"}]}}
        out.append(pod)
        svc_pods.setdefault(s, []).append(pod)
    for s in range(n_svc):
        ns = f"ns-{s % n_ns}"
        out.append({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": f"app-{s}", "namespace": ns, "uid": f"svc-uid-{s}",
                                 "resourceVersion": "1", "creationTimestamp": ts},
                    "spec": {"clusterIP": _ip(s, 10 << 24 | 96 << 16), "selector": {"app": f"app-{s}"},
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        out.append(endpoint_slice(s, ns, svc_pods.get(s, [])))
    for i in range(n_authz):
        ns = f"ns-{i % n_ns}"
        s = rng.randrange(n_svc)
        out.append({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": f"authz-{i}", "namespace": ns, "uid": f"az-{i}",
                                 "resourceVersion": "1", "creationTimestamp": ts},
                    "spec": {"selector": {"matchLabels": {"app": f"app-{s}"}}, "action": "ALLOW",
                             "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/sa-{s}"]}}],
                                        "to": [{"operation": {"ports": ["8080"]}}]}]}})
    for i in range(n_routes):
        s = (i * 7) % n_svc
        ns = f"ns-{s % n_ns}"
        if i % 2 == 0:
            out.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                        "metadata": {"name": f"vs-{i}", "namespace": ns, "uid": f"vs-{i}",
                                     "resourceVersion": "1", "creationTimestamp": ts},
                        "spec": {"hosts": [f"app-{s}"], "http": [
                            {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": f"app-{s}"}}],
                             "timeout": "5s"},
                            {"route": [{"destination": {"host": f"app-{s}"}}]}]}})
        else:
            out.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                        "metadata": {"name": f"hr-{i}", "namespace": ns, "uid": f"hr-{i}",
                                     "resourceVersion": "1", "creationTimestamp": ts},
                        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": f"app-{s}"}],
                                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                                            "backendRefs": [{"name": f"app-{s}", "port": 80}]}]}})
    return out


def endpoint_slice(s: int, ns: str, pods: list[Obj]) -> Obj:
    """The EndpointSlice the endpoints controller would write for Service `app-{s}`."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"app-{s}-abcde", "namespace": ns, "uid": f"eps-uid-{s}",
                         "resourceVersion": "1", "creationTimestamp": "2026-12-01T00:00:00Z",
                         "labels": {"kubernetes.io/service-name": f"app-{s}"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [p["status"]["podIP"]], "conditions": {"ready": True},
                           "nodeName": p["spec"]["nodeName"],
                           "targetRef": {"kind": "Pod", "name": p["metadata"]["name"],
                                         "namespace": ns, "uid": p["metadata"]["uid"]}} for p in pods]}


def measure(fn: Callable[[], Any], repeat: int = 1, clock: Callable[[], float] = time.perf_counter,
            frozen: bool = False) -> tuple[float, float, Any]:
    """(best ms, peak MB allocated during one run, the result). `clock`: wall time, or
    `time.thread_time` (CPU: not inflated by a shared machine's preemption). `frozen`: everything
    alive before a run is frozen, as the controller's collector policy leaves it after each
    snapshot (controller/gcpolicy.py; set its thresholds too): a run then pays for its own
    objects only, not for a full collection of whatever the bench built before it."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        gc.collect()
        if frozen:
            gc.freeze()
        t0 = clock()
        result = fn()
        best = min(best, (clock() - t0) * 1000)
        gc.unfreeze()
    gc.collect()
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return best, peak, result


class _NoSource:
    """A Source that never runs: the bench hands snapshots to the controller itself."""

    def run(self, on_snapshot: Any, stop: Any) -> None:  # pragma: no cover - never run
        raise NotImplementedError

    def errors(self) -> list[Any]:
        return []


def on_snapshot(objects: list[Obj]) -> Any:
    """One pass of the controller's flow, as a source triggers it: translate, version, publish."""
    from prometheus_client import CollectorRegistry

    from controller.app import Controller
    from controller.configserver import ConfigServer

    ctl = Controller(_NoSource(), ConfigServer(registry=CollectorRegistry()))
    ctl.on_snapshot(objects)
    return ctl


def stages(objs: list[Obj]) -> dict[str, Callable[[], Any]]:
    """The controller's per-snapshot stages, each a thunk over `objs` (as the source's last-good
    cache hands them over, which is what the controller translates)."""
    from controller.app import content_version
    from controller.sources.cache import LastGoodCache
    from controller.translate import TranslationMemo, translate
    from controller.validation import split_valid
    from controller.waypoints.advisories import advisories

    cache = LastGoodCache()
    cache.replace(objs, owns=lambda _k: True)
    snap = cache.objects()
    tr = translate(snap)
    by_type = tr.by_type()
    churned = churn(objs, 50, random.Random(2))
    by_type2 = translate(churned).by_type()

    def relist() -> LastGoodCache:
        c = LastGoodCache()
        c.replace(objs, owns=lambda _k: True)
        return c
    churned_cache = LastGoodCache()
    churned_cache.replace(churned, owns=lambda _k: True)
    turns = [churned_cache.objects(), snap]
    warm: list[Any] = []

    def on_snapshot_churn() -> None:
        """A controller that applied the last snapshot applies one churn's (and back, in turn):
        its steady state, where most of the model did not change. The first run also makes that
        controller (best of --repeat 2 or more leaves it out), so other stages do not share the
        process with it."""
        if not warm:
            warm.append(on_snapshot(snap))
        turns.reverse()
        warm[0].on_snapshot(turns[0])
    memo = TranslationMemo()
    translate(snap, memo=memo)
    memo_turns = [churned_cache.objects(), snap]

    def translate_churn() -> Any:
        """`translate` with the memo of a running controller (controller/translate/memo.py) that
        translated the last snapshot: one churn's (and back, in turn)."""
        memo_turns.reverse()
        return translate(memo_turns[0], memo=memo)
    wp = waypoint_holding(by_type)
    flip = [by_type2, by_type]

    def waypoint_delta() -> None:
        """A waypoint holding the whole snapshot (every Service, route and policy, as the
        controller scopes a waypoint today) applies one churn's Workload update."""
        flip.reverse()
        wp.apply(_update(Workload.TYPE, flip[0].get(Workload.TYPE, [])))
    return {
        "relist": relist,                       # a full list into the last-good cache (memory: the cache)
        "split_valid": lambda: split_valid(snap),
        "translate": lambda: translate(snap),
        "translate_churn": translate_churn,     # the same, after a churn, reusing the last translation's
        "content_version": lambda: content_version(by_type),
        "on_snapshot": lambda: on_snapshot(snap),   # translate + version + server snapshot
        "on_snapshot_churn": on_snapshot_churn,     # the same, after a churn, on a warm controller
        "advisories": lambda: advisories(snap, translation=tr),
        "snapshot_build": lambda: Snapshot.build(by_type, "v1", 1),
        "subscribers": lambda: push_round(by_type, by_type2),
        "waypoint_delta": waypoint_delta,
    }


def _update(t: str, resources: list[Any]) -> Any:
    from ambit.configclient.state import ConfigUpdate
    state = {r.resource_name: r for r in resources}
    return ConfigUpdate(t, "v", state, frozenset(), state)


def waypoint_holding(by_type: dict[str, list[Any]]) -> Any:
    """A waypoint's config (waypoint/config.py) that has applied every type of `by_type`."""
    from waypoint.authz import Waypoint
    from waypoint.config import TYPES, WaypointConfig
    cfg = WaypointConfig(Waypoint("ns-0", "waypoint"), "cluster.local")
    for t in TYPES:
        cfg.apply(_update(t, by_type.get(t, [])))
    return cfg


def churn(objs: list[Obj], n: int, rng: random.Random) -> list[Obj]:
    """`objs` with `n` running pods deleted and `n` new ones (one second of churn at 50/s); the
    EndpointSlices of their Services follow, as the endpoints controller would have them."""
    pods = [o for o in objs if o["kind"] == "Pod"]
    gone = {id(p) for p in rng.sample(pods, n)}
    out = [o for o in objs if id(o) not in gone]
    for i in range(n):
        tmpl = rng.choice(pods)
        new = {**tmpl, "metadata": {**tmpl["metadata"], "name": f"new-{i}-{rng.randrange(10**9)}",
                                    "uid": f"new-uid-{i}-{rng.randrange(10**9)}"},
               "status": {**tmpl["status"], "podIP": _ip(200000 + i), "podIPs": [{"ip": _ip(200000 + i)}]}}
        out.append(new)
    by_svc: dict[tuple[str, str], list[Obj]] = {}
    for o in out:
        if o["kind"] == "Pod":
            by_svc.setdefault((o["metadata"]["namespace"], o["metadata"]["labels"]["app"]), []).append(o)
    res = []
    for o in out:
        if o["kind"] == "EndpointSlice":
            svc = o["metadata"]["labels"]["kubernetes.io/service-name"]
            s = int(svc.split("-")[1])
            o = endpoint_slice(s, o["metadata"]["namespace"], by_svc.get((o["metadata"]["namespace"], svc), []))
        res.append(o)
    return res


def push_round(before: dict[str, list[Any]], after: dict[str, list[Any]], nodes: int = 100) -> int:
    """100 ztunnels and 100 agents in sync with `before` get the deltas to `after`: the config
    server's work per subscriber for one update. Returns the resources sent."""
    from ambit.configclient.node import NodeInfo
    from controller.configserver.subscription import Subscription

    s1, s2 = Snapshot.build(before, "v1", 1), Snapshot.build(after, "v2", 2)
    subs = []
    for i in range(nodes):
        for kind in ("ztunnel", "agent"):
            sub = Subscription(NodeInfo(kind, f"node-{i}"))
            for t in before:
                sub.subscribe(t, s1.versions(sub.node, t))
            subs.append(sub)
    sent = 0
    for snap, version, gen in ((s1, "v1", 1), (s2, "v2", 2)):
        for sub in subs:
            while (p := sub.next_response(lambda t, sub=sub, snap=snap: snap.view(sub.node, t), version, gen)):
                sent += len(p.resources)
                sub.on_ack(p.nonce)
    return sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--stage", nargs="*", default=None, help="only these stages")
    ap.add_argument("--profile", default="", help="cProfile this stage at the first size")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cpu", action="store_true", help="CPU time (thread_time) instead of wall time")
    ap.add_argument("--controller-gc", action="store_true",
                    help="the controller's collector policy: its thresholds, and all frozen before each run")
    a = ap.parse_args()
    if a.controller_gc:
        from controller.gcpolicy import THRESHOLD, parse_threshold
        gc.set_threshold(*parse_threshold(THRESHOLD))
    for n in a.pods:
        if a.stage == ["waypoint_memory"]:      # the waypoint's and the agent's config: bench/wpmem.py
            from bench.wpmem import report
            report(n)
            continue
        if a.stage == ["snapshot_gc"]:          # the collector enabled, over churn snapshots: bench/ctrlgc.py
            from bench.ctrlgc import report as gc_report
            gc_report(n)
            continue
        objs = cluster(n)
        thunks = stages(objs)
        if a.profile:
            prof = cProfile.Profile()
            prof.runcall(thunks[a.profile])
            pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
            return
        for name, fn in thunks.items():
            if a.stage and name not in a.stage:
                continue
            ms, mb, _ = measure(fn, a.repeat, time.thread_time if a.cpu else time.perf_counter, a.controller_gc)
            print(f"pods={n:6d} objects={len(objs):6d} {name:17s} {ms:9.1f} ms{' CPU' if a.cpu else ''}  "
                  f"peak {mb:7.1f} MB", flush=True)


if __name__ == "__main__":
    main()
