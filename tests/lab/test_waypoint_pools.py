"""Connection pools and circuit breaking through the real waypoint (a pod of its own, real HBONE on
both hops), with real clients in a lab pod (curl; python http.client threads) and the backends'
own view of their connections (`ss` in the backend pod's netns, and the echo app's `peer`, one
per upstream connection).

Layout (tests/lab/specs/pools.yaml): the client and one echo pod per Service on node1, the
waypoint on node2. Each test applies its DestinationRule and removes it.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane import endpoint
from ambit.dataplane.telemetry.metrics import scrape
from ambitctl.lab import waypoints as waypoints_mod
from tests.lab.labctl import Lab, running_lab
from tests.lab.test_waypoint import (
    GATEWAY,
    access_records,
    apply,
    delete,
    example,
    many,
    status_of,
    waypoints,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

SPEC = Path(__file__).parent / "specs" / "pools.yaml"
CLIENT = "default/frontend"

# Closed-loop load from the client pod: `threads` keep-alive connections, each sending requests back
# to back for `seconds` (pausing 50 ms after a non-200 so fast 503s do not spin); every answer is
# recorded with its latency, x-envoy-overloaded and the backend's view of the upstream peer.
LOAD = r"""
import http.client, json, sys, threading, time
host, threads, seconds, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
out, lock, start = [], threading.Lock(), time.monotonic()
def worker():
    conn = None
    while time.monotonic() - start < seconds:
        conn = conn or http.client.HTTPConnection(host, 80, timeout=30)
        t0 = time.monotonic()
        try:
            conn.request("GET", "/", headers={"x-echo-delay": delay})
            r = conn.getresponse()
            body = r.read()
            rec = {"status": r.status, "t": time.monotonic() - t0, "at": t0 - start,
                   "overloaded": r.getheader("x-envoy-overloaded")}
            if r.status == 200:
                rec["peer"] = json.loads(body)["peer"]
        except Exception as e:
            rec = {"status": 0, "t": time.monotonic() - t0, "at": t0 - start, "error": repr(e)}
            conn.close()
            conn = None
        with lock:
            out.append(rec)
        if rec["status"] != 200:
            time.sleep(0.05)
ths = [threading.Thread(target=worker) for _ in range(threads)]
for t in ths: t.start()
for t in ths: t.join()
print(json.dumps(out))
"""


def cluster_name(svc: str) -> str:
    return f"outbound|80||{svc}.default.svc.cluster.local"


def dr(name: str, host: str, pool: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"host": host, "trafficPolicy": {"connectionPool": pool}}}


def cluster_stats(lab: Lab, svc: str) -> dict[str, float]:
    """envoy_cluster_* of one cluster, scraped from the waypoint's metrics endpoint."""
    text = scrape(lab.dir / "waypoints" / "default.waypoint.metrics.sock")
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("envoy_cluster_") and s.labels.get("cluster_name") == cluster_name(svc):
                out[s.name[len("envoy_cluster_"):]] = s.value
    return out


def admin_cluster(lab: Lab, svc: str) -> dict[str, Any] | None:
    """The cluster's entry in the waypoint's admin /clusters dump."""
    _, clusters = endpoint.get_json(waypoints_mod.admin_socket(lab.dir, "default", "waypoint"), "/clusters")
    return next((c for c in clusters if c["name"] == cluster_name(svc)), None)


def max_connections_in_force(lab: Lab, svc: str, n: int) -> None:
    """Wait until the waypoint's cluster for `svc` runs with maxConnections `n`: its /clusters
    stats show remaining_cx + cx_active == n (one request makes the cluster exist)."""
    def check() -> bool:
        assert status_of(lab, CLIENT, f"http://{svc}/")[0] == 200
        c = admin_cluster(lab, svc)
        st = c["stats"] if c else {}
        return st.get("circuit_breakers_default_remaining_cx", -1) + st.get("upstream_cx_active", 0) == n
    lab.wait_for(check, timeout=20, interval=0.5, what=f"maxConnections {n} for {svc}")


def established(lab: Lab, pod: str) -> list[str]:
    """Peers of the established connections to the backend's port 8080, in its own netns."""
    p = lab.exec(pod, "ss", "-Htn", "state", "established", "( sport = :8080 )")
    return [line.split()[-1] for line in p.stdout.splitlines() if line.strip()]


