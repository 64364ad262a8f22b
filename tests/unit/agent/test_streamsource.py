"""The agent's stream source against a real config server on a unix socket (no kernel needed):
which of the node's Workloads it captures, that it follows updates, and that its file cache lets a
restarted agent enrol while the controller is down."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent import enrolment
from agent.enrolment import PodRef
from agent.streamsource import StreamPodSource, WorkloadView, workload_pods
from ambit.model import Workload
from controller.configserver.server import ConfigServer

NODE = "node1"


def wl(name: str, *, node: str = NODE, enrolled: bool = True, labels: dict[str, str] | None = None,
       annotations: dict[str, str] | None = None, netns: str = "/run/netns/x", ips: tuple[str, ...] = ("10.1.0.5",)
       ) -> Workload:
    return Workload(uid=f"uid-{name}", name=name, namespace="demo", ips=list(ips), node=node, service_account="sa",
                    identity="spiffe://cluster.local/ns/demo/sa/sa", labels=labels or {}, enrolled=enrolled,
                    annotations=annotations or {}, netns=netns, cgroup=f"/sys/fs/cgroup/{name}" if netns else "")


def test_the_controllers_decision_is_the_one_applied() -> None:
    pods = workload_pods(NODE, [
        wl("in", labels={"app": "in"}),
        wl("out", enrolled=False, labels={"ambit.io/dataplane-mode": "none"}),
        wl("plain", enrolled=False),
        wl("elsewhere", node="node2"),
        wl("no-ip", ips=()),
    ])
    assert [(p.key, p.enrolled, p.reason, p.ref is not None) for p in pods] == [
        ("demo/in", True, "", True), ("demo/no-ip", True, "", False),
        ("demo/out", False, enrolment.OPTED_OUT_REASON, False), ("demo/plain", False, "", False)]
    assert list(enrolment.to_capture(pods)) == ["uid-in"]
    # Every pod of the node is known, so the agent can tell "not shown yet" from "refused".
    assert enrolment.known_uids(pods) == ({"uid-in", "uid-no-ip", "uid-out", "uid-plain"}, {"uid-out", "uid-plain"})


def test_a_workload_becomes_the_ref_the_kubernetes_sources_would_make() -> None:
    ann = {"ambit.io/exclude-outbound-ports": "53", "lab.ambit.io/netns": "/run/netns/x", "other": "1"}
    [p] = workload_pods(NODE, [wl("a", labels={"app": "a"}, annotations=ann)])
    assert p.ref == PodRef(uid="uid-a", name="a", namespace="demo", ip="10.1.0.5", service_account="sa",
                           netns="/run/netns/x", cgroup="/sys/fs/cgroup/a",
                           annotations=(("ambit.io/exclude-outbound-ports", "53"),))
    pod = {"metadata": {"uid": "uid-a", "name": "a", "namespace": "demo", "annotations": ann, "labels": {"app": "a"}},
           "spec": {"nodeName": NODE, "serviceAccountName": "sa"},
           "status": {"phase": "Running", "podIP": "10.1.0.5"}}
    ann["lab.ambit.io/cgroup"] = "/sys/fs/cgroup/a"
    assert enrolment.desired(NODE, [pod], {"demo": {"ambit.io/dataplane-mode": "ambient"}})["uid-a"] == p.ref


def test_an_enrolled_pod_without_paths_is_named_not_guessed() -> None:
    [p] = workload_pods(NODE, [wl("a", netns="")])
    assert p.ref is not None
    assert enrolment.missing_paths(p.ref) == ("demo/a: its netns and cgroup is not known "
                                              "(not on this host yet, or not reported)")
    assert enrolment.missing_paths(workload_pods(NODE, [wl("b")])[0].ref) == ""  # type: ignore[arg-type]


class Server:
    """A ConfigServer on its own event loop thread, serving on a unix socket."""

    def __init__(self, sock: Path):
        self.sock = sock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: ConfigServer | None = None

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self, workloads: list[Workload], version: str) -> None:
        async def go() -> None:
            self.server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
            self.server.update({Workload.TYPE: workloads}, version)
            await self.server.start(f"unix:{self.sock}")
        self.run(go())

    def update(self, workloads: list[Workload], version: str) -> None:
        assert self.server is not None
        self.server.update({Workload.TYPE: workloads}, version)

    def stop(self) -> None:
        if self.server is not None:
            self.run(self.server.stop(0))
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "controller.sock")
    try:
        yield s
    finally:
        s.close()


class Views:
    """Consume a source's views on a thread, as the agent does."""

    def __init__(self, source: StreamPodSource):
        self.stop = threading.Event()
        self.got: list[WorkloadView] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._feed, args=(source,), daemon=True)
        self.thread.start()

    def _feed(self, source: StreamPodSource) -> None:
        for v in source.views(self.stop):
            with self.cond:
                self.got.append(v)
                self.cond.notify_all()

    def wait(self, pred, what: str) -> WorkloadView:  # type: ignore[no-untyped-def]
        with self.cond:
            ok = self.cond.wait_for(lambda: self.got and pred(self.got[-1]), timeout=10)
            assert ok, f"no view with {what}; last: {self.got[-1] if self.got else None}"
            return self.got[-1]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the source must end when the agent stops"


