"""gRPC through the waypoint end to end: a real grpcio client and curl in a lab pod, ztunnel, the
real waypoint process, ztunnel, real grpcio servers (tests/lab/specs/grpc.yaml).

- An AuthorizationPolicy denies one method; the waypoint answers as Envoy does: a gRPC request gets
  a trailers-only reply (HTTP 200, one content-type application/grpc, grpc-status 7,
  grpc-message), a gRPC-Web request (not gRPC for Envoy) a plain 403 with its body.
- Outlier detection counts a gRPC failure (HTTP 200, grpc-status INTERNAL) as the 500 it maps to,
  as Envoy's router does, and ejects the endpoint that keeps failing.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.labctl import Lab, running_lab
from tests.lab.test_waypoint import GATEWAY, apply, waypoints

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

SPEC = Path(__file__).parent / "specs" / "grpc.yaml"
CLIENT = "default/client"
DENIED = "/ambit.lab.Kinds/Stats"
DENY = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-stats", "namespace": "default"},
        "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "kinds"}], "action": "DENY",
                 "rules": [{"to": [{"operation": {"paths": [DENIED]}}]}]}}

# one grpcio call of `method` (raw bytes); prints "OK" or the status code name and details
_CALL = r"""
import sys
from ambitctl.lab.apps.grpc_kinds import channel, method
import grpc
with channel("kinds:9000") as ch:
    try:
        method(ch, sys.argv[1])(b"{}", timeout=5); print("OK")
    except grpc.RpcError as e:
        print(e.code().name, e.details())
"""


def grpc_call(lab: Lab, name: str) -> str:
    p = lab.exec(CLIENT, sys.executable, "-c", _CALL, name, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-1]


def post(lab: Lab, content_type: str) -> tuple[list[str], str]:
    """An HTTP/2 (prior knowledge) POST to the denied method: the response's head lines and body."""
    p = lab.exec(CLIENT, "curl", "-sS", "-i", "-m", "5", "--http2-prior-knowledge", "-X", "POST",
                 "-H", f"content-type: {content_type}", "-H", "te: trailers", "--data-binary", "",
                 f"http://kinds:9000{DENIED}", timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout.replace("\r\n", "\n")      # (text mode may have done it already)
    head, _, body = out.partition("\n\n")
    return [x.strip() for x in head.split("\n")], body


@pytest.fixture(scope="module")
def glab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("glab"), "grpc", SPEC, "grpc-lab") as lab:
        tmp = lab.tmp = tmp_path_factory.mktemp("gcfg")  # type: ignore[attr-defined]
        apply(lab, [GATEWAY], tmp, "gateway")
        lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=30, what="waypoint ready")
        apply(lab, [DENY], tmp, "deny")
        lab.wait_for(lambda: grpc_call(lab, "Stats").startswith("PERMISSION_DENIED"), timeout=30, interval=0.5,
                     what="the deny policy in force")
        yield lab


def test_grpc_denial_is_trailers_only_with_one_content_type(glab: Lab) -> None:
    assert grpc_call(glab, "Stats") == "PERMISSION_DENIED RBAC: access denied"
    assert grpc_call(glab, "Unary").startswith("OK")       # the rest of the service is served
    lines, body = post(glab, "application/grpc")
    assert lines[0] == "HTTP/2 200" and body == "", lines
    # the reply body's text/plain must not follow it into the trailers-only reply
    assert [x for x in lines if x.startswith("content-type:")] == ["content-type: application/grpc"], lines
    assert "grpc-status: 7" in lines and "grpc-message: RBAC: access denied" in lines


def test_grpc_web_denial_is_plain_http(glab: Lab) -> None:
    lines, body = post(glab, "application/grpc-web+proto")
    assert lines[0] == "HTTP/2 403", lines
    assert not any(x.startswith("grpc-") for x in lines) and "content-type: text/plain" in lines, lines
    assert body == "RBAC: access denied"


def test_outlier_detection_ejects_a_grpc_endpoint_that_answers_internal(glab: Lab) -> None:
    # echo-bad answers every call INTERNAL (trailers-only, HTTP 200; not UNAVAILABLE, which Istio's
    # default retry policy would retry onto echo-ok); two in a row eject it
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "echo-outlier", "namespace": "default"},
          "spec": {"host": "echo", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}, "outlierDetection": {
              "consecutive5xxErrors": 2, "interval": "30s", "baseEjectionTime": "60s", "maxEjectionPercent": 50}}}}
    apply(glab, [dr], glab.tmp, "outlier")  # type: ignore[attr-defined]

    def tally(n: int) -> dict[str, int]:
        p = glab.exec(CLIENT, sys.executable, "-m", "ambitctl.lab.apps.grpc_echo", "call", "echo:9000",
                      "--repeat", str(n), "--tally", timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1])
    # without the mapping, echo-bad's failures (HTTP 200) never count and every 2nd call fails
    # for good; with it, echo-bad is out after two of them, for baseEjectionTime
    glab.wait_for(lambda: tally(20) == {"OK": 20}, timeout=30, interval=0.5,
                  what="20 calls in a row answered, echo-bad ejected")
    assert tally(20) == {"OK": 20}
