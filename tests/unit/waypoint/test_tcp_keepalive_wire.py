"""TCP keepalive on the waypoint's upstream sockets, on the wire: the real translation of a
DestinationRule (and the mesh config's `tcpKeepalive`, as MeshSettings), a real `WaypointProxy`
behind the engine on loopback, curl in front, and real upstreams: a plain HTTP ServiceEntry
endpoint, a TLS one the waypoint originates TLS to, and an in-mesh pod reached over HBONE (real
mutual TLS with CA-issued identities). The test then finds the waypoint's upstream socket among
this process's file descriptors (the one connected to the upstream's port) and reads its options
with getsockopt, as the kernel applies them: SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT.

Before, `tcpKeepalive` was accepted, warned and not applied: every upstream socket had SO_KEEPALIVE
off, so NATs and cloud load balancers dropped idle pooled connections and dead peers went unseen."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambit.configclient import ConfigUpdate
from ambit.dataplane import tls
from ambit.dataplane.hbone import HBONEClientPool, HBONEServer, HBONEStream
from ambit.model import (
    HttpRoute,
    IngressGateway,
    IngressListener,
    MeshSettings,
    RouteDestination,
    Service,
    WaypointRoutes,
    Workload,
)
from controller.app import mesh_tcp_keepalive
from controller.translate import translate
from tests.support.testca import pem
from tests.unit.conftest import issue, sid
from tests.unit.controller.test_config_translate import ns, pod, service
from tests.unit.waypoint.harness import Origin, Proxy, free_port
from tests.unit.waypoint.test_backendtls_wire import HOST, TlsOrigin, objects
from tests.unit.waypoint.test_ingress import _no_relay
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http.engine import Engine
from waypoint.http.settings import HttpSettings
from waypoint.ingress_listen import IngressListeners
from waypoint.request import Downstream
from waypoint.settings import load

pytestmark = pytest.mark.timeout(60)

NS = "demo"
Obj = dict[str, Any]
Opts = tuple[int, int, int, int]     # SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT


def _opts(s: socket.socket) -> Opts:
    return (int(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))


def sockets_to(port: int) -> list[Opts]:
    """The options of every socket of this process connected to 127.0.0.1:`port` (the waypoint's
    upstream connections; the upstream's own accepted sockets have that port as theirs, not as
    their peer's). Read through a duplicate of each descriptor: the same kernel socket."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            s = socket.fromfd(int(name), socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        with s:
            try:
                if s.getpeername() != ("127.0.0.1", port):
                    continue
            except (OSError, TypeError):
                continue
            out.append(_opts(s))
    return sorted(out)


def os_defaults() -> tuple[int, int, int]:
    """What a socket reports when its keepalive values are not set: the netns's sysctls."""
    with socket.socket() as s:
        return _opts(s)[1:]     # type: ignore[return-value]


def keepalive_rule(host: str, ka: Obj | None, **policy: Any) -> Obj:
    tp: Obj = dict(policy)
    if ka is not None:
        tp["connectionPool"] = {"tcp": {"tcpKeepalive": ka}}
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "ka", "namespace": NS}, "spec": {"host": host, "trafficPolicy": tp}}


def entry(port: int) -> list[Obj]:
    """A ServiceEntry for HOST (endpoint 127.0.0.1:`port`) behind the egress waypoint demo/egress:
    the BackendTLSPolicy test's objects without its policy."""
    se, gateway, _policy = objects(port, None)
    return [se, gateway]


def config(objs: list[Obj], waypoint: str, mesh_keepalive: Obj | None) -> WaypointConfig:
    """Waypoint demo/`waypoint`'s config: the translation of `objs`, and MeshSettings with the mesh
    config's `mesh_keepalive` as the controller serves it."""
    tr = translate(objs)
    assert not tr.errors, tr.errors
    cfg = WaypointConfig(Waypoint(NS, waypoint), "cluster.local")
    mesh = MeshSettings("cluster.local", tcp_keepalive=mesh_tcp_keepalive(mesh_keepalive))
    for t, items in ((Service.TYPE, tr.services), (WaypointRoutes.TYPE, tr.waypoint_routes),
                     (Workload.TYPE, tr.workloads), (MeshSettings.TYPE, [mesh])):
        cfg.apply(ConfigUpdate(t, "1", {}, frozenset(), {r.resource_name: r for r in items}))
    return cfg


