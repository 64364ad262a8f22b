"""The operator's CLI against a running lab (issue 14): `ambit authz check` agrees with the data
plane on the request table of tests/unit/ambitctl/authz_scenario.py, run both ways (the command's
answer, and a real request from the source pod through ztunnels and the waypoint); `ambit analyze`
reads traffic facts from the ztunnels' metrics (AMB0110); kubectl habits and `apply --dry-run` on
the lab's store.

Layout: the built-in lab (`ambit lab up`, no --spec), a waypoint for namespace default
(`ambit waypoint apply -n default --enroll-namespace`), tests/fixtures/authz/policies.yaml.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.lab.labctl import Lab, artifacts, lab_name_for
from tests.unit.ambitctl.authz_scenario import CASES, POLICIES

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

# The requests the lab can answer with HTTP (iperf3 is not an HTTP server: a refused and an
# accepted connection look the same to curl there).
HTTP_CASES = [c for c in CASES if "iperf" not in c[1]]


@pytest.fixture(scope="module")
def clab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("cl") / "state", name=lab_name_for("cl"))
    try:
        up = lab.ambit("lab", "up", "--name", lab.name)     # the built-in spec, as the authz scenario assumes
        lab.up_output = up.stdout + up.stderr  # type: ignore[attr-defined]
        lab.ambit("waypoint", "apply", "-n", "default", "--enroll-namespace", "--wait", timeout=120)
        lab.ambit("apply", "-f", str(POLICIES))
        lab.wait_for(lambda: status(lab, "default/frontend", "http://myapp.default.svc.cluster.local/healthz")
                     == 200, timeout=60, interval=0.5, what="myapp through the waypoint")
        lab.wait_for(lambda: status(lab, "default/frontend", "http://myapp.default.svc.cluster.local/admin")
                     == 403, timeout=30, interval=0.5, what="the waypoint's policies")
        yield lab
    finally:
        lab.save_logs(artifacts("cli-lab"))
        lab.down()


def status(lab: Lab, pod: str, url: str, *opts: str) -> int:
    """The HTTP status of one request; 0 when the connection was refused or reset (an L4 denial)."""
    p = lab.exec(pod, "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", *opts, url, timeout=40)
    try:
        return int(p.stdout.strip() or 0)
    except ValueError:
        return 0


def url_of(lab: Lab, target: str, path: str) -> str:
    """The URL for what `authz check` resolved DST to: `fqdn:port`, `vip:port` or `ns/pod:port`."""
    host, _, port = target.rpartition(":")
    if "/" in host:
        ns, name = host.split("/")
        host = next(p["ip"] for p in lab.status()["pods"] if (p["namespace"], p["name"]) == (ns, name))
    return f"http://{host}:{port}{path}"


@pytest.mark.parametrize("src,dst,method,path,headers,allowed,policy,rule", HTTP_CASES,
                         ids=[f"{c[0]}->{c[1]} {c[2]} {c[3]}{' ' + str(dict(c[4])) if c[4] else ''}"
                              for c in HTTP_CASES])
def test_authz_check_agrees_with_the_data_plane(clab: Lab, src: str, dst: str, method: str, path: str,
                                                headers: tuple[tuple[str, str], ...], allowed: bool, policy: str,
                                                rule: str) -> None:
    args = ["authz", "check", src, dst, "-X", method, "--path", path, "-o", "json"]
    for k, v in headers:
        args += ["-H", f"{k}={v}"]
    p = clab.ambit(*args, check=False)
    assert p.returncode in (0, 3), p.stderr
    said = json.loads(p.stdout)
    opts = ["-X", method] if method != "HEAD" else ["-I"]
    for k, v in headers:
        opts += ["-H", f"{k}: {v}"]
    code = status(clab, src, url_of(clab, said["target"], path), *opts)
    done = code == 200
    assert done is said["allowed"], f"authz check said {said['allowed']}, the data plane answered {code}:\n" \
                                    + json.dumps(said, indent=1)
    assert said["allowed"] is allowed
    if not allowed:
        assert code in (0, 403), code      # a waypoint's RBAC 403, or the connection refused at L4
        where = [h["where"] for pth in said["paths"] for h in pth["hops"] if not h["allowed"]][0]
        assert (code == 403) is where.startswith("waypoint"), (code, where)


def test_analyze_reads_plaintext_traffic_from_the_ztunnels(clab: Lab, tmp_path: Path) -> None:
    # legacy/client (outside the mesh) talks to demo/echo in plaintext (allowed by its ipBlocks rule)
    assert status(clab, "legacy/client", "http://echo.demo.svc.cluster.local:8080/") == 200
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                                      "metadata": {"name": "default", "namespace": "demo"},
                                      "spec": {"mtls": {"mode": "STRICT"}}}))
    # before applying it: analyse the file on top of the lab's state
    p = clab.ambit("analyze", "-f", str(strict), check=False)
    assert p.returncode == 0, p.stderr             # a Warning, below the default failure threshold
    assert "Warning [AMB0110] (PeerAuthentication/demo/default spec.mtls.mode)" in p.stdout, p.stdout
    assert "plaintext connection(s)" in p.stdout and "demo/echo-v" in p.stdout
    p = clab.ambit("analyze", "-f", str(strict), "--failure-threshold", "Warning", check=False)
    assert p.returncode == 79
    p = clab.ambit("analyze", "-f", str(strict), "--no-traffic", check=False)
    assert "AMB0110" not in p.stdout
    # applied: the same finding from the lab's state alone
    clab.ambit("apply", "-f", str(strict))
    try:
        p = clab.ambit("analyze", "-n", "demo", check=False)
        assert "[AMB0110] (PeerAuthentication/demo/default spec.mtls.mode)" in p.stdout, p.stdout
        clab.wait_for(lambda: status(clab, "legacy/client", "http://echo.demo.svc.cluster.local:8080/") == 0,
                      timeout=20, interval=0.5, what="STRICT refusing the plaintext client")
    finally:
        clab.ambit("delete", "-f", str(strict))


def test_analyze_the_lab(clab: Lab) -> None:
    p = clab.ambit("analyze", "-A", "-o", "json", "--output-threshold", "Warning", check=False)
    found = json.loads(p.stdout)
    # the scenario's policies are all bound to something that exists; nothing is an Error
    assert not [f for f in found if f["severity"] == "Error"], found
    assert not [f for f in found if f["code"] in ("AMB0104", "AMB0108")], found


def test_kubectl_habits_and_dry_run_on_the_lab(clab: Lab) -> None:
    p = clab.ambit("get", "po", "-n", "demo", "echo-v1", "-o", "name")
    assert p.stdout == "pod/echo-v1\n"
    p = clab.ambit("get", "ap", "-A", "-l", "!nothing", "-o", "name")
    assert "authorizationpolicy.security.istio.io/no-admin" in p.stdout.split()
    p = clab.ambit("apply", "--dry-run", "-f", str(POLICIES))
    assert p.stdout and all(line.endswith("unchanged (dry run)") for line in p.stdout.splitlines()), p.stdout
    p = clab.ambit("check", check=False)            # not a terminal: no colour
    assert "\033" not in p.stdout
    assert "==> lab is up" in clab.up_output and "\033" not in clab.up_output  # type: ignore[attr-defined]


RAW = ("import socket,sys\n"
       "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n"
       "s.sendall(b'\\x16hello, not http\\r\\n\\r\\n')\n"
       "out=b''\n"
       "try:\n"
       "    while True:\n"
       "        b=s.recv(4096)\n"
       "        if not b: break\n"
       "        out+=b\n"
       "except OSError: pass\n"
       "sys.stdout.write(out[:12].decode('latin-1'))\n")


def test_authz_check_tcp_agrees_with_the_waypoints_opaque_path(clab: Lab) -> None:
    """A non-HTTP client through the waypoint: `authz check --tcp` says the Gateway's DENY of paths,
    stripped of its HTTP attributes, denies the tunnel; on the wire the waypoint closes it unanswered,
    while the same bytes to a pod without a waypoint reach its HTTP server, which answers them (its
    error page: the probe works)."""
    p = clab.ambit("authz", "check", "demo/client", "myapp.default:80", "--tcp", "-o", "json", check=False)
    said = json.loads(p.stdout)
    assert p.returncode == 3 and not said["allowed"], p.stdout
    hop = said["paths"][0]["hops"][0]
    assert hop["where"] == "waypoint default/waypoint (L4, opaque TCP)" and hop["policy"].endswith("default/no-admin")
    got = clab.exec("demo/client", "python3", "-c", RAW, "myapp.default.svc.cluster.local", "80", timeout=40)
    assert got.stdout == "", got.stdout + got.stderr
    control = clab.exec("demo/client", "python3", "-c", RAW, "echo.demo.svc.cluster.local", "8080", timeout=40)
    assert control.stdout != "", control.stderr
