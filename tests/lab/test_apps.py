"""The lab's sample apps through the mesh (ztunnel only): curl to httpbin and grpcio to grpc-echo,
from an enrolled client, across nodes, each request carried in HBONE (the access logs say so)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.labctl import Lab, running_lab

pytestmark = pytest.mark.lab

SPEC = Path(__file__).parent / "specs" / "apps.yaml"
HTTPBIN = "http://httpbin.demo.svc.cluster.local:8000"
GRPC = "grpc-echo.demo.svc.cluster.local:9090"


@pytest.fixture(scope="module")
def apps_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("apps"), "hwo", SPEC, "apps-lab") as lab:
        yield lab


def _grpc(lab: Lab, *args: str) -> list[dict]:
    p = lab.exec("demo/client", sys.executable, "-m", "ambitctl.lab.apps.grpc_echo", "call", GRPC, *args, timeout=60)
    return [json.loads(x) for x in p.stdout.splitlines() if x.strip()]


def _curl_json(lab: Lab, url: str, *opts: str) -> dict:
    """httpbin pretty-prints its JSON over several lines (Lab.curl reads one)."""
    p = lab.exec("demo/client", "curl", "-sS", "--fail", "-m", "5", *opts, url, timeout=40)
    if p.returncode != 0:
        raise AssertionError(f"curl {url} failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout)


def _inbound_hbone(lab: Lab, node: str, port: int) -> list[dict]:
    return [r for r in lab.access_log(node) if r.get("direction") == "inbound"
            and r.get("route") == "inbound-hbone" and r.get("dst.addr", "").endswith(f":{port}")]


def test_curl_reaches_httpbin_through_the_mesh(apps_lab: Lab) -> None:
    lab = apps_lab
    before = len(_inbound_hbone(lab, "node2", 8000))
    got = lab.wait_for(lambda: _curl_json(lab, f"{HTTPBIN}/headers", "-H", "x-canary: true"),
                       timeout=20, interval=0.5, what="httpbin answers")
    assert got["headers"]["X-Canary"] == "true"
    p = lab.exec("demo/client", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5",
                 f"{HTTPBIN}/status/418")
    assert p.stdout.strip() == "418", p.stderr
    # the positive control of "through the mesh": node2's ztunnel took them in over HBONE, with the
    # client's identity
    recs = lab.wait_for(lambda: _inbound_hbone(lab, "node2", 8000)[before:] or None, timeout=10,
                        what="ztunnel inbound HBONE records for httpbin")
    assert any(r.get("src.identity", "").endswith("/ns/demo/sa/client") for r in recs), recs


def test_grpc_unary_and_streaming_reach_both_versions_through_the_mesh(apps_lab: Lab) -> None:
    lab = apps_lab
    lab.wait_for(lambda: _grpc(lab, "--message", "warm") and _grpc(lab, "--message", "warm")[0].get("pod"),
                 timeout=20, interval=0.5, what="grpc-echo answers")
    versions = set()
    for _ in range(12):                       # one connection per call: ztunnel balances per connection
        (r,) = _grpc(lab, "--message", "hi", "--header", "x-canary=true")
        assert r["message"] == "hi" and r["metadata"]["x-canary"] == "true", r
        versions.add(r["version"])
    assert versions == {"v1", "v2"}, f"both endpoints answered over 12 calls: {versions}"
    rs = _grpc(lab, "--stream", "4")
    assert [int(r["seq"]) for r in rs] == [0, 1, 2, 3] and len({r["pod"] for r in rs}) == 1
    (err,) = _grpc(lab, "--status", "UNAVAILABLE")      # the status crosses the mesh intact
    assert err["code"] == "UNAVAILABLE"
    assert _inbound_hbone(lab, "node1", 9090) and _inbound_hbone(lab, "node2", 9090)