class ConnWatch:
    """Samples the backend's established connections (their peers, by `ss` every 100 ms inside its
    netns) while a load runs."""

    def __init__(self, lab: Lab, pod: str, seconds: float) -> None:
        n = int(seconds / 0.1)
        script = (f"for i in $(seq {n}); do echo sample; ss -Htn state established '( sport = :8080 )'; "
                  "sleep 0.1; done")
        self.samples: list[frozenset[str]] = []

        def run() -> None:
            out = lab.exec(pod, "sh", "-c", script, timeout=seconds + 30).stdout
            for chunk in out.split("sample\n")[1:]:
                self.samples.append(frozenset(line.split()[-1] for line in chunk.splitlines() if line.strip()))
        self._t = threading.Thread(target=run)
        self._t.start()

    def peak(self) -> int:
        """The most connections the backend had at once."""
        self._t.join()
        assert self.samples, "ss gave no samples"
        return max(len(s) for s in self.samples)

    def held(self) -> int:
        """The most connections that were open in two samples in a row (100 ms apart). A pool that
        retires a connection (maxRequestsPerConnection) opens its replacement at once, and the
        retired one's close reaches the backend through the destination ztunnel a moment later: the
        backend may see both for that moment. A connection that is still there 100 ms later is no
        such overlap."""
        self._t.join()
        assert len(self.samples) >= 2, "ss gave too few samples"
        return max(len(a & b) for a, b in itertools.pairwise(self.samples))

    def counts(self) -> list[int]:
        return [len(s) for s in self.samples]


def load(lab: Lab, svc: str, threads: int, seconds: float, delay: float) -> list[dict[str, Any]]:
    p = lab.exec(CLIENT, sys.executable, "-c", LOAD, svc, str(threads), str(seconds), str(delay),
                 timeout=seconds + 60)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def plab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("plab"), "cb", SPEC, "waypoint-pools-lab") as lab:
        lab.tmp = tmp_path_factory.mktemp("pcfg")  # type: ignore[attr-defined]
        apply(lab, [GATEWAY], lab.tmp, "gateway")  # type: ignore[attr-defined]
        lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=30, what="waypoint ready")
        for svc in ("myapp", "cb-slow", "cb-conn"):
            lab.wait_for(lambda s=svc: status_of(lab, CLIENT, f"http://{s}/")[0] == 200, timeout=30,
                         interval=0.5, what=f"{svc} through the waypoint")
        yield lab


# --- overflow: fast 503 UO, and the backend never sees more than maxConnections ---------------------

def test_pool_overflow_gives_fast_503s_and_the_backend_sees_one_connection(plab: Lab) -> None:
    f = apply(plab, [dr("cb-slow", "cb-slow", {"tcp": {"maxConnections": 1},
                                               "http": {"http1MaxPendingRequests": 1}})],
              plab.tmp, "cb-slow")  # type: ignore[attr-defined]
    try:
        max_connections_in_force(plab, "cb-slow", 1)
        delay, seconds = 1.0, 3.0
        watch = ConnWatch(plab, "default/cb-slow", seconds + 3)
        mid: dict[str, float] = {}
        scraper = threading.Timer(1.5, lambda: mid.update(cluster_stats(plab, "cb-slow")))
        scraper.start()
        out = load(plab, "cb-slow", threads=8, seconds=seconds, delay=delay)
        scraper.join()
        peak = watch.peak()
        ok = [r for r in out if r["status"] == 200]
        uo = [r for r in out if r["status"] == 503]
        other = [r for r in out if r["status"] not in (200, 503)]
        t503 = sorted(r["t"] for r in uo)
        p95 = t503[int(0.95 * (len(t503) - 1))] if t503 else 0.0
        print(f"overflow: {len(ok)} ok, {len(uo)} 503, {len(other)} other; 503 latency median "
              f"{statistics.median(t503) * 1000:.1f} ms p95 {p95 * 1000:.1f} ms max {max(t503) * 1000:.1f} ms "
              f"(backend delay {delay * 1000:.0f} ms); backend peak connections {peak}; "
              f"peers {Counter(r['peer'] for r in ok)}; stats mid-load {mid}")
        assert not other, other[:5]
        # one connection, one request at a time (+1 pending): 1 s each over ~3 s of load
        assert 2 <= len(ok) <= 6, len(ok)
        assert len(uo) >= 20, len(uo)
        assert all(r["overloaded"] == "true" for r in uo)
        assert p95 < 0.25 * delay, p95               # at once, never queued behind the backend
        assert all(r["t"] >= delay * 0.9 for r in ok)
        assert peak <= 1, watch.counts()              # counted at the backend, in its netns
        assert len({r["peer"] for r in ok}) == 1      # the one connection, reused
        # the waypoint's view: UO in the access log, the circuit open in envoy_cluster_* mid-load
        uo_lines = access_records(plab, "cb-slow", at_least=len(uo), where=lambda x: x.get("response_flags") == "UO")
        assert len(uo_lines) >= len(uo), (len(uo_lines), len(uo))
        assert mid["circuit_breakers_default_cx_open"] == 1 and mid["upstream_cx_active"] == 1
        assert mid["circuit_breakers_default_rq_pending_open"] in (0, 1)
        after = cluster_stats(plab, "cb-slow")
        assert after["upstream_rq_pending_overflow"] >= len(uo)
        assert after["upstream_cx_overflow"] >= 1
        assert after["upstream_rq_active"] == 0 and after["upstream_rq_pending_active"] == 0
    finally:
        delete(plab, f)


