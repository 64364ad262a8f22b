"""The ingress gateway in a running lab, through the real CLI and real curl from the lab's "outside"
netns (not in the mesh, on the underlay): a Gateway of class `ambit` with an HTTP listener and two
HTTPS listeners on one port (one certificate each, chosen by SNI), an HTTPRoute with a header match,
a STRICT namespace whose backend admits only the gateway's identity, a browser app on another
origin (headless Chromium) whose preflighted fetch the route's CORS filter lets through, and the
underlay seen by tcpdump: TLS from the client to the gateway, HBONE mutual TLS from the gateway to the pod, nothing
in clear.

One test, one Gateway: the gateway pod starts once (about 15 s of the test's ~35 s)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambitctl.lab import outside
from ambitctl.lab.topology import LabNames
from tests.lab.labctl import Lab
from tests.lab.test_mtls import tshark_handshakes, underlay_capture

pytestmark = pytest.mark.lab

NS = "demo"
HOSTS = ("a.example.com", "b.example.com")
BROWSER = Path(__file__).with_name("browser_cors.py")
APP_PORT, OTHER_APP_PORT = 8099, 8098     # pages served in the outside netns: two origins


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, key: Any, signer: Any, ca: bool, san: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return b.sign(signer, hashes.SHA256())


def _pem(c: x509.Certificate) -> str:
    return c.public_bytes(serialization.Encoding.PEM).decode()


def test_ca(tmp_path: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A CA file for curl and one kubernetes.io/tls Secret per hostname, signed by it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ingress test CA", "ingress test CA", ca_key, ca_key, True)
    (tmp_path / "ca.pem").write_text(_pem(ca))
    secrets = {}
    for h in HOSTS:
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        secrets[h] = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                      "metadata": {"name": f"cert-{h.split('.')[0]}", "namespace": NS},
                      "stringData": {"tls.crt": _pem(_cert(h, "ingress test CA", key, ca_key, False, h)),
                                     "tls.key": key_pem}}
    return tmp_path / "ca.pem", secrets


test_ca.__test__ = False    # type: ignore[attr-defined]   # a helper, not a test


def objects(secrets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    https = [{"name": f"https-{h.split('.')[0]}", "port": 443, "protocol": "HTTPS", "hostname": h,
              "tls": {"certificateRefs": [{"name": secrets[h]["metadata"]["name"]}]}} for h in HOSTS]
    svc = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"echo-{v}", "namespace": NS},
            "spec": {"clusterIP": ip, "selector": {"app": "echo", "version": v},
                     "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}
           for v, ip in (("v1", "10.96.0.231"), ("v2", "10.96.0.232"))]
    return [*secrets.values(), *svc,
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": "ingress", "namespace": NS, "annotations": {"lab.ambit.io/node": "node1"}},
             "spec": {"gatewayClassName": "ambit",
                      "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}, *https]}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "echo", "namespace": NS},
             "spec": {"parentRefs": [{"name": "ingress"}], "hostnames": list(HOSTS),
                      "rules": [{"matches": [{"headers": [{"name": "x-version", "value": "v2"}]}],
                                 "backendRefs": [{"name": "echo-v2", "port": 8080}]},
                                {"backendRefs": [{"name": "echo-v1", "port": 8080}],
                                 # the browser app's origin (browser_cors.py); requests without one are untouched
                                 "filters": [{"type": "CORS", "cors": {
                                     "allowOrigins": [f"http://localhost:{APP_PORT}"], "allowMethods": ["PUT"],
                                     "allowHeaders": ["x-token"]}}]}]}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "elsewhere", "namespace": NS},
             "spec": {"parentRefs": [{"name": "ingress", "sectionName": "https-a"}], "hostnames": ["c.example.org"],
                      "rules": [{"backendRefs": [{"name": "echo-v1", "port": 8080}]}]}}]


def strict_and_only_the_gateway() -> list[dict[str, Any]]:
    return [{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
             "metadata": {"name": "ingress-strict", "namespace": NS}, "spec": {"mtls": {"mode": "STRICT"}}},
            {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
             "metadata": {"name": "ingress-only", "namespace": NS},
             "spec": {"selector": {"matchLabels": {"app": "echo", "version": "v2"}},
                      "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{NS}/sa/ingress"]}}]}]}}]


def outside_curl(lab: Lab, url: str, *opts: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", outside.netns(LabNames(lab.name)), "curl", "-sS", "-m", "10",
                           *opts, url], capture_output=True, text=True, timeout=40)


def tls_protocols(pcap: Path, src: str, dst: str, port: int) -> list[str]:
    """What tshark dissects each data segment from src to dst:port as ("TLSv1.3", ...). Records, not
    ClientHellos: the gateway's HBONE connection may have been opened (and pooled) before the capture."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},tls", "-Y",
                          f"ip.src=={src} && ip.dst=={dst} && tcp.dstport=={port} && tcp.len > 0 "
                          "&& !tcp.analysis.retransmission", "-T", "fields", "-e", "_ws.col.Protocol"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _get(lab: Lab, kind: str, name: str) -> dict[str, Any]:
    return json.loads(lab.ambit("get", kind, name, "-n", NS, "-o", "json").stdout)


