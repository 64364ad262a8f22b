"""The waypoint's egress parts, pure: which ServiceEntry endpoints it dials itself, and the TLS it
originates to them (waypoint/endpoints.py, waypoint/origination.py)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambit.model import Endpoint, Service, ServicePort, TrafficPolicy, Workload
from tests.support.testca import make_ca
from waypoint import endpoints
from waypoint.origination import check_peer, origination

POD = Workload(uid="u1", name="db", namespace="demo", ips=["10.210.1.5"], node="node1", service_account="db",
               identity="spiffe://cluster.local/ns/demo/sa/db", labels={"version": "v1"})


def entry(location: str, eps: list[Endpoint]) -> Service:
    return Service(name="api.example.com", namespace="demo", hostname="api.example.com", vips=["240.240.0.1"],
                   ports=[ServicePort(80, 443, "http", "HTTP")], endpoints=eps, kind="ServiceEntry",
                   location=location, resolution="STATIC")


def test_external_endpoints_are_dialled_directly_on_their_target_port_and_dns_names_kept() -> None:
    svc = entry("MESH_EXTERNAL", [Endpoint("", "198.51.100.7", labels={"version": "v2"}),
                                  Endpoint("", "", hostname="api.example.com"), Endpoint("", POD.ips[0])])
    picks = endpoints.candidates(svc, 80, None, {}, {POD.ips[0]: POD})
    assert [(p.ip, p.port, p.plain, p.mesh) for p in picks] == [
        ("198.51.100.7", 443, True, False), ("api.example.com", 443, True, False), (POD.ips[0], 443, True, False)]
    assert [p.ip for p in endpoints.candidates(svc, 80, {"version": "v2"}, {}, {POD.ips[0]: POD})] == \
        ["198.51.100.7"], "DestinationRule subsets select ServiceEntry endpoints by their own labels"


def test_mesh_internal_endpoints_that_are_mesh_pods_stay_on_hbone() -> None:
    svc = entry("MESH_INTERNAL", [Endpoint("", POD.ips[0]), Endpoint("", "198.51.100.7")])
    picks = endpoints.candidates(svc, 80, None, {}, {POD.ips[0]: POD})
    assert [(p.ip, p.mesh, p.plain, p.identity) for p in picks] == [
        (POD.ips[0], True, False, POD.identity), ("198.51.100.7", False, True, "")]


def test_no_origination_unless_simple_or_mutual() -> None:
    for mode in ("", "DISABLE", "ISTIO_MUTUAL"):
        assert origination(TrafficPolicy(tls_mode=mode), "api.example.com") is None
    assert origination(None, "api.example.com") is None


def test_simple_verifies_the_sni_name_or_the_subject_alt_names() -> None:
    o = origination(TrafficPolicy(tls_mode="SIMPLE"), "api.example.com")
    assert o is not None and o.sni == "api.example.com" and o.names == ("api.example.com",)
    assert o.context.verify_mode == ssl.CERT_REQUIRED
    o = origination(TrafficPolicy(tls_mode="SIMPLE", sni="edge.example", subject_alt_names=["x.example"]), "h")
    assert (o.sni, o.names) == ("edge.example", ("x.example",))
    o = origination(TrafficPolicy(tls_mode="SIMPLE", insecure_skip_verify=True), "h")
    assert o.names == () and o.context.verify_mode == ssl.CERT_NONE
    cert = {"subjectAltName": (("DNS", "*.example.com"), ("IP Address", "198.51.100.7"))}
    assert check_peer(cert, ("api.example.com",)) == ""
    assert check_peer(cert, ("198.51.100.7",)) == ""
    assert check_peer(cert, ("a.b.example.com",)) == "server certificate names *.example.com, 198.51.100.7, " \
                                                     "not a.b.example.com"


def test_mutual_needs_a_client_certificate_and_key() -> None:
    with pytest.raises(ssl.SSLError, match="MUTUAL needs clientCertificate and privateKey"):
        origination(TrafficPolicy(tls_mode="MUTUAL", client_certificate="/x.pem"), "h")
    with pytest.raises(OSError):
        origination(TrafficPolicy(tls_mode="MUTUAL", client_certificate="/nonexistent.pem",
                                  private_key="/nonexistent.key"), "h")


def test_the_waypoint_knows_entry_addresses_reached_without_the_vip_and_none_goes_to_the_original() -> None:
    static = entry("MESH_EXTERNAL", [Endpoint("", "198.51.100.7")])
    static.waypoint = "istio-egress/waypoint"
    wide = Service(name="*.wiki.example", namespace="demo", hostname="*.wiki.example", subnets=["203.0.113.0/24"],
                   ports=[ServicePort(80, 0, "http", "HTTP")], kind="ServiceEntry", resolution="NONE",
                   waypoint="istio-egress/waypoint")
    narrow = Service(name="one.wiki.example", namespace="demo", hostname="one.wiki.example",
                     subnets=["203.0.113.0/28"], ports=[ServicePort(80, 0, "http", "HTTP")], kind="ServiceEntry",
                     resolution="NONE", waypoint="istio-egress/waypoint")
    svcs = [static, wide, narrow]
    assert endpoints.entry_at(svcs, "198.51.100.7", 80, "istio-egress/waypoint") is static
    assert endpoints.entry_at(svcs, "203.0.113.3", 80, "istio-egress/waypoint") is narrow
    assert endpoints.entry_at(svcs, "203.0.113.99", 80, "istio-egress/waypoint") is wide
    assert endpoints.entry_at(svcs, "203.0.113.99", 443, "istio-egress/waypoint") is None, "not a port of it"
    assert endpoints.entry_at(svcs, "198.51.100.7", 80, "other/waypoint") is None, "not bound to this waypoint"
    p = endpoints.original("203.0.113.99", 80, wide)
    assert (p.ip, p.port, p.plain, p.protocol) == ("203.0.113.99", 80, True, "http1")


def test_server_names_compare_without_case() -> None:
    """RFC 6125 6.4.1: DNS names are case-insensitive; a certificate naming API.Example.com is the
    server api.example.com (before: refused)."""
    cert = {"subjectAltName": (("DNS", "API.Example.com"), ("DNS", "*.Wild.Example"))}
    assert check_peer(cert, ("api.example.com",)) == ""
    assert check_peer(cert, ("Edge.wild.example",)) == ""
    assert check_peer(cert, ("other.example.com",)) != ""


def test_uri_subject_alt_names_compare_exactly_with_the_certificates_uris() -> None:
    """A BackendTLSPolicy (or DestinationRule) subjectAltName may be a URI, a SPIFFE ID: it is
    checked against the certificate's URI SANs, exactly. Before, only DNS and IP SANs were read,
    so a URI never matched."""
    cert = {"subjectAltName": (("URI", "spiffe://partner/ns/a/sa/api"), ("DNS", "api.example.com"))}
    assert check_peer(cert, ("spiffe://partner/ns/a/sa/api",)) == ""
    assert check_peer(cert, ("spiffe://partner/ns/a/sa/API",)) != ""
    assert check_peer(cert, ("spiffe://partner/ns/a/sa/other", "api.example.com")) == ""
    assert "spiffe://partner/ns/a/sa/api" in check_peer(cert, ("spiffe://other/x",))


def _ca(cn: str, tmp_path: Path, server: str = "") -> tuple[bytes, Path, Path]:
    """A CA's PEM, and (server != "") a certificate and key it signed for `server`, as files."""
    now = datetime.datetime.now(datetime.UTC)
    ca, key = make_ca(cn)
    name = ca.subject
    pem = ca.public_bytes(serialization.Encoding.PEM)
    if not server:
        return pem, Path(), Path()
    skey = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server)]))
            .issuer_name(name).public_key(skey.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(server)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert, keyfile = tmp_path / f"{cn}.crt", tmp_path / f"{cn}.key"
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(skey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pem, cert, keyfile


def test_a_rotated_ca_bundle_is_in_force_for_the_next_upstream_connection(tmp_path: Path) -> None:
    """caCertificates is a file the operator rotates (Istio's agent watches it). The waypoint's
    upstream connector asks for the origination per connection: once the bundle no longer holds the
    server's CA, the next connection is refused; once it does again, it is accepted. Before, the
    first version read stayed in force until the waypoint restarted."""
    from types import SimpleNamespace

    from waypoint.app import WaypointProxy
    from waypoint.authz import Waypoint
    from waypoint.config import WaypointConfig
    from waypoint.settings import load

    good, cert, key = _ca("good-ca", tmp_path, "api.example.com")
    other, _, _ = _ca("other-ca", tmp_path)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(good)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    policy = TrafficPolicy(tls_mode="SIMPLE", ca_certificates=str(bundle))
    p = WaypointProxy(load(["--waypoint", "demo/egress", "--pod-name", "egress-0", "--node", "node1"]),
                      WaypointConfig(Waypoint("demo", "egress"), "cluster.local"), None)

    async def run() -> list[bool]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        pick = endpoints.Pick("127.0.0.1", port, "", "http1", "", False, True)
        target = p._new_target(pick, None, SimpleNamespace(policy=policy, hostname="api.example.com"), ())
        assert target is not None and "tls" in target.key
        out = []
        try:
            for pem in (good, other + b"\n", good + b"\n\n"):   # trusted, rotated away, back
                bundle.write_bytes(pem)
                try:
                    plug = await target.connect()
                    plug.transport.close()
                    out.append(True)
                except ssl.SSLError:
                    out.append(False)
        finally:
            server.close()
        return out

    assert asyncio.run(run()) == [True, False, True]


def test_origination_to_a_wildcard_host_names_and_verifies_the_requests_host(tmp_path: Path) -> None:
    """A ServiceEntry host `*.wiki.example` (resolution NONE) with a DestinationRule SIMPLE and no
    `sni`: the SNI sent and the name verified are the request's host, as Envoy's auto_sni and
    auto_san_validation (which Istio sets) make them; a host the wildcard does not cover is refused.
    Before, the SNI was the literal "*.wiki.example" and the certificate had to name it."""
    from types import SimpleNamespace

    from waypoint.app import WaypointProxy
    from waypoint.authz import Waypoint
    from waypoint.config import WaypointConfig
    from waypoint.request import Downstream, Forward, RequestHead
    from waypoint.settings import load

    ca, cert, key = _ca("wiki-ca", tmp_path, "en.wiki.example")
    (tmp_path / "ca.pem").write_bytes(ca)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    seen: list[str | None] = []
    server_ctx.sni_callback = lambda obj, name, ctx: seen.append(name)
    policy = TrafficPolicy(tls_mode="SIMPLE", ca_certificates=str(tmp_path / "ca.pem"))
    cluster = SimpleNamespace(policy=policy, hostname="*.wiki.example", hash_key=lambda head, down: None)
    p = WaypointProxy(load(["--waypoint", "demo/egress", "--pod-name", "egress-0", "--node", "node1"]),
                      WaypointConfig(Waypoint("demo", "egress"), "cluster.local"), None)

    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        pick = endpoints.Pick("127.0.0.1", port, "", "http1", "", False, True)
        p.cluster = lambda *a, **k: cluster         # type: ignore[method-assign]
        p._pick = lambda *a, **k: pick              # type: ignore[method-assign]
        fwd, down = Forward(service="demo/*.wiki.example", port=443), Downstream(destination_ip="127.0.0.1",
                                                                                 destination_port=port)
        try:
            target = p.upstream(fwd, RequestHead("GET", "/", "EN.wiki.example:443"), down)
            assert target is not None
            plug = await target.connect()
            plug.transport.close()
            assert seen == ["en.wiki.example"]
            assert p.upstream(fwd, RequestHead("GET", "/", "evil.example"), down) is None
            assert p.upstream(fwd, RequestHead("GET", "/", "wiki.example"), down) is None
            other = p.upstream(fwd, RequestHead("GET", "/", "de.wiki.example"), down)
            assert other is not None and other.key != target.key, "one pool per TLS name"
            with pytest.raises(ssl.SSLError):        # the server's certificate does not name de.wiki.example
                await other.connect()
        finally:
            server.close()

    asyncio.run(run())


def test_clusters_with_other_tls_settings_never_share_an_upstream_pool(tmp_path: Path) -> None:
    """Upstream connections are pooled by target key. Two clusters that reach one endpoint with the
    same SNI but other TLS settings (one skips verification, one trusts only its own CA, or another
    client certificate) must not share a pool: a connection the lax one opened would carry the strict
    one's requests unverified. Before, the key held the SNI only."""
    from types import SimpleNamespace

    from waypoint.app import WaypointProxy
    from waypoint.authz import Waypoint
    from waypoint.config import WaypointConfig
    from waypoint.settings import load

    good, cert, key = _ca("good-ca", tmp_path, "api.example.com")
    (tmp_path / "ca.pem").write_bytes(good)
    lax = TrafficPolicy(tls_mode="SIMPLE", insecure_skip_verify=True)
    strict = TrafficPolicy(tls_mode="SIMPLE", ca_certificates=str(tmp_path / "ca.pem"))
    p = WaypointProxy(load(["--waypoint", "demo/egress", "--pod-name", "egress-0", "--node", "node1"]),
                      WaypointConfig(Waypoint("demo", "egress"), "cluster.local"), None)
    pick = endpoints.Pick("127.0.0.1", 8443, "", "http1", "", False, True)
    other, _, _ = _ca("other-ca", tmp_path)
    inline = [TrafficPolicy(tls_mode="SIMPLE", ca_certificate_pem=pem.decode()) for pem in (good, other)]
    keys = {p._new_target(pick, None, SimpleNamespace(policy=policy, hostname="api.example.com"), ()).key
            for policy in (lax, strict, TrafficPolicy(tls_mode="SIMPLE", sni="api.example.com"), *inline)}
    assert len(keys) == 5       # (BackendTLSPolicy's inline CA bundles: one pool per bundle)
    again = p._new_target(pick, None, SimpleNamespace(policy=strict, hostname="api.example.com"), ())
    assert again.key in keys       # the same settings share one pool


def test_hosts_share_one_tls_context_and_contexts_are_bounded(tmp_path: Path) -> None:
    """Under a wildcard ServiceEntry host the SNI is the request's host: any client choosing hosts
    (random subdomains) must not make the waypoint build and keep a context per name (each loads
    the trust store, ~0.8 MB: 2,000 names grew it by 1.6 GB). One context per files and mode, the
    name per connection; DestinationRules whose files come and go are bounded too."""
    from waypoint import origination as orig
    policy = TrafficPolicy(tls_mode="SIMPLE")
    first = origination(policy, "a0.wiki.example")
    assert first is not None
    for i in range(1, 50):
        o = origination(policy, f"a{i}.wiki.example")
        assert o is not None and o.context is first.context
        assert (o.sni, o.names) == (f"a{i}.wiki.example", (f"a{i}.wiki.example",))
        assert o.settings != first.settings, "pooled per name"
    ca, _, _ = _ca("rotating-ca", tmp_path)
    for i in range(orig.MAX_CONTEXTS + 5):
        f = tmp_path / f"ca{i}.pem"
        f.write_bytes(ca)
        origination(TrafficPolicy(tls_mode="SIMPLE", ca_certificates=str(f)), "h")
    assert len(orig._CONTEXTS) == orig.MAX_CONTEXTS


def test_an_inline_bundle_with_non_ascii_text_trusts_its_certificates(tmp_path: Path) -> None:
    """A BackendTLSPolicy bundle as an older controller sends it, the ConfigMap's text whole: its
    comments may be non-ASCII (Mozilla's cacert.pem), which OpenSSL refuses in a str. The
    certificates are trusted; a block that is itself not ASCII trusts nothing (fails closed).
    Before, origination raised TypeError on every request."""
    ca, _, _ = _ca("bundle-ca", tmp_path)
    o = origination(TrafficPolicy(tls_mode="SIMPLE", ca_certificate_pem="# Főtanúsítvány\n" + ca.decode()), "h")
    assert o is not None and [c["subject"] for c in o.context.get_ca_certs()] == [((("commonName", "bundle-ca"),),)]
    bad = "-----BEGIN CERTIFICATE-----\nő\n-----END CERTIFICATE-----\n"
    o = origination(TrafficPolicy(tls_mode="SIMPLE", ca_certificate_pem=bad), "h")
    assert o is not None and o.context.get_ca_certs() == [] and o.context.verify_mode == ssl.CERT_REQUIRED
