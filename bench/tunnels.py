"""The stunnel and haproxy baselines: certificates and configuration (sans-IO apart from writing files).

Both tunnels get what the mesh uses on the wire: ECDSA P-256 certificates from one CA with SPIFFE
URI SANs, mutual TLS, TLS 1.3 only. Neither tool can check a SPIFFE URI SAN (stunnel's checkHost
and haproxy's verifyhost match DNS names), so they verify the chain only; the mesh also checks the
peer's identity, which costs nothing measurable next to the handshake.

The client side listens on 127.0.0.1 in the client pod and the server side on the server pod's IP,
so the path has the same shape as the mesh's: app -> local proxy -> wire -> remote proxy -> app.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "cluster.local"
TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"


@dataclass(frozen=True)
class CertFiles:
    ca: Path
    cert: Path
    key: Path
    combined: Path      # cert + key in one PEM (haproxy's `crt`)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ambit-bench"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(out: Path, identities: dict[str, str]) -> dict[str, CertFiles]:
    """A P-256 CA and one leaf per entry of {label: "ns/sa"}; returns the files per label."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("ambit-bench CA")).issuer_name(_name("ambit-bench CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    ca_path = out / "ca.crt"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files: dict[str, CertFiles] = {}
    for label, ns_sa in identities.items():
        ns, _, sa = ns_sa.partition("/")
        if not ns or not sa:
            raise ValueError(f"make_pki: identity {label}={ns_sa!r} must be 'namespace/serviceaccount'")
        key = ec.generate_private_key(ec.SECP256R1())
        spiffe = f"spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}"
        cert = (x509.CertificateBuilder().subject_name(_name(label)).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_pem, key_pem = cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)
        f = CertFiles(ca=ca_path, cert=out / f"{label}.crt", key=out / f"{label}.key", combined=out / f"{label}.pem")
        f.cert.write_bytes(cert_pem)
        f.key.write_bytes(key_pem)
        f.key.chmod(0o600)
        f.combined.write_bytes(cert_pem + key_pem)
        f.combined.chmod(0o600)
        files[label] = f
    return files


@dataclass(frozen=True)
class Route:
    """One tunnelled port: client pod 127.0.0.1:local_port -> server_ip:wire_port -> 127.0.0.1:app_port."""

    name: str
    local_port: int
    wire_port: int
    app_port: int


def stunnel_conf(side: str, routes: list[Route], certs: CertFiles, server_ip: str, log: Path) -> str:
    """stunnel.conf for the client ("client") or server ("server") side."""
    if side not in ("client", "server"):
        raise ValueError(f"stunnel_conf: side {side!r} must be 'client' or 'server'")
    lines = ["foreground = yes", "syslog = no", f"output = {log}", "debug = warning", "pid =", ""]
    for r in routes:
        lines += [f"[{r.name}]", f"client = {'yes' if side == 'client' else 'no'}"]
        if side == "client":
            lines += [f"accept = 127.0.0.1:{r.local_port}", f"connect = {server_ip}:{r.wire_port}"]
        else:
            lines += [f"accept = {server_ip}:{r.wire_port}", f"connect = 127.0.0.1:{r.app_port}"]
        lines += [f"cert = {certs.cert}", f"key = {certs.key}", f"CAfile = {certs.ca}", "verifyChain = yes",
                  "sslVersionMin = TLSv1.3", "sslVersionMax = TLSv1.3", f"ciphersuites = {TLS13_SUITES}",
                  "curves = X25519:P-256", "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1", ""]
    return "\n".join(lines)


def haproxy_conf(side: str, routes: list[Route], certs: CertFiles, server_ip: str) -> str:
    """haproxy.cfg (mode tcp) for the client or server side."""
    if side not in ("client", "server"):
        raise ValueError(f"haproxy_conf: side {side!r} must be 'client' or 'server'")
    tls = f"ca-file {certs.ca} verify required ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3"
    lines = ["global", "  maxconn 8000", f"  ssl-default-bind-ciphersuites {TLS13_SUITES}",
             f"  ssl-default-server-ciphersuites {TLS13_SUITES}", "", "defaults", "  mode tcp",
             "  timeout connect 5s", "  timeout client 300s", "  timeout server 300s", ""]
    for r in routes:
        lines.append(f"listen {r.name}")
        if side == "client":
            lines += [f"  bind 127.0.0.1:{r.local_port}",
                      f"  server upstream {server_ip}:{r.wire_port} ssl crt {certs.combined} {tls}"]
        else:
            lines += [f"  bind {server_ip}:{r.wire_port} ssl crt {certs.combined} {tls}",
                      f"  server app 127.0.0.1:{r.app_port}"]
        lines.append("")
    return "\n".join(lines)
