"""The L7 scenarios' proxy configurations: rendered, checked by the tools themselves, and run for
real on loopback against two servers, routing by x-canary exactly as the waypoint's VirtualService
does (exact "true" → v2, anything else → v1)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from bench import l7, labenv, ratios
from bench import plan as planmod
from bench.results import RunResults


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """A server on 127.0.0.<n>:80-like port that says its version in x-version (as web-v1/v2 do)."""

    def __init__(self, version: str) -> None:
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                body = b"x" * 1024
                self.send_response(200)
                self.send_header(l7.VERSION_HEADER, version)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()


def get_version(port: int, canary: str | None) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/1k", headers={l7.CANARY_HEADER: canary} if canary else {})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert len(r.read()) == 1024
        return r.headers[l7.VERSION_HEADER]


def wait_listening(port: int, p: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if p.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start: {p.communicate()[0] if p.poll() is not None else ''}") from None
            time.sleep(0.05)


@pytest.fixture
def backends():
    v1, v2 = Backend("v1"), Backend("v2")
    yield v1, v2
    v1.srv.shutdown()
    v2.srv.shutdown()


def _swap_port(conf: str, backend_port: int) -> str:
    """The renderers use the bench servers' port 80; the loopback backends listen elsewhere."""
    return conf.replace(f"127.0.0.1:{planmod.HTTP_PORT};", f"127.0.0.1:{backend_port};")


