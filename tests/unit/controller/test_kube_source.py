"""KubeSource against a real HTTP API-server emulator, through the official kubernetes client."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controller.sources.kube import KubeSource, WatchedType, default_types, make_api_client
from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for

PODS = WatchedType("", ("v1",), "pods", "Pod", True)
NAMESPACES = WatchedType("", ("v1",), "namespaces", "Namespace", False)
VS_ISTIO = WatchedType("networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "virtualservices", "VirtualService", True)
VS_AMBIT = WatchedType("networking.ambit.io", ("v1", "v1beta1"), "virtualservices", "VirtualService", True)


def pod(name: str, ip: str, ns: str = "demo", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip}}


def vs(name: str, weight: Any = 100, group: str = "networking.istio.io") -> dict[str, Any]:
    return {"apiVersion": f"{group}/v1", "kind": "VirtualService", "metadata": {"name": name, "namespace": "demo"},
            "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}, "weight": weight}]}]}}




class Running:
    def __init__(self, source: KubeSource):
        self.source = source
        self.snapshots: list[list[dict[str, Any]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=source.run, args=(self.snapshots.append, self.stop), daemon=True)

    def names(self, kind: str) -> set[str]:
        if not self.snapshots:
            return set()
        return {o["metadata"]["name"] for o in self.snapshots[-1] if o["kind"] == kind}

    def latest(self, kind: str, name: str) -> dict[str, Any] | None:
        for o in self.snapshots[-1] if self.snapshots else []:
            if o["kind"] == kind and o["metadata"]["name"] == name:
                return o
        return None

    def state(self, t: WatchedType):  # noqa: ANN201 - TypeState
        return self.source.state[t]


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    e = KubeEmulator()
    e.start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture
def run(emu: KubeEmulator) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(types: list[WatchedType], **kw: Any) -> Running:
        kw.setdefault("backoff", (0.05, 0.3))
        kw.setdefault("missing_retry", 0.2)
        kw.setdefault("debounce", 0.01)
        r = Running(KubeSource(make_api_client(emu.url), types, **kw))
        r.thread.start()
        started.append(r)
        wait_for(lambda: r.snapshots, "the first snapshot")
        return r

    yield start
    for r in started:
        r.stop.set()
        r.thread.join(timeout=10)
        assert not r.thread.is_alive(), "KubeSource.run did not return after stop"
        r.source.api.close()


def test_initial_list_gives_typed_objects_of_every_kind(emu: KubeEmulator, run) -> None:
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    emu.create(pod("a", "10.244.1.1"))
    emu.create(vs("reviews"))
    r = run([PODS, NAMESPACES, VS_ISTIO])
    snap = r.snapshots[0]
    assert {(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in snap} == {
        ("v1", "Namespace", "demo"), ("v1", "Pod", "a"), ("networking.istio.io/v1", "VirtualService", "reviews")}
    assert r.state(VS_ISTIO).version == "v1"


def test_watch_applies_add_modify_delete(emu: KubeEmulator, run) -> None:
    r = run([PODS])
    emu.create(pod("a", "10.244.1.1"))
    emu.create(pod("b", "10.244.1.2"))
    wait_for(lambda: r.names("Pod") == {"a", "b"}, "two pods")
    changed = pod("a", "10.244.1.9")
    emu.update(changed)
    wait_for(lambda: (r.latest("Pod", "a") or {}).get("status", {}).get("podIP") == "10.244.1.9", "the modification")
    emu.delete("v1", "Pod", "b", "demo")
    wait_for(lambda: r.names("Pod") == {"a"}, "the deletion")
    assert r.state(PODS).lists == 1 and r.state(PODS).relists == 0


def test_gone_relists_and_forgets_objects_deleted_in_the_gap(emu: KubeEmulator, run) -> None:
    emu.create(pod("a", "10.244.1.1"))
    emu.create(pod("keep", "10.244.1.3"))
    r = run([PODS])
    assert r.names("Pod") == {"a", "keep"}
    with emu.hold_watches():
        emu.drop_watches()
        wait_for(lambda: emu.open_watches() == 0, "the watch to drop")
        emu.delete("v1", "Pod", "a", "demo")          # the DELETED event is compacted away below
        emu.create(pod("c", "10.244.1.4"))
        emu.compact()
    wait_for(lambda: r.names("Pod") == {"keep", "c"}, "the relist after 410 Gone")
    st = r.state(PODS)
    assert st.relists == 1 and st.lists == 2
    emu.create(pod("d", "10.244.1.5"))                # and it watches again after the relist
    wait_for(lambda: "d" in r.names("Pod"), "an event after the relist")


def test_missing_crd_group_is_skipped_then_picked_up(run, emu: KubeEmulator) -> None:
    emu2 = KubeEmulator(groups=["networking.istio.io"]).start()
    try:
        emu2.create(vs("reviews"))
        source = KubeSource(make_api_client(emu2.url), [VS_ISTIO, VS_AMBIT], backoff=(0.05, 0.3),
                            missing_retry=0.1, debounce=0.01)
        r = Running(source)
        r.thread.start()
        try:
            wait_for(lambda: r.snapshots, "a snapshot despite the missing group")
            assert r.names("VirtualService") == {"reviews"}
            assert r.state(VS_AMBIT).missing
            emu2.install_group("networking.ambit.io")
            emu2.create(vs("ratings", group="networking.ambit.io"))
            wait_for(lambda: r.names("VirtualService") == {"reviews", "ratings"}, "the newly installed group")
            assert not r.state(VS_AMBIT).missing
        finally:
            r.stop.set()
            r.thread.join(timeout=10)
            source.api.close()
    finally:
        emu2.stop()


def test_invalid_update_keeps_last_good_version_and_reports_it(emu: KubeEmulator, run) -> None:
    emu.create(vs("reviews", weight=100))
    r = run([VS_ISTIO], write_status=True)
    wait_for(lambda: ((emu.get("networking.istio.io/v1", "VirtualService", "reviews", "demo") or {})
                      .get("status", {}).get("conditions")), "the Accepted condition")
    emu.update(vs("reviews", weight="ten"))

    def rejected() -> Any:
        got = emu.get("networking.istio.io/v1", "VirtualService", "reviews", "demo")
        conds = {c["type"]: c for c in got.get("status", {}).get("conditions", [])}
        return conds.get("Accepted", {}).get("status") == "False" and conds["Accepted"]

    cond = wait_for(rejected, "the rejection in status")
    assert "spec.http[0].route[0].weight" in cond["message"]
    assert cond["observedGeneration"] == 2
    errs = r.source.errors()
    assert [str(e) for e in errs] == [
        'VirtualService/demo/reviews: spec.http[0].route[0].weight: must be an integer 0..2147483647, got "ten"']
    # the last good version is what consumers see
    assert r.latest("VirtualService", "reviews")["spec"]["http"][0]["route"][0]["weight"] == 100
    emu.update(vs("reviews", weight=100))
    wait_for(lambda: not r.source.errors(), "the error to clear once fixed")


def test_default_types_cover_every_registered_kind(emu: KubeEmulator, run) -> None:
    types = default_types()
    assert {(t.group, t.kind) for t in types} >= {
        ("", "Pod"), ("", "Namespace"), ("", "Service"), ("", "ServiceAccount"), ("", "Node"),
        ("discovery.k8s.io", "EndpointSlice"), ("security.istio.io", "AuthorizationPolicy"),
        ("security.ambit.io", "PeerAuthentication"), ("networking.istio.io", "DestinationRule"),
        ("telemetry.istio.io", "Telemetry"), ("gateway.networking.k8s.io", "HTTPRoute")}
    emu.create(pod("a", "10.244.1.1"))
    r = run(types)
    assert r.names("Pod") == {"a"}
    assert all(s.synced for s in r.source.state.values())


def test_a_service_entry_the_translation_refuses_is_not_accepted_in_its_status(emu: KubeEmulator) -> None:
    """One verdict in the lab and in a cluster: a ServiceEntry whose address another Service holds is
    not applied, and its status says so (Accepted=False, the translation's reason), not "accepted by
    ambit"; once the conflict is gone it is applied and Accepted again."""
    from prometheus_client import CollectorRegistry

    from controller.app import Controller
    from controller.configserver import ConfigServer
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "demo"},
           "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "reviews"}, "ports": [{"port": 80}]}}
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "legacy", "namespace": "demo"},
          "spec": {"hosts": ["legacy.example.com"], "addresses": ["10.96.0.10", "192.0.2.50"], "resolution": "STATIC",
                   "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "endpoints": [{"address": "192.0.2.7"}]}}
    emu.create(svc)
    emu.create(se)
    source = KubeSource(make_api_client(emu.url), debounce=0.01, write_status=True, backoff=(0.05, 0.3))
    ctl = Controller(source, ConfigServer(debounce=0.0, registry=CollectorRegistry()))
    stop = threading.Event()
    ctl.run_source(stop)

    def accepted() -> dict[str, Any]:
        got = emu.get("networking.istio.io/v1", "ServiceEntry", "legacy", "demo") or {}
        return next((c for c in (got.get("status") or {}).get("conditions") or [] if c["type"] == "Accepted"), {})
    try:
        wait_for(lambda: accepted().get("status") == "False", "the refusal in status", timeout=15)
        cond = accepted()
        assert cond["reason"] == "TranslationError"
        assert cond["message"].startswith("spec.addresses[0]: 10.96.0.10 is already the address of demo/reviews")
        assert "this ServiceEntry is not applied" in cond["message"]
        assert not [s for s in ctl.translation.services if s.name == "legacy.example.com"]
        emu.delete("v1", "Service", "reviews", "demo")
        wait_for(lambda: accepted().get("status") == "True", "Accepted once the address is free", timeout=15)
        assert [s.vips for s in ctl.translation.services if s.name == "legacy.example.com"] == [["10.96.0.10",
                                                                                                "192.0.2.50"]]
    finally:
        stop.set()
        source.api.close()