def _cond(conds: list[dict[str, Any]], type_: str) -> tuple[str, str]:
    c = next((c for c in conds if c["type"] == type_), {})
    return c.get("status", ""), c.get("reason", "")


def test_outside_client_reaches_mesh_services_through_the_ingress_gateway(lab: Lab, tmp_path: Path) -> None:
    ca, secrets = test_ca(tmp_path)
    objs = objects(secrets)
    policy = strict_and_only_the_gateway()
    try:
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump_all(objs))

        # status: the Gateway is Programmed at the address of its LoadBalancer Service (the pod's)
        def programmed() -> str | None:
            st = _get(lab, "gateway", "ingress").get("status") or {}
            addrs = [a["value"] for a in st.get("addresses") or []]
            return addrs[0] if _cond(st.get("conditions") or [], "Programmed")[0] == "True" and addrs else None
        ip = lab.wait_for(programmed, timeout=30, what="the ingress Gateway Programmed")
        st = _get(lab, "gateway", "ingress")["status"]
        assert {ln["name"]: ln["attachedRoutes"] for ln in st["listeners"]} == {
            "http": 1, "https-a": 1, "https-b": 1}
        assert all(_cond(ln["conditions"], "ResolvedRefs") == ("True", "ResolvedRefs") for ln in st["listeners"])
        parents = _get(lab, "httproute", "echo")["status"]["parents"]
        assert [_cond(p["conditions"], "Accepted") for p in parents] == [("True", "Accepted")]
        other = _get(lab, "httproute", "elsewhere")["status"]["parents"]
        assert _cond(other[0]["conditions"], "Accepted") == ("False", "NoMatchingListenerHostname")

        client_ip = outside.address({"underlay_cidr": lab.status()["underlay"]["cidr"]})
        resolve = [a for h in HOSTS for port in (80, 443) for a in ("--resolve", f"{h}:{port}:{ip}")]
        # HTTP listener, and the gateway is serving (its listeners open once its config arrived)
        lab.wait_for(lambda: outside_curl(lab, f"http://{HOSTS[0]}/", *resolve).returncode == 0, timeout=20,
                     what="the ingress answering on port 80")
        # a browser app on another origin (Chromium, headless, in the outside netns): its PUT with a
        # custom header needs a preflight, which the gateway answers from the route's CORS filter
        # (the echo app has no OPTIONS: it would answer 501); a page on an origin the filter does not
        # allow gets the browser's CORS refusal
        p = subprocess.run(["ip", "netns", "exec", outside.netns(LabNames(lab.name)), sys.executable, str(BROWSER),
                            f"http://{HOSTS[0]}/api", HOSTS[0], ip, str(APP_PORT), str(OTHER_APP_PORT)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        fetched = json.loads(p.stdout.splitlines()[-1])
        allowed, refused = fetched[str(APP_PORT)], fetched[str(OTHER_APP_PORT)]
        assert allowed.get("status") == 200, fetched
        assert (json.loads(allowed["body"])["method"], json.loads(allowed["body"])["path"]) == ("PUT", "/api")
        assert "Failed to fetch" in refused.get("error", ""), fetched
        # HTTPS: SNI chooses each hostname's own certificate, which curl verifies against the test CA
        # (HTTP/1.1 and HTTP/2; headers only a proxy may set, forged by the client, do not pass)
        forged = ["-H", "x-forwarded-proto: http", "-H", "x-forwarded-client-cert: By=spiffe://x;URI=spiffe://y",
                  "-H", "x-envoy-retry-on: 5xx"]
        for h, version in zip(HOSTS, ("--http1.1", "--http2"), strict=False):
            p = outside_curl(lab, f"https://{h}/hello", "-v", version, "--cacert", str(ca), *forged, *resolve)
            assert p.returncode == 0, p.stderr
            assert f"subject: CN={h}" in p.stderr, p.stderr
            r = json.loads(p.stdout)
            assert r["pod"] == "echo-v1" and r["path"] == "/hello"
            # the app sees the gateway's address; the client's is in X-Forwarded-For
            assert r["headers"]["x-forwarded-for"] == client_ip
            assert r["headers"]["x-forwarded-proto"] == "https", (version, r["headers"])
            assert not {"x-forwarded-client-cert", "x-envoy-retry-on"} & set(r["headers"]), r["headers"]
        # a hostname no listener serves: no certificate, the handshake is refused
        p = outside_curl(lab, "https://c.example.org/", "--cacert", str(ca), "--resolve", f"c.example.org:443:{ip}")
        assert p.returncode != 0
        # domain fronting: SNI a.example.com (its certificate, its listener) but the Host of listener
        # https-b is misdirected (Gateway API Listener.hostname: 421), in HTTP/1.1 and HTTP/2 alike;
        # a Host no listener serves is 404; SNI and Host agreeing still reach echo
        for version in ("--http1.1", "--http2"):
            p = outside_curl(lab, f"https://{HOSTS[0]}/", version, "--cacert", str(ca), "-H", f"Host: {HOSTS[1]}",
                             "-o", "/dev/null", "-w", "%{http_code} %{http_version}", *resolve)
            assert p.stdout in ("421 1.1", "421 2"), (version, p.stdout, p.stderr)
            p = outside_curl(lab, f"https://{HOSTS[0]}/", version, "--cacert", str(ca), "-H", "Host: nope.example.net",
                             "-o", "/dev/null", "-w", "%{http_code}", *resolve)
            assert p.stdout == "404", (version, p.stdout, p.stderr)
            p = outside_curl(lab, f"https://{HOSTS[1]}/", version, "--cacert", str(ca), "-o", "/dev/null",
                             "-w", "%{http_code}", *resolve)
            assert p.stdout == "200", (version, p.stdout, p.stderr)
        # a Host no route serves: 404 from the gateway
        p = outside_curl(lab, "http://nope.example.net/", "-o", "/dev/null", "-w", "%{http_code}",
                         "--resolve", f"nope.example.net:80:{ip}")
        assert p.stdout == "404"

        # STRICT, and echo-v2 admits the gateway's identity only: the gateway's HBONE mTLS gets in,
        # a meshed client of another identity does not. The gateway's first request to echo-v2 (the
        # HTTPRoute's header match) is the one captured, so its HBONE handshake is on the wire.
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump_all(policy))
        lab.wait_for(lambda: lab.curl_rc("demo/client", f"http://{lab.pod('demo/echo-v2')['ip']}:8080/") != 0,
                     timeout=20, what="the policy denying demo/client")
        secret = f"ingress-secret-{uuid.uuid4().hex}"
        pcap = tmp_path / "underlay.pcap"
        with underlay_capture(lab, pcap):
            p = outside_curl(lab, f"https://{HOSTS[1]}/", "--cacert", str(ca), "-H", "x-version: v2",
                             "-H", f"x-marker: {secret}", *resolve)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert r["pod"] == "echo-v2" and r["headers"]["x-marker"] == secret
        # every hop on the underlay is TLS: client -> gateway :443, gateway -> echo-v2's ztunnel :15008
        raw = pcap.read_bytes()
        assert secret.encode() not in raw and b'"pod": "echo-v2"' not in raw
        hs = tshark_handshakes(pcap)
        assert any(h[1] == ip and h[2] == "443" and h[3] == "1" for h in hs), hs
        assert any(h[0] == ip and h[3] == "2" and h[4] == "0x0304" for h in hs), f"TLS 1.3 to the client: {hs}"
        v2 = lab.pod("demo/echo-v2")["ip"]
        hbone = tls_protocols(pcap, ip, v2, 15008)
        assert hbone and all(p.startswith("TLS") for p in hbone), hbone
    finally:
        lab.ambit("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(policy + objs), check=False)
