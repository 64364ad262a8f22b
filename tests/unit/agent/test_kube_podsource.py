"""KubePodSource against a real HTTP API-server emulator, through the official kubernetes client.

Pods get sandboxes from a fixture cgroup tree holding a real process of the test (agent/kube_pods.py
has the layout tests); the host-netns check is off because that process shares the test's netns.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.kube_pods import SandboxFinder
from agent.podsource import CGROUP_ANNOTATION, NETNS_ANNOTATION, KubePodSource, NodeView
from ambit.kube.client import make_api_client
from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for

NODE = "node-1"
AMBIENT = {"ambit.io/dataplane-mode": "ambient"}


def pod(name: str, ip: str = "10.244.1.1", node: str = NODE, ns: str = "demo", annotations: dict | None = None,
        **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations or {}},
            "spec": {"nodeName": node, "serviceAccountName": "sa", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip}}


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}




class Running:
    """views(stop) consumed on a thread, as the agent consumes it."""

    def __init__(self, source: KubePodSource):
        self.source = source
        self.views: list[NodeView] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for v in self.source.views(self.stop):
            self.views.append(v)

    @property
    def last(self) -> NodeView:
        assert self.views, "no view yet"
        return self.views[-1]

    def pod_names(self) -> set[str]:
        return {p["metadata"]["name"] for p in self.views[-1].pods} if self.views else set()

    def pod(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.last.pods if p["metadata"]["name"] == name), None) if self.views else None

    def pods_state(self):  # noqa: ANN201 - ReflectorState
        return self.source.reflectors["pods"].state


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    e = KubeEmulator(groups=())
    e.start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture
def cgroot(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    return root


@pytest.fixture
def sleeper() -> Iterator[int]:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()


def sandbox(cgroot: Path, uid: str, pid: int) -> Path:
    d = cgroot / "kubepods.slice" / "kubepods-besteffort.slice" / f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
    (d / "cri-containerd-abc.scope").mkdir(parents=True)
    (d / "cri-containerd-abc.scope" / "cgroup.procs").write_text(f"{pid}\n")
    return d


@pytest.fixture
def run(emu: KubeEmulator, cgroot: Path, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(url: str | None = None, wait: bool = True, **kw: Any) -> Running:
        kw.setdefault("backoff", (0.05, 0.3))
        kw.setdefault("debounce", 0.01)
        kw.setdefault("resync", 0.1)
        finder = SandboxFinder(cgroot, netns_dir=tmp_path / "netns", host_netns=None)
        r = Running(KubePodSource(NODE, make_api_client(url or emu.url), sandboxes=finder, **kw))
        started.append(r)
        if wait:
            wait_for(lambda: r.views, "the first view")
        return r

    yield start
    for r in started:
        r.stop.set()
        r.thread.join(timeout=10)
        assert not r.thread.is_alive(), "views() did not return after stop"
        r.source.api_client.close()


def test_first_view_has_this_nodes_pods_all_namespaces_and_this_node(emu: KubeEmulator, run) -> None:
    emu.create(namespace("demo", **AMBIENT))
    emu.create(namespace("legacy"))
    emu.create(node(NODE))
    emu.create(node("node-2"))
    emu.create(pod("a"))
    emu.create(pod("elsewhere", node="node-2"))
    r = run()
    v = r.views[0]
    assert r.pod_names() == {"a"}
    assert v.namespaces == {"demo": AMBIENT, "legacy": {}}
    assert set(v.nodes) == {NODE}
    assert v.pods[0]["kind"] == "Pod" and v.pods[0]["metadata"]["uid"]
    # The API server does the node scoping: lists and watches carry the field selectors.
    for q in emu.list_requests("pods") + emu.watch_requests("pods"):
        assert q["fieldSelector"] == f"spec.nodeName={NODE}"
    for q in emu.list_requests("nodes") + emu.watch_requests("nodes"):
        assert q["fieldSelector"] == f"metadata.name={NODE}"
    assert all("fieldSelector" not in q for q in emu.list_requests("namespaces"))


def test_watch_applies_add_modify_delete_of_pods_and_namespace_labels(emu: KubeEmulator, run) -> None:
    emu.create(namespace("demo"))
    r = run()
    emu.create(pod("a", "10.244.1.1"))
    emu.create(pod("b", "10.244.1.2"))
    wait_for(lambda: r.pod_names() == {"a", "b"}, "two pods")
    emu.update(pod("a", "10.244.1.9"))
    wait_for(lambda: (r.pod("a") or {}).get("status", {}).get("podIP") == "10.244.1.9", "the modification")
    emu.delete("v1", "Pod", "b", "demo")
    wait_for(lambda: r.pod_names() == {"a"}, "the deletion")
    emu.update(namespace("demo", **AMBIENT))
    wait_for(lambda: r.last.namespaces.get("demo") == AMBIENT, "the namespace label")
    st = r.pods_state()
    assert st.lists == 1 and st.relists == 0 and st.events == 4


def test_gone_relists_and_forgets_pods_deleted_in_the_gap(emu: KubeEmulator, run) -> None:
    emu.create(pod("a"))
    emu.create(pod("keep"))
    r = run(page_size=1)                               # lists come in pages of one (limit/continue)
    assert r.pod_names() == {"a", "keep"}
    with emu.hold_watches():
        emu.drop_watches()
        wait_for(lambda: emu.open_watches() == 0, "the watches to drop")
        emu.delete("v1", "Pod", "a", "demo")          # its DELETED event is compacted away below
        emu.create(pod("c"))
        emu.compact()
    wait_for(lambda: r.pod_names() == {"keep", "c"}, "the relist after 410 Gone")
    st = r.pods_state()
    assert st.relists == 1 and st.lists == 2
    assert [q.get("limit") for q in emu.list_requests("pods")] == ["1"] * 4, "two pages per list"
    emu.create(pod("d"))                               # and it watches again after the relist
    wait_for(lambda: "d" in r.pod_names(), "an event after the relist")


class Gate:
    """A TCP front for the emulator that drops every connection until opened: an API server that is
    down (or restarting) when the agent starts."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.open = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.open.is_set():
                c.close()
                continue
            up = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((c, up), (up, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def test_api_server_down_at_start_is_retried_and_no_view_comes_before_it(emu: KubeEmulator, run) -> None:
    emu.create(pod("a"))
    gate = Gate(int(emu.url.rsplit(":", 1)[1]))
    try:
        r = run(url=f"http://127.0.0.1:{gate.port}", wait=False)
        wait_for(lambda: r.pods_state().reconnects >= 2, "failed attempts")
        assert r.views == [], "no view before every collection is listed"
        assert r.pods_state().last_error
        gate.open.set()
        wait_for(lambda: r.pod_names() == {"a"}, "the first view once the API server answers")
    finally:
        gate.close()


def test_pods_carry_their_sandbox_and_never_their_own_say_on_it(emu: KubeEmulator, run, cgroot: Path,
                                                               sleeper: int) -> None:
    emu.create(namespace("demo", **AMBIENT))
    emu.create(namespace("legacy"))
    forged = {NETNS_ANNOTATION: "/proc/1/ns/net", CGROUP_ANNOTATION: "/sys/fs/cgroup", "ambit.io/x": "kept"}
    a = emu.create(pod("a", annotations=forged))
    out = emu.create(pod("out", annotations=forged, ns="legacy"))    # not enrolled: no sandbox lookup
    cg = sandbox(cgroot, a["metadata"]["uid"], sleeper)
    sandbox(cgroot, out["metadata"]["uid"], sleeper)
    r = run()
    ann = r.pod("a")["metadata"]["annotations"]
    assert ann == {NETNS_ANNOTATION: f"/proc/{sleeper}/ns/net", CGROUP_ANNOTATION: str(cg), "ambit.io/x": "kept"}
    assert r.pod("out")["metadata"]["annotations"] == {"ambit.io/x": "kept"}, "a forged path must be dropped"


def test_a_sandbox_that_appears_later_yields_a_new_view(emu: KubeEmulator, run, cgroot: Path,
                                                        sleeper: int) -> None:
    emu.create(namespace("demo", **AMBIENT))
    a = emu.create(pod("a"))
    r = run()
    assert NETNS_ANNOTATION not in r.pod("a")["metadata"]["annotations"], "no cgroup yet"
    n = len(r.views)
    sandbox(cgroot, a["metadata"]["uid"], sleeper)     # the runtime creates it; the API says nothing
    wait_for(lambda: NETNS_ANNOTATION in r.pod("a")["metadata"]["annotations"], "the sandbox")
    assert r.pod("a")["metadata"]["annotations"][NETNS_ANNOTATION] == f"/proc/{sleeper}/ns/net"
    time.sleep(0.4)                                   # several resyncs: nothing changed, no new views
    assert len(r.views) == n + 1


def test_host_network_pods_get_no_sandbox(emu: KubeEmulator, run, cgroot: Path, sleeper: int) -> None:
    emu.create(namespace("demo", **AMBIENT))
    p = pod("hn")
    p["spec"]["hostNetwork"] = True
    created = emu.create(p)
    sandbox(cgroot, created["metadata"]["uid"], sleeper)
    r = run()
    assert NETNS_ANNOTATION not in r.pod("hn")["metadata"]["annotations"]