def test_nginx_config_routes_by_x_canary(tmp_path: Path, backends) -> None:
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed")
    (tmp_path / "tmp").mkdir()
    port = free_port()
    conf = l7.nginx_l7_conf(tmp_path, "127.0.0.1", port, "127.0.0.1", "127.0.0.2")
    assert "keepalive 64;" in conf and "worker_processes 1;" in conf and "access_log off;" in conf
    v1, v2 = backends
    conf = conf.replace(f"127.0.0.1:{planmod.HTTP_PORT};", f"127.0.0.1:{v1.port};")
    conf = conf.replace(f"127.0.0.2:{planmod.HTTP_PORT};", f"127.0.0.1:{v2.port};")
    f = tmp_path / "nginx.conf"
    f.write_text(conf)
    t = subprocess.run(["nginx", "-t", "-c", str(f), "-p", str(tmp_path)], capture_output=True, text=True)
    assert t.returncode == 0, t.stderr
    p = subprocess.Popen(["nginx", "-c", str(f), "-p", str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        wait_listening(port, p, "nginx")
        assert get_version(port, "true") == "v2"
        assert get_version(port, None) == "v1"
        assert get_version(port, "True") == "v1", "exact match, case-sensitive, as the VirtualService"
        assert get_version(port, "true-ish") == "v1"
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_haproxy_config_routes_by_x_canary(tmp_path: Path, backends) -> None:
    if not shutil.which("haproxy"):
        pytest.skip("haproxy is not installed")
    port = free_port()
    conf = l7.haproxy_l7_conf("127.0.0.1", port, "127.0.0.1", "127.0.0.2")
    assert "nbthread 1" in conf and "mode http" in conf and "http-reuse always" in conf
    v1, v2 = backends
    conf = conf.replace(f"127.0.0.1:{planmod.HTTP_PORT}\n", f"127.0.0.1:{v1.port}\n")
    conf = conf.replace(f"127.0.0.2:{planmod.HTTP_PORT}\n", f"127.0.0.1:{v2.port}\n")
    f = tmp_path / "haproxy.cfg"
    f.write_text(conf)
    t = subprocess.run(["haproxy", "-c", "-f", str(f)], capture_output=True, text=True)
    assert t.returncode == 0, t.stdout + t.stderr
    p = subprocess.Popen(["haproxy", "-f", str(f), "-db"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_listening(port, p, "haproxy")
        assert get_version(port, "true") == "v2"
        assert get_version(port, None) == "v1"
        assert get_version(port, "True") == "v1"
        assert get_version(port, "true-ish") == "v1"
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_waypoint_yaml_is_the_seed_header_route_for_the_bench_service() -> None:
    gw, dr, vs = yaml.safe_load_all(l7.waypoint_yaml())
    assert gw["kind"] == "Gateway" and gw["spec"]["gatewayClassName"] == "istio-waypoint"
    assert gw["spec"]["listeners"] == [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
    assert {s["name"]: s["labels"] for s in dr["spec"]["subsets"]} == {"v1": {"version": "v1"}, "v2": {"version": "v2"}}
    first, default = vs["spec"]["http"]
    assert first["match"] == [{"headers": {"x-canary": {"exact": "true"}}}]
    assert first["route"][0]["destination"]["subset"] == "v2" and default["route"][0]["destination"]["subset"] == "v1"
    assert vs["spec"]["hosts"] == [f"web.{planmod.MESH_NS}.svc.cluster.local"]


def test_the_waypoint_scenarios_log_no_access_lines_and_ztunnel_keeps_its_own() -> None:
    """Like for like with nginx's `access_log off`: the bench's Telemetry, as the controller accepts
    and translates it, turns the waypoint's access log off and leaves ztunnel's lines on."""
    from ambit.telemetry import for_waypoint, for_workload
    from controller.translate.policy import translate_telemetry
    from controller.validation import validate_object
    (tel,) = yaml.safe_load_all(l7.access_log_off_yaml())
    assert validate_object(tel) == []
    policy = translate_telemetry(tel, "ambit-system")
    assert for_waypoint([policy], None, planmod.MESH_NS, l7.WAYPOINT_NAME, f"{planmod.MESH_NS}/web").access_log.disabled
    for side in ("CLIENT", "SERVER"):
        assert not for_workload([policy], None, planmod.MESH_NS, {"app": "client"}, side).access_log.disabled


def test_version_header_parsing() -> None:
    assert l7.parse_version_header("HTTP/1.1 200 OK\r\nServer: nginx\r\nX-Version: v2\r\n\r\n") == "v2"
    assert l7.parse_version_header("HTTP/1.1 200 OK\r\n\r\n") == ""


def test_waypoint_probe_reports_why_it_cannot_start() -> None:
    ok, why = l7.waypoint_available("/bin/false")
    assert not ok and why.startswith("waypoint cannot start")


def test_l7_pods_and_service_only_when_asked(tmp_path: Path) -> None:
    base = labenv.spec_dict(tmp_path)
    assert not base["services"] and not any(p["name"].startswith("web-") for p in base["pods"])
    d = labenv.spec_dict(tmp_path, l7=True)
    names = {(p["namespace"], p["name"]) for p in d["pods"]}
    for ns in (planmod.PLAIN_NS, planmod.MESH_NS):
        assert {(ns, "web-v1"), (ns, "web-v2")} <= names
    assert (planmod.PLAIN_NS, "l7proxy") in names
    (svc,) = d["services"]
    assert svc["name"] == "web" and svc["namespace"] == planmod.MESH_NS and svc["selector"] == {"app": "web"}
    conf = (tmp_path / "pods" / f"{planmod.MESH_NS}.web-v2" / "nginx.conf").read_text()
    assert "add_header x-version v2 always;" in conf
    assert "x-version" not in (tmp_path / "pods" / f"{planmod.PLAIN_NS}.server" / "nginx.conf").read_text()


def test_l7_scenarios_are_planned_and_paired() -> None:
    for name, proxy in (("nginx-l7", "nginx"), ("haproxy-l7", "haproxy"), ("ambit-waypoint", "waypoint")):
        assert planmod.SCENARIOS[name].l7 == proxy
    assert planmod.SCENARIOS["ambit-waypoint"].mesh and not planmod.SCENARIOS["nginx-l7"].mesh
    res = RunResults(reps=2)
    for rep, (w, n, h) in enumerate(((2000.0, 8000.0, 10000.0), (2200.0, 8800.0, 11000.0))):
        res.record("ambit-waypoint", "max_rps", rep, w)
        res.record("nginx-l7", "max_rps", rep, n)
        res.record("haproxy-l7", "max_rps", rep, h)
    got = {(r.scenario, r.baseline): r.ratio for r in ratios.all_ratios(res) if r.metric == "max_rps"}
    assert got == {("ambit-waypoint", "nginx-l7"): pytest.approx(0.25), ("ambit-waypoint", "haproxy-l7"): pytest.approx(0.2)}


def test_resilient_yaml_is_the_same_route_with_retries_and_a_traffic_policy_the_controller_accepts() -> None:
    from controller.validation import validate_object
    dr, vs = yaml.safe_load_all(l7.resilient_yaml())
    assert [e for o in (dr, vs) for e in validate_object(o)] == []
    _, plain_dr, plain_vs = yaml.safe_load_all(l7.waypoint_yaml())
    assert dr["spec"]["subsets"] == plain_dr["spec"]["subsets"]
    assert [r["match"] for r in vs["spec"]["http"] if "match" in r] == [r["match"] for r in plain_vs["spec"]["http"]
                                                                        if "match" in r]
    for r in vs["spec"]["http"]:
        assert r["retries"]["attempts"] == 3 and r["timeout"] == "10s"
    tp = dr["spec"]["trafficPolicy"]
    assert set(tp) == {"loadBalancer", "connectionPool", "outlierDetection", "retryBudget"}


def test_the_resilient_waypoint_is_paired_with_the_plain_one() -> None:
    sc = planmod.SCENARIOS["ambit-waypoint-resilient"]
    assert sc.waypoint and sc.mesh and sc.l7 == "waypoint-resilient"
    res = RunResults(reps=2)
    for rep, (plain, resilient) in enumerate(((3000.0, 2700.0), (3100.0, 2790.0))):
        res.record("ambit-waypoint", "max_rps", rep, plain)
        res.record("ambit-waypoint-resilient", "max_rps", rep, resilient)
    got = {(r.scenario, r.baseline): r.ratio for r in ratios.all_ratios(res) if r.metric == "max_rps"}
    assert got == {("ambit-waypoint-resilient", "ambit-waypoint"): pytest.approx(0.9)}


def get_version_h2(port: int, canary: str | None) -> tuple[str, str]:
    """(HTTP version, x-version) of one h2c prior-knowledge request, as the h2 scenarios send it."""
    argv = ["curl", "-sS", "--fail", "--http2-prior-knowledge", "-o", "/dev/null", "-D", "-", "-m", "5",
            *(["-H", f"{l7.CANARY_HEADER}: {canary}"] if canary else []), f"http://127.0.0.1:{port}/1k"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    return l7.parse_http_version(p.stdout), l7.parse_version_header(p.stdout)


def _run_proxy(argv: list[str], ports: tuple[int, int], what: str):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for port in ports:
        wait_listening(port, p, what)
    return p


@pytest.mark.parametrize("proxy", ["nginx", "haproxy"])
def test_h2c_listener_routes_by_x_canary_over_http2(tmp_path: Path, backends, proxy: str) -> None:
    """The *-l7-h2 scenarios: the same process answers h2c with prior knowledge on its second port
    with the same routing, while its HTTP/1.1 port keeps speaking HTTP/1.1."""
    if not shutil.which(proxy) or not shutil.which("curl"):
        pytest.skip(f"{proxy} or curl is not installed")
    v1, v2 = backends
    port, h2_port = free_port(), free_port()
    if proxy == "nginx":
        (tmp_path / "tmp").mkdir()
        conf = l7.nginx_l7_conf(tmp_path, "127.0.0.1", port, "127.0.0.1", "127.0.0.2", h2_port)
        conf = conf.replace(f"127.0.0.1:{planmod.HTTP_PORT};", f"127.0.0.1:{v1.port};")
        conf = conf.replace(f"127.0.0.2:{planmod.HTTP_PORT};", f"127.0.0.1:{v2.port};")
        f = tmp_path / "nginx.conf"
        argv = ["nginx", "-c", str(f), "-p", str(tmp_path)]
    else:
        conf = l7.haproxy_l7_conf("127.0.0.1", port, "127.0.0.1", "127.0.0.2", h2_port)
        conf = conf.replace(f"127.0.0.1:{planmod.HTTP_PORT}\n", f"127.0.0.1:{v1.port}\n")
        conf = conf.replace(f"127.0.0.2:{planmod.HTTP_PORT}\n", f"127.0.0.1:{v2.port}\n")
        f = tmp_path / "haproxy.cfg"
        argv = ["haproxy", "-f", str(f), "-db"]
    f.write_text(conf)
    p = _run_proxy(argv, (port, h2_port), proxy)
    try:
        assert get_version_h2(h2_port, "true") == ("2", "v2")
        assert get_version_h2(h2_port, None) == ("2", "v1")
        assert get_version_h2(h2_port, "True") == ("2", "v1"), "exact match, case-sensitive, as the VirtualService"
        assert get_version(port, "true") == "v2"
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_h2_scenarios_share_their_proxy_and_speak_h2c() -> None:
    for name, proxy in (("nginx-l7-h2", "nginx"), ("haproxy-l7-h2", "haproxy"), ("ambit-waypoint-h2", "waypoint")):
        sc = planmod.SCENARIOS[name]
        assert sc.h2 and sc.l7 == proxy
        assert not planmod.SCENARIOS[name.removesuffix("-h2")].h2
    assert set(planmod.L7_H2_PORTS) == set(planmod.L7_PORTS)
    assert not set(planmod.L7_H2_PORTS.values()) & set(planmod.L7_PORTS.values())
    assert l7.L7Set(None, Path("/nonexistent"), ["nginx", "nginx", "waypoint", "waypoint"]).which == ["nginx", "waypoint"]


def test_h2_ratios_pair_like_with_like() -> None:
    """The HTTP/2 waypoint against the HTTP/2 proxies only, never against an HTTP/1.1 run."""
    res = RunResults(reps=2)
    for rep in range(2):
        for sc, v in (("ambit-waypoint", 2.0), ("nginx-l7", 4.0), ("haproxy-l7", 5.0), ("ambit-waypoint-h2", 1.0),
                      ("nginx-l7-h2", 8.0), ("haproxy-l7-h2", 10.0)):
            res.record(sc, "max_rps", rep, v * 1000)
    got = {(r.scenario, r.baseline): r.ratio for r in ratios.all_ratios(res) if r.metric == "max_rps"}
    assert got == {("ambit-waypoint", "nginx-l7"): pytest.approx(0.5), ("ambit-waypoint", "haproxy-l7"): pytest.approx(0.4),
                   ("ambit-waypoint-h2", "nginx-l7-h2"): pytest.approx(0.125),
                   ("ambit-waypoint-h2", "haproxy-l7-h2"): pytest.approx(0.1)}


def test_http_version_of_curl_headers() -> None:
    assert l7.parse_http_version("HTTP/2 200 \r\nx-version: v2\r\n") == "2"
    assert l7.parse_http_version("HTTP/1.1 200 OK\r\n") == "1.1"
    assert l7.parse_http_version("") == ""
