"""Two controller replicas (real `python -m controller` processes, leader election on, short Lease
timings) against one API-server emulator (tests/support/kube_emulator.py, real list/watch over
HTTP, the official client): what a platform team running more than one replica relies on.

* a follower serves a complete, current config (an ingress connected to it serves a route created
  after it started);
* a leader killed with SIGKILL is replaced within the lease duration, and the new leader writes the
  status the old one would have;
* a leader paused (SIGSTOP) past its lease writes nothing once it resumes: the replica that took
  over keeps the Lease and the status it wrote stands;
* an ingress's listener bind failures reach the Gateway status the leader writes whichever replica
  the ingress reports to: the replica that receives the report writes it onto the ingress pod
  (condition ambit.io/ListenersBound, controller/waypoints/podcondition.py), where the leader reads
  it; it recovers when the port binds, and when a new container of the pod reports to another
  replica after the writer died.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube_emulator import Fault, KubeEmulator
from tests.support.net import connectable, free_port
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[3]
GW_V1 = "gateway.networking.k8s.io/v1"
NS = "ambit-system"
# short Lease timings (the defaults are 15 / 10 / 2 s): failover bounded by about 2 + 0.2 s
LEASE = ["--leader-lease-duration", "2", "--leader-renew-deadline", "1.5", "--leader-retry-period", "0.2"]


def _conds(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj or {}).get("conditions") or []}


def holder(emu: KubeEmulator) -> str | None:
    lease = emu.get("coordination.k8s.io/v1", "Lease", "ambit-controller", NS) or {}
    return (lease.get("spec") or {}).get("holderIdentity")


class Cluster:
    """The emulator, and the processes started against it (stopped, and their logs closed, at the end)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.emu = KubeEmulator().start()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[Any] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        p = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = p
        return p

    def controller(self, name: str, port: int = 0) -> str:
        """Start replica `name` (its Lease identity), on `port` (0: a free one); its gRPC address
        once it listens."""
        port = port or free_port()
        p = self.start(name, ["-m", "controller", "--kube", "--kube-host", self.emu.url,
                              "--listen", f"127.0.0.1:{port}", "--insecure-config-stream", "--debounce", "0.01",
                              "--dashboard-address", "", "--pod-name", name, *LEASE])
        wait_for(lambda: connectable(port) or p.poll() is not None, timeout=30, what=f"{name} listening")
        assert p.poll() is None, self.log(name)
        return f"127.0.0.1:{port}"

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in self.logs:
            f.close()
        self.emu.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})
        yield c
    finally:
        c.stop()


def ingress_gateway(emu: KubeEmulator, name: str, listeners: list[dict[str, Any]], ip: str = "10.96.0.60") -> None:
    emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "web"},
                "spec": {"clusterIP": ip, "type": "LoadBalancer", "ports": [{"port": 80}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}})
    emu.create({"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": name, "namespace": "web"},
                "spec": {"gatewayClassName": "ambit", "listeners": listeners}})


def gateway_status(emu: KubeEmulator, name: str) -> dict[str, dict[str, Any]]:
    return _conds((emu.get(GW_V1, "Gateway", name, "web") or {}).get("status"))


def two_replicas(c: Cluster) -> tuple[str, str]:
    """Replica a (the leader: it starts first and creates the Lease), then replica b (a follower)."""
    a = c.controller("ctl-a")
    wait_for(lambda: holder(c.emu) == "ctl-a", timeout=10, what="ctl-a holding the Lease")
    b = c.controller("ctl-b")
    return a, b


def test_follower_serves_a_complete_current_config(cluster: Cluster) -> None:
    """An ingress connected to the follower gets its Gateway and a route created after both started."""
    emu = cluster.emu
    port = free_port()
    ingress_gateway(emu, "gw", [{"name": "http", "port": port, "protocol": "HTTP"}])
    _, b = two_replicas(cluster)
    cluster.start("ingress", ["-m", "waypoint", "--waypoint", "web/gw", "--pod-name", "gw-abc", "--node", "node-1",
                              "--gateway-class", "ambit", "--controller", b, "--ingress-address", "127.0.0.1",
                              "--admin-address", "", "--metrics-address", ""])

    def status(path: str) -> int:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0
    wait_for(lambda: status("/") == 404, timeout=30, what="the ingress (fed by the follower) serving its listener")
    # a route created now (its backend Service has no endpoints: 503, not 404, proves it arrived)
    emu.create({"apiVersion": GW_V1, "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "web"},
                "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/r"}}],
                     "backendRefs": [{"name": "gw", "port": 80}]}]}})
    wait_for(lambda: status("/r") not in (0, 404), timeout=30,
             what="the follower's config carrying the route created after it started")
    assert holder(emu) == "ctl-a"      # b served all this as a follower


