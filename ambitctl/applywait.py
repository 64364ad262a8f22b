"""`ambit apply --wait`, `ambit delete --wait` and `ambit wait`: return once the change is in force.

A write to the store is only the start: the controller sees it on its next snapshot, builds a config
version from it and streams that to every proxy, which ACKs once it applied it. Until then a
request can still meet the old routes or policies. This waits, as `istioctl x wait` does, until

- the config version the controller serves (after its debounce) was built from a snapshot that
  holds each applied object at (at least) the resourceVersion written, and no longer holds any
  deleted one; and
- every connected proxy (ztunnels, waypoints, ingress gateways) holds exactly that version
  (proxy-status SYNCED).

With several controller replicas the replica asked answers for all of them (controller/debug/
replicas.py): both conditions hold per replica (each builds its own version from its own
snapshot; each proxy is judged against its own replica's), and a replica that does not answer
keeps the wait from succeeding, named in what is pending.

A proxy that rejects the new version (NACK) ends the wait at once with its message: it keeps its
last good config, so waiting longer changes nothing. Proxies that connect later get the current
version when they connect, so only connected ones are waited for, with one exception: a waypoint
or ingress Gateway written is in force once at least one of its own proxies is connected and in
sync (a new Gateway starts its proxy: waiting for the others alone would return while its traffic
still fails closed), and one deleted once none of its proxies is connected any more.

`progress` is the pure part (a ProxyStatusResponse in, what is still pending out); `wait` polls the
controller's debug API with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

Key = tuple[str, str, str]      # (kind, namespace, name), as the lab store keys objects
CHUNK = 500                     # objects per ProxyStatus (controller/debug/service.py MAX_WAITED_OBJECTS)
POLL = 0.05


@dataclass
class Progress:
    failed: list[str] = field(default_factory=list)     # the wait cannot succeed
    pending: list[str] = field(default_factory=list)    # not yet
    proxies: int = 0
    version: str = ""                                   # the config version(s) served
    replicas: int = 1                                   # controller replicas that answered for the mesh

    @property
    def done(self) -> bool:
        return not self.failed and not self.pending


def _ref(key: Key) -> str:
    kind, ns, name = key
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


def _at_least(have: str, want: str) -> bool:
    """resourceVersions are opaque in Kubernetes; the lab's (and etcd's) are increasing integers.
    `want` "": any version (an object the controller keeps none of: presence is all it can say)."""
    if not want:
        return True
    if have.isdigit() and want.isdigit():
        return int(have) >= int(want)
    return have == want


def gateways_of(objs: list[dict[str, Any]], present: bool = True) -> dict[str, bool]:
    """The Gateways among `objs` that Ambit runs proxies for (waypoint and ingress classes), as
    "namespace/name" -> `present` (written: its proxy must be up; deleted: down)."""
    from ambit.gatewayclasses import INGRESS_CLASSES, WAYPOINT_CLASSES
    out = {}
    for o in objs:
        if o.get("kind") == "Gateway" and str(o.get("apiVersion", "")).startswith("gateway.networking.k8s.io/") \
                and (o.get("spec") or {}).get("gatewayClassName") in (*WAYPOINT_CLASSES, *INGRESS_CLASSES):
            md = o.get("metadata") or {}
            out[f"{md.get('namespace') or 'default'}/{md.get('name', '')}"] = present
    return out


def _replicas(resp: Any) -> list[Any]:
    """The replicas one ProxyStatus answer covers (controller/debug/replicas.py); an answer from a
    controller older than them stands for one replica, from its top-level fields."""
    if len(resp.replicas):
        return list(resp.replicas)
    from ambit.api import debug_pb2
    return [debug_pb2.ReplicaStatus(name=resp.replica, answered=True, config_version=resp.config_version,
                                    snapshot_applied=resp.snapshot_applied, observed=list(resp.observed))]


def progress(responses: list[Any], want: Mapping[Key, str | None],
             gateways: Mapping[str, bool] | None = None) -> Progress:
    """Where the wait stands, from the ProxyStatus answers to the chunks of `want` (an object's
    resourceVersion written, or None for one deleted), and for `gateways` (`gateways_of`).

    With several controller replicas each serves its own config version, built from its own
    snapshot, so each is judged apart: every replica's snapshot must hold the change, and every
    proxy must hold the version of the replica it is connected to (its state, SYNCED or not, is
    its replica's judgement). A replica that did not answer keeps the wait pending: its proxies
    are unknown."""
    p = Progress()
    by_replica: dict[str, list[Any]] = {}
    for resp in responses:
        for r in _replicas(resp):
            by_replica.setdefault(r.name, []).append(r)
    several = len(by_replica) > 1
    for name, seen_as in by_replica.items():
        who = f"controller replica {name}" if several else "the controller"
        silent = next((r for r in seen_as if not r.answered), None)
        if silent is not None:
            where = f" ({silent.address})" if silent.address else ""
            p.pending.append(f"controller replica {name}{where} did not answer: {silent.error or '-'} "
                             "(its proxies are not known)")
            continue
        if not all(r.snapshot_applied for r in seen_as):
            p.pending.append(f"{who} has not applied a snapshot yet")
            continue
        if len({r.config_version for r in seen_as}) > 1:   # a new version between two chunks: ask again
            p.pending.append(f"the config version {'of ' + who + ' ' if several else ''}changed while asking")
            continue
        seen = {(o.ref.kind, o.ref.namespace, o.ref.name): (o.present, o.resource_version)
                for r in seen_as for o in r.observed}
        for key, rv in want.items():
            present, have = seen.get(key, (False, ""))
            if key not in seen:
                p.pending.append(f"{who} did not answer for {_ref(key)} (a controller older than --wait?)")
            elif rv is None and present:
                p.pending.append(f"the config {who} serves still holds {_ref(key)}")
            elif rv is not None and not present:
                p.pending.append(f"{who} has not seen {_ref(key)} yet")
            elif rv is not None and not _at_least(have, rv):
                p.pending.append(f"{who} has {_ref(key)} at resourceVersion {have}, not yet {rv}")
    last = responses[-1]
    current = {r.name: r.config_version for r in _replicas(last)}
    p.replicas = len(current)
    p.version = ", ".join(sorted({v for v in current.values() if v})) if several else last.config_version
    for proxy in last.proxies:
        if not proxy.connected:
            continue
        p.proxies += 1
        name = f"{proxy.node.kind}/{proxy.node.name}"
        version = current.get(proxy.replica, last.config_version)
        on = f" on controller replica {proxy.replica}" if several and proxy.replica else ""
        if proxy.state == "NACK":
            p.failed.append(f"{name}{on} rejected config version {version} (it keeps its last good "
                            f"config): {proxy.nack}")
        elif proxy.state != "SYNCED":
            p.pending.append(f"{name}{on} is {proxy.state} (ACKed {proxy.acked_version or '-'}, "
                             f"current {version})")
    running = {x.node.waypoint for x in last.proxies if x.connected and x.node.waypoint}
    for gw, up in sorted((gateways or {}).items()):
        if up and gw not in running:
            p.pending.append(f"Gateway {gw} has no connected proxy yet (its pods start with it: "
                             f"ambit waypoint status)")
        elif not up and gw in running:
            p.pending.append(f"Gateway {gw}'s proxies are still connected")
    return p


async def _poll(target: Any, want: Mapping[Key, str | None], timeout: float,
                clock: Callable[[], float], gateways: Mapping[str, bool] | None) -> Progress:
    from ambit.api import debug_grpc, debug_pb2
    from ambit.configclient import tls
    keys = list(want)
    chunks = [keys[i:i + CHUNK] for i in range(0, len(keys), CHUNK)] or [[]]
    deadline = clock() + timeout
    metadata = (("authorization", f"Bearer {target.token}"),)
    async with tls.channel(target.address, target.trust) as ch:
        stub = debug_grpc.DebugServiceStub(ch)
        while True:
            left = max(0.1, deadline - clock())
            responses = []
            for chunk in chunks:
                req = debug_pb2.ProxyStatusRequest(objects=[debug_pb2.ObjectRef(kind=k, namespace=ns, name=n)
                                                            for k, ns, n in chunk])
                responses.append(await stub.ProxyStatus(req, metadata=metadata, timeout=min(5.0, left)))
            p = progress(responses, want, gateways)
            if p.done or p.failed or clock() >= deadline:
                return p
            await asyncio.sleep(POLL)


def wait(target: Any, want: Mapping[Key, str | None], timeout: float,
         clock: Callable[[], float] = time.monotonic, gateways: Mapping[str, bool] | None = None) -> Progress:
    """Poll until `want` (and `gateways`) is in force, a proxy NACKs, or `timeout` seconds pass. A
    gRPC failure raises TargetError (ambitctl/cluster.py) naming the controller."""
    from ambitctl import cluster
    return cluster.run(target, _poll(target, want, timeout, clock, gateways))


def wait_and_report(target: Any, want: Mapping[Key, str | None], timeout: float, out: TextIO, err: TextIO,
                    gateways: Mapping[str, bool] | None = None) -> int:
    """`wait`, then its outcome printed (the in-force line on `out`, problems on `err`); the exit
    status. A gRPC failure raises TargetError, for the caller to word."""
    started = time.monotonic()
    p = wait(target, want, timeout, gateways=gateways)
    line, problems = report(p, time.monotonic() - started, timeout)
    if line:
        print(line, file=out)
    for m in problems:
        print(m, file=err)
    return 0 if p.done else 1


def report(p: Progress, waited: float, timeout: float) -> tuple[str, list[str]]:
    """(the line for stdout on success, the lines for stderr otherwise)."""
    if p.done:
        n = f"{p.proxies} prox{'y' if p.proxies == 1 else 'ies'}"
        on = f" on {p.replicas} controller replicas" if p.replicas > 1 else ""
        versions = "versions" if "," in p.version else "version"
        return f"in force after {waited:.2f}s: {n}{on} in sync at config {versions} {p.version or '-'}", []
    if p.failed:
        return "", [f"error: {m}" for m in p.failed]
    shown = p.pending[:10]
    more = [f"  ... and {len(p.pending) - len(shown)} more"] if len(p.pending) > len(shown) else []
    return "", [f"error: timed out after {timeout:g}s waiting for the change to be in force:",
                *(f"  {m}" for m in shown), *more]
