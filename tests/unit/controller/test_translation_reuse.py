"""A running controller reuses the last translation's Workloads for pods whose inputs did not
change (controller/translate/memo.py). Under random sequences of changes to every input a
Workload reads, reuse must give exactly what a full translation gives: the same model, state for
state and type for type, the same content version, the same deltas to subscribers; it must never
edit what an earlier translation published; and it holds only the current snapshot's entries (no
timing: bench/ctrlscale.py measures)."""

from __future__ import annotations

import copy
import pickle
import random
from dataclasses import fields
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ambit.configclient.node import NodeInfo
from ambit.topology import LOCALITY_LABEL, REGION_LABEL, ZONE_LABEL
from bench.ctrlscale import _ip, _NoSource, churn, cluster, endpoint_slice
from controller.app import Controller, encode_all
from controller.configserver import ConfigServer, Subscription
from controller.sources.cache import LastGoodCache
from controller.translate import Translation, TranslationMemo, translate
from controller.validation import Validated
from tests.unit.controller.test_encoding_reuse import deltas

Obj = dict[str, Any]
NODES = [NodeInfo("ztunnel", "node-0"), NodeInfo("agent", "node-0"), NodeInfo("ztunnel", "node-1")]


def state(tr: Translation) -> dict[str, Any]:
    """Everything a translation holds, as pickles (exact: class, fields, each value's type); a
    list field resource by resource, so that sharing between objects does not matter."""
    out: dict[str, Any] = {}
    for f in fields(tr):
        v = getattr(tr, f.name)
        out[f.name] = [pickle.dumps(x, 5) for x in v] if isinstance(v, list) else pickle.dumps(v, 5)
    return out


