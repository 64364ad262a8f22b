"""The lab's "external" host: a netns on the underlay, outside the mesh, that plays the internet.

It is not a node and not a pod: no ztunnel, no capture, not in the registry. It sits on the
underlay bridge (as a server outside the cluster would sit beyond the nodes' network) with routes
back to every node's pod CIDR, so it sees the real source address of what reaches it: a pod's
own address when ztunnel passes a connection through, an egress waypoint's when the connection
left through one. It runs `ambitctl.lab.apps.external` (plain HTTP :80, HTTPS :443, and HTTPS
that requires client certificates :8443) with a certificate from a test CA made here, so egress,
REGISTRY_ONLY and TLS origination run without the internet.

Everything it creates is named after the lab (netns `<lab>.external`, cgroup `<lab>-lab/system/
external`), so `ambit lab down` removes it with the rest, also after a crash.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ambit import cgroups
from ambitctl.lab.state import LabState
from ambitctl.lab.topology import LabNames, ipn, sh

HOSTNAME = "external.example"       # the name on the server certificate


@dataclass(frozen=True)
class External:
    netns: str
    ip: str             # what the tests register (a ServiceEntry endpoint)
    other_ip: str       # a second address of the same host, which nobody registers
    ca: Path            # the test CA (PEM): what a client trusts to verify the server
    client_cert: Path   # a client certificate the mTLS port accepts, and its key
    client_key: Path
    pid: int


def netns_name(names: LabNames) -> str:
    return f"{names.name}.external"


def addresses(underlay_cidr: str) -> tuple[str, str]:
    """The external host's two underlay addresses: the underlay's last usable ones (nodes count up)."""
    net = ipaddress.ip_network(underlay_cidr, strict=False)
    return str(net.broadcast_address - 1), str(net.broadcast_address - 2)


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False, sans: list[x509.GeneralName] = (),
          usage: ExtendedKeyUsageOID | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_certs(d: Path, ip: str) -> dict[str, Path]:
    """A test CA, the server's certificate (DNS external.example and its IP), a client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = _key(d / "ca.key")
    ca = _cert("ambit lab external CA", ca_key, None, ca_key, ca=True)
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    srv_key = _key(d / "server.key")
    srv = _cert(HOSTNAME, srv_key, ca, ca_key, sans=[x509.DNSName(HOSTNAME), x509.IPAddress(ipaddress.ip_address(ip))],
                usage=ExtendedKeyUsageOID.SERVER_AUTH)
    (d / "server.pem").write_bytes(srv.public_bytes(pem))
    cl_key = _key(d / "client.key")
    cl = _cert("egress client", cl_key, ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    (d / "client.pem").write_bytes(cl.public_bytes(pem))
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def add(st: LabState, state_dir: Path) -> External:
    """Create the external netns on the underlay of the lab `st` and start its servers; raises on
    failure (the caller removes it with `remove`, or `ambit lab down` does)."""
    names, spec = LabNames(st.name), st.spec
    ns, (ip, other_ip) = netns_name(names), addresses(spec["underlay_cidr"])
    prefix = spec["underlay_cidr"].split("/")[1]
    sh("ip", "netns", "add", ns)
    ipn(ns, "link", "set", "lo", "up")
    ipn(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "ul-external", "netns", names.underlay)
    ipn(names.underlay, "link", "set", "ul-external", "master", "br-ul")
    ipn(names.underlay, "link", "set", "ul-external", "up")
    ipn(ns, "addr", "add", f"{ip}/{prefix}", "dev", "eth0")
    ipn(ns, "addr", "add", f"{other_ip}/{prefix}", "dev", "eth0")
    ipn(ns, "link", "set", "eth0", "up")
    for node in spec["nodes"]:  # replies to pods go back through their node, as in a routed cluster
        ipn(ns, "route", "add", node["pod_cidr"], "via", node["underlay_ip"])
    certs = make_certs(state_dir / "external", ip)
    cg = cgroups.create(names.component_cgroup(None, "external"))
    log = (state_dir / "external" / "server.log").open("ab")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "ambitctl.lab.apps.external", "--http", "80",
         "--https", "443", "--mtls", "8443", "--cert", str(certs["server.pem"]), "--key", str(certs["server.key"]),
         "--ca", str(certs["ca.pem"])], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cgroups.join(cg, proc.pid)
    return External(ns, ip, other_ip, certs["ca.pem"], certs["client.pem"], certs["client.key"], proc.pid)


def remove(names: LabNames) -> None:
    """Stop the servers and delete the netns (idempotent)."""
    cg = names.component_cgroup(None, "external")
    if cg.exists():
        cgroups.kill_all(cg)
        cgroups.remove_tree(cg)
    sh("ip", "netns", "del", netns_name(names), check=False)
