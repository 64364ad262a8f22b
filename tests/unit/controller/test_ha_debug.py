"""The debug API with two controller replicas (real `python -m controller` processes against the
API-server emulator, as test_ha_replicas.py): the replica asked answers for the whole mesh.

Each replica finds the other in what it already watches: the pods the controller's Service selects
in the root namespace (here both pods say podIP 127.0.0.1, each with its own `grpc` container
port). A real config-stream client (ztunnel/node-a) is connected to replica a, another
(ztunnel/node-b) to replica b; the CLI asks a alone, with a kubeconfig user's token that each
replica checks by TokenReview.

* `ambit proxy-status` asked of a lists both proxies, each with its replica; `ambit proxy-status
  ztunnel/node-b` asked of a dumps b's proxy;
* `ambit wait` asked of a does not claim "in force" while node-b (on b) has not ACKed the new
  version, and does once it has;
* with b down, a's answer is partial and says so (proxy-status exits 1 naming b; wait does not
  succeed, naming b), until b is back (restarted at the same address) or its pod is gone;
* over TLS (`--ca-secret`), each replica checks the reader's token itself;
* with a real feed from each ztunnel (ambit/dataplane/feed.py), `ambit tap` asked of a shows the
  flows of node-b (on b), labelled with b; `ambit stat` counts node-b's traffic; `ambit status`
  lists node-b with its replica; b killed mid-tap: the tap says b stopped and goes on from a,
  stat warns that b did not answer, status is partial (exit 1).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from ambit.configclient import ConfigClient, tls
from ambit.configclient.node import NodeInfo
from ambit.dataplane.feed import TapFeed, exposition
from ambit.dataplane.tap import TapHub
from ambit.model import Workload
from ambitctl import applywait, cluster
from tests.support.net import connectable, free_port
from tests.support.wait import wait_for
from tests.unit.controller.test_ha_replicas import LEASE, NS, ROOT, Cluster, holder
from tests.unit.debugapi.test_cluster_path import kubeconfig

TOKEN = "admin-token"


def controller_objects(ports: dict[str, int]) -> list[dict[str, Any]]:
    """The controller's Service and one pod per replica, as the Deployment makes them."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ambit-controller", "namespace": NS},
           "spec": {"selector": {"app": "ambit-controller"},
                    "ports": [{"name": "grpc", "port": 15012, "targetPort": "grpc"}]}}
    pods = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": name, "namespace": NS, "labels": {"app": "ambit-controller"}},
             "spec": {"nodeName": "cp-1", "serviceAccountName": "ambit-controller", "containers": [
                 {"name": "controller", "ports": [{"name": "grpc", "containerPort": port}]}]},
             "status": {"phase": "Running", "podIP": "127.0.0.1",
                        "conditions": [{"type": "Ready", "status": "True"}]}}
            for name, port in ports.items()]
    return [svc, *pods]


def app_pod(name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"nodeName": "node-a", "serviceAccountName": "web", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip}}


