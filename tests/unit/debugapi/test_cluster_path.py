"""The cluster path of the read commands, end to end without mocks: a real controller process
watching the API-server emulator (tests/support/kube_emulator.py) through the official client,
a real config-stream client and status reporter as ztunnel/node-1, and the `ambit` CLI as a user
runs it (kubeconfig, --context, --controller), reading Kubernetes objects from the emulator and
component state from the controller's debug API, authenticated by TokenReview."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter

from ambit.configclient import ConfigClient, NodeInfo
from ambit.configclient.report import StatusReporter
from ambit.dataplane.feed import TapFeed, exposition
from ambit.dataplane.tap import TapHub
from ambit.model import Authorization, PeerAuthn, Service, Workload
from ambit.version import VERSION
from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[3]
IDENTITY = "spiffe://cluster.local/ns/demo/sa/echo"
NOT_AFTER = "2026-12-31T00:00:00Z"


def objects() -> list[dict[str, Any]]:
    labels = {"app": "echo", "version": "v1"}
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "echo-v1", "namespace": "demo", "uid": "uid-echo-v1", "labels": labels},
         "spec": {"nodeName": "node-1", "serviceAccountName": "echo",
                  "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
         "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "demo"},
         "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "echo"},
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "echo-allow", "namespace": "demo"},
         "spec": {"selector": {"matchLabels": {"app": "echo"}}, "action": "ALLOW",
                  "rules": [{"from": [{"source": {"namespaces": ["demo"]}}]}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "strict", "namespace": "demo"}, "spec": {"mtls": {"mode": "STRICT"}}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "echo-routes", "namespace": "demo"},
         "spec": {"hosts": ["echo"], "http": [{"route": [{"destination": {"host": "echo"}}]}]}},
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubeconfig(path: Path, server: str) -> Path:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "admin",
           "clusters": [{"name": "emu", "cluster": {"server": server}}],
           "users": [{"name": "admin", "user": {"token": "admin-token"}},
                     {"name": "dev", "user": {"token": "dev-token"}}],
           "contexts": [{"name": "admin", "context": {"cluster": "emu", "user": "admin", "namespace": "demo"}},
                        {"name": "dev", "context": {"cluster": "emu", "user": "dev"}}]}
    path.write_text(yaml.safe_dump(doc))
    return path


class Ztunnel:
    """A config-stream subscriber, status reporter and feed (its real TapHub and an Istio metrics
    registry) as ztunnel/node-1, on a loop of its own."""

    def __init__(self, target: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.target = target
        self.client: ConfigClient | None = None
        self.reporter: StatusReporter | None = None
        self.hub = TapHub("ztunnel/node-1")
        self.registry = CollectorRegistry()
        self.opened = Counter("istio_tcp_connections_opened", "TCP connections opened",
                              ["reporter", "destination_workload", "destination_workload_namespace",
                               "source_workload", "source_workload_namespace"], registry=self.registry)
        self.feed: TapFeed | None = None

    def publish(self, *events: dict[str, Any]) -> None:
        """Finish these flows on the ztunnel's data path (its loop), as the proxy does."""
        async def _publish() -> None:
            for ev in events:
                self.hub.publish(lambda ev=ev: dict(ev))
        asyncio.run_coroutine_threadsafe(_publish(), self.loop).result(5)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        node = NodeInfo("ztunnel", "node-1", instance_id="abc")
        self.client = ConfigClient(self.target, node, [Workload.TYPE, Service.TYPE, Authorization.TYPE,
                                                       PeerAuthn.TYPE], lambda u: None)
        await self.client.start()
        certs = [{"identity": IDENTITY, "state": "VALID", "serial": "abcdef0123456789", "not_after": NOT_AFTER}]
        self.reporter = StatusReporter(self.target, node, lambda: {"node": "node-1", "certs": certs,
                                                                   "connections": {"inbound": 3}}, interval=0.3)
        await self.reporter.start()
        self.feed = TapFeed(self.target, node, self.hub, exposition(self.registry), backoff=(0.2, 1.0))
        await self.feed.start()

    def stop(self) -> None:
        async def _stop() -> None:
            if self.feed:
                await self.feed.stop()
            if self.reporter:
                await self.reporter.stop()
            if self.client:
                await self.client.stop()
        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("da-cluster")
    emu = KubeEmulator().start()
    for o in objects():
        emu.create(o)
    emu.add_user_token("admin-token", "kubernetes-admin", ["system:masters", "system:authenticated"])
    emu.add_user_token("dev-token", "dev", ["system:authenticated"])
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = open(tmp / "controller.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "controller", "--kube", "--kube-host", emu.url, "--no-status",
                             "--listen", address, "--insecure-config-stream", "--debounce", "0.01"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    zt = Ztunnel(address)
    try:
        wait_for(lambda: _connectable(port) or proc.poll() is not None, timeout=30, what="controller listening")
        assert proc.poll() is None, (tmp / "controller.log").read_text()
        zt.start()
        assert zt.client is not None and zt.reporter is not None
        wait_for(lambda: zt.client.connected and zt.reporter.sent >= 1, timeout=10, what="ztunnel synced + reported")
        wait_for(lambda: zt.feed is not None and zt.feed.connected, timeout=10, what="ztunnel feed open")
        yield {"emu": emu, "zt": zt, "address": address, "kubeconfig": kubeconfig(tmp / "kubeconfig", emu.url),
               "labdir": tmp / "nolab", "log": tmp / "controller.log"}
    finally:
        zt.stop()
        proc.terminate()
        proc.wait(10)
        log.close()
        emu.stop()


def _connectable(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ambit(mesh: dict[str, Any], *args: str, context: str = "admin") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMBIT_LAB_DIR": str(mesh["labdir"]), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "ambitctl.cli", *args, "--kubeconfig", str(mesh["kubeconfig"]),
                           "--context", context], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_proxy_status_in_a_cluster_shows_synced_ztunnel_with_its_report(mesh: dict[str, Any]) -> None:
    r = ambit(mesh, "proxy-status", "--controller", mesh["address"], "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["controller_version"] == VERSION
    [z] = [p for p in doc["proxies"] if p["kind"] == "ztunnel"]
    assert (z["name"], z["state"], z["proxy_version"]) == ("node-1", "SYNCED", VERSION)
    assert z["acked_version"] == z["current_version"] == doc["config_version"] != ""
    assert z["certs"] == [{"identity": IDENTITY, "state": "VALID", "not_after": NOT_AFTER}]
    table = ambit(mesh, "proxy-status", "--controller", mesh["address"]).stdout
    assert "node-1" in table and "SYNCED" in table and "1 VALID" in table


def test_proxy_config_dump_is_what_the_ztunnel_acked(mesh: dict[str, Any]) -> None:
    r = ambit(mesh, "proxy-status", "ztunnel/node-1", "--controller", mesh["address"])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    workloads = doc["config"][Workload.TYPE]["resources"]
    [echo] = [w for w in workloads.values() if w["body"]["name"] == "echo-v1"]
    assert echo["current"] is True and echo["body"]["identity"] == IDENTITY
    assert doc["report"]["connections"] == {"inbound": 3}
    missing = ambit(mesh, "proxy-status", "ztunnel/node-9", "--controller", mesh["address"])
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "ztunnel/node-1" in missing.stderr


def test_debug_api_refuses_unauthorised_readers(mesh: dict[str, Any]) -> None:
    dev = ambit(mesh, "proxy-status", "--controller", mesh["address"], context="dev")
    assert dev.returncode == 1
    assert "PERMISSION_DENIED" in dev.stderr and "'dev'" in dev.stderr and "system:masters" in dev.stderr
    bogus = ambit(mesh, "proxy-status", "--controller", mesh["address"], "--token", "not-a-token")
    assert bogus.returncode == 1 and "UNAUTHENTICATED" in bogus.stderr
    nowhere = ambit(mesh, "proxy-status")
    assert nowhere.returncode == 1 and "--controller" in nowhere.stderr and "Traceback" not in nowhere.stderr


def test_version_reports_client_controller_and_proxies(mesh: dict[str, Any]) -> None:
    r = ambit(mesh, "version", "--controller", mesh["address"], "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["client"]["version"] == VERSION
    assert doc["server"]["controller"] == {"version": VERSION, "compatibility": "compatible",
                                           "why": doc["server"]["controller"]["why"]}
    assert doc["server"]["proxies"]["ztunnel/node-1"]["compatibility"] == "compatible"


def test_describe_pod_in_a_cluster(mesh: dict[str, Any]) -> None:
    r = ambit(mesh, "describe", "pod", "echo-v1", "-n", "demo", "--controller", mesh["address"], "-o", "json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["enrolled"] is True and d["identity"] == IDENTITY and d["node"] == "node-1"
    assert d["services"] == ["demo/echo"]
    assert [p["ref"] for p in d["authorization_policies"]] == ["AuthorizationPolicy/demo/echo-allow"]
    assert d["peer_authentication"]["mode"] == "STRICT"
    assert any("VirtualService/demo/echo-routes" in s for r_ in d["routes"] for s in r_["sources"])
    assert d["certificate"]["state"] == "VALID" and d["certificate"]["not_after"] == NOT_AFTER
    text = ambit(mesh, "describe", "po", "echo-v1", "-n", "demo", "--controller", mesh["address"]).stdout
    assert "enrolled" in text and "echo-allow" in text and "STRICT" in text and "VALID" in text


def test_describe_service_and_unknown_pod(mesh: dict[str, Any]) -> None:
    r = ambit(mesh, "describe", "svc", "echo", "-o", "json")          # -n from the context
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["vips"] == ["10.96.0.20"] and [e["pod"] for e in d["endpoints"]] == ["demo/echo-v1"]
    assert [p["ref"] for p in d["authorization_policies"]] == ["AuthorizationPolicy/demo/echo-allow"]
    assert d["balancing"] == "every ready endpoint"
    gone = ambit(mesh, "describe", "pod", "nope", "-n", "demo")
    assert gone.returncode == 1 and "pod demo/nope not found" in gone.stderr


def test_get_reads_the_cluster_through_the_kubernetes_client(mesh: dict[str, Any]) -> None:
    r = ambit(mesh, "get", "po")              # the context's namespace, as kubectl
    assert r.returncode == 0, r.stderr
    assert "echo-v1" in r.stdout
    assert "No resources found in default namespace" in ambit(mesh, "get", "po", "-n", "default").stderr
    names = ambit(mesh, "get", "vs", "-A", "-o", "name")
    assert names.stdout.split() == ["virtualservice.networking.istio.io/echo-routes"]
    one = ambit(mesh, "get", "authorizationpolicy", "echo-allow", "-n", "demo", "-o", "json")
    assert json.loads(one.stdout)["spec"]["action"] == "ALLOW"
    missing = ambit(mesh, "get", "po", "nope", "-n", "demo")
    assert missing.returncode == 1 and '"nope" not found' in missing.stderr
    watch = ambit(mesh, "get", "po", "-n", "demo", "-w")
    assert watch.returncode == 1 and "kubectl get --watch" in watch.stderr


def test_status_and_ztunnel_config_in_a_cluster(mesh: dict[str, Any]) -> None:
    st = ambit(mesh, "status", "--controller", mesh["address"])
    assert st.returncode == 0, st.stderr
    assert "ztunnel/node-1" in st.stdout and "in sync" in st.stdout
    wl = ambit(mesh, "ztunnel-config", "workloads", "--controller", mesh["address"])
    assert wl.returncode == 0, wl.stderr
    assert "ztunnel/node-1" in wl.stdout and "echo-v1" in wl.stdout and "10.244.1.5" in wl.stdout
    pol = ambit(mesh, "ztunnel-config", "policies", "--controller", mesh["address"], "-o", "json")
    assert [a["name"] for a in json.loads(pol.stdout)["node-1"]["authorizations"]] == ["echo-allow"]
    certs = ambit(mesh, "ztunnel-config", "certs", "--controller", mesh["address"])
    assert IDENTITY in certs.stdout and "VALID" in certs.stdout
    other = ambit(mesh, "ztunnel-config", "all", "--node", "node-7", "--controller", mesh["address"])
    assert other.returncode == 1 and "node-7" in other.stderr and "node-1" in other.stderr


def flow(ns: str, status: int) -> dict[str, Any]:
    return {"type": "flow", "layer": "L7", "time": "2026-12-03T04:00:00.000000Z", "method": "GET", "path": "/",
            "status": status, "verdict": "allowed", "src": {"workload": "client", "namespace": ns},
            "dst": {"workload": "echo-v1", "pod": "echo-v1", "namespace": ns}}


def test_tap_in_a_cluster_goes_through_the_controller_filtered_at_the_proxy(mesh: dict[str, Any]) -> None:
    zt: Ztunnel = mesh["zt"]
    env = {**os.environ, "AMBIT_LAB_DIR": str(mesh["labdir"]), "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ambitctl.cli", "tap", "-n", "demo", "--status", "5xx", "-o", "json",
                             "--max-events", "1", "--duration", "30", "--kubeconfig", str(mesh["kubeconfig"]),
                             "--controller", mesh["address"]], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # The reader's filter reaches the proxy over its feed: only then does it subscribe to its tap.
        wait_for(lambda: zt.hub.active or proc.poll() is not None, timeout=20, what="the proxy tapping for the reader")
        assert proc.poll() is None, proc.communicate()
        assert zt.feed is not None
        zt.publish(flow("other", 503), flow("demo", 200), flow("demo", 503))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    [ev] = [json.loads(ln) for ln in out.splitlines()]
    assert (ev["dst"]["namespace"], ev["status"], ev["source"]) == ("demo", 503, "ztunnel/node-1")
    assert "through the controller: ztunnel/node-1" in err
    assert zt.feed.uploaded == 1, "the proxy sent flows the reader's filter excludes"
    wait_for(lambda: not zt.hub.active, timeout=10, what="the proxy to stop tapping once the reader left")


def test_stat_and_top_in_a_cluster_read_the_proxies_metrics_through_the_controller(mesh: dict[str, Any]) -> None:
    zt: Ztunnel = mesh["zt"]
    edge = zt.opened.labels("destination", "echo-v1", "demo", "client", "demo")
    stop = threading.Event()

    def traffic() -> None:           # connections keep arriving during the window
        while not stop.wait(0.05):
            edge.inc()
    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        stat = ambit(mesh, "stat", "-n", "demo", "--window", "1", "-o", "json", "--controller", mesh["address"])
        top = ambit(mesh, "top", "--window", "1", "--controller", mesh["address"])
    finally:
        stop.set()
        t.join(5)
    assert stat.returncode == 0, stat.stderr
    [row] = json.loads(stat.stdout)["rows"]
    assert (row["destination_workload_namespace"], row["destination_workload"]) == ("demo", "echo-v1")
    assert row["tcp_connections_per_s"] > 0
    assert top.returncode == 0, top.stderr
    [_head, line] = top.stdout.splitlines()
    assert line.split()[:4] == ["demo", "client", "demo", "echo-v1"]


def test_status_and_tap_require_the_debug_api_reader_credential(mesh: dict[str, Any]) -> None:
    dev = ambit(mesh, "status", "--controller", mesh["address"], context="dev")
    assert dev.returncode == 1 and "PERMISSION_DENIED" in dev.stderr and "'dev'" in dev.stderr
    bogus = ambit(mesh, "status", "--controller", mesh["address"], "--token", "not-a-token")
    assert bogus.returncode == 1 and "UNAUTHENTICATED" in bogus.stderr
    tap = ambit(mesh, "tap", "--controller", mesh["address"], "--duration", "5", context="dev")
    assert tap.returncode == 1 and "PERMISSION_DENIED" in tap.stderr
    assert not mesh["zt"].hub.active


def test_analyze_in_a_cluster_reads_objects_from_the_api_server(mesh: dict[str, Any]) -> None:
    emu: KubeEmulator = mesh["emu"]
    emu.create({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "to-cart",
                "namespace": "demo"}, "spec": {"hosts": ["cart"], "http": [{"route": [{"destination": {"host": "cart"}}]}]}})
    try:
        r = ambit(mesh, "analyze", "-o", "json", "--controller", mesh["address"])   # -n from the context: demo
        assert r.returncode == 79, r.stderr                   # an Error finding: istioctl analyze's exit code
        findings = json.loads(r.stdout)
        assert any(f["code"] == "AMB0101" and f["ref"] == "VirtualService/demo/to-cart" for f in findings)
        assert "traffic facts incomplete" not in r.stderr     # the ztunnel's metrics came through the controller
        other = ambit(mesh, "analyze", "-n", "default", "-o", "json", "--controller", mesh["address"])
        assert other.returncode == 0 and json.loads(other.stdout) == [], other.stderr
    finally:
        emu.delete("networking.istio.io/v1", "VirtualService", "to-cart", "demo")


def test_analyze_and_describe_in_a_cluster_use_the_domain_ambit_install_recorded(mesh: dict[str, Any]) -> None:
    """A cluster installed with `--cluster-domain corp.example`: a route to echo's FQDN there is a
    Service the mesh knows, as the controller (given the same flag by install) reads it. Before,
    the CLI translated with cluster.local and called the route's host unknown (AMB0101)."""
    emu: KubeEmulator = mesh["emu"]
    emu.create({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "to-fqdn",
                "namespace": "demo"}, "spec": {"hosts": ["echo.demo.svc.corp.example"], "http": [
                    {"route": [{"destination": {"host": "echo.demo.svc.corp.example"}}]}]}})
    inventory = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ambit-install", "namespace": "ambit-system"},
                 "data": {"version": "0", "image": "x", "settings": json.dumps({"clusterDomain": "corp.example"}),
                          "objects": "[]"}}

    def unknown_host() -> bool:
        r = ambit(mesh, "analyze", "-o", "json", "--no-traffic")
        return any(f["code"] == "AMB0101" and f["ref"] == "VirtualService/demo/to-fqdn" for f in json.loads(r.stdout))
    try:
        assert unknown_host()                       # no install record: cluster.local, as the lab's
        emu.create(inventory)
        assert not unknown_host()
        r = ambit(mesh, "analyze", "-o", "json", "--no-traffic", "--cluster-domain", "cluster.local")
        assert any(f["ref"] == "VirtualService/demo/to-fqdn" for f in json.loads(r.stdout))   # the flag wins
        r = ambit(mesh, "describe", "svc", "echo", "-o", "json", "--controller", mesh["address"])
        assert r.returncode == 0 and "echo.demo.svc.corp.example" in r.stdout, (r.stdout, r.stderr)
        bad = ambit(mesh, "analyze", "--cluster-domain", "Corp.Example.")
        assert bad.returncode == 2 and "--cluster-domain" in bad.stderr and "trailing dot" in bad.stderr
    finally:
        emu.delete("networking.istio.io/v1", "VirtualService", "to-fqdn", "demo")
        if emu.get("v1", "ConfigMap", "ambit-install", "ambit-system") is not None:
            emu.delete("v1", "ConfigMap", "ambit-install", "ambit-system")


def test_bug_report_in_a_cluster_uses_the_apis_only(mesh: dict[str, Any], tmp_path: Path) -> None:
    emu: KubeEmulator = mesh["emu"]
    emu.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ambit-controller-7f9", "namespace": "ambit-system"},
                "spec": {"nodeName": "node-1", "containers": [{"name": "controller"}, {"name": "sidecar-free"}]},
                "status": {"phase": "Running"}})
    emu.create({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "waypoint-5c4", "namespace": "shop",
                             "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "waypoint"}]}, "status": {"phase": "Running"}})
    emu.set_log("ambit-system", "ambit-controller-7f9", "old line\n" * 100 + "snapshot v7 pushed\nauthorization: Bearer "
                "sekret-value-123456\n", container="controller")
    emu.set_log("shop", "waypoint-5c4", "waypoint ready\n")
    emu.create({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "to-nowhere",
                "namespace": "shop"}, "spec": {"hosts": ["cart"], "http": [{"route": [{"destination": {"host": "cart"}}]}]}})
    # an application's ConfigMap and Opaque Secret: the controller keeps neither's data (a ConfigMap's
    # ca.crt alone, a Secret's certificate keys alone), and no value of them goes into the report
    emu.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-settings", "namespace": "shop"},
                "data": {"ca.crt": "the-ca-bundle", "settings.ini": "db_password = hunter2-in-a-configmap"}})
    emu.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "db", "namespace": "shop"},
                "data": {"password": "aHVudGVyMg=="}})
    out = tmp_path / "report.tar.gz"
    r = ambit(mesh, "bug-report", "-o", str(out), "--log-tail", "200", "--controller", mesh["address"])
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()}  # type: ignore[union-attr]
    versions = json.loads(files["versions.json"])
    assert versions["server"]["proxies"]["ztunnel/node-1"]["version"] == VERSION
    [z] = json.loads(files["status/proxy-status.json"])["proxies"]
    assert z["name"] == "node-1" and z["state"] == "SYNCED"
    assert "echo-v1" in files["config/ztunnel_node-1.json"]
    [sub] = json.loads(files["status/controller-status.json"])["subscribers"]
    assert sub["node"]["name"] == "node-1" and sub["connected"]
    listed = json.loads(files["config/objects.json"])
    assert any(o["metadata"]["name"] == "echo-v1" for o in listed)
    [cm] = [o for o in listed if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "app-settings"]
    assert cm["data"] == {"ca.crt": "the-ca-bundle"} and "hunter2" not in files["config/objects.json"]
    [db] = [o for o in listed if o["kind"] == "Secret" and o["metadata"]["name"] == "db"]
    assert db["data"] == {} and "aHVudGVyMg" not in files["config/objects.json"]
    log = files["logs/ambit-system/ambit-controller-7f9/controller.log"]
    assert log.rstrip().endswith("<redacted>") and "snapshot v7 pushed" in log and "sekret" not in log
    assert "left out" in log                                      # --log-tail 200 of a longer log
    assert files["logs/shop/waypoint-5c4/waypoint.log"] == "waypoint ready\n"
    assert "logs/ambit-system/ambit-controller-7f9/sidecar-free.log" in files    # every container
    assert not any(n.startswith("logs/demo/") for n in files)                  # app pods' logs stay out
    findings = json.loads(files["analyze.json"].split("\n", 1)[1])       # after the "$ ambit analyze" line
    assert any(f["code"] == "AMB0101" and f["ref"] == "VirtualService/shop/to-nowhere" for f in findings)
    assert files["ERRORS"] == ""


