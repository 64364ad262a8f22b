"""AuthorizationPolicy action CUSTOM end to end: MeshConfig extensionProviders (envoyExtAuthzHttp
and envoyExtAuthzGrpc) from the controller's watched mesh config file, a CUSTOM policy on Service
`backend` (targetRefs) applied through the controller, curl in a lab pod through the real ztunnels
and the real waypoint, which calls the lab's ext-authz app (a Service of its own, over HBONE).

- HTTP provider: `x-ext-authz: allow` gets 200 and the backend sees the authorizer's
  `x-ext-authz-check-result` (headersToUpstreamOnAllow); without it 403 with the authorizer's body;
- gRPC provider (the same app's Authorization/Check over HTTP/2): the same, and the authorizer's
  response header reaches the client;
- the authorizer's pod stopped: statusOnError (403, Istio's default), or allowed with failOpen;
- TCP (a line server, no HTTP, through the waypoint's opaque path): a CUSTOM policy with the gRPC
  provider holds each connection for a check carrying only its peers; the authorizer allows the
  `tcp-client` principal (its bytes come back) and refuses `frontend` (closed, nothing back, the
  waypoint's access-log line flagged UAEX); with the authorizer gone refused, with failOpen through.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.lab.labctl import Lab, running_lab
from tests.lab.test_waypoint import GATEWAY, access_records, apply, status_of, waypoints

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

SPEC = Path(__file__).parent / "specs" / "extauthz.yaml"
AUTHZ = "ext-authz.authz.svc.cluster.local"
MESH = {"extensionProviders": [
    {"name": "authz-http", "envoyExtAuthzHttp": {
        "service": AUTHZ, "port": 8000, "includeRequestHeadersInCheck": ["x-ext-authz"],
        "headersToUpstreamOnAllow": ["x-ext-authz-check-result"]}},
    {"name": "authz-grpc", "envoyExtAuthzGrpc": {"service": AUTHZ, "port": 9000}},
    {"name": "authz-open", "envoyExtAuthzHttp": {
        "service": AUTHZ, "port": 8000, "includeRequestHeadersInCheck": ["x-ext-authz"], "failOpen": True}},
    {"name": "authz-grpc-open", "envoyExtAuthzGrpc": {"service": AUTHZ, "port": 9000, "failOpen": True}}]}
# one line over a raw TCP connection to the tcp-echo Service; prints what came back ("" when refused)
TCP_CLIENT = ("import socket\ns = socket.create_connection(('tcp-echo', 9000), timeout=5)\n"
              "s.sendall(b'ping\\n')\nout = b''\ntry:\n    while chunk := s.recv(100):\n        out += chunk\n"
              "        if out.endswith(b'\\n'):\n            break\nexcept OSError:\n    pass\nprint(out.decode())")


def policy(provider: str, service: str = "backend", rule: dict | None = None) -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "ext-authz" if service == "backend" else f"ext-authz-{service}",
                         "namespace": "default"},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": service}],
                     "action": "CUSTOM", "provider": {"name": provider},
                     "rules": [rule or {"to": [{"operation": {"paths": ["/api/*"]}}]}]}}


@pytest.fixture(scope="module")
def xlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("xlab"), "xauthz", SPEC, "extauthz-lab") as lab:
        lab.tmp = tmp_path_factory.mktemp("xcfg")  # type: ignore[attr-defined]
        (lab.dir / "mesh-config.yaml").write_text(yaml.safe_dump(MESH))
        apply(lab, [GATEWAY], lab.tmp, "gateway")  # type: ignore[attr-defined]
        lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=30, what="waypoint ready")
        lab.wait_for(lambda: status_of(lab, "default/frontend", "http://backend/")[0] == 200, timeout=30,
                     interval=0.5, what="backend through the waypoint")
        yield lab


def get(lab: Lab, path: str, *headers: str) -> tuple[int, dict[str, str], str]:
    """(status, response headers, body) of one curl from the frontend pod."""
    opts = [o for h in headers for o in ("-H", h)]
    p = lab.exec("default/frontend", "curl", "-sS", "-m", "10", "-D", "-", *opts, f"http://backend{path}", timeout=40)
    assert p.returncode == 0, p.stderr
    head, _, body = p.stdout.replace("\r\n", "\n").partition("\n\n")   # (text mode may have turned CRLF into LF)
    lines = head.split("\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), hdrs, body


def use(lab: Lab, provider: str) -> None:
    """Apply the CUSTOM policy naming `provider` and wait until a request without the allow header
    is denied by that provider's authorizer (the policy reached the waypoint)."""
    apply(lab, [policy(provider)], lab.tmp, f"policy-{provider}")  # type: ignore[attr-defined]
    lab.wait_for(lambda: get(lab, "/api/x")[0] == 403, timeout=30, interval=0.5, what=f"CUSTOM policy ({provider})")