# --- the seed ---------------------------------------------------------------------------------------

def test_seed_circuit_breaker_holds_myapp_to_10_connections_of_10_requests(plab: Lab) -> None:
    """shared/examples/istio/circuit-breaker.yaml verbatim (host `myapp` is the lab's Service; only
    the namespace is added). Its connectionPool is asserted: 20 concurrent clients against a 300 ms
    backend all succeed (http1MaxPendingRequests is unset: they wait), the backend never holds more
    than 10 connections (beyond the moment a retired one's close is on its way: `ConnWatch.held`),
    and no connection carries more than 10 requests. Its outlierDetection
    part is another helper's (waypoint/traffic outlier detection) and is not asserted here."""
    docs = example("istio/circuit-breaker.yaml")
    for d in docs:
        d["metadata"].setdefault("namespace", "default")
    f = apply(plab, docs, plab.tmp, "seed-cb")  # type: ignore[attr-defined]
    try:
        max_connections_in_force(plab, "myapp", 10)
        before = cluster_stats(plab, "myapp")
        delay, seconds = 0.3, 3.0
        watch = ConnWatch(plab, "default/myapp", seconds + 3)
        out = load(plab, "myapp", threads=20, seconds=seconds, delay=delay)
        peak, held = watch.peak(), watch.held()
        per_conn = Counter(r["peer"] for r in out if r["status"] == 200)
        lat = [r["t"] for r in out]
        after = cluster_stats(plab, "myapp")
        print(f"seed: {len(out)} requests, statuses {Counter(r['status'] for r in out)}, backend peak "
              f"connections {peak} (held {held}), {len(per_conn)} upstream connections, requests per connection "
              f"max {max(per_conn.values())}, latency median {statistics.median(lat) * 1000:.0f} ms; "
              f"cx_max_requests +{after['upstream_cx_max_requests'] - before.get('upstream_cx_max_requests', 0)}")
        assert all(r["status"] == 200 for r in out), Counter(r["status"] for r in out)
        assert len(out) >= 60                             # ~10 at a time x 3 s / 0.3 s
        assert 8 <= held <= 10, watch.counts()           # the limit binds, and holds
        assert max(per_conn.values()) <= 10, per_conn     # maxRequestsPerConnection 10
        assert len(per_conn) >= len(out) / 10
        # 20 clients on 10 connections: about half the time is spent waiting (pending)
        assert statistics.median(lat) >= 1.5 * delay
        assert after["upstream_cx_max_requests"] - before.get("upstream_cx_max_requests", 0) >= 5
        assert after.get("upstream_rq_pending_overflow", 0) == before.get("upstream_rq_pending_overflow", 0)
    finally:
        delete(plab, f)


# --- connection lifetime -----------------------------------------------------------------------------

def test_max_requests_per_connection_1_gives_a_connection_per_request(plab: Lab) -> None:
    # control: sequential requests share one pooled upstream connection
    peers = {r["peer"] for r in many(plab, CLIENT, "http://cb-conn/", 10)}
    assert len(peers) == 1, peers
    f = apply(plab, [dr("cb-conn", "cb-conn", {"tcp": {"maxConnections": 7},
                                               "http": {"maxRequestsPerConnection": 1}})],
              plab.tmp, "cb-conn-1")  # type: ignore[attr-defined]
    try:
        max_connections_in_force(plab, "cb-conn", 7)     # maxConnections 7: only a marker
        before = cluster_stats(plab, "cb-conn")
        peers = [r["peer"] for r in many(plab, CLIENT, "http://cb-conn/", 20)]
        print(f"maxRequestsPerConnection 1: {len(set(peers))} connections for {len(peers)} requests")
        assert len(set(peers)) == 20

        # A connection is retired (and counted) just after its response went downstream, so the
        # last one's count can trail the client's answer: wait for it, then require exactly 20.
        def retired() -> float:
            return cluster_stats(plab, "cb-conn")["upstream_cx_max_requests"] - before.get("upstream_cx_max_requests", 0)
        plab.wait_for(lambda: retired() >= 20, timeout=10, interval=0.2, what="20 connections retired at their limit")
        assert retired() == 20
    finally:
        delete(plab, f)