class Wire:
    """The translation of `objs` (and the mesh-wide `mesh_keepalive`) in waypoint demo/`waypoint`,
    curl in front of it with every request for `downstream`."""

    def __init__(self, objs: list[Obj], downstream: Downstream, waypoint: str = "egress",
                 mesh_keepalive: Obj | None = None) -> None:
        cfg = config(objs, waypoint, mesh_keepalive)
        s = load(["--waypoint", f"{NS}/{waypoint}", "--pod-name", f"{waypoint}-0", "--node", "node1"])
        self.waypoint = WaypointProxy(s, cfg, None)
        self.downstream = downstream
        self.proxy: Proxy | None = None

    def __enter__(self) -> Wire:
        self.proxy = Proxy(self.waypoint.decide, upstream=self.waypoint.upstream, downstream=self.downstream)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proxy is not None:
            self.proxy.close()

    def get(self, *headers: str) -> int:
        assert self.proxy is not None
        args = [a for h in headers for a in ("-H", h)]
        r = subprocess.run(["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", *args,
                            "-H", f"Host: {self.downstream.hostname}", f"http://127.0.0.1:{self.proxy.port}/"],
                           capture_output=True, text=True, timeout=20)
        return int(r.stdout or 0)



ENTRY_DOWN = Downstream(source_ip="127.0.0.1", destination_ip="240.240.0.1", destination_port=80,
                        service=f"{NS}/{HOST}", hostname=HOST)


@pytest.fixture()
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


def entry_sockets(port: int, rule: Obj, mesh: Obj | None = None) -> list[Opts]:
    """The waypoint's upstream sockets to the ServiceEntry endpoint on `port` after one request."""
    with Wire([*entry(port), rule], ENTRY_DOWN, mesh_keepalive=mesh) as w:
        assert w.get() == 200
        return sockets_to(port)


def test_a_rules_keepalive_is_set_on_the_upstream_socket_of_a_service_entry(origin: Origin) -> None:
    rule = keepalive_rule(HOST, {"time": "7s", "interval": "3s", "probes": 4})
    assert entry_sockets(origin.port, rule) == [(1, 7, 3, 4)]


def test_the_mesh_wide_keepalive_applies_under_the_rules_values(origin: Origin) -> None:
    """MeshConfig tcpKeepalive first, then each value the rule sets (Istio's applyTCPKeepalive):
    the rule's `time` over the mesh's, the mesh's `interval` and `probes` kept."""
    mesh = {"time": "600s", "interval": "20s", "probes": 5}
    assert entry_sockets(origin.port, keepalive_rule(HOST, {"time": "9s"}), mesh) == [(1, 9, 20, 5)]


def test_an_empty_keepalive_turns_so_keepalive_on_with_the_os_values(origin: Origin) -> None:
    assert entry_sockets(origin.port, keepalive_rule(HOST, {})) == [(1, *os_defaults())]


def keepalive_probes_sent() -> int:
    """The netns's count of TCP keepalive probes sent (TcpExt TCPKeepAlive, /proc/net/netstat)."""
    lines = [ln.split() for ln in Path("/proc/net/netstat").read_text().splitlines() if ln.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["TCPKeepAlive"])


def test_an_idle_pooled_upstream_connection_sends_keepalive_probes(origin: Origin) -> None:
    """With `time: 1s` the kernel probes the idle pooled connection after a second of silence (the
    origin answers, so it stays up and is probed again): what keeps a NAT's or a load balancer's
    idle timer from expiring. Counted in the kernel's TCPKeepAlive counter (any other socket's
    probes could only add to it; the OS default waits 2 hours)."""
    with Wire([*entry(origin.port), keepalive_rule(HOST, {"time": "1s", "interval": "1s"})], ENTRY_DOWN) as w:
        assert w.get() == 200
        before = keepalive_probes_sent()
        time.sleep(2.6)
        assert keepalive_probes_sent() - before >= 2
        assert w.get() == 200 and origin.connections == 1, "the probed connection was reused"