def test_sigkill_leader_failover_resumes_status_writes(cluster: Cluster) -> None:
    """Kill the leader: the follower takes the Lease once it has seen it unchanged for the lease
    duration, and writes the status of a Gateway created after the kill."""
    emu = cluster.emu
    ingress_gateway(emu, "one", [{"name": "http", "port": free_port(), "protocol": "HTTP"}])
    two_replicas(cluster)
    wait_for(lambda: gateway_status(emu, "one").get("Accepted"), timeout=15, what="the leader writing status")
    cluster.procs["ctl-a"].send_signal(signal.SIGKILL)
    cluster.procs["ctl-a"].wait(5)
    ingress_gateway(emu, "two", [{"name": "http", "port": free_port(), "protocol": "HTTP"}], ip="10.96.0.61")
    wait_for(lambda: holder(emu) == "ctl-b", timeout=15, what="ctl-b taking the Lease over")
    wait_for(lambda: gateway_status(emu, "two").get("Accepted"), timeout=15,
             what="the new leader writing the status of a Gateway created after the failover")


def test_paused_leader_writes_nothing_once_it_resumes(cluster: Cluster) -> None:
    """SIGSTOP the leader past its lease: b takes over; a Gateway b then accepts and writes is
    changed while a is paused; once a resumes (with its stale view) it neither takes the Lease back
    nor writes that Gateway's status."""
    emu = cluster.emu
    ingress_gateway(emu, "one", [{"name": "http", "port": free_port(), "protocol": "HTTP"}])
    two_replicas(cluster)
    wait_for(lambda: gateway_status(emu, "one").get("Accepted"), timeout=15, what="the leader writing status")
    a = cluster.procs["ctl-a"]
    a.send_signal(signal.SIGSTOP)
    wait_for(lambda: holder(emu) == "ctl-b", timeout=15, what="ctl-b taking the Lease from the paused ctl-a")
    emu.create({"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": "two", "namespace": "web"},
                "spec": {"gatewayClassName": "ambit", "listeners": [
                    {"name": "http", "port": free_port(), "protocol": "HTTP"}]}})
    wait_for(lambda: gateway_status(emu, "two").get("Accepted"), timeout=15, what="ctl-b writing status")
    time.sleep(0.5)     # b's writes for "two" settle (its later passes find nothing to change)
    # count every status write from now on: b has nothing left to write, so any is a's
    writes = emu.inject(Fault(path="/status", method=None))
    a.send_signal(signal.SIGCONT)
    # a catches up (its watch resumes, it reads the Lease) and steps down
    wait_for(lambda: "is not the leader" in cluster.log("ctl-a"), timeout=15, what="ctl-a stepping down")
    time.sleep(1.0)   # several of a's retry periods (0.2 s) and debounces: anything it would write, it has
    assert holder(emu) == "ctl-b"
    assert a.poll() is None
    log = cluster.log("ctl-a")
    assert log.count("leading as ctl-a") == 1, log
    assert writes.hits == 0, f"{writes.hits} status writes after the paused ex-leader resumed"