def reslice(objs: list[Obj]) -> list[Obj]:
    """Each Service's EndpointSlice as the endpoints controller would have it now: the running
    pods its selector picks (a Service whose slice was removed keeps none)."""
    svcs = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs if o["kind"] == "Service"}
    out = []
    for o in objs:
        if o["kind"] == "EndpointSlice":
            ns, name = o["metadata"]["namespace"], o["metadata"]["labels"]["kubernetes.io/service-name"]
            svc = svcs.get((ns, name))
            if svc is None:
                continue
            sel = svc["spec"].get("selector") or {}
            pods = [p for p in objs if p["kind"] == "Pod" and p["metadata"]["namespace"] == ns and sel
                    and p["status"].get("phase") == "Running"
                    and all(p["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            new = endpoint_slice(int(name.split("-")[1]), ns, pods)
            new["ports"][0]["port"] = o["ports"][0]["port"]
            o = new
        out.append(o)
    return out


def edit(objs: list[Obj], rng: random.Random) -> list[Obj]:
    """One random change to an input of some Workload, as a watch would deliver it (a new dict
    for the changed object; the cache keeps the others as they were)."""
    objs = copy.deepcopy(objs)
    kinds = ["Pod", "Pod", "Namespace", "Node", "Service", "Gateway", "Gateway", "ServiceEntry", "AuthorizationPolicy",
             "EndpointSlice", "recreated"]
    kind = rng.choice(kinds)
    if kind == "recreated":                 # deleted and created again: another age, another order
        o = rng.choice([o for o in objs if o["kind"] in ("Pod", "Pod", "VirtualService", "HTTPRoute")])
        o["metadata"]["creationTimestamp"] = f"2026-11-{rng.randrange(10, 30)}T00:00:00Z"
        return objs
    if kind == "Pod" and rng.random() < 0.3:
        return churn(objs, rng.randrange(1, 4), rng)
    pick = [o for o in objs if o["kind"] == kind]
    o = rng.choice(pick) if pick else None
    ns_names = sorted({x["metadata"]["name"] for x in objs if x["kind"] == "Namespace"})
    if kind == "Pod" and o is not None:
        md, what = o["metadata"], rng.randrange(9)
        if what == 0:                       # another app: other Services select it
            md["labels"]["app"] = f"app-{rng.randrange(40)}"
        elif what == 1:                     # its own waypoint reference, or opting out
            md["labels"]["ambit.io/use-waypoint"] = rng.choice(["none", "waypoint", "other"])
        elif what == 2:                     # its own locality
            md["labels"][LOCALITY_LABEL] = rng.choice(["r1.z1.s1", "r2.z2.s2"])
        elif what == 3:                     # a waypoint's own pod
            md["labels"]["gateway.networking.k8s.io/gateway-name"] = "waypoint"
        elif what == 4:                     # no longer running, or back
            o["status"]["phase"] = rng.choice(["Pending", "Succeeded", "Running"])
        elif what == 5:                     # a new address
            ip = _ip(300000 + rng.randrange(1000))
            o["status"]["podIP"], o["status"]["podIPs"] = ip, [{"ip": ip}]
        elif what == 6:                     # probes, annotations, service account
            o["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"port": "http"}}
            md["annotations"]["lab.ambit.io/netns"] = f"/run/netns/{rng.randrange(9)}"
            o["spec"]["serviceAccountName"] = rng.choice(["sa-x", "sa-y"])
        elif what == 7:                     # another node
            o["spec"]["nodeName"] = f"node-{rng.randrange(3)}"
        else:                               # out of the mesh
            md["labels"]["ambit.io/dataplane-mode"] = rng.choice(["none", "ambient"])
    elif kind == "Namespace" and o is not None:
        labels, what = o["metadata"]["labels"], rng.randrange(4)
        if what == 0:
            if labels.pop("ambit.io/use-waypoint", None) is None:
                labels["ambit.io/use-waypoint"] = "waypoint"
        elif what == 1:
            labels["ambit.io/dataplane-mode"] = rng.choice(["ambient", "none"])
        elif what == 2:
            labels["ambit.io/use-waypoint-namespace"] = rng.choice(ns_names)
            labels["ambit.io/use-waypoint"] = "waypoint"
        else:                               # gone: its pods have no namespace labels
            objs.remove(o)
    elif kind == "Node" and o is not None:
        o["metadata"]["labels"] = {REGION_LABEL: rng.choice(["r1", "r2"]), ZONE_LABEL: rng.choice(["z1", "z2"])}
    elif kind == "Service" and o is not None:
        port, what = o["spec"]["ports"][0], rng.randrange(4)
        if what == 0:
            port["name"] = "tcp" if port["name"] == "http" else "http"
        elif what == 1:                     # its port: the Workloads' services list it
            port["port"] = rng.choice([80, 81, 8000])
        elif what == 2:                     # another selector: its slice follows
            o["spec"]["selector"] = {"app": f"app-{rng.randrange(40)}"}
        else:
            objs.remove(o)
        objs = reslice(objs)
    elif kind == "EndpointSlice" and o is not None:
        objs.remove(o)                      # the Service's endpoints from its selector
    elif kind == "Gateway":                 # a namespace's waypoint on or off, or what it serves
        using = sorted(x["metadata"]["name"] for x in objs
                       if x["kind"] == "Namespace" and "ambit.io/use-waypoint" in x["metadata"]["labels"])
        ns = rng.choice(using if using and rng.random() < 0.8 else ns_names)
        o = next((g for g in pick if g["metadata"]["namespace"] == ns), None)
        if o is not None and rng.random() < 0.5:
            objs.remove(o)
        elif o is not None:
            o["metadata"].setdefault("labels", {})["ambit.io/waypoint-for"] = rng.choice(
                ["service", "workload", "all", "none", "bogus"])
            if rng.random() < 0.5:
                o["spec"]["listeners"][0]["allowedRoutes"] = {"namespaces": {"from": rng.choice(["All", "Same"])}}
        else:
            objs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                         "metadata": {"name": "waypoint", "namespace": ns, "uid": f"gw-{ns}",
                                      "labels": {"ambit.io/waypoint-for": rng.choice(["service", "all"])}},
                         "spec": {"gatewayClassName": "ambit-waypoint",
                                  "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
    elif kind == "ServiceEntry":
        if o is not None:
            objs.remove(o)
        else:
            objs.append({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                         "metadata": {"name": "ext", "namespace": rng.choice(ns_names), "uid": "se-1",
                                      "labels": {"ambit.io/use-waypoint": "waypoint"}},
                         "spec": {"hosts": ["api.example.com"], "location": "MESH_EXTERNAL",
                                  "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                                  "resolution": "DNS"}})
    elif kind == "AuthorizationPolicy" and o is not None:
        if rng.random() < 0.5:
            objs.remove(o)
        else:
            o["spec"]["rules"][0]["to"] = [{"operation": {"methods": ["GET"], "ports": ["8080"]}}]
    return objs


def served_deltas(subs: list[Subscription], server: ConfigServer) -> list[Any]:
    """What each subscriber, in step with the server's last snapshot, is sent of its current one."""
    return deltas(subs, server._snapshot)  # noqa: SLF001 - what the server serves


def controller() -> Controller:
    return Controller(_NoSource(), ConfigServer(registry=CollectorRegistry()))


@pytest.mark.parametrize("seed", range(10))
def test_reuse_under_random_changes_is_a_full_translation(seed: int) -> None:
    rng = random.Random(seed)
    objs = cluster(rng.choice([100, 200]), seed=seed)
    waypoint_pods: set[str] = set()
    for o in objs:                          # a few nodes with a locality from the start
        if o["kind"] == "Node" and rng.random() < 0.5:
            o["metadata"]["labels"] = {REGION_LABEL: "r1", ZONE_LABEL: "z1"}
        elif o["kind"] == "Namespace" and rng.random() < 0.5:   # more namespaces using their waypoint
            o["metadata"]["labels"]["ambit.io/use-waypoint"] = "waypoint"
        elif o["kind"] == "Gateway":        # some taking the pods' traffic
            o["metadata"]["labels"] = {"ambit.io/waypoint-for": rng.choice(["service", "workload", "all"])}
        elif o["kind"] == "Pod" and o["metadata"]["namespace"] not in waypoint_pods:
            # A pod of each namespace's waypoint (whether its Gateway exists or not), out of
            # ambient capture as they are: only the Gateway makes it HBONE.
            waypoint_pods.add(o["metadata"]["namespace"])
            o["metadata"]["labels"].update({"gateway.networking.k8s.io/gateway-name": "waypoint",
                                            "ambit.io/dataplane-mode": "none", "ambit.io/use-waypoint": "none"})
    # A third of the Services without EndpointSlices: their endpoints come from the selector, in
    # the pods' age order.
    objs = [o for o in objs if o["kind"] != "EndpointSlice" or rng.random() < 0.67]
    cache = LastGoodCache()
    memo = TranslationMemo()
    reusing, full = controller(), controller()
    subs_reusing = [Subscription(n) for n in NODES]
    subs_full = [Subscription(n) for n in NODES]
    published: list[tuple[Translation, dict[str, Any]]] = []
    reused = remade = unpickled = 0
    for step in range(14):
        if step:
            for _ in range(rng.randrange(1, 3)):
                objs = edit(objs, rng)
        cache.replace(objs, owns=lambda _k: True)
        snap = cache.objects()
        assert isinstance(snap, Validated)
        td = "cluster.local" if rng.random() < 0.85 else "other.example"
        got = translate(snap, trust_domain=td, memo=memo)
        want = translate(snap, trust_domain=td)
        assert state(got) == state(want), f"step {step}: a reused translation differs from a full one"
        # What earlier translations published is as it was (reuse shares objects with them).
        for tr, before in published:
            assert state(tr) == before, f"step {step}: an earlier translation was edited"
        published = [*published[-2:], (got, state(got))]
        assert len(memo.workloads) == len(got.workloads)    # this snapshot's pods, nothing older
        reused += memo.reused
        remade += memo.remade
        # The controller's whole flow: the same content version, the same deltas to subscribers.
        reusing.on_snapshot(snap)
        full.on_snapshot(list(snap))        # a plain list: never reused from
        assert reusing.version == full.version
        # Its encodings (the reused Workloads' taken without pickling them again) are the long way's.
        assert set(reusing._encodings.held()) == set(encode_all(reusing.translation.by_type()).values())  # noqa: SLF001
        unpickled += reusing._encodings.unpickled  # noqa: SLF001
        if step == 0:
            for subs in (subs_reusing, subs_full):
                for sub in subs:
                    for t in reusing.translation.by_type():
                        sub.subscribe(t, {})
        assert served_deltas(subs_reusing, reusing.server) == served_deltas(subs_full, full.server)
        assert full._workloads.reused == 0  # noqa: SLF001
    assert reused > 0 and remade > 0 and unpickled > 0


def test_an_unchanged_snapshot_reuses_every_workload_and_a_churn_only_the_rest() -> None:
    objs = cluster(400)
    cache = LastGoodCache()
    cache.replace(objs, owns=lambda _k: True)
    memo = TranslationMemo()
    first = translate(cache.objects(), memo=memo)
    assert memo.reused == 0 and memo.translated == len(first.workloads) == 400
    again = translate(cache.objects(), memo=memo)
    assert memo.reused == 400 and all(a is b for a, b in zip(first.workloads, again.workloads, strict=True))
    cache.replace(churn(objs, 5, random.Random(3)), owns=lambda _k: True)
    after = translate(cache.objects(), memo=memo)
    assert memo.translated == 5 and memo.reused == 395 and memo.remade == 0
    assert state(after) == state(translate(cache.objects()))


def test_a_namespace_change_translates_its_pods_again() -> None:
    objs = cluster(200)
    cache = LastGoodCache()
    cache.replace(objs, owns=lambda _k: True)
    memo = TranslationMemo()
    translate(cache.objects(), memo=memo)
    objs = copy.deepcopy(objs)
    ns = next(o for o in objs if o["kind"] == "Namespace" and o["metadata"]["name"] == "ns-1")
    ns["metadata"]["labels"]["ambit.io/dataplane-mode"] = "none"
    cache.replace(objs, owns=lambda _k: True)
    after = translate(cache.objects(), memo=memo)
    mine = [w for w in after.workloads if w.namespace == "ns-1"]
    assert mine and not any(w.enrolled for w in mine) and memo.translated == len(mine)
    assert state(after) == state(translate(cache.objects()))


def test_a_plain_list_is_never_reused_from() -> None:
    """Only a `Validated` snapshot promises that its objects are never edited in place."""
    objs = cluster(50)
    memo = TranslationMemo()
    translate(objs, memo=memo)
    pod = next(o for o in objs if o["kind"] == "Pod")
    pod["spec"]["serviceAccountName"] = "edited-in-place"
    tr = translate(objs, memo=memo)
    assert memo.reused == 0 and len(memo.workloads) == 0
    assert any(w.service_account == "edited-in-place" for w in tr.workloads)
