"""The controller's debug API against a real lab (issue 14): ztunnels and the waypoint report to the
controller over the config stream's credential, and `ambit proxy-status`, `ambit version` and
`ambit describe` read the aggregate through the controller only (the lab's admin token), never the
nodes' admin sockets.

Layout: tests/lab/specs/debugapi.yaml, a waypoint for namespace default
(`ambit waypoint apply -n default --enroll-namespace`), an AuthorizationPolicy on echo.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambit.version import VERSION
from tests.lab.labctl import Lab, running_lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")
SPEC = Path(__file__).parent / "specs" / "debugapi.yaml"
POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-from-client, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client, cluster.local/ns/default/sa/waypoint]}}]
"""
URL = "http://echo.default.svc.cluster.local/"


@pytest.fixture(scope="module")
def dlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("da")
    with running_lab(base, "da", SPEC, "debugapi-lab") as lab:
        lab.ambit("waypoint", "apply", "-n", "default", "--enroll-namespace", "--wait", timeout=120)
        policy = base / "policy.yaml"
        policy.write_text(POLICY)
        lab.ambit("apply", "-f", str(policy))
        lab.wait_for(lambda: code(lab) == 200, timeout=60, interval=0.5, what="client -> echo through the waypoint")
        yield lab


def code(lab: Lab) -> int:
    p = lab.exec("default/client", "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", URL, timeout=30)
    try:
        return int(p.stdout.strip() or 0)
    except ValueError:
        return 0


def proxies(lab: Lab) -> dict[str, dict]:
    p = lab.ambit("proxy-status", "-o", "json", check=False)
    assert p.returncode in (0, 1), p.stderr
    doc = json.loads(p.stdout)
    return {f"{r['kind']}/{r['waypoint'] + '@' if r['waypoint'] else ''}{r['name']}": r for r in doc["proxies"]}


def test_proxy_status_lists_every_proxy_synced_with_its_report(dlab: Lab) -> None:
    def ready() -> bool:
        ps = proxies(dlab)
        zt = [r for k, r in ps.items() if k.startswith("ztunnel/")]
        wp = [r for k, r in ps.items() if k.startswith("waypoint/")]
        return (len(zt) == 2 and len(wp) == 1
                and all(r["state"] == "SYNCED" and r["proxy_version"] == VERSION for r in zt + wp))
    started = time.monotonic()
    dlab.wait_for(ready, timeout=30, interval=0.5, what="both ztunnels and the waypoint SYNCED and reported")
    print(f"all proxies SYNCED and reported after {time.monotonic() - started:.1f}s")
    ps = proxies(dlab)
    assert {k for k in ps if k.startswith("agent/")} == {"agent/node1", "agent/node2"}
    [wp] = [r for k, r in ps.items() if k.startswith("waypoint/default/waypoint@")]
    assert wp["node"] in ("node1", "node2")
    p = dlab.ambit("proxy-status")
    assert p.returncode == 0 and "SYNCED" in p.stdout and "STALE" not in p.stdout and "NACK" not in p.stdout


def test_proxy_config_dump_and_certificates_per_proxy(dlab: Lab) -> None:
    assert code(dlab) == 200                # traffic, so node1's ztunnel holds echo's certificate
    def echo_cert() -> dict | None:
        doc = json.loads(dlab.ambit("proxy-status", "ztunnel/node1", "-o", "json").stdout)
        certs = (doc.get("report") or {}).get("certs") or []
        return next((c for c in certs if c["identity"].endswith("/ns/default/sa/echo")), None)
    dlab.wait_for(lambda: (echo_cert() or {}).get("state") == "VALID", timeout=15, interval=0.5,
                  what="node1's report carries echo's certificate")
    doc = json.loads(dlab.ambit("proxy-status", "ztunnel/node1", "-o", "json").stdout)
    names = {r["body"]["name"] for r in doc["config"]["ambit.io/Workload"]["resources"].values()}
    assert {"echo", "client"} <= names
    def wp_report() -> dict:
        return json.loads(dlab.ambit("proxy-status", "waypoint/default/waypoint", "-o", "json").stdout)["report"]
    # the waypoint reports every few seconds: wait for the report made after the request
    rep = dlab.wait_for(lambda: (r := wp_report()) and r.get("requests", 0) >= 1 and r, timeout=15, interval=0.5,
                        what="the waypoint's report counts the request")
    assert rep["identity"].endswith("/ns/default/sa/waypoint") and rep["clusters"]


def test_describe_pod_in_the_lab(dlab: Lab) -> None:
    assert code(dlab) == 200
    d = json.loads(dlab.ambit("describe", "pod", "echo", "-n", "default", "-o", "json").stdout)
    assert d["enrolled"] is True and d["node"] == "node1"
    assert d["identity"] == "spiffe://cluster.local/ns/default/sa/echo"
    assert d["waypoint"]["services"] == {"default/echo": "default/waypoint"}
    assert [p["ref"] for p in d["authorization_policies"]] == ["AuthorizationPolicy/default/echo-from-client"]
    assert d["certificate"]["state"] == "VALID"
    text = dlab.ambit("describe", "svc", "echo", "-n", "default").stdout
    assert "default/waypoint" in text and "echo-from-client" in text


def test_version_client_controller_and_proxies_agree(dlab: Lab) -> None:
    doc = json.loads(dlab.ambit("version", "-o", "json").stdout)
    assert doc["server"]["controller"]["version"] == VERSION
    assert doc["server"]["controller"]["compatibility"] == "compatible"
    verdicts = {k: p["compatibility"] for k, p in doc["server"]["proxies"].items()}
    assert {k for k in verdicts if k.startswith("ztunnel/")} == {"ztunnel/node1", "ztunnel/node2"}
    # the node agents report their version too
    assert {k for k in verdicts if k.startswith("agent/")} == {"agent/node1", "agent/node2"}
    assert all(v == "compatible" for v in verdicts.values()), verdicts