def test_idle_timeout_closes_idle_upstream_connections(plab: Lab) -> None:
    def idle_life(limit: float) -> float:
        """Seconds the upstream connection of one request stays established at the backend."""
        [r] = many(plab, CLIENT, "http://cb-conn/", 1, "-H", f"x-request-id: cb-idle-{time.time()}")
        peer, t0 = r["peer"], time.monotonic()
        while time.monotonic() - t0 < limit:
            if peer not in established(plab, "default/cb-conn"):
                return time.monotonic() - t0
            time.sleep(0.2)
        return limit

    f = apply(plab, [dr("cb-conn", "cb-conn", {"tcp": {"maxConnections": 5},
                                               "http": {"idleTimeout": "2s"}})],
              plab.tmp, "cb-conn-idle")  # type: ignore[attr-defined]
    try:
        max_connections_in_force(plab, "cb-conn", 5)     # maxConnections 5: only a marker
        before = cluster_stats(plab, "cb-conn")
        life = idle_life(8.0)
        after = cluster_stats(plab, "cb-conn")
        print(f"idleTimeout 2s: the idle upstream connection lived {life:.1f} s")
        # closed by the sweep (1 s ticks) after 2 s idle
        assert 1.5 <= life <= 4.5, life
        assert after["upstream_cx_idle_timeout"] - before.get("upstream_cx_idle_timeout", 0) >= 1
    finally:
        delete(plab, f)
    # control: the node default (60 s) keeps it past that
    max_connections_in_force(plab, "cb-conn", 1024)   # the node default again
    assert idle_life(5.0) == 5.0


# --- h2UpgradePolicy ----------------------------------------------------------------------------------

def test_h2_upgrade_policy_speaks_h2c_to_an_http_port(plab: Lab) -> None:
    """cb-h2's port is named `http` but its app (gRPC) speaks only h2c: an HTTP/1.1 request through
    the waypoint fails (502, an upstream protocol error, as Envoy) until h2UpgradePolicy UPGRADE makes the waypoint speak h2c to it;
    then the gRPC server's own HTTP/2 answer comes back. (The seed destination-rule.yaml sets
    UPGRADE for HTTP/1.1-only apps: tests/lab/test_waypoint.py shows those still answered.)"""
    code, _ = status_of(plab, CLIENT, "http://cb-h2/")
    assert code == 502, code
    f = apply(plab, [dr("cb-h2", "cb-h2", {"tcp": {"maxConnections": 3}, "http": {"h2UpgradePolicy": "UPGRADE"}})],
              plab.tmp, "cb-h2")  # type: ignore[attr-defined]
    try:
        # a unary gRPC call (an empty Struct) sent as HTTP/1.1: only h2c gets it to the server
        call = ("printf '\\000\\000\\000\\000\\000' | curl -sS -m 5 -D - -o /dev/null --http1.1 "
                "-H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- "
                "http://cb-h2/ambit.lab.Echo/Echo")

        def answered() -> str | None:
            head = plab.exec(CLIENT, "sh", "-c", call, timeout=40).stdout
            return head if head.startswith("HTTP/1.1 200") else None
        head = plab.wait_for(answered, timeout=20, interval=0.5, what="h2c upgrade in force")
        print(f"h2UpgradePolicy UPGRADE: {head.strip()!r}")
        assert "content-type: application/grpc" in head.lower(), head   # the gRPC server's own answer
        st = cluster_stats(plab, "cb-h2")
        assert st["upstream_cx_active"] >= 1 and st["upstream_rq_pending_overflow"] == 0
    finally:
        delete(plab, f)


# --- tcp.idleTimeout ---------------------------------------------------------------------------------

# A client that opens a connection and says nothing (a server-first protocol, as the waypoint sees
# it: after its detection timeout, 1 s, the tunnel is relayed opaque): seconds until the tunnel
# is closed, or "open" after the timeout.
SILENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=float(sys.argv[2]))
t0 = time.monotonic()
try:
    while s.recv(100):
        pass
    print(round(time.monotonic() - t0, 2))
except socket.timeout:
    print("open")
"""


def test_tcp_idle_timeout_closes_an_idle_opaque_tunnel(plab: Lab) -> None:
    f = apply(plab, [dr("cb-conn", "cb-conn", {"tcp": {"maxConnections": 4, "idleTimeout": "2s"}})],
              plab.tmp, "cb-conn-tcp-idle")  # type: ignore[attr-defined]
    try:
        max_connections_in_force(plab, "cb-conn", 4)     # maxConnections 4: only a marker
        out = plab.exec(CLIENT, sys.executable, "-c", SILENT, "cb-conn", "8", timeout=40).stdout.strip()
        print(f"tcp.idleTimeout 2s: the silent tunnel closed after {out} s (1 s of it is detection)")
        assert out != "open" and 2.5 <= float(out) <= 4.5, out
    finally:
        delete(plab, f)
    max_connections_in_force(plab, "cb-conn", 1024)     # control: the node default (1 h)
    out = plab.exec(CLIENT, sys.executable, "-c", SILENT, "cb-conn", "5", timeout=40).stdout.strip()
    assert out == "open", out
