"""The L7 scenarios: nginx and HAProxy as HTTP proxies doing the waypoint's job, and the waypoint.

All three do the same header-match routing between the same client and the same two servers:
`x-canary: true` → web-v2, anything else → web-v1 (Istio's seed virtual-service.yaml). The servers
are nginx serving 1 KiB with an `x-version` response header naming themselves, so the path check
proves the routing before anything is timed.

- nginx-l7 / haproxy-l7: the proxy runs in its own pod (`bench-plain/l7proxy`, node1), one process,
  one worker / one thread (as the Python waypoint is one event loop), no logs, keep-alive pooled
  upstream connections; client (node1) → proxy → web-v1|v2 (node2), plaintext HTTP/1.1.
- nginx-l7-h2 / haproxy-l7-h2 / ambit-waypoint-h2: the same three with the client speaking HTTP/2
  (h2c with prior knowledge, h2load without `--h1`). nginx and HAProxy serve it from the same
  process on a second port (`listen ... http2`, `bind ... proto h2`); the waypoint detects the
  HTTP/2 preface per tunnel, so it needs no port name or appProtocol. Upstream to web-v1|v2 stays
  HTTP/1.1 for all three (nginx's proxy_pass cannot speak h2; the bench's `web` Service port is
  plain http, so the waypoint's upstream is HTTP/1.1 too).
- ambit-waypoint: client (enrolled, node1) → ztunnel → HBONE → waypoint → HBONE → ztunnel → web-v*
  (node2), mTLS on both hops, routed by the seed's VirtualService applied through `ambit apply`.
  It needs `python -m waypoint`; when that cannot start, the scenario is skipped with the reason.
  Its access log is off (`access_log_off_yaml`, a Telemetry bound to the waypoint's Gateway), as
  nginx's and HAProxy's are here and as Istio's default is; Ambit's own default logs every request.
- ambit-waypoint-resilient: the same waypoint and route with a retry policy, timeouts and a
  DestinationRule traffic policy (LEAST_REQUEST, connection-pool limits, outlier detection, a retry
  budget) in place: what resilience costs on the happy path. The two waypoint scenarios share one
  waypoint; `L7Set.activate` applies the scenario's configuration before each of its reps, so their
  reps interleave in time like every other pair's.
- ambit-waypoint-traced: the same waypoint and route with every request traced (100 % sampling,
  spans exported over OTLP gRPC to a receiver pod, bench/tracing.py); ambit-waypoint runs it at 0 %,
  so the pair is the cost of tracing. The switch is the waypoint's sampling file, not config.

Config rendering is sans-IO (tested in tests/unit/bench/test_bench_l7.py); the start/stop edge is
`L7Set`, shaped like runner.TunnelSet.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import procstat, tracing
from bench.plan import HTTP_PORT, L7_H2_PORTS, L7_PORTS, MESH_NS, PLAIN_NS, WEB_SERVICE

CANARY_HEADER = "x-canary"
CANARY_VALUE = "true"
VERSION_HEADER = "x-version"
WAYPOINT_NAME = "waypoint"
WAYPOINT_READY_S = 45.0
CONFIG_SETTLE_S = 2.0       # for a changed route to reach the waypoint (config push is ~10-100 ms)


def nginx_l7_conf(prefix: Path, listen_ip: str, port: int, v1: str, v2: str, h2_port: int = 0) -> str:
    """nginx as the header-routing L7 proxy: one worker, no access log, pooled keep-alive upstreams;
    with `h2_port`, the same routing for h2c (prior knowledge) clients on that port."""
    tmp = prefix / "tmp"
    location = ('    location / { proxy_pass http://$backend; proxy_http_version 1.1;\n'
                '      proxy_set_header Connection ""; proxy_set_header Host $host; } }')
    servers = [f"  server {{ listen {listen_ip}:{port} backlog=4096;\n{location}"]
    if h2_port:
        # keepalive_requests (above) also bounds requests per HTTP/2 connection since nginx 1.19.7
        servers.append(f"  server {{ listen {listen_ip}:{h2_port} http2 backlog=4096;\n{location}")
    return "\n".join([
        "worker_processes 1;", "master_process off;", "daemon off;", f"pid {prefix / 'nginx-l7.pid'};",
        f"error_log {prefix / 'nginx-l7-error.log'} warn;", "worker_rlimit_nofile 20000;",
        "events { worker_connections 8192; multi_accept on; }",
        "http {",
        "  access_log off;",
        f"  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};",
        f"  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};",
        "  keepalive_timeout 600s; keepalive_requests 100000000; tcp_nodelay on;",
        f"  upstream v1 {{ server {v1}:{HTTP_PORT}; keepalive 64; keepalive_requests 100000000; }}",
        f"  upstream v2 {{ server {v2}:{HTTP_PORT}; keepalive 64; keepalive_requests 100000000; }}",
        # exact and case-sensitive, as the VirtualService's `exact: "true"` (a plain map string would
        # match case-insensitively, so an anchored `~` regex); anything else (or no header) → v1
        f'  map $http_{CANARY_HEADER.replace("-", "_")} $backend {{ default v1; "~^{CANARY_VALUE}$" v2; }}',
        *servers,
        "}", ""])


def haproxy_l7_conf(listen_ip: str, port: int, v1: str, v2: str, h2_port: int = 0) -> str:
    """HAProxy (mode http) as the header-routing L7 proxy: one thread, no logs, connection reuse;
    with `h2_port`, a second frontend with the same routing for h2c (prior knowledge) clients."""
    route = [f"  use_backend v2 if {{ req.hdr({CANARY_HEADER}) -m str {CANARY_VALUE} }}", "  default_backend v1", ""]
    h2 = ["frontend l7h2", f"  bind {listen_ip}:{h2_port} proto h2", *route] if h2_port else []
    return "\n".join([
        "global", "  maxconn 8000", "  nbthread 1", "",
        "defaults", "  mode http", "  option http-keep-alive", "  timeout connect 5s", "  timeout client 300s",
        "  timeout server 300s", "  timeout http-keep-alive 300s", "",
        "frontend l7", f"  bind {listen_ip}:{port}", *route, *h2,
        "backend v1", "  http-reuse always", f"  server v1 {v1}:{HTTP_PORT}", "",
        "backend v2", "  http-reuse always", f"  server v2 {v2}:{HTTP_PORT}", ""])


def waypoint_yaml(namespace: str = MESH_NS, service: str = WEB_SERVICE) -> str:
    """The waypoint Gateway, the seed's header VirtualService for the bench's Service, its subsets."""
    host = f"{service}.{namespace}.svc.cluster.local"
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {WAYPOINT_NAME}
  namespace: {namespace}
  labels: {{istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {{name: mesh, port: 15008, protocol: HBONE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {service}, namespace: {namespace}}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {service}, namespace: {namespace}}}
spec:
  hosts: [{host}]
  http:
  - match:
    - headers: {{{CANARY_HEADER}: {{exact: "{CANARY_VALUE}"}}}}
    route:
    - destination: {{host: {host}, subset: v2}}
  - route:
    - destination: {{host: {host}, subset: v1}}
"""


