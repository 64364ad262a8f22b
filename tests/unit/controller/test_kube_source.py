"""KubeSource against a real HTTP API-server emulator, through the official kubernetes client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ambit.backoff import Backoff
from controller.sources.kube import KubeSource, WatchedType, default_types, make_api_client
from controller.sources.statuspace import StatusPace
from controller.validation import FieldError
from tests.support.kube_emulator import Fault, KubeEmulator
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


# -- status writes under API faults -----------------------------------------------------------------

def deny(name: str) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "demo"}, "spec": {"action": "DENY", "rules": [{}]}}


AP = WatchedType("security.istio.io", ("v1", "v1beta1"), "authorizationpolicies", "AuthorizationPolicy", True)


def conditions(emu: KubeEmulator, name: str) -> dict[str, dict[str, Any]]:
    got = emu.get("security.istio.io/v1", "AuthorizationPolicy", name, "demo") or {}
    return {c["type"]: c for c in (got.get("status") or {}).get("conditions") or []}


def status_patches(emu: KubeEmulator) -> int:
    return sum(1 for m, p, _ in list(emu.requests) if m == "PATCH" and p.endswith("/status"))


def test_a_failed_status_write_is_retried(emu: KubeEmulator, run) -> None:
    """A 500 on the status write was logged and dropped: the condition stayed unwritten until the
    object next changed."""
    fault = emu.inject(Fault(path="/status", method="PATCH", status=500, times=2))
    emu.create(deny("d1"))
    run([AP], write_status=True)
    wait_for(lambda: "Accepted" in conditions(emu, "d1"), "the status written after the failures")
    assert fault.hits == 2


def test_a_conflicting_status_write_reads_the_object_again(emu: KubeEmulator, run) -> None:
    """The write is conditional on the resourceVersion it was computed from; on 409 Conflict the
    object is read again and its status written from the fresh version, keeping the condition
    another controller wrote meanwhile (an unconditional patch of `conditions` erased it)."""
    fault = emu.inject(Fault(path="/status", method="PATCH", delay=0.5, times=1))     # a slow API server
    emu.create(deny("d1"))
    run([AP], write_status=True)
    wait_for(lambda: fault.hits == 1, "the first status write")
    other = emu.get("security.istio.io/v1", "AuthorizationPolicy", "d1", "demo")
    other["status"] = {"conditions": [{"type": "Reconciled", "status": "True", "reason": "Other", "message": "",
                                       "observedGeneration": 1}]}
    since = int(emu.update(other)["metadata"]["resourceVersion"])    # another writer, while ours is in flight
    wait_for(lambda: "Accepted" in conditions(emu, "d1"), "the status written after the conflict")
    assert set(conditions(emu, "d1")) == {"Accepted", "Reconciled"}
    later = [o for rv, _, _, o in list(emu._events) if rv > since and o["metadata"]["name"] == "d1"]
    assert later and all(any(c["type"] == "Reconciled" for c in o["status"]["conditions"]) for o in later), \
        "the other writer's condition was never erased, not even for a moment"


def test_a_replica_that_stepped_down_writes_none_of_its_queued_statuses(emu: KubeEmulator, run) -> None:
    """Leadership was checked when a write was queued, not when it was made: a replica that lost
    the Lease while the API server was slow went on writing its whole backlog as a follower."""
    leading = [True]
    slow = emu.inject(Fault(path="/status", method="PATCH", delay=1.0, times=1))
    for name in ("d1", "d2", "d3"):
        emu.create(deny(name))
    run([AP], write_status=True, leader=lambda: leading[0])
    wait_for(lambda: slow.hits == 1, "the first (slow) status write")
    leading[0] = False                                # the Lease is lost meanwhile
    wait_for(lambda: sum("Accepted" in conditions(emu, n) for n in ("d1", "d2", "d3")) == 1, "the write in flight")
    time.sleep(0.3)
    assert status_patches(emu) == 1, "nothing written after stepping down"


def test_two_controllers_that_disagree_do_not_rewrite_status_in_a_loop(emu: KubeEmulator, run,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Writing a status changes the object; when another writer sets it back (two controllers
    without leader election, or of two versions), each reacted to the other at once, for ever."""
    emu.create(deny("d1"))
    a = run([AP], write_status=True)
    b = run([AP], write_status=True)
    for r in (a, b):
        r.source.status_pace = StatusPace(rewrite=Backoff(60.0, 60.0))
    wait_for(lambda: conditions(emu, "d1").get("Accepted", {}).get("status") == "True", "the first status")
    b.source.set_translation_errors([FieldError("AuthorizationPolicy/demo/d1", "spec", "b disagrees")])
    wait_for(lambda: caplog.text.count("is set back each time it is written") == 2, "both to see the disagreement")
    writes = status_patches(emu)
    time.sleep(0.5)
    assert status_patches(emu) == writes, "no rewrite before the backoff"


def test_a_kind_the_api_server_keeps_failing_is_reported_and_cleared(emu: KubeEmulator, run) -> None:
    """An API server that errs for good left the controller serving its last listed config with
    nothing to say so: `ambit status` (the source's errors) now names the kind and the error."""
    emu.create(deny("d1"))
    r = run([AP, PODS])
    emu.inject(Fault(path="/authorizationpolicies", status=503))
    emu.drop_watches()
    wait_for(lambda: r.source.errors(), "the failing kind to be reported")
    [e] = r.source.errors()
    assert e.ref == "kubernetes-api/authorizationpolicies.security.istio.io"
    assert "503" in e.reason and "the objects last listed stay in force" in e.reason
    assert r.names("AuthorizationPolicy") == {"d1"}, "the last listed config stays"
    emu.clear_faults()
    wait_for(lambda: not r.source.errors(), "the report to clear once the API server answers")


def test_the_first_snapshot_waits_for_a_crd_the_api_server_has_not_loaded_yet(emu: KubeEmulator, run) -> None:
    """An API server that is starting answers 404 for CRDs it has not loaded yet. The controller
    took that for "not installed": its first config held no AuthorizationPolicy of the group, so
    every DENY policy was off (fail open) until the next retry, 30 s later."""
    emu.create({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": "authorizationpolicies.security.istio.io"},
                "spec": {"group": "security.istio.io", "versions": [{"name": "v1", "served": True}]}})
    emu.create(deny("d1"))
    loading = emu.inject(Fault(path="/apis/security.istio.io/", status=404, times=6))
    r = run([PODS, AP], missing_retry=30.0)
    assert loading.hits == 6
    assert [o["metadata"]["name"] for o in r.snapshots[0] if o["kind"] == "AuthorizationPolicy"] == ["d1"]

