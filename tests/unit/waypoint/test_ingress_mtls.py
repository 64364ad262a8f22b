"""Mutual TLS at the ingress gateway (Istio Gateway `tls.mode` MUTUAL and OPTIONAL_MUTUAL), on the
wire: the gateway's real HTTPS listeners on loopback, its real decision, the engine, curl with and
without client certificates, and an origin that echoes the headers it got.

Why the checks are where they are: OpenSSL takes the decision to ask for a client certificate from
the context a handshake starts with, before SNI picks the listener, and the SNI callback swaps only
certificates and CA stores. A MUTUAL listener on such a port asked nobody for a certificate, so it
would have served everyone (tried: the swapped context's verify mode is ignored)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambit.configclient import ConfigUpdate
from ambit.model import HttpRoute, IngressGateway, IngressListener, RouteDestination, WaypointRoutes
from tests.unit.waypoint.harness import Origin
from tests.unit.waypoint.test_ingress import _free_port, _issue, _no_relay
from waypoint.http.engine import Engine, UpstreamTarget
from waypoint.http.plug import connect_tcp
from waypoint.http.settings import HttpSettings
from waypoint.ingress_listen import IngressListeners

pytestmark = pytest.mark.timeout(60)
PARTNER = "spiffe://partner.example/app"
# "crafted": a certificate the client CA signed whose strings hold CR/LF (a CA that signs what its
# requesters put in the subject does), each followed by a header line of the holder's choosing
CRAFTED_CN = "crafted\r\nx-injected-cn: 1"
CRAFTED_URI = "spiffe://partner.example/app\r\nx-injected-uri: 1"
CRAFTED_DNS = "crafted.example\r\nx-injected-dns: 1"


def _client_pki(tmp: Path) -> tuple[str, dict[str, tuple[Path, Path]]]:
    """A client CA (PEM) and client certificates: "partner" (URI SAN `PARTNER`), "other" (another
    URI, same CA) and "stranger" (signed by another CA), each as (cert file, key file)."""
    now = datetime.datetime.now(datetime.UTC)

    def make(cn: str, key, issuer: str, signer, ca: bool, uri: str = "", dns: str = "") -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if uri:
            names = [x509.UniformResourceIdentifier(uri), *([x509.DNSName(dns)] if dns else [])]
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return b.sign(signer, hashes.SHA256())
    ca_key, other_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = make("client-ca", ca_key, "client-ca", ca_key, True)
    out = {}
    for name, uri, issuer, signer in (("partner", PARTNER, "client-ca", ca_key),
                                      ("other", "spiffe://other.example/app", "client-ca", ca_key),
                                      ("stranger", PARTNER, "rogue-ca", other_ca_key),
                                      ("crafted", CRAFTED_URI, "client-ca", ca_key)):
        k = ec.generate_private_key(ec.SECP256R1())
        cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
        cn, dns = (CRAFTED_CN, CRAFTED_DNS) if name == "crafted" else (name, "")
        cert.write_bytes(make(cn, k, issuer, signer, False, uri, dns).public_bytes(serialization.Encoding.PEM))
        key.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        out[name] = (cert, key)
    return ca.public_bytes(serialization.Encoding.PEM).decode(), out


HOSTS = ("mtls.example.com", "optional.example.com", "plain.example.com", "other-ca.example.com")


def _gateway(port: int, certs, client_ca: str, mutual: bool = True, other_ca: str = "") -> IngressGateway:
    echo = RouteDestination("echo.demo.svc.cluster.local", "demo/echo", port=8080)

    def ln(host: str, auth: str, sans: list[str], ca: str = client_ca) -> IngressListener:
        return IngressListener(host, port, "HTTPS", host, "", [certs[host]],
                               [WaypointRoutes(host, http=[HttpRoute(source="VirtualService/demo/echo",
                                                                     destinations=[echo])])],
                               client_auth=auth, client_ca_pem=ca if auth else "", client_sans=sans)
    return IngressGateway("gw", "demo", listeners=[ln(HOSTS[0], "required" if mutual else "", [PARTNER] if mutual else []),
                                                   ln(HOSTS[1], "optional" if mutual else "", []),
                                                   ln(HOSTS[2], "", []),
                                                   ln(HOSTS[3], "required" if mutual else "", [], ca=other_ca)])


async def _curl(port: int, ca: Path, host: str, *args: str) -> tuple[int, dict[str, str]]:
    """(exit code, the headers the origin got)."""
    p = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-m", "10", "--cacert", str(ca), "--resolve", f"{host}:{port}:127.0.0.1",
        "-H", "x-forwarded-client-cert: By=spiffe://forged;URI=spiffe://cluster.local/ns/prod/sa/admin",
        *args, f"https://{host}:{port}/", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await p.communicate()
    return p.returncode or 0, dict(json.loads(out)["headers"]) if p.returncode == 0 else {}


def _resumed_elsewhere(port: int, ca: Path, client: tuple[Path, Path]) -> bool:
    """Python's TLS client: a full handshake on HOSTS[0] with the partner's certificate, then its
    session offered to HOSTS[3]. True when HOSTS[3] served a request on it."""
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(client[0]), str(client[1]))
    session = None
    for host in (HOSTS[0], HOSTS[3]):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname=host, session=session) as s:
                s.sendall(f"GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
                got = s.recv(65536)
                session = s.session
                if host == HOSTS[3]:
                    return got.startswith(b"HTTP/1.1 200")
        except (ssl.SSLError, OSError):
            if host == HOSTS[3]:
                return False
            raise
    return False


class _Bench:
    """The ingress gateway under test on a loopback port: its config, proxy and engine, an origin
    echoing headers, the servers' certificates (`ca` signs them) and the client PKI."""

    def __init__(self, tmp: Path):
        from waypoint.authz import Waypoint
        from waypoint.config import WaypointConfig
        self.origin = Origin()
        self.ca, self.certs = _issue(tmp, HOSTS)
        self.client_ca, self.clients = _client_pki(tmp)
        self.port = _free_port()
        self.cfg = WaypointConfig(Waypoint("demo", "gw"), "cluster.local")
        self.proxy = None

    def apply(self, gw: IngressGateway, version: str) -> None:
        from waypoint.app import WaypointProxy
        from waypoint.settings import load
        self.cfg.apply(ConfigUpdate(IngressGateway.TYPE, version, {}, frozenset(), {gw.resource_name: gw}))
        if self.proxy is None:
            self.proxy = WaypointProxy(load(["--waypoint", "demo/gw", "--pod-name", "gw-0", "--node", "node1",
                                             "--gateway-class", "ambit"]), self.cfg, None)

    def cert(self, name: str) -> tuple[str, ...]:
        return ("--cert", str(self.clients[name][0]), "--key", str(self.clients[name][1]))

    def upstream(self, fwd, head, down, exclude=frozenset()) -> UpstreamTarget:
        port = self.origin.port
        return UpstreamTarget(key="origin", address=f"127.0.0.1:{port}", connect=lambda: connect_tcp("127.0.0.1", port, 5))

    def run(self, body: Callable[[IngressListeners], Awaitable[None]]) -> None:
        """Serve the config applied so far and run `body` against it."""
        async def main() -> None:
            engine = Engine(HttpSettings(), self.proxy.decide, self.upstream)
            self.proxy.ingress = listeners = IngressListeners("127.0.0.1", engine.serve, _no_relay)
            await listeners.update(self.cfg.view.ingress)
            try:
                await body(listeners)
            finally:
                await listeners.close()
                await engine.shutdown()
        try:
            asyncio.run(main())
        finally:
            self.origin.close()