def access_log_off_yaml(namespace: str = MESH_NS, gateway: str = WAYPOINT_NAME) -> str:
    """A Telemetry that turns the waypoint's access log off, and only the waypoint's.

    nginx and HAProxy run here with no access log (`access_log off`, no `log` line), and Istio's
    default (`meshConfig.accessLogFile` empty) logs nothing either; Ambit's waypoint logs every
    request by default. Like for like, the waypoint scenarios run with this in place. `targetRefs`
    binds waypoints only, so ztunnel's per-connection lines, in every mesh scenario, are untouched.
    """
    return f"""apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: {gateway}-no-access-log, namespace: {namespace}}}
spec:
  targetRefs:
  - {{group: gateway.networking.k8s.io, kind: Gateway, name: {gateway}}}
  accessLogging:
  - disabled: true
"""


def resilient_yaml(namespace: str = MESH_NS, service: str = WEB_SERVICE) -> str:
    """The same routing as `waypoint_yaml`, with retries, timeouts and a full traffic policy."""
    host = f"{service}.{namespace}.svc.cluster.local"
    retries = '{attempts: 3, perTryTimeout: 2s, retryOn: "5xx,reset,connect-failure"}'
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {service}, namespace: {namespace}}}
spec:
  host: {host}
  trafficPolicy:
    loadBalancer: {{simple: LEAST_REQUEST}}
    connectionPool:
      tcp: {{maxConnections: 1000, connectTimeout: 2s}}
      http: {{http1MaxPendingRequests: 1000, http2MaxRequests: 1000, maxRetries: 100}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}}
    retryBudget: {{percent: 20, minRetryConcurrency: 3}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {service}, namespace: {namespace}}}
spec:
  hosts: [{host}]
  http:
  - match:
    - headers: {{{CANARY_HEADER}: {{exact: "{CANARY_VALUE}"}}}}
    timeout: 10s
    retries: {retries}
    route:
    - destination: {{host: {host}, subset: v2}}
  - timeout: 10s
    retries: {retries}
    route:
    - destination: {{host: {host}, subset: v1}}
"""


def parse_http_version(curl_headers: str) -> str:
    """The HTTP version of the response's status line ("2", "1.1"; "" if none), from `curl -D -`."""
    first = curl_headers.lstrip().partition("\n")[0]
    proto = first.split(" ", 1)[0]
    return proto.removeprefix("HTTP/") if proto.startswith("HTTP/") else ""


def parse_version_header(curl_headers: str) -> str:
    """The `x-version` a server answered with, from `curl -sS -D - -o /dev/null` output ("" if none)."""
    for line in curl_headers.splitlines():
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == VERSION_HEADER:
            return v.strip()
    return ""