@pytest.mark.parametrize("provider", ["authz-http", "authz-grpc"])
def test_the_authorizer_allows_with_its_header_upstream_and_denies_with_its_body(xlab: Lab, provider: str) -> None:
    use(xlab, provider)
    status, hdrs, body = get(xlab, "/api/items", "x-ext-authz: allow")
    assert status == 200, body
    assert json.loads(body)["headers"]["x-ext-authz-check-result"] == "allowed"     # seen by the backend
    if provider == "authz-grpc":        # ok_response.response_headers_to_add
        assert hdrs["x-ext-authz-check-result"] == "allowed"
    status, hdrs, body = get(xlab, "/api/items", "x-ext-authz: deny")
    assert (status, body) == (403, "denied by ext_authz")
    assert hdrs["x-ext-authz-check-result"] == "denied"
    assert get(xlab, "/public")[0] == 200           # no CUSTOM rule matches: not checked


def test_an_authorizer_that_is_gone_answers_status_on_error_or_allows_with_fail_open(xlab: Lab) -> None:
    use(xlab, "authz-http")
    xlab.ambit("lab", "stop", "authz/ext-authz")
    try:
        xlab.wait_for(lambda: get(xlab, "/api/x", "x-ext-authz: allow")[:3:2] == (403, ""), timeout=30,
                      interval=0.5, what="statusOnError once the authorizer is gone")
        apply(xlab, [policy("authz-open")], xlab.tmp, "policy-open")  # type: ignore[attr-defined]
        xlab.wait_for(lambda: get(xlab, "/api/x")[0] == 200, timeout=30, interval=0.5,
                      what="failOpen lets the request through")
    finally:
        xlab.ambit("lab", "start", "authz/ext-authz", check=False)


def tcp(lab: Lab, pod: str) -> str:
    """What the tcp-echo server sent back to one line from `pod` ("" when the tunnel was refused)."""
    p = lab.exec(pod, sys.executable, "-c", TCP_CLIENT, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def tcp_policy(lab: Lab, provider: str) -> None:
    """The CUSTOM policy on tcp-echo's port 9000 (`paths` would be dropped for TCP: it would match
    every connection), in force at the waypoint when `apply --wait` returns."""
    apply(lab, [policy(provider, "tcp-echo", {"to": [{"operation": {"ports": ["9000"]}}]})],
          lab.tmp, f"tcp-policy-{provider}")  # type: ignore[attr-defined]


def test_tcp_connections_are_checked_by_the_grpc_provider_on_their_principal(xlab: Lab) -> None:
    tcp_policy(xlab, "authz-grpc")
    # (the authorizer may be restarting after another test stopped it: its first answers can be errors)
    xlab.wait_for(lambda: tcp(xlab, "default/tcp-client") == "hello ping", timeout=20, interval=0.5,
                  what="the allowed principal's bytes through the check")
    assert tcp(xlab, "default/frontend") == ""
    recs = access_records(xlab, '"protocol": "TCP"', "UAEX")
    assert recs and "ext_authz authz-grpc (policy default/ext-authz-tcp-echo) denied" in \
        recs[-1]["response_code_details"], recs[-1:]


def test_tcp_connections_are_refused_when_the_authorizer_is_gone_unless_fail_open(xlab: Lab) -> None:
    tcp_policy(xlab, "authz-grpc")
    xlab.ambit("lab", "stop", "authz/ext-authz")     # the lab's supervisor stops it a moment later
    try:
        xlab.wait_for(lambda: tcp(xlab, "default/tcp-client") == "", timeout=30, interval=0.5,
                      what="the connection refused once the authorizer is gone")
        tcp_policy(xlab, "authz-grpc-open")
        assert tcp(xlab, "default/tcp-client") == "hello ping"
        assert tcp(xlab, "default/frontend") == "hello ping"       # unchecked: failOpen
    finally:
        xlab.ambit("lab", "start", "authz/ext-authz", check=False)
