"""BackendTLSPolicy on the wire: the real translation of a ServiceEntry, a waypoint Gateway, a
ConfigMap CA and a BackendTLSPolicy, applied to a real `WaypointProxy` behind the engine on
loopback; curl speaks plain HTTP to it, and the endpoint is a Python TLS server with a test CA
that reports the SNI it was asked for.

- the waypoint originates TLS with SNI = `hostname`, verified against the ConfigMap's `ca.crt`;
- a server the ConfigMap's CA did not sign, a certificate naming none of `subjectAltNames`, or a
  CA reference that does not resolve: 503 with `UF`, never plaintext;
- `subjectAltNames` (a URI SAN here) is checked instead of the hostname.

Before, the policy was refused as a kind and nothing originated TLS for it."""

from __future__ import annotations

import datetime
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambit.configclient import ConfigUpdate
from ambit.model import Service, WaypointRoutes
from controller.translate import translate
from tests.support.testca import make_ca, pem
from tests.unit.waypoint.harness import Proxy
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.request import Downstream
from waypoint.settings import load

pytestmark = pytest.mark.timeout(60)

HOST = "api.example.com"
SPIFFE = "spiffe://external.example/api"
NS = "demo"
Obj = dict[str, Any]


class TlsOrigin:
    """HTTPS on 127.0.0.1 with a certificate for HOST and SPIFFE from its own CA; it records the
    SNI of each handshake and counts the handshakes that failed."""

    def __init__(self, tmp: Path) -> None:
        self.ca, ca_key = make_ca("origin-ca")
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
                .issuer_name(self.ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST),
                                                            x509.UniformResourceIdentifier(SPIFFE)]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        (tmp / "origin.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        (tmp / "origin.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp / "origin.crt", tmp / "origin.key")
        self.sni: list[str | None] = []
        ctx.sni_callback = lambda sock, name, c: self.sni.append(name)
        self.ctx = ctx          # (a test may ask for client certificates: verify_mode, load_verify_locations)
        self.failed_handshakes = 0

        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                tls = isinstance(self.connection, ssl.SSLSocket)
                peer = self.connection.getpeercert() if tls else None      # type: ignore[attr-defined]
                client = dict(x[0] for x in peer["subject"]).get("commonName") if peer else None
                body = json.dumps({"tls": tls, "client": client}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):  # type: ignore[no-untyped-def]
                sock, addr = self.socket.accept()
                try:
                    return ctx.wrap_socket(sock, server_side=True), addr
                except (ssl.SSLError, OSError):
                    origin.failed_handshakes += 1     # a handshake that failed (or no TLS at all)
                    sock.close()
                    raise

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def origin(tmp_path: Path) -> Iterator[TlsOrigin]:
    o = TlsOrigin(tmp_path)
    yield o
    o.close()


def objects(port: int, ca: str | None, **validation: Any) -> list[Obj]:
    out: list[Obj] = [
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
         "metadata": {"name": "api", "namespace": NS, "labels": {"istio.io/use-waypoint": "egress"}},
         "spec": {"hosts": [HOST], "addresses": ["240.240.0.1"], "resolution": "STATIC",
                  "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": port}],
                  "endpoints": [{"address": "127.0.0.1"}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "egress", "namespace": NS},
         "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008,
                                                                       "protocol": "HBONE"}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
         "metadata": {"name": "api-tls", "namespace": NS},
         "spec": {"targetRefs": [{"group": "networking.istio.io", "kind": "ServiceEntry", "name": "api"}],
                  "validation": {"hostname": HOST, "caCertificateRefs": [{"group": "", "kind": "ConfigMap",
                                                                         "name": "api-ca"}], **validation}}},
    ]
    if ca is not None:
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "api-ca", "namespace": NS},
                    "data": {"ca.crt": ca}})
    return out