def test_mutual_tls_listeners_verify_client_certificates_and_set_xfcc(tmp_path: Path) -> None:
    b = _Bench(tmp_path)
    ca, certs, client_ca, clients, port, cert = b.ca, b.certs, b.client_ca, b.clients, b.port, b.cert
    (tmp_path / "other").mkdir()
    other_ca, _ = _client_pki(tmp_path / "other")
    b.apply(_gateway(port, certs, client_ca, mutual=False), "1")

    async def main(listeners: IngressListeners) -> None:
        # control: before the listener asks for client certificates, a client without one is served
        rc, _ = await _curl(port, ca, HOSTS[0])
        assert rc == 0
        # the same open port, now MUTUAL on one host and OPTIONAL_MUTUAL on another
        b.apply(_gateway(port, certs, client_ca, other_ca=other_ca), "2")
        await listeners.update(b.cfg.view.ingress)
        rc, _ = await _curl(port, ca, HOSTS[0])
        assert rc != 0, "MUTUAL served a client without a certificate"
        rc, got = await _curl(port, ca, HOSTS[0], *cert("partner"))
        assert rc == 0
        der = x509.load_pem_x509_certificate(clients["partner"][0].read_bytes()).public_bytes(
            serialization.Encoding.DER)
        assert got["x-forwarded-client-cert"] == (f"Hash={hashlib.sha256(der).hexdigest()};"
                                                  f'Subject="CN=partner";URI={PARTNER}'), got
        rc, _ = await _curl(port, ca, HOSTS[0], *cert("other"))
        assert rc != 0, "a certificate without the subjectAltName asked for was served"
        rc, _ = await _curl(port, ca, HOSTS[0], *cert("stranger"))
        assert rc != 0, "a certificate from another CA was served"
        # OPTIONAL_MUTUAL: no certificate served (and no forged XFCC passes), a valid one named
        rc, got = await _curl(port, ca, HOSTS[1])
        assert rc == 0 and "x-forwarded-client-cert" not in got, got
        rc, got = await _curl(port, ca, HOSTS[1], *cert("other"))
        assert rc == 0 and got["x-forwarded-client-cert"].endswith("URI=spiffe://other.example/app")
        rc, _ = await _curl(port, ca, HOSTS[1], *cert("stranger"))
        assert rc != 0, "OPTIONAL_MUTUAL served an invalid certificate"
        # a plain host on the same port still serves clients without a certificate
        rc, got = await _curl(port, ca, HOSTS[2])
        assert rc == 0 and "x-forwarded-client-cert" not in got
        # a listener with another client CA: the partner's certificate is refused, and so is a
        # session the partner resumes from the first listener (sessions belong to the port)
        rc, _ = await _curl(port, ca, HOSTS[3], *cert("partner"))
        assert rc != 0
        assert await asyncio.to_thread(_resumed_elsewhere, port, ca, clients["partner"]) is False

    b.run(main)