def waypoint_available(python: str = sys.executable) -> tuple[bool, str]:
    """Whether `python -m waypoint` can start here (it answers --help); else why not."""
    try:
        p = subprocess.run([python, "-m", "waypoint", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"waypoint cannot start: {e}"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        return False, f"waypoint cannot start (`python -m waypoint --help`: {last})"
    return True, ""


class L7Set:
    """nginx and/or haproxy in the l7proxy pod; the waypoint through the lab's own CLI."""

    def __init__(self, lab, work: Path, which: list[str]) -> None:  # noqa: ANN001 - a BenchLab
        self.lab, self.work = lab, work
        self.which = list(dict.fromkeys(which))     # nginx-l7 and nginx-l7-h2 share one nginx, etc.
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.active = "waypoint"            # the waypoint configuration in place (see `activate`)

    def start(self) -> dict[str, str]:
        """Start each L7 proxy; return {proxy: why it did not start}."""
        failed: dict[str, str] = {}
        proxy_ip = self.lab.ip(f"{PLAIN_NS}/l7proxy")
        v1, v2 = self.lab.ip(f"{PLAIN_NS}/web-v1"), self.lab.ip(f"{PLAIN_NS}/web-v2")
        d = self.work / "l7"
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        waypoints = [n for n in self.which if n.startswith("waypoint")]
        if waypoints:
            ok, why = self._waypoint()
            if not ok:
                failed.update({n: why for n in waypoints})
        for name in self.which:
            if name.startswith("waypoint"):
                continue
            port = L7_PORTS[name]
            if name == "nginx":
                conf = d / "nginx-l7.conf"
                conf.write_text(nginx_l7_conf(d, proxy_ip, port, v1, v2, L7_H2_PORTS[name]))
                argv = ["nginx", "-c", str(conf), "-p", str(d)]
            else:
                conf = d / "haproxy-l7.cfg"
                conf.write_text(haproxy_l7_conf(proxy_ip, port, v1, v2, L7_H2_PORTS[name]))
                argv = ["haproxy", "-f", str(conf), "-db"]
            with open(d / f"{name}.out", "w") as log:
                self.procs[name] = self.lab.popen(f"{PLAIN_NS}/l7proxy", argv, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL)
        time.sleep(0.5)
        for name, p in list(self.procs.items()):
            if p.poll() is not None:
                failed[name] = f"{name} exited at start ({p.returncode}): {(d / f'{name}.out').read_text()[-300:]}"
                del self.procs[name]
        return failed

    def _ambit(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "AMBIT_LAB_DIR": str(self.lab.base), "AMBIT_LAB_NAME": self.lab.names.name}
        return subprocess.run([sys.executable, "-m", "ambitctl.cli", *args], input=stdin, env=env,
                              capture_output=True, text=True, timeout=60)

    def _waypoint(self) -> tuple[bool, str]:
        ok, why = waypoint_available()
        if not ok:
            return False, why
        p = self._ambit("apply", "-f", "-", stdin=waypoint_yaml() + "---\n" + access_log_off_yaml())
        if p.returncode != 0:
            return False, f"ambit apply of the waypoint Gateway/VirtualService failed: {(p.stderr or p.stdout)[-300:]}"
        p = self._ambit("label", "namespace", MESH_NS, f"istio.io/use-waypoint={WAYPOINT_NAME}")
        if p.returncode != 0:
            return False, f"labelling {MESH_NS} to use the waypoint failed: {(p.stderr or p.stdout)[-300:]}"
        return True, ""

    def activate(self, name: str) -> None:
        """Put the configuration of waypoint scenario `name` in place (no-op for other proxies or when
        it already is), and wait until the waypoint has it. The tracing switch (bench/tracing.py) is
        a file the waypoint re-reads within a second: 100 % for waypoint-traced, else 0 %."""
        if not name.startswith("waypoint") or name == self.active:
            return
        tracing.set_sampling(tracing.sampling_file(self.work), name)
        if (name == tracing.TRACED or self.active == tracing.TRACED) and "waypoint-resilient" not in (name, self.active):
            self.active = name      # same route either way: only the sampling changed
            time.sleep(CONFIG_SETTLE_S)
            return
        text = resilient_yaml() if name == "waypoint-resilient" else waypoint_yaml()
        if name != "waypoint-resilient":    # back to the plain route: drop the traffic policy and retries
            text = text.split("---\n", 1)[1]
        p = self._ambit("apply", "-f", "-", stdin=text)
        if p.returncode != 0:
            raise OSError(f"ambit apply for {name} failed: {(p.stderr or p.stdout)[-300:]}")
        self.active = name
        time.sleep(CONFIG_SETTLE_S)

    def pids(self, name: str) -> Callable[[], list[int]]:
        if name.startswith("waypoint"):
            return self.waypoint_pids
        return lambda: [p.pid for p in [self.procs.get(name)] if p is not None and p.poll() is None]

    def waypoint_pids(self) -> list[int]:
        """The lab's waypoint process(es): supervisor children whose id or argv names the waypoint,
        and with `--waypoint-workers`, each one's worker processes (its own children)."""
        from ambitctl.lab import state
        out = []
        for pid_id, info in state.runtime(self.lab.base).items():
            if info.get("pid") and "waypoint" in pid_id:
                out.append(int(info["pid"]))
                out += procstat.children(int(info["pid"]))
        return out

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
