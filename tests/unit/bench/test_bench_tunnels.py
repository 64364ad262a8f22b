"""The baselines' PKI and configuration: real certificates in a real mutual-TLS 1.3 handshake."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from bench import tunnels


@pytest.fixture
def pki(tmp_path):
    return tunnels.make_pki(tmp_path, {"client": "bench-plain/client", "server": "bench-plain/server"})


def test_leaves_are_p256_with_one_spiffe_uri_san(pki):
    for label, sa in (("client", "client"), ("server", "server")):
        cert = x509.load_pem_x509_certificate(pki[label].cert.read_bytes())
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://cluster.local/ns/bench-plain/sa/{sa}"]
        assert pki[label].combined.read_bytes().startswith(pki[label].cert.read_bytes())


def test_certificates_work_for_mutual_tls13(pki):
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    srv_ctx.load_cert_chain(pki["server"].cert, pki["server"].key)
    srv_ctx.load_verify_locations(pki["server"].ca)
    srv_ctx.verify_mode = ssl.CERT_REQUIRED
    cli_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cli_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    cli_ctx.check_hostname = False        # SPIFFE identities are URIs, not host names
    cli_ctx.load_cert_chain(pki["client"].cert, pki["client"].key)
    cli_ctx.load_verify_locations(pki["client"].ca)
    a, b = socket.socketpair()
    seen = {}

    def serve():
        with srv_ctx.wrap_socket(a, server_side=True) as s:
            seen["peer"] = s.getpeercert()
            seen["version"] = s.version()
            s.sendall(s.recv(5))

    t = threading.Thread(target=serve)
    t.start()
    with cli_ctx.wrap_socket(b) as c:
        c.sendall(b"hello")
        assert c.recv(5) == b"hello"
        assert c.version() == "TLSv1.3"
    t.join(10)
    assert seen["version"] == "TLSv1.3"
    assert ("URI", "spiffe://cluster.local/ns/bench-plain/sa/client") in seen["peer"]["subjectAltName"]


def test_stunnel_and_haproxy_configs_require_peer_certs_and_tls13(pki, tmp_path):
    routes = [tunnels.Route("http", 2080, 9443, 80)]
    cli = tunnels.stunnel_conf("client", routes, pki["client"], "10.210.2.10", tmp_path / "c.log")
    assert "accept = 127.0.0.1:2080" in cli and "connect = 10.210.2.10:9443" in cli
    assert "verifyChain = yes" in cli and "sslVersionMin = TLSv1.3" in cli and "client = yes" in cli
    srv = tunnels.stunnel_conf("server", routes, pki["server"], "10.210.2.10", tmp_path / "s.log")
    assert "accept = 10.210.2.10:9443" in srv and "connect = 127.0.0.1:80" in srv and "client = no" in srv
    h = tunnels.haproxy_conf("server", routes, pki["server"], "10.210.2.10")
    assert f"bind 10.210.2.10:9443 ssl crt {pki['server'].combined} ca-file {pki['server'].ca} verify required" in h
    assert "ssl-min-ver TLSv1.3" in h and "server app 127.0.0.1:80" in h
    hc = tunnels.haproxy_conf("client", routes, pki["client"], "10.210.2.10")
    assert "server upstream 10.210.2.10:9443 ssl crt" in hc and "verify required" in hc
    with pytest.raises(ValueError, match="side 'middle'"):
        tunnels.stunnel_conf("middle", routes, pki["client"], "x", tmp_path / "l")


def test_bad_identity_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="identity client='client' must be 'namespace/serviceaccount'"):
        tunnels.make_pki(tmp_path, {"client": "client"})
