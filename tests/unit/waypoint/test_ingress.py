"""The ingress gateway's data plane: which listener a TLS client's SNI selects and which virtual host
a Host selects (waypoint/ingress.py, pure), and the listeners themselves over loopback with real TLS
clients (waypoint/ingress_listen.py): each hostname gets its own certificate, a name no listener
serves is refused, a listener's minimum TLS version holds, and a config update swaps certificates
and closes ports no longer configured."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambit.model import HttpRoute, IngressGateway, IngressListener, TlsCertificate, WaypointRoutes
from waypoint.ingress import build, host_match
from waypoint.ingress_listen import IngressListeners


@pytest.mark.parametrize(("name", "want"), [
    ("a.example.com", "a.example.com"),
    ("A.Example.com.", "a.example.com"),
    ("x.a.example.com", "*.a.example.com"),      # the longest wildcard wins
    ("x.example.com", "*.example.com"),
    ("example.com", "*"),                          # a wildcard needs one more label
    ("other.org", "*"),
])
def test_host_match(name: str, want: str) -> None:
    assert host_match(["*", "*.example.com", "a.example.com", "*.a.example.com"], name) == want
    assert host_match(["a.example.com"], "b.example.com") is None


def _listener(name: str, hostname: str, port: int = 443, protocol: str = "HTTPS", certs=(), minimum: str = "",
              hosts=("*",)) -> IngressListener:
    return IngressListener(name, port, protocol, hostname, minimum, list(certs),
                           [WaypointRoutes(h, http=[HttpRoute(source=f"HTTPRoute/ns/{name}")]) for h in hosts])


def test_ports_sni_and_virtual_hosts() -> None:
    gw = IngressGateway("gw", "ns", listeners=[
        _listener("a", "a.example.com", hosts=["a.example.com"]),
        _listener("wild", "*.example.com", hosts=["*.example.com"]),
        _listener("http", "", port=80, protocol="HTTP", hosts=["a.example.com", "*"]),
        _listener("clash", "", port=80, protocol="HTTPS")])
    view = build(gw)
    tls, plain = view.ports[443], view.ports[80]
    assert tls.listener_for_sni("a.example.com").name == "a"
    assert tls.listener_for_sni("b.example.com").name == "wild"
    assert tls.listener_for_sni("example.org") is None and tls.listener_for_sni(None) is None
    assert tls.virtual_host("b.example.com:443") is None or tls.virtual_host("b.example.com") == "*.example.com"
    assert plain.virtual_host("a.example.com") == "a.example.com" and plain.virtual_host("x.org") == "*"
    assert plain.conflicts == ("clash",) and plain.protocol == "HTTP"
    assert build(None).ports == {}


# -- real listeners ---------------------------------------------------------------------------------

def _issue(tmp: Path, hosts: tuple[str, ...]) -> tuple[Path, dict[str, TlsCertificate]]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)

    def cert(cn: str, key, signer, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        return b.sign(signer, hashes.SHA256())
    ca = cert("ca", ca_key, ca_key, True)
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out = {}
    for h in hosts:
        k = ec.generate_private_key(ec.SECP256R1())
        out[h] = TlsCertificate(h, cert(h, k, ca_key, False).public_bytes(serialization.Encoding.PEM).decode(),
                                k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()).decode())
    return tmp / "ca.pem", out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _handshake(port: int, ca: Path, sni: str, maximum: ssl.TLSVersion | None = None) -> tuple[str, bytes]:
    """(the server certificate's CN, what the server sent) or raises."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if maximum is not None:
        ctx.maximum_version = maximum
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    try:
        cn = dict(x[0] for x in w.get_extra_info("peercert")["subject"])["commonName"]
        data = await asyncio.wait_for(r.read(100), 5)
        return cn, data
    finally:
        w.close()


async def _refused(handshake) -> bool:
    """Closed before a byte was served: during the handshake (as the client sees it) or right after."""
    try:
        return (await handshake)[1] == b""
    except (ConnectionError, ssl.SSLError):
        return True


def test_listeners_serve_each_hostname_its_certificate(tmp_path: Path) -> None:
    ca, certs = _issue(tmp_path, ("a.example.com", "b.example.com", "c.example.com"))
    port = _free_port()

    def serve(plug, down) -> None:      # the engine's place: answer who we are
        plug.transport.write(f"port {down.destination_port} from {down.source_ip}".encode())
        plug.transport.close()

    async def run() -> None:
        lst = IngressListeners("127.0.0.1", serve)
        gw = IngressGateway("gw", "ns", listeners=[
            _listener("a", "a.example.com", port, certs=[certs["a.example.com"]]),
            _listener("b", "b.example.com", port, certs=[certs["b.example.com"]], minimum="1.3")])
        await lst.update(build(gw))
        try:
            assert await _handshake(port, ca, "a.example.com") == ("a.example.com", f"port {port} from 127.0.0.1".encode())
            assert (await _handshake(port, ca, "b.example.com"))[0] == "b.example.com"
            assert await _refused(_handshake(port, ca, "c.example.com"))    # the unrecognized_name alert
            # TLS 1.2 is fine for a, below b's minimum: the connection is closed unanswered
            assert (await _handshake(port, ca, "a.example.com", ssl.TLSVersion.TLSv1_2))[1].startswith(b"port")
            assert await _refused(_handshake(port, ca, "b.example.com", ssl.TLSVersion.TLSv1_2))
            # a config update: b's certificate becomes c's name; listener a goes
            gw.listeners = [_listener("b", "c.example.com", port, certs=[certs["c.example.com"]])]
            await lst.update(build(gw))
            assert (await _handshake(port, ca, "c.example.com"))[0] == "c.example.com"
            assert await _refused(_handshake(port, ca, "a.example.com"))
            await lst.update(build(None))
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
        finally:
            await lst.close()

    asyncio.run(run())