def keys(v: WorkloadView) -> list[str]:
    return sorted(enrolment.to_capture(v.pods))


def test_stream_follows_updates_and_a_restart_enrols_from_the_cache(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "agent-config.json"
    server.start([wl("a"), wl("far", node="node2")], "v1")
    views = Views(StreamPodSource(f"unix:{server.sock}", NODE, cache, paths="controller"))
    try:
        v = views.wait(lambda v: v.revision == "v1", "v1")
        assert keys(v) == ["uid-a"] and not v.from_cache
        server.update([wl("a"), wl("b"), wl("far", node="node2")], "v2")
        v = views.wait(lambda v: v.revision == "v2", "v2")
        assert keys(v) == ["uid-a", "uid-b"]
    finally:
        views.close()
    server.stop()       # the controller is down: a restarted agent starts from its cache
    views = Views(StreamPodSource(f"unix:{server.sock}", NODE, cache, paths="controller"))
    try:
        v = views.wait(lambda v: True, "any view")
        assert (v.revision, v.from_cache, keys(v)) == ("v2", True, ["uid-a", "uid-b"])
        server.start([wl("b")], "v3")   # back, with a change made during the outage
        v = views.wait(lambda v: v.revision == "v3", "v3")
        assert keys(v) == ["uid-b"] and not v.from_cache
    finally:
        views.close()


def test_a_version_that_changes_nothing_capture_uses_still_advances_the_revision(server: Server, tmp_path: Path) -> None:
    # The agent's status reports the revision it holds; a restarted agent reloads the newest
    # version from its cache, so the status must not lag behind on a change to a Workload field
    # capture does not use (here its SPIFFE identity).
    cache = tmp_path / "agent-config.json"
    server.start([wl("a"), wl("far", node="node2")], "v1")
    views = Views(StreamPodSource(f"unix:{server.sock}", NODE, cache, paths="controller"))
    try:
        views.wait(lambda v: v.revision == "v1", "v1")
        renamed = dataclasses.replace(wl("a"), identity="spiffe://example.org/ns/demo/sa/sa")
        server.update([renamed, wl("far", node="node2")], "v2")
        v = views.wait(lambda v: v.revision == "v2", "v2 (nothing capture uses changed)")
        assert keys(v) == ["uid-a"]
    finally:
        views.close()


def test_a_pod_the_agent_cannot_act_on_is_acked_not_nacked(server: Server) -> None:
    server.start([wl("a"), wl("pathless", netns="")], "v1")
    source = StreamPodSource(f"unix:{server.sock}", NODE, paths="controller")
    views = Views(source)
    try:
        v = views.wait(lambda v: v.revision == "v1", "v1")
        assert keys(v) == ["uid-a", "uid-pathless"]

        def acked() -> bool:
            assert server.server is not None
            [sub] = server.server.status()
            [t] = sub.types
            return t.acked_version == "v1" and t.in_sync and t.last_nack is None
        deadline = threading.Event()
        for _ in range(100):
            if acked():
                break
            deadline.wait(0.05)
        assert acked()
    finally:
        views.close()


def test_unknown_pod_paths_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="StreamPodSource.paths: 'guess' is not one of host, controller"):
        StreamPodSource("unix:/nonexistent", NODE, paths="guess")
