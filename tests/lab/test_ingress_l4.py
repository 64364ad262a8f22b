"""TLS passthrough (TLSRoute) and TCP (TCPRoute) at the ingress gateway, in the session lab, with real
clients from the lab's "outside" netns:

- a TLS listener in mode Passthrough routes by the ClientHello's SNI to a meshed HTTPS server (a pod
  started for this module through the lab's runtime, serving its own certificate): curl verifies
  the *backend's* certificate (the gateway has none) and the server saw the client's SNI; a name no
  TLSRoute serves is closed;
- a TCP listener relays a raw TCP client to echo-v1: the HTTP it carries reaches the app untouched
  (no X-Forwarded-For: the gateway did not parse it);
- both backends are STRICT, and their node's ztunnel logged the connection as inbound HBONE from the
  gateway's identity.

Istio's shape (a networking.istio.io Gateway with a PASSTHROUGH server and a VirtualService `tls`
route) is checked on the same gateway pods. One Gateway for both tests: its pod starts once (about 15 s of the module's ~30 s)."""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambitctl.lab import outside
from ambitctl.lab.runtime import Pod, Runtime
from ambitctl.lab.topology import LabNames
from tests.lab.labctl import Lab

pytestmark = pytest.mark.lab

NS = "demo"
HOST = "secure.example.com"
GW_ID = f"spiffe://cluster.local/ns/{NS}/sa/edge"
GW = "gateway.networking.k8s.io"