def test_wait_after_a_kubectl_apply_and_delete_returns_once_the_proxy_holds_it(mesh: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    """`kubectl apply -f x && ambit wait -f x`: the object as the API server has it now is in
    force once the controller's served config holds it at that resourceVersion and the ztunnel
    ACKed that config; after a delete, once it is gone. What the controller does not read is
    skipped with a note."""
    zt = mesh["zt"]
    deny = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "wait-deny", "namespace": "demo"},
            "spec": {"selector": {"matchLabels": {"app": "echo"}}, "action": "DENY",
                     "rules": [{"from": [{"source": {"namespaces": ["legacy"]}}]}]}}
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "demo"}}
    f = tmp_path / "deny.yaml"
    f.write_text(yaml.safe_dump_all([deny, deploy]))

    def held() -> bool:
        return any(a.name == "wait-deny" for a in zt.client.state(Authorization.TYPE).values())

    mesh["emu"].create(deny)                                  # what kubectl apply does
    r = ambit(mesh, "wait", "-f", str(f), "--controller", mesh["address"])
    assert r.returncode == 0, r.stderr
    assert "in force after" in r.stdout and "1 proxy in sync at config version" in r.stdout, r.stdout
    assert "note: Deployment web: not read by the controller: not waited for" in r.stderr
    assert held()                                             # no polling: it is there when wait returns

    mesh["emu"].delete("security.istio.io/v1", "AuthorizationPolicy", "wait-deny", "demo")
    r = ambit(mesh, "wait", "ap/wait-deny", "--controller", mesh["address"])     # -n from the context: demo
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr              # waited for, not skipped
    assert "in force after" in r.stdout and not held()

    r = ambit(mesh, "wait", "ap", "--controller", mesh["address"])
    assert r.returncode == 1 and "pass -f FILE, or KIND and NAME" in r.stderr