def test_keepalive_is_set_on_a_tls_originated_connection(tmp_path: Path) -> None:
    """DestinationRule tls SIMPLE to a ServiceEntry host: the socket under the TLS the waypoint
    originates has the rule's keepalive too."""
    tls_origin = TlsOrigin(tmp_path)
    # keep-alive (its handler class is this origin's own): the upstream connection stays in the pool
    tls_origin.server.RequestHandlerClass.protocol_version = "HTTP/1.1"
    ca_file = tmp_path / "origin-ca.pem"
    ca_file.write_text(pem(tls_origin.ca))
    rule = keepalive_rule(HOST, {"time": "11s", "probes": 2}, tls={"mode": "SIMPLE", "caCertificates": str(ca_file)})
    try:
        assert entry_sockets(tls_origin.port, rule) == [(1, 11, os_defaults()[1], 2)]
        assert tls_origin.sni == [HOST], "TLS was originated"
    finally:
        tls_origin.close()


def test_an_ingress_gateway_sets_the_keepalive_on_its_upstream_sockets(origin: Origin) -> None:
    """The ingress gateway (the waypoint binary in ingress mode, its real HTTP listener) routing to
    the ServiceEntry: its upstream socket has the mesh's keepalive under the rule's."""
    cfg = config([*entry(origin.port), keepalive_rule(HOST, {"probes": 3})], "egress",
                 {"time": "45s", "interval": "6s", "probes": 8})
    port = free_port()
    routes = [WaypointRoutes(HOST, http=[HttpRoute(source="HTTPRoute/demo/api",
                                                   destinations=[RouteDestination(HOST, f"{NS}/{HOST}", port=80)])])]
    gw = IngressGateway("egress", NS, listeners=[IngressListener("http", port, "HTTP", "", "", [], routes)])
    cfg.apply(ConfigUpdate(IngressGateway.TYPE, "2", {}, frozenset(), {gw.resource_name: gw}))
    proxy = WaypointProxy(load(["--waypoint", f"{NS}/egress", "--pod-name", "egress-0", "--node", "node1",
                                "--gateway-class", "ambit"]), cfg, None)
    seen: list[list[Opts]] = []

    async def main() -> None:
        engine = Engine(HttpSettings(), proxy.decide, proxy.upstream)
        proxy.ingress = listeners = IngressListeners("127.0.0.1", engine.serve, _no_relay)
        await listeners.update(cfg.view.ingress)
        try:
            p = await asyncio.create_subprocess_exec(
                "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", f"http://{HOST}:{port}/",
                "--resolve", f"{HOST}:{port}:127.0.0.1", stdout=asyncio.subprocess.PIPE)
            assert (await p.communicate())[0] == b"200"
            seen.append(sockets_to(origin.port))
        finally:
            await listeners.close()
            await engine.shutdown()
    asyncio.run(main())
    assert seen == [[(1, 45, 6, 3)]]


# --- in the mesh: HBONE to the pod ------------------------------------------------------------

SERVER = sid(NS, "echo")
WAYPOINT = sid(NS, "waypoint")
ECHO = f"echo.{NS}.svc.cluster.local"


class PodOverHBONE:
    """An in-mesh pod's HBONE port on 127.0.0.1 (its own loop thread): real mutual TLS with a
    CA-issued identity; every tunnel is relayed to `origin` (the pod's app)."""

    def __init__(self, ca: Any, origin: Origin) -> None:
        self.cache = tls.ContextCache()
        self.server_cert = issue(ca, SERVER)
        self.client_cert = issue(ca, WAYPOINT)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.origin = origin
        self.loop = asyncio.new_event_loop()
        self.server = HBONEServer(self.sock, lambda: self.cache.server(self.server_cert), self._relay)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()
        threading.Thread(target=run, daemon=True).start()
        assert started.wait(10)

    async def _relay(self, st: HBONEStream, peer: str, authority: str, headers: dict[str, str]) -> None:
        st.respond(200)
        r, w = await asyncio.open_connection("127.0.0.1", self.origin.port)

        async def up() -> None:
            while chunk := await st.read_chunk():
                w.write(bytes(chunk))
                await w.drain()
            w.write_eof()

        async def down() -> None:
            while data := await r.read(65536):
                st.write(data)
                await st.drain()
            st.write_eof()
        await asyncio.gather(up(), down(), return_exceptions=True)
        w.close()

    async def client_context(self, identity: str) -> ssl.SSLContext:
        assert identity == WAYPOINT
        return self.cache.client(self.client_cert)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(grace=0.5), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.sock.close()