def _gateway_api(port: int, certs, client_ca: str) -> IngressGateway:
    """A Gateway API ingress Gateway whose `spec.tls.frontend` names a ConfigMap holding the client
    CA, through the controller's real validation and translation: what the gateway pods receive."""
    from controller.translate import translate
    host = HOSTS[0]
    objs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "demo"},
         "spec": {"clusterIP": "10.96.0.50", "selector": {"app": "echo"}, "ports": [{"port": 8080}]}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": "cert", "namespace": "demo"},
         "stringData": {"tls.crt": certs[host].cert_pem, "tls.key": certs[host].key_pem}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "client-ca", "namespace": "demo"},
         "data": {"ca.crt": client_ca}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "demo"},
         "spec": {"gatewayClassName": "ambit",
                  "listeners": [{"name": "https", "port": port, "protocol": "HTTPS", "hostname": host,
                                 "tls": {"certificateRefs": [{"name": "cert"}]}}],
                  "tls": {"frontend": {"default": {"validation": {
                      "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "client-ca"}]}}}}}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "echo", "namespace": "demo"},
         "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}]}},
    ]
    tr = translate(objs)
    assert not tr.errors, tr.errors
    (gw,) = tr.ingress.gateways
    return gw


def test_gateway_api_frontend_validation_verifies_client_certificates(tmp_path: Path) -> None:
    """Gateway API `spec.tls.frontend` (AllowValidOnly, a ConfigMap's ca.crt) on the wire: no
    certificate and a certificate from another CA are refused in the handshake, one the
    ConfigMap's CA signed is served and named to the backend in XFCC."""
    b = _Bench(tmp_path)
    b.apply(_gateway_api(b.port, b.certs, b.client_ca), "1")

    async def main(listeners: IngressListeners) -> None:
        rc, _ = await _curl(b.port, b.ca, HOSTS[0])
        assert rc != 0, "AllowValidOnly served a client without a certificate"
        rc, _ = await _curl(b.port, b.ca, HOSTS[0], *b.cert("stranger"))
        assert rc != 0, "a certificate from a CA the ConfigMap does not hold was served"
        rc, got = await _curl(b.port, b.ca, HOSTS[0], *b.cert("partner"))
        assert rc == 0
        assert got["x-forwarded-client-cert"].endswith(f"URI={PARTNER}"), got

    b.run(main)


def test_a_client_certificate_with_control_characters_injects_no_header_into_xfcc(tmp_path: Path) -> None:
    """A verified client certificate's subject, URI and DNS names go into x-forwarded-client-cert,
    and a CA may sign a name holding CR/LF: written as they are, they ended the header line and the
    rest reached the backend as headers of the holder's choosing (`x-injected-cn: 1`). They are
    escaped as OpenSSL's RFC 2253 printing escapes them (`\\0D\\0A`; percent-encoded in a URI):
    the backend gets one XFCC header and nothing else of the certificate's."""
    b = _Bench(tmp_path)
    b.apply(_gateway(b.port, b.certs, b.client_ca, other_ca=b.client_ca), "1")

    async def main(listeners: IngressListeners) -> None:
        rc, got = await _curl(b.port, b.ca, HOSTS[1], *b.cert("crafted"))      # OPTIONAL_MUTUAL: any SAN
        assert rc == 0
        assert not [k for k in got if k.startswith("x-injected")], got
        xfcc = got["x-forwarded-client-cert"]
        assert ('Subject="CN=crafted\\\\0D\\\\0Ax-injected-cn: 1";'
                "URI=spiffe://partner.example/app%0D%0Ax-injected-uri: 1;"
                "DNS=crafted.example\\0D\\0Ax-injected-dns: 1") in xfcc, xfcc

    b.run(main)
