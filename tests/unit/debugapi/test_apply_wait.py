"""`ambit apply --wait` / `delete --wait`: the pure judgement of a ProxyStatus answer, and the real
chain it reads: lab store -> controller -> config server (debounced) -> a config-stream client ->
the debug API over gRPC -> ambitctl.applywait."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from ambit.api import debug_pb2
from ambit.configclient import ConfigClient
from ambit.configclient.node import NodeInfo
from ambit.labstore import LabStore
from ambit.model import Workload
from ambitctl import applywait
from ambitctl.cluster import DebugTarget
from controller.app import Controller
from controller.configserver import ConfigServer
from controller.debug import DebugServicer, TokenFileReaders
from controller.sources.lab import LabSource
from tests.unit.configstream.helpers import eventually

ROUTE = ("HTTPRoute", "shop", "r")


def response(observed: dict | None, *proxies: tuple[str, str, bool], version: str = "v2",
             nack: str = "") -> debug_pb2.ProxyStatusResponse:
    out = debug_pb2.ProxyStatusResponse(config_version=version, snapshot_applied=observed is not None)
    for (kind, ns, name), rv in (observed or {}).items():
        out.observed.add(ref=debug_pb2.ObjectRef(kind=kind, namespace=ns, name=name), present=rv is not None,
                         resource_version=rv or "")
    for name, state, connected in proxies:
        out.proxies.add(node=NodeInfo("ztunnel", name).to_proto(), connected=connected, state=state,
                        acked_version="v1", nack=nack if state == "NACK" else "")
    return out


def test_an_applied_object_is_in_force_once_seen_at_its_version_and_every_proxy_synced() -> None:
    want = {ROUTE: "12"}
    p = applywait.progress([response(None, ("n1", "SYNCED", True))], want)
    assert not p.done and "has not applied a snapshot" in p.pending[0]
    p = applywait.progress([response({ROUTE: None}, ("n1", "SYNCED", True))], want)
    assert p.pending == ["the controller has not seen HTTPRoute shop/r yet"]
    p = applywait.progress([response({ROUTE: "11"}, ("n1", "SYNCED", True))], want)
    assert p.pending == ["the controller has HTTPRoute shop/r at resourceVersion 11, not yet 12"]
    p = applywait.progress([response({ROUTE: "12"}, ("n1", "STALE", True), ("n2", "SYNCED", True))], want)
    assert p.pending == ["ztunnel/n1 is STALE (ACKed v1, current v2)"]
    # A disconnected proxy is not waited for: it gets the current version when it reconnects.
    p = applywait.progress([response({ROUTE: "13"}, ("n1", "SYNCED", True), ("n2", "STALE", False))], want)
    assert p.done and p.proxies == 1 and p.version == "v2"


def test_a_deleted_object_is_in_force_once_gone_and_a_nack_fails_at_once() -> None:
    want: dict = {ROUTE: None}
    p = applywait.progress([response({ROUTE: "12"}, ("n1", "SYNCED", True))], want)
    assert p.pending == ["the config the controller serves still holds HTTPRoute shop/r"]
    p = applywait.progress([response({ROUTE: None}, ("n1", "NACK", True), nack="weight 7 is not allowed")], want)
    assert not p.done and p.failed == ["ztunnel/n1 rejected config version v2 (it keeps its last good config): "
                                       "weight 7 is not allowed"]
    line, problems = applywait.report(p, 0.5, 30)
    assert line == "" and problems[0].startswith("error: ztunnel/n1 rejected")


def test_chunks_answered_from_two_config_versions_are_asked_again() -> None:
    a, b = ("VirtualService", "shop", "a"), ("VirtualService", "shop", "b")
    p = applywait.progress([response({a: "1"}, ("n1", "SYNCED", True), version="v1"),
                            response({b: "1"}, ("n1", "SYNCED", True), version="v2")], {a: "1", b: "1"})
    assert not p.done and p.pending == ["the config version changed while asking"]


def test_opaque_resource_versions_compare_equal_only() -> None:
    assert applywait.progress([response({ROUTE: "abc"}, ("n1", "SYNCED", True))], {ROUTE: "abc"}).done
    assert not applywait.progress([response({ROUTE: "abd"}, ("n1", "SYNCED", True))], {ROUTE: "abc"}).done


def test_an_object_the_controller_keeps_no_version_of_is_waited_for_by_presence() -> None:
    cm = ("ConfigMap", "shop", "ca")        # controller/sources/kube.py keeps no ConfigMap resourceVersion
    assert applywait.progress([response({cm: ""}, ("n1", "SYNCED", True))], {cm: ""}).done
    assert applywait.progress([response({cm: None}, ("n1", "SYNCED", True))], {cm: ""}).pending == [
        "the controller has not seen ConfigMap shop/ca yet"]


def test_a_timeout_names_what_is_still_pending() -> None:
    p = applywait.Progress(pending=[f"ztunnel/n{i} is STALE" for i in range(12)])
    line, problems = applywait.report(p, 30.0, 30)
    assert line == "" and problems[0] == "error: timed out after 30s waiting for the change to be in force:"
    assert problems[1:3] == ["  ztunnel/n0 is STALE", "  ztunnel/n1 is STALE"] and problems[-1] == "  ... and 2 more"


NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"ambit.io/dataplane-mode": "ambient"}}}


def pod(name: str, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}"},
            "spec": {"nodeName": "n1", "serviceAccountName": "web", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip}}


def test_wait_ends_only_when_the_served_config_holds_the_write_and_the_proxy_applied_it(tmp_path: Path) -> None:
    """The controller translates at once but the config server publishes after its debounce, and
    the proxy applies when it is ready: --wait must not end before both (it did, reading the
    controller's newest version rather than the one served)."""
    store = LabStore(tmp_path / "store.json")
    store.apply([NS, pod("p1", "10.1.0.1")])
    gate = threading.Event()
    gate.set()

    def apply_slowly(update) -> None:  # noqa: ANN001
        gate.wait(10)

    async def run() -> None:
        cfg = ConfigServer(debounce=0.3, registry=CollectorRegistry())
        server = grpc.aio.server()
        cfg.add_to_server(server)
        ctl = Controller(LabSource(store, interval=0.01), cfg)
        debug = DebugServicer(cfg, TokenFileReaders(tmp_path / "t"), observed=ctl.observed)
        debug.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = threading.Event()
        ctl.run_source(stop)
        client = ConfigClient(f"127.0.0.1:{port}", NodeInfo("ztunnel", "n1"), [Workload.TYPE],
                              lambda u: asyncio.to_thread(apply_slowly, u))
        target = DebugTarget(f"127.0.0.1:{port}", (tmp_path / "t").read_text().strip(), "lab")
        p2 = ("Pod", "shop", "p2")
        try:
            await client.start()
            await client.wait_synced(5)
            await eventually(lambda: debug.status_response().proxies[0].state == "SYNCED", what="n1 synced")
            v1 = cfg.version

            gate.clear()                    # the proxy will sit on the next version
            rev = store.apply([pod("p2", "10.1.0.2")])
            await eventually(lambda: ctl.version != v1, what="the controller to translate p2")
            assert cfg.version == v1 and ctl.observed([p2]) == {}   # translated, not served yet
            p = await asyncio.to_thread(applywait.wait, target, {p2: str(rev)}, 1.0)
            assert not p.done and p.pending == [f"ztunnel/n1 is STALE (ACKed {v1}, current {cfg.version})"]

            gate.set()
            p = await asyncio.to_thread(applywait.wait, target, {p2: str(rev)}, 5.0)
            assert p.done and p.version == cfg.version != v1 and [w.name for w in client_workloads(client)] == [
                "p1", "p2"]

            # A change that alters no config (a label nothing selects on): the same version is served,
            # built now from the newer object, so the wait ends rather than timing out.
            served = cfg.version
            rev = store.patch_labels("Namespace", "", "shop", {"team": "blue"}, [])
            p = await asyncio.to_thread(applywait.wait, target, {("Namespace", "", "shop"): str(rev)}, 5.0)
            assert p.done and cfg.version == served

            store.delete([p2])
            p = await asyncio.to_thread(applywait.wait, target, {p2: None}, 5.0)
            assert p.done and [w.name for w in client_workloads(client)] == ["p1"]
        finally:
            stop.set()
            await client.stop()
            await server.stop(None)
    asyncio.run(run())


def client_workloads(client: ConfigClient) -> list[Workload]:
    return sorted(client.state(Workload.TYPE).values(), key=lambda w: w.name)


def test_a_written_gateway_waits_for_its_own_proxy_and_a_deleted_one_for_its_proxies_to_go() -> None:
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "waypoint", "namespace": "shop"}, "spec": {"gatewayClassName": "ambit-waypoint"}}
    other = {**gw, "spec": {"gatewayClassName": "someone-else"}}
    assert applywait.gateways_of([gw, other]) == {"shop/waypoint": True}
    assert applywait.gateways_of([gw], present=False) == {"shop/waypoint": False}
    key = ("Gateway", "shop", "waypoint")

    def with_waypoint(connected: bool, state: str = "SYNCED") -> debug_pb2.ProxyStatusResponse:
        r = response({key: "3"}, ("n1", "SYNCED", True))
        r.proxies.add(node=NodeInfo("waypoint", "waypoint-0", "shop/waypoint").to_proto(), connected=connected,
                      state=state, acked_version="v2")
        return r

    up = {"shop/waypoint": True}
    p = applywait.progress([response({key: "3"}, ("n1", "SYNCED", True))], {key: "3"}, up)
    assert p.pending == ["Gateway shop/waypoint has no connected proxy yet (its pods start with it: "
                         "ambit waypoint status)"]
    assert applywait.progress([with_waypoint(False)], {key: "3"}, up).pending == p.pending
    assert applywait.progress([with_waypoint(True)], {key: "3"}, up).done
    down = {"shop/waypoint": False}
    assert applywait.progress([with_waypoint(True)], {key: None}, down).pending == [
        "the config the controller serves still holds Gateway shop/waypoint",
        "Gateway shop/waypoint's proxies are still connected"]
    r = with_waypoint(False)
    r.observed[0].present = False
    assert applywait.progress([r], {key: None}, down).done