def mesh_objects(subsets: list[Obj], **policy: Any) -> list[Obj]:
    """Service demo/echo (one pod, 127.0.0.1, service account echo) behind waypoint demo/waypoint;
    a rule with `policy` and `subsets`, and a VirtualService that sends `x-subset: NAME` to that subset."""
    rule = keepalive_rule(ECHO, None, **policy)
    rule["spec"]["subsets"] = subsets
    routes = [{"match": [{"headers": {"x-subset": {"exact": s["name"]}}}],
               "route": [{"destination": {"host": ECHO, "subset": s["name"]}}]} for s in subsets]
    return [
        ns(NS, **{"ambit.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"}),
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "waypoint", "namespace": NS},
         "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008,
                                                                       "protocol": "HBONE"}]}},
        service("echo", {"app": "echo"}, [{"name": "http", "port": 80, "targetPort": 8080}]),
        pod("echo-0", "127.0.0.1", labels={"app": "echo"}, sa="echo"),
        rule,
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "echo", "namespace": NS},
         "spec": {"hosts": [ECHO], "http": [*routes, {"route": [{"destination": {"host": ECHO}}]}]}},
    ]


def ka(**v: Any) -> Obj:
    return {"connectionPool": {"tcp": {"tcpKeepalive": v}}}


def test_hbone_connections_to_a_pod_carry_their_clusters_keepalive_and_are_pooled_per_keepalive(
        ca: Any, origin: Origin) -> None:
    """The HBONE connection to the pod is pooled across clusters, so it is keyed on the keepalive
    too: the Service's cluster and subset `same` (the same keepalive) share one connection, subset
    `other` gets a connection of its own with its own values, and subset `none` (a connectionPool
    without tcpKeepalive: Istio's subset merge replaces the whole connectionPool) one with
    SO_KEEPALIVE off."""
    subsets = [{"name": "same", "labels": {"app": "echo"}},
               {"name": "other", "labels": {"app": "echo"}, "trafficPolicy": ka(time="13s", interval="2s")},
               {"name": "none", "labels": {"app": "echo"},
                "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 50}}}}]
    objs = mesh_objects(subsets, **ka(time="21s", interval="4s", probes=6))
    down = Downstream(source_identity=sid(NS, "client"), source_ip="127.0.0.9", destination_ip="10.96.0.10",
                      destination_port=80, service=f"{NS}/echo", hostname=ECHO)
    pod_ = PodOverHBONE(ca, origin)
    w = Wire(objs, down, waypoint="waypoint")
    w.waypoint.identity = WAYPOINT      # the waypoint's own identity and HBONE port, as the test CA issues them
    w.waypoint.pool = HBONEClientPool(pod_.client_context, port=pod_.port)
    try:
        with w:
            for subset in ("", "same", "other", "none"):
                assert w.get(*([f"x-subset: {subset}"] if subset else [])) == 200, subset
            assert origin.requests == 4
            probes = os_defaults()[2]
            assert sockets_to(pod_.port) == sorted([(1, 21, 4, 6), (1, 13, 2, probes), (0, *os_defaults())])
            keys = w.waypoint.pool.connections()
            assert sorted((dataclasses.astuple(k.keepalive) if k.keepalive else (), n) for k, n in keys.items()) == \
                [((), 1), ((13, 2, 0), 1), ((21, 4, 6), 1)]
    finally:
        pod_.close()