class Wire:
    """The translation of `objs` in a waypoint demo/egress, curl in front."""

    def __init__(self, objs: list[Obj]) -> None:
        tr = translate(objs)
        assert not tr.errors, tr.errors
        cfg = WaypointConfig(Waypoint(NS, "egress"), "cluster.local")
        for t, items in ((Service.TYPE, tr.services), (WaypointRoutes.TYPE, tr.waypoint_routes)):
            cfg.apply(ConfigUpdate(t, "1", {}, frozenset(), {r.resource_name: r for r in items}))
        s = load(["--waypoint", f"{NS}/egress", "--pod-name", "egress-0", "--node", "node1"])
        self.waypoint = WaypointProxy(s, cfg, None)
        self.proxy = Proxy(self.waypoint.decide, upstream=self.waypoint.upstream,
                           downstream=Downstream(source_ip="127.0.0.1", destination_ip="240.240.0.1",
                                                 destination_port=80, service=f"{NS}/{HOST}", hostname=HOST))

    def get(self) -> tuple[int, str, str]:
        """(status, body, the access log's response flags) of one plain-HTTP request."""
        r = subprocess.run(["curl", "-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}", "-H", f"Host: {HOST}",
                            f"http://127.0.0.1:{self.proxy.port}/"], capture_output=True, text=True, timeout=20)
        body, _, code = r.stdout.rpartition("\n")
        rec = self.proxy.wait_records(1)[-1]
        return int(code), body, rec.response_flags

    def close(self) -> None:
        self.proxy.close()


def run(objs: list[Obj], make: type[Wire] = Wire) -> tuple[int, str, str]:
    """One request through a fresh `make(objs)` (a Wire, or a test's own kind of one)."""
    w = make(objs)
    try:
        return w.get()
    finally:
        w.close()


def test_tls_is_originated_with_the_hostname_as_sni_and_verified_against_the_configmap(origin: TlsOrigin) -> None:
    status, body, _ = run(objects(origin.port, pem(origin.ca)))
    assert status == 200, body
    assert json.loads(body)["tls"] is True
    assert origin.sni == [HOST]


def test_a_server_the_configmaps_ca_did_not_sign_gets_503_uf(origin: TlsOrigin) -> None:
    other, _ = make_ca("another-ca")
    status, _, flags = run(objects(origin.port, pem(other)))
    assert status == 503 and "UF" in flags.split(","), flags      # (retried: UF,URX)
    assert set(origin.sni) == {HOST}, "TLS was attempted (and refused), not plaintext"


def test_subject_alt_names_are_checked_instead_of_the_hostname(origin: TlsOrigin) -> None:
    """hostname is only the SNI once subjectAltNames is set: a URI SAN the certificate carries
    passes although it does not name the SNI; a SAN it does not carry fails, although it names
    the hostname."""
    status, body, _ = run(objects(origin.port, pem(origin.ca), hostname="edge.example.com",
                                  subjectAltNames=[{"type": "URI", "uri": SPIFFE}]))
    assert status == 200, body
    assert origin.sni == ["edge.example.com"]
    status, _, flags = run(objects(origin.port, pem(origin.ca),
                                   subjectAltNames=[{"type": "Hostname", "hostname": "other.example.com"}]))
    assert status == 503 and "UF" in flags.split(","), flags


def test_a_ca_reference_that_does_not_resolve_fails_closed(origin: TlsOrigin) -> None:
    """Gateway API: connections using an invalid CACertificateRef must fail with a 5xx. Never
    plaintext, nor the system roots."""
    status, _, flags = run(objects(origin.port, None))
    assert status == 503 and "UF" in flags.split(","), flags
    assert origin.failed_handshakes >= 1 and set(origin.sni) == {HOST}


def test_a_bundle_with_non_ascii_comments_is_trusted(origin: TlsOrigin) -> None:
    """A ca.crt with text outside its PEM blocks that is not ASCII, as curl's and Mozilla's
    cacert.pem have ("NetLock Arany (Class Gold) Főtanúsítvány"): the controller accepts it, as
    Envoy reads it. Before, the waypoint handed it to OpenSSL as a str, which must be ASCII: every
    request raised a TypeError in the request path instead of reaching the origin."""
    bundle = "## Certificate data from Mozilla\n\nNetLock Arany (Class Gold) Főtanúsítvány\n" + pem(origin.ca)
    status, body, _ = run(objects(origin.port, bundle))
    assert status == 200, body
    assert json.loads(body)["tls"] is True