class Holder:
    """A port someone else listens on (what the ingress's listener wants), until `release()`."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def release(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture
def busy() -> Iterator[Holder]:
    h = Holder()
    yield h
    h.release()


KUBELET_READY = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}


def ingress_pod(emu: KubeEmulator, name: str = "gw-abc") -> None:
    """The ingress pod as the cluster has it: labelled with its Gateway's name, with the kubelet's conditions."""
    emu.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": name, "namespace": "web",
                    "labels": {"gateway.networking.k8s.io/gateway-name": "gw"}},
                "spec": {"nodeName": "node-1", "serviceAccountName": "gw", "containers": [{"name": "istio-proxy"}]},
                "status": {"phase": "Running", "podIP": "10.244.0.9", "conditions": [dict(KUBELET_READY)]}})


def start_ingress(cluster: Cluster, controller: str, log: str = "ingress") -> subprocess.Popen[bytes]:
    """The ingress of pod gw-abc (its proxy process), connected to `controller`."""
    return cluster.start(log, ["-m", "waypoint", "--waypoint", "web/gw", "--pod-name", "gw-abc", "--node",
                               "node-1", "--gateway-class", "ambit", "--controller", controller,
                               "--ingress-address", "127.0.0.1", "--admin-address", "", "--report-interval",
                               "0.3", "--metrics-address", ""])


def ingress_on_the_follower(cluster: Cluster, busy: int) -> tuple[str, str]:
    """Leader a, follower b, and an ingress connected to b whose one listener cannot bind `busy`."""
    ingress_gateway(cluster.emu, "gw", [{"name": "busy", "port": busy, "protocol": "HTTP"}])
    ingress_pod(cluster.emu)
    a, b = two_replicas(cluster)
    start_ingress(cluster, b)
    return a, b


def busy_listener(emu: KubeEmulator) -> dict[str, Any]:
    st = (emu.get(GW_V1, "Gateway", "gw", "web") or {}).get("status") or {}
    return next((ln for ln in st.get("listeners") or [] if ln["name"] == "busy"), {})


def refused(emu: KubeEmulator) -> dict[str, Any] | None:
    ln = busy_listener(emu)
    return ln if _conds(ln).get("Accepted", {}).get("status") == "False" else None


def accepted(emu: KubeEmulator) -> bool:
    return _conds(busy_listener(emu)).get("Accepted", {}).get("status") == "True"


def pod_conditions(emu: KubeEmulator) -> dict[str, dict[str, Any]]:
    return _conds((emu.get("v1", "Pod", "gw-abc", "web") or {}).get("status"))


def test_bind_failure_reported_to_the_follower_reaches_the_leaders_status(cluster: Cluster, busy: Holder) -> None:
    """An ingress connected to the follower cannot bind a port: the Gateway status the leader writes
    says so (the follower wrote it onto the pod, where an operator reads it too, next to the
    kubelet's conditions); once the port binds, both recover. The pod is the only thing the
    controllers write to for it, and only through pods/status."""
    emu = cluster.emu
    ingress_on_the_follower(cluster, busy.port)
    ln = wait_for(lambda: refused(emu), timeout=30, what="the busy listener's Accepted=False, reported to the follower")
    assert _conds(ln)["Accepted"]["reason"] == "PortUnavailable"
    assert f"port {busy.port} cannot be bound on 1 of 1 ingress pod(s) (pod gw-abc: " in _conds(ln)["Accepted"]["message"]
    assert _conds(ln)["Programmed"]["reason"] == "PortUnavailable"
    cond = pod_conditions(emu)["ambit.io/ListenersBound"]
    assert (cond["status"], cond["reason"]) == ("False", "PortUnavailable")
    assert cond["message"].startswith(f"port {busy.port} (busy): ")
    assert pod_conditions(emu)["Ready"] == KUBELET_READY        # merged by type: the kubelet's are kept
    assert holder(emu) == "ctl-a"
    # ctl-b logs the write once the API server has answered it, which can be after the leader has
    # already seen the pod change and written the Gateway status
    wait_for(lambda: "wrote pod web/gw-abc condition ambit.io/ListenersBound=False" in cluster.log("ctl-b"),
             timeout=10, what="the follower's log of its pod write")
    # the ingress reports its ports only once it has tried them: the pod never read "every listener
    # port is bound" before the failure (an ingress that reported before its first bind wrote that)
    assert "ListenersBound=True" not in cluster.log("ctl-b").split("ListenersBound=False")[0]
    assert "wrote pod" not in cluster.log("ctl-a")              # the leader never received a report

    busy.release()                                              # the ingress's next retry binds
    wait_for(lambda: accepted(emu), timeout=60, what="the busy listener Accepted again once the port binds")
    cond = pod_conditions(emu)["ambit.io/ListenersBound"]
    assert (cond["status"], cond["reason"]) == ("True", "Bound")
    assert _conds(busy_listener(emu))["Programmed"]["status"] == "True"
    pod_writes = {(m, p) for m, p, _ in emu.requests if "/pods" in p and m != "GET"}
    assert pod_writes == {("PATCH", "/api/v1/namespaces/web/pods/gw-abc/status")}


def test_a_new_container_reporting_to_another_replica_corrects_what_the_dead_writer_wrote(
        cluster: Cluster, busy: Holder) -> None:
    """The ingress (connected to the follower) cannot bind; the ingress container and the follower
    that wrote its condition both die; the pod's new container, connected to the leader, binds:
    its first report is compared with what the pod says, not with what this replica heard before
    (nothing), so the stale failure is replaced and the Gateway status recovers."""
    emu = cluster.emu
    a, _ = ingress_on_the_follower(cluster, busy.port)
    wait_for(lambda: refused(emu), timeout=30, what="the failure reported to the follower in the status")
    for name in ("ingress", "ctl-b"):
        cluster.procs[name].send_signal(signal.SIGKILL)
        cluster.procs[name].wait(5)
    busy.release()
    start_ingress(cluster, a, log="ingress-2")
    wait_for(lambda: accepted(emu), timeout=30, what="the new container's report clearing the stale failure")
    assert pod_conditions(emu)["ambit.io/ListenersBound"]["status"] == "True"