class Proxies:
    """Config-stream clients on a loop of their own; node-b applies only while `gate_b` is set."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clients: list[ConfigClient] = []
        self.gate_b = threading.Event()
        self.gate_b.set()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self, address: str, node: str, gate: threading.Event | None = None) -> ConfigClient:
        async def make() -> ConfigClient:
            def apply(_update: Any) -> Any:
                return asyncio.to_thread(gate.wait, 30) if gate is not None else None
            c = ConfigClient(address, NodeInfo("ztunnel", node), [Workload.TYPE], apply)
            await c.start()
            await c.wait_synced(20)
            return c
        c = self.run(make())
        self.clients.append(c)
        return c

    def stop(self) -> None:
        self.gate_b.set()
        for c in self.clients:
            self.run(c.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Replicas a (leader) and b, each with one ztunnel; the CLI's kubeconfig and a's target."""
    c = Cluster(tmp_path)
    proxies = Proxies()
    try:
        c.emu.add_user_token(TOKEN, "kubernetes-admin", ["system:masters", "system:authenticated"])
        c.emu.create({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": "shop", "labels": {"ambit.io/dataplane-mode": "ambient"}}})
        c.emu.create(app_pod("p1", "10.1.0.1"))
        ports = {"ctl-a": free_port(), "ctl-b": free_port()}
        for o in controller_objects(ports):
            c.emu.create(o)
        a = c.controller("ctl-a", ports["ctl-a"])
        wait_for(lambda: holder(c.emu) == "ctl-a", timeout=10, what="ctl-a holding the Lease")
        b = c.controller("ctl-b", ports["ctl-b"])
        proxies.connect(a, "node-a")
        proxies.connect(b, "node-b", proxies.gate_b)
        yield {"cluster": c, "proxies": proxies, "a": a, "b": b, "target": cluster.DebugTarget(a, TOKEN, "cluster"),
               "kubeconfig": kubeconfig(tmp_path / "kubeconfig", c.emu.url), "labdir": tmp_path / "nolab"}
    finally:
        proxies.stop()
        c.stop()


def ambit(mesh: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI, against replica a only (a cluster: the kubeconfig user's token)."""
    env = {**os.environ, "AMBIT_LAB_DIR": str(mesh["labdir"]), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "ambitctl.cli", *args, "--kubeconfig", str(mesh["kubeconfig"]),
                           "--controller", mesh["a"]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def rows(mesh: dict[str, Any], at: str = "a") -> dict[str, tuple[str, str]]:
    """proxy -> (state, replica), as replica `at` answers for the mesh."""
    resp = cluster.proxy_status(cluster.DebugTarget(mesh[at], TOKEN, "cluster"))
    return {f"{p.node.kind}/{p.node.name}": (p.state, getattr(p, "replica", "-")) for p in resp.proxies
            if p.connected}


def both_synced(mesh: dict[str, Any]) -> None:
    wait_for(lambda: rows(mesh) == {"ztunnel/node-a": ("SYNCED", "ctl-a"), "ztunnel/node-b": ("SYNCED", "ctl-b")},
             timeout=20, what="both ztunnels SYNCED, as replica a reports")


def test_proxy_status_asked_of_one_replica_lists_the_proxies_of_both(mesh: dict[str, Any]) -> None:
    both_synced(mesh)
    r = ambit(mesh, "proxy-status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(ln.startswith("controller replica ctl-a: ") for ln in lines), r.stdout
    assert any(ln.startswith("controller replica ctl-b: ") for ln in lines), r.stdout
    by_name = {ln.split()[0]: ln.split() for ln in lines if ln.startswith("node-")}
    assert by_name["node-a"][3] == "SYNCED" and by_name["node-a"][-1] == "ctl-a", r.stdout
    assert by_name["node-b"][3] == "SYNCED" and by_name["node-b"][-1] == "ctl-b", r.stdout
    # one proxy's config dump, asked of a, from b, which the proxy is connected to
    doc = cluster.proxy_config(mesh["target"], "ztunnel/node-b")
    assert doc["node"] == "ztunnel/node-b" and doc["replica"] == "ctl-b"
    assert "10.1.0.1" in json.dumps(doc["config"])         # the workload b sent it


def test_wait_asked_of_one_replica_waits_for_a_proxy_connected_to_the_other(mesh: dict[str, Any]) -> None:
    for at, node in (("a", "ztunnel/node-a"), ("b", "ztunnel/node-b")):        # each as its own replica says
        wait_for(lambda at=at, node=node: rows(mesh, at).get(node, ("",))[0] == "SYNCED", timeout=20,
                 what=f"{node} SYNCED at replica {at}")
    mesh["proxies"].gate_b.clear()                  # node-b (on replica b) sits on the next version
    rv = mesh["cluster"].emu.create(app_pod("p2", "10.1.0.2"))["metadata"]["resourceVersion"]
    want: dict[Any, str | None] = {("Pod", "shop", "p2"): rv}
    p = applywait.wait(mesh["target"], want, 1.5)
    assert not p.done and not p.failed
    assert any(m.startswith("ztunnel/node-b on controller replica ctl-b is STALE") for m in p.pending), p.pending
    assert not any("node-a" in m for m in p.pending), p.pending     # a's proxy has it
    mesh["proxies"].gate_b.set()
    p = applywait.wait(mesh["target"], want, 15)
    assert p.done, p.pending
    assert p.proxies == 2 and p.replicas == 2
    line, _ = applywait.report(p, 0.1, 15)
    assert "2 proxies on 2 controller replicas in sync at config version" in line


def test_a_replica_that_does_not_answer_makes_the_answer_partial(mesh: dict[str, Any], tmp_path: Path) -> None:
    both_synced(mesh)
    b = mesh["cluster"].procs["ctl-b"]
    b.send_signal(signal.SIGKILL)                   # its pod still says Ready (no kubelet has noticed yet)
    b.wait(5)
    r = ambit(mesh, "proxy-status")
    assert r.returncode == 1
    assert f"PARTIAL: controller replica ctl-b ({mesh['b']}) did not answer: UNAVAILABLE" in r.stdout, r.stdout
    assert "error: controller replica ctl-b did not answer (UNAVAILABLE" in r.stderr, r.stderr
    assert "node-a" in r.stdout and "node-b" not in r.stdout

    f = tmp_path / "p1.yaml"
    f.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: shop}\n")
    r = ambit(mesh, "wait", "-f", str(f), "--timeout", "1")
    assert r.returncode == 1, r.stdout
    assert f"controller replica ctl-b ({mesh['b']}) did not answer: UNAVAILABLE" in r.stderr, r.stderr

    # b restarts in place (same pod, same address): a asks it again, and node-b reconnects to it
    port = int(mesh["b"].rpartition(":")[2])
    mesh["cluster"].controller("ctl-b", port)
    both_synced(mesh)
    assert ambit(mesh, "wait", "-f", str(f), "--timeout", "10").returncode == 0

    # once b is stopped and its pod gone (the Deployment scaled down), a answers for what is left
    b = mesh["cluster"].procs["ctl-b"]
    b.terminate()
    b.wait(10)
    mesh["cluster"].emu.delete("v1", "Pod", "ctl-b", NS)
    wait_for(lambda: [x.name for x in cluster.proxy_status(mesh["target"]).replicas] == ["ctl-a"], timeout=10,
             what="replica a no longer asking the deleted b")
    r = ambit(mesh, "wait", "-f", str(f), "--timeout", "10")
    assert r.returncode == 0, r.stderr
    assert "1 proxy in sync" in r.stdout


def test_replicas_ask_each_other_over_tls_with_the_readers_own_token(tmp_path: Path) -> None:
    """With the CA (`--ca-secret`) the replicas serve TLS only: a asks b as the CLI would, pinning
    the mesh root and checking the controller's name. Each replica authorizes the reader's token
    itself: c, which admits another reader only, refuses it, and a's answer says so."""
    c = Cluster(tmp_path)
    try:
        c.emu.add_user_token(TOKEN, "kubernetes-admin", ["system:masters", "system:authenticated"])
        ports = {"ctl-a": free_port(), "ctl-b": free_port(), "ctl-c": free_port()}
        for o in controller_objects(ports):
            c.emu.create(o)
        addresses = {}
        for name, port in ports.items():
            readers = ["--debug-readers", "user:someone-else"] if name == "ctl-c" else []
            c.start(name, ["-m", "controller", "--kube", "--kube-host", c.emu.url, "--listen", f"127.0.0.1:{port}",
                           "--ca-secret", "ambit-ca", "--pod-name", name, "--debounce", "0.01",
                           "--dashboard-address", "", *readers, *LEASE])
            wait_for(lambda port=port, name=name: connectable(port) or c.procs[name].poll() is not None, timeout=60,
                     what=f"{name} listening")
            assert c.procs[name].poll() is None, c.log(name)
            addresses[name] = f"127.0.0.1:{port}"
        cm = wait_for(lambda: c.emu.get("v1", "ConfigMap", "ambit-root-cert", NS), timeout=30, what="the root")
        trust = tls.ControllerTrust(None, tls.DEFAULT_IDENTITY, cm["data"]["root-cert.pem"].encode())
        target = cluster.DebugTarget(addresses["ctl-a"], TOKEN, "cluster", trust)

        def replicas() -> list[tuple[str, bool, str]]:
            return [(r.name, r.answered, r.error.split(":")[0]) for r in cluster.proxy_status(target).replicas]
        wait_for(lambda: replicas() == [("ctl-a", True, ""), ("ctl-b", True, ""), ("ctl-c", False, "PERMISSION_DENIED")],
                 timeout=20, what="a answering with b's answer (over TLS) and c's refusal")
        assert "user 'kubernetes-admin'" in cluster.proxy_status(target).replicas[2].error
    finally:
        c.stop()


# -- tap, stat/top and status across the replicas -------------------------------------------------------

class Feed:
    """A proxy's real feed (ambit/dataplane/feed.py) to one replica: its TapHub, whose flows the
    controller taps, and an Istio metrics registry it scrapes."""

    def __init__(self, proxies: Proxies, address: str, node: str) -> None:
        self.proxies = proxies
        self.hub = TapHub(f"ztunnel/{node}")
        self.registry = CollectorRegistry()
        self.opened = Counter("istio_tcp_connections_opened", "TCP connections opened",
                              ["reporter", "destination_workload", "destination_workload_namespace",
                               "source_workload", "source_workload_namespace"], registry=self.registry)

        async def make() -> TapFeed:
            f = TapFeed(address, NodeInfo("ztunnel", node), self.hub, exposition(self.registry), backoff=(0.2, 1.0))
            await f.start()
            return f
        self.feed = proxies.run(make())
        wait_for(lambda: self.feed.connected, timeout=10, what=f"{node}'s feed open")

    def publish(self, *events: dict[str, Any]) -> None:
        """Finish these flows on the proxy's data path (its loop), as the proxy does."""
        async def _publish() -> None:
            for ev in events:
                self.hub.publish(lambda ev=ev: dict(ev))
        self.proxies.run(_publish())

    def stop(self) -> None:
        self.proxies.run(self.feed.stop())


@pytest.fixture
def feeds(mesh: dict[str, Any]) -> Iterator[dict[str, Feed]]:
    """node-a's feed open to replica a, node-b's to replica b."""
    out = {"a": Feed(mesh["proxies"], mesh["a"], "node-a"), "b": Feed(mesh["proxies"], mesh["b"], "node-b")}
    try:
        yield out
    finally:
        for f in out.values():
            f.stop()


def flow(dst: str, status: int = 200) -> dict[str, Any]:
    return {"type": "flow", "layer": "L7", "time": "2026-12-03T04:00:00.000000Z", "method": "GET", "path": "/",
            "status": status, "verdict": "allowed", "src": {"workload": "client", "namespace": "shop"},
            "dst": {"workload": dst, "pod": dst, "namespace": "shop"}}


class Tap:
    """`ambit tap` asked of replica a, its stderr read as it comes."""

    def __init__(self, mesh: dict[str, Any], *args: str) -> None:
        env = {**os.environ, "AMBIT_LAB_DIR": str(mesh["labdir"]), "NO_COLOR": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "ambitctl.cli", "tap", "-n", "shop", "-o", "json",
                                      "--duration", "60", *args, "--kubeconfig", str(mesh["kubeconfig"]),
                                      "--controller", mesh["a"]], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        assert self.proc.stderr is not None
        self.reader = threading.Thread(target=lambda: self.err.extend(iter(self.proc.stderr.readline, "")),
                                       daemon=True)
        self.reader.start()

    def said(self, text: str) -> bool:
        return any(text in ln for ln in list(self.err))

    def finish(self) -> tuple[int, list[dict[str, Any]], str]:
        try:
            out = self.proc.stdout.read() if self.proc.stdout else ""
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)
        return self.proc.returncode, [json.loads(ln) for ln in out.splitlines()], "".join(self.err)


def test_tap_asked_of_one_replica_shows_the_flows_of_a_proxy_connected_to_the_other(
        mesh: dict[str, Any], feeds: dict[str, Feed]) -> None:
    tap = Tap(mesh, "--max-events", "2")
    try:
        # a opened the same tap on b (local_only), whose filter reached node-b over its feed
        wait_for(lambda: (feeds["a"].hub.active and feeds["b"].hub.active and tap.said("tapping"))
                 or tap.proc.poll() is not None, timeout=20, what="both proxies tapping for the reader")
        assert tap.proc.poll() is None, tap.err
        feeds["b"].publish(flow("on-b", 503))
        feeds["a"].publish(flow("on-a"))
    finally:
        code, events, err = tap.finish()
    assert code == 0, err
    got = {(e["dst"]["workload"], e["source"], e["replica"]) for e in events}
    assert got == {("on-b", "ztunnel/node-b", "ctl-b"), ("on-a", "ztunnel/node-a", "ctl-a")}
    assert "tapping 2 components through 2 controller replicas (ctl-a, ctl-b): ztunnel/node-a, ztunnel/node-b" in err
    # the reader left: a closed its stream to b, and b's proxy stopped tapping
    wait_for(lambda: not feeds["b"].hub.active and not feeds["a"].hub.active, timeout=10,
             what="both proxies to stop tapping once the reader left")


def test_stat_and_status_asked_of_one_replica_cover_the_proxy_on_the_other(
        mesh: dict[str, Any], feeds: dict[str, Feed]) -> None:
    both_synced(mesh)
    edge = feeds["b"].opened.labels("destination", "on-b", "shop", "client", "shop")
    stop = threading.Event()

    def traffic() -> None:           # connections keep arriving at node-b (on replica b) during the window
        while not stop.wait(0.05):
            edge.inc()
    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        stat = ambit(mesh, "stat", "-n", "shop", "--window", "1", "-o", "json")
    finally:
        stop.set()
        t.join(5)
    assert stat.returncode == 0, stat.stderr
    [row] = json.loads(stat.stdout)["rows"]
    assert row["destination_workload"] == "on-b" and row["tcp_connections_per_s"] > 0
    assert "did not answer" not in stat.stderr

    st = ambit(mesh, "status")
    assert st.returncode == 0, st.stdout + st.stderr
    lines = st.stdout.splitlines()
    assert any(ln.startswith(f"controller replica ctl-b ({mesh['b']}): config version ") for ln in lines), st.stdout
    head = next(ln for ln in lines if ln.startswith("COMPONENT")).split()
    assert head[-1] == "REPLICA"
    rows = {ln.split()[0]: ln.split() for ln in lines if ln.startswith("ztunnel/")}
    assert rows["ztunnel/node-b"][-1] == "ctl-b" and rows["ztunnel/node-a"][-1] == "ctl-a", st.stdout


def test_a_replica_killed_mid_tap_is_said_stopped_and_the_tap_goes_on_from_the_other(
        mesh: dict[str, Any], feeds: dict[str, Feed]) -> None:
    tap = Tap(mesh, "--max-events", "1")
    try:
        wait_for(lambda: (feeds["b"].hub.active and tap.said("tapping")) or tap.proc.poll() is not None,
                 timeout=20, what="node-b tapping for the reader")
        b = mesh["cluster"].procs["ctl-b"]
        b.send_signal(signal.SIGKILL)
        b.wait(5)
        wait_for(lambda: tap.said("controller replica ctl-b: stopped") or tap.proc.poll() is not None,
                 timeout=10, what="the tap saying b stopped")
        assert tap.proc.poll() is None, tap.err
        feeds["a"].publish(flow("on-a"))
    finally:
        code, events, err = tap.finish()
    assert code == 0, err
    assert [(e["dst"]["workload"], e["replica"]) for e in events] == [("on-a", "ctl-a")]
    assert f"warning: controller replica ctl-b: stopped ({mesh['b']}): UNAVAILABLE" in err, err
    assert "the tap goes on from the other replicas" in err

    stat = ambit(mesh, "stat", "-n", "shop", "--window", "0.2")
    assert stat.returncode == 0, stat.stderr
    assert f"controller replica ctl-b ({mesh['b']}) did not answer: UNAVAILABLE" in stat.stderr, stat.stderr
    st = ambit(mesh, "status")
    assert st.returncode == 1
    assert f"PARTIAL: controller replica ctl-b ({mesh['b']}) did not answer: UNAVAILABLE" in st.stdout, st.stdout
    assert "ztunnel/node-a" in st.stdout and "ztunnel/node-b" not in st.stdout


def test_a_tap_follows_the_replicas_one_coming_back_and_one_joining(
        mesh: dict[str, Any], feeds: dict[str, Feed]) -> None:
    """A rolling update replaces every replica during a long tap: b restarts in place (a container
    restart: same pod, same address) and c appears; the tap asked of a taps both again, saying so,
    instead of going on with a's proxies alone."""
    c = mesh["cluster"]
    tap = Tap(mesh, "--max-events", "2")
    feed_c = None
    try:
        wait_for(lambda: (feeds["b"].hub.active and tap.said("tapping")) or tap.proc.poll() is not None,
                 timeout=20, what="node-b tapping for the reader")
        b = c.procs["ctl-b"]
        b.send_signal(signal.SIGKILL)
        b.wait(5)
        wait_for(lambda: tap.said("controller replica ctl-b: stopped") or tap.proc.poll() is not None,
                 timeout=10, what="the tap saying b stopped")
        port_b = int(mesh["b"].rsplit(":", 1)[1])
        c.controller("ctl-b", port_b)                     # back at the same address
        wait_for(lambda: tap.said("controller replica ctl-b: tapped again") or tap.proc.poll() is not None,
                 timeout=30, what="the tap opening b again")
        assert tap.said(f"tapped again ({mesh['b']}): tapping ztunnel/node-b"), tap.err
        port_c = free_port()
        c.emu.create(controller_objects({"ctl-c": port_c})[1])
        feed_c = None
        addr_c = c.controller("ctl-c", port_c)
        feed_c = Feed(mesh["proxies"], addr_c, "node-c")
        wait_for(lambda: tap.said("controller replica ctl-c: joined") or tap.proc.poll() is not None,
                 timeout=30, what="the tap joining c")
        wait_for(lambda: feed_c.hub.active and feeds["b"].hub.active, timeout=10, what="node-b and node-c tapping")
        assert tap.proc.poll() is None, tap.err
        feeds["b"].publish(flow("on-b"))
        feed_c.publish(flow("on-c"))
    finally:
        code, events, err = tap.finish()
        if feed_c is not None:
            feed_c.stop()
    assert code == 0, err
    assert {(e["dst"]["workload"], e["replica"]) for e in events} == {("on-b", "ctl-b"), ("on-c", "ctl-c")}
    assert err.count("controller replica ctl-b: stopped") == 1, err
    assert f"warning: controller replica ctl-c: joined ({addr_c}): tapping ztunnel/node-c" in err, err