def _backend_cert(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA (the client's trust) and the backend's own certificate for HOST, as files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def build(cn: str, k: Any, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backend test CA")]))
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        return b.sign(ca_key, hashes.SHA256())
    paths = tmp / "ca.pem", tmp / "backend.pem", tmp / "backend.key"
    paths[0].write_bytes(build("backend test CA", ca_key, True).public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(build(HOST, key, False).public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def objects() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "secure", "namespace": NS},
         "spec": {"clusterIP": "10.96.0.236", "selector": {"app": "secure"},
                  "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}},
        {"apiVersion": f"{GW}/v1", "kind": "Gateway",
         "metadata": {"name": "edge", "namespace": NS, "annotations": {"lab.ambit.io/node": "node1"}},
         "spec": {"gatewayClassName": "ambit", "infrastructure": {"labels": {"istio": "edge"}}, "listeners": [
             {"name": "pass", "port": 8443, "protocol": "TLS", "hostname": "*.example.com",
              "tls": {"mode": "Passthrough"}},
             {"name": "tcp", "port": 9000, "protocol": "TCP"}]}},
        {"apiVersion": f"{GW}/v1", "kind": "TLSRoute", "metadata": {"name": "secure", "namespace": NS},
         "spec": {"parentRefs": [{"name": "edge"}], "hostnames": [HOST],
                  "rules": [{"backendRefs": [{"name": "secure", "port": 443}]}]}},
        {"apiVersion": f"{GW}/v1alpha2", "kind": "TCPRoute", "metadata": {"name": "raw", "namespace": NS},
         "spec": {"parentRefs": [{"name": "edge", "sectionName": "tcp"}],
                  "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}]}},
        # Istio's shape of the same passthrough, on the same gateway pods (their `istio: edge` label)
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "edge-istio", "namespace": NS},
         "spec": {"selector": {"istio": "edge"}, "servers": [
             {"port": {"number": 9443, "name": "tls", "protocol": "TLS"}, "hosts": [HOST],
              "tls": {"mode": "PASSTHROUGH"}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "secure", "namespace": NS},
         "spec": {"hosts": [HOST], "gateways": ["edge-istio"], "tls": [
             {"match": [{"sniHosts": [HOST]}], "route": [{"destination": {"host": "secure", "port": {"number": 443}}}]}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "edge-strict", "namespace": NS}, "spec": {"mtls": {"mode": "STRICT"}}},
    ]


def _run_outside(lab: Lab, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", outside.netns(LabNames(lab.name)), *argv],
                          capture_output=True, text=True, timeout=40)


_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(sys.stdin.buffer.read())
out = b""
while chunk := s.recv(65536):
    out += chunk
sys.stdout.buffer.write(out)
"""


def _raw_tcp(lab: Lab, ip: str, port: int, data: str) -> str | None:
    """A plain TCP client in the outside netns: send `data`, read until the server closes."""
    p = subprocess.run(["ip", "netns", "exec", outside.netns(LabNames(lab.name)), "python3", "-c", _CLIENT, ip,
                        str(port)], input=data.encode(), capture_output=True, timeout=40)
    out = p.stdout.decode(errors="replace")     # bytes: keep the CRLFs that text mode would fold
    return out if p.returncode == 0 and "\r\n\r\n" in out else None


def _inbound_from_gateway(lab: Lab, node: str, port: int) -> list[dict[str, Any]]:
    return [r for r in lab.access_log(node) if r.get("direction") == "inbound" and r.get("route") == "inbound-hbone"
            and r.get("dst.addr", "").endswith(f":{port}") and r.get("src.identity") == GW_ID]


@pytest.fixture(scope="module")
def edge(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The HTTPS backend pod, the Gateway and its routes: (the gateway's address, the backend's CA)."""
    ca, cert, key = _backend_cert(tmp_path_factory.mktemp("edge"))
    rt = Runtime.for_lab(lab.dir)
    net = rt.nodes["node2"]["pod_cidr"].rsplit(".", 1)[0]
    pod = Pod(name="secure", namespace=NS, node="node2", ip=f"{net}.90", service_account="secure",
              labels={"app": "secure"})
    objs = objects()
    rt.create(pod)
    try:
        rt.start(pod, ["python3", "-m", "ambitctl.lab.apps.external", "--http", "8081", "--https", "8443",
                       "--cert", str(cert), "--key", str(key), "--ca", str(ca)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump_all(objs))

        def programmed() -> str | None:
            st = json.loads(lab.ambit("get", "gateway", "edge", "-n", NS, "-o", "json").stdout).get("status") or {}
            ok = any(c["type"] == "Programmed" and c["status"] == "True" for c in st.get("conditions") or [])
            return st["addresses"][0]["value"] if ok and st.get("addresses") else None
        yield lab.wait_for(programmed, timeout=30, what="the edge Gateway Programmed"), ca
    finally:
        lab.ambit("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(objs), check=False)
        rt.remove(pod)


def test_tls_passthrough_reaches_a_meshed_https_backend_with_its_own_certificate(lab: Lab, edge) -> None:
    ip, ca = edge
    st = json.loads(lab.ambit("get", "gateway", "edge", "-n", NS, "-o", "json").stdout)["status"]
    kinds = {ln["name"]: [k["kind"] for k in ln["supportedKinds"]] for ln in st["listeners"]}
    assert kinds == {"pass": ["TLSRoute"], "tcp": ["TCPRoute"]}
    parents = json.loads(lab.ambit("get", "tlsroute", "secure", "-n", NS, "-o", "json").stdout)["status"]["parents"]
    assert {c["type"]: c["reason"] for c in parents[0]["conditions"]} == {"Accepted": "Accepted",
                                                                          "ResolvedRefs": "ResolvedRefs"}

    def curl(port: int) -> subprocess.CompletedProcess[str]:
        return _run_outside(lab, "curl", "-sS", "-v", "-m", "10", "--cacert", str(ca),
                            "--resolve", f"{HOST}:{port}:{ip}", f"https://{HOST}:{port}/through")
    # 8443: the Gateway API listener and TLSRoute; 9443: Istio's PASSTHROUGH server and tls route
    for port in (8443, 9443):
        p = lab.wait_for(lambda port=port: (r := curl(port)).returncode == 0 and r, timeout=30, interval=0.5,
                         what=f"the backend answering through the passthrough listener on {port}")
        # the backend's certificate (issued by the backend's CA, which the gateway never held)
        assert f"subject: CN={HOST}" in p.stderr and "issuer: CN=backend test CA" in p.stderr, p.stderr
        r = json.loads(p.stdout)
        assert r["tls"] and r["sni"] == HOST and r["path"] == "/through", r
    # into the mesh over HBONE with the gateway's identity (STRICT: nothing else would be let in)
    # (only this module's gateway has the identity `edge`: every such record is this test's)
    lab.wait_for(lambda: _inbound_from_gateway(lab, "node2", 8443) or None, timeout=10,
                 what="node2's ztunnel logging the gateway's HBONE connection")
    # a name no TLSRoute serves: the connection is closed, no TLS session with anyone
    other = _run_outside(lab, "curl", "-sS", "-m", "10", "-k", "--resolve", f"other.example.com:8443:{ip}",
                         "https://other.example.com:8443/")
    assert other.returncode != 0 and not other.stdout


def test_tcp_route_relays_a_raw_tcp_client_to_a_meshed_backend(lab: Lab, edge) -> None:
    ip, _ = edge
    request = "GET /raw HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n"
    p = lab.wait_for(lambda: _raw_tcp(lab, ip, 9000, request), timeout=30, interval=0.5,
                     what="echo answering through the TCP listener")
    body = json.loads(p[p.index("\r\n\r\n") + 4:])
    assert body["pod"] in ("echo-v1", "echo-v2") and body["path"] == "/raw"
    # relayed, not proxied: the gateway added nothing (an HTTP route would add X-Forwarded-For)
    assert "x-forwarded-for" not in body["headers"], body["headers"]
    # echo-v1 is on node1, echo-v2 on node2 (tests/lab/specs/mesh.yaml)
    lab.wait_for(lambda: any(_inbound_from_gateway(lab, n, 8080) for n in ("node1", "node2")) or None,
                 timeout=10, what="echo's ztunnel logging the gateway's HBONE connection")
