"""Issue 5 acceptance, in the lab with real traffic: mesh traffic crosses the wire as TLS 1.3 HBONE
between the pods' own addresses, under the pods' SPIFFE identities from the controller's CA, with
L4 policy and PeerAuthentication enforced at the destination, Istio metrics, and rotation that
traffic does not notice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane import endpoint
from ambit.dataplane.identity import (
    CertificateFetchError,
    GrpcCertificateFetcher,
    WorkloadCertificate,
    make_key_and_csr,
)
from ambit.dataplane.libcrypto.x509 import Certificate
from ambit.dataplane.telemetry.metrics import scrape
from ambit.dataplane.trust import TrustBundle, spiffe_id_of
from tests.lab.labctl import Lab

pytestmark = pytest.mark.lab

ECHO = "http://echo.demo.svc.cluster.local:8080/"
TD = "cluster.local"


def sid(ns: str, sa: str) -> str:
    return f"spiffe://{TD}/ns/{ns}/sa/{sa}"


def zt(lab: Lab, node: str, path: str) -> Any:
    status, body = endpoint.get_json(lab.dir / node / "admin.sock", path)
    assert status == 200, f"ztunnel {node} {path}: HTTP {status}: {body}"
    return body


def certs(lab: Lab, node: str) -> dict[str, dict[str, Any]]:
    return {c["identity"]: c for c in zt(lab, node, "/certs")}


def curl_code(lab: Lab, pod: str, url: str = ECHO, timeout: float = 10) -> tuple[int, float]:
    """(curl exit code, seconds it took). 0 = got a response; 28 = timed out (a hang)."""
    t0 = time.monotonic()
    p = lab.exec(pod, "curl", "-sS", "-o", "/dev/null", "-m", str(timeout), url, timeout=timeout + 30)
    return p.returncode, time.monotonic() - t0


def apply(lab: Lab, *objs: dict[str, Any]) -> None:
    lab.ambit("apply", "-f", "-", "--wait", input=yaml.safe_dump_all(list(objs)))      # in force when it returns


def delete(lab: Lab, *objs: dict[str, Any]) -> None:
    lab.ambit("delete", "-f", "-", "--ignore-not-found", "--wait", input=yaml.safe_dump_all(list(objs)),
              check=False)


def ztunnel_logs(lab: Lab) -> str:
    return lab.log("ztunnel", "node1") + lab.log("ztunnel", "node2")


# --- the wire ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def underlay_capture(lab: Lab, path: Path) -> Iterator[None]:
    """tcpdump in the underlay netns on every port of the bridge, one capture per port merged into
    `path`, from before to after the block. (Frames forwarded between bridge ports never reach
    br-ul's own interface. `-i any` sees them, but on a loaded machine it lost the large segments of
    TLS handshakes, GSO packets bigger than the MTU, which a per-interface capture keeps.)"""
    ul = lab.status()["underlay"]["netns"]
    links = subprocess.run(["ip", "netns", "exec", ul, "ip", "-o", "link", "show", "master", "br-ul"],
                           capture_output=True, text=True, check=True).stdout
    ports = [ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines() if ln.strip()]
    assert ports, f"no ports on {ul}'s br-ul"
    parts = [path.with_name(f"{path.stem}.{port}.pcap") for port in ports]
    procs = []
    try:
        for port, part in zip(ports, parts, strict=True):
            # --immediate-mode: without it packets wait in the kernel ring for a block timeout and
            # are lost when tcpdump is stopped right after the traffic.
            procs.append(subprocess.Popen(["ip", "netns", "exec", ul, "tcpdump", "--immediate-mode", "-B", "8192",
                                           "-i", port, "-U", "-Z", "root", "-w", str(part)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stderr is not None
            line = p.stderr.readline()
            while line and "listening on" not in line:
                line = p.stderr.readline()
            assert "listening on" in line, f"tcpdump did not start: {line!r}"
        time.sleep(1.0)
        yield
        time.sleep(1.0)
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    subprocess.run(["mergecap", "-w", str(path), *[str(x) for x in parts if x.exists()]], check=True,
                   capture_output=True)


def tshark_handshakes(path: Path) -> list[list[str]]:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-d", "tcp.port==15008,tls", "-Y", "tls.handshake.type == 1 || tls.handshake.type == 2",
         "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.dstport", "-e", "tls.handshake.type",
         "-e", "tls.handshake.extensions.supported_version", "-e", "tls.handshake.extensions_alpn_str"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line.split("\t") for line in out.stdout.splitlines() if line.strip()]


@contextlib.contextmanager
def legacy_plain_server(lab: Lab, port: int) -> Iterator[str]:
    """An echo server in legacy/client (not in the mesh): the plaintext control."""
    p = subprocess.Popen(lab.exec_argv("legacy/client", sys.executable, "-m", "ambitctl.lab.apps.echo", "--port", str(port)),
                         env=lab.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://{lab.pod('legacy/client')['ip']}:{port}/"
    try:
        lab.wait_for(lambda: curl_code(lab, "demo/optout", url, timeout=2)[0] == 0, timeout=15,
                     what="the legacy echo server")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)


def test_mesh_traffic_crosses_the_underlay_as_tls13_hbone_and_plaintext_does_not(lab: Lab, tmp_path: Path) -> None:
    client2, v2 = lab.pod("demo/client2"), lab.pod("demo/echo-v2")

    def pooled() -> bool:
        return any(c["src_ip"] == client2["ip"] and c["dst_ip"] == v2["ip"]
                   for c in zt(lab, "node1", "/connections")["hbone_pool"])
    # The pair must open a fresh HBONE connection during the capture (pooled ones idle out in 60 s).
    lab.wait_for(lambda: not pooled(), timeout=75, interval=1, what="no pooled client2 -> echo-v2 connection")

    secret, control = f"mesh-secret-{uuid.uuid4().hex}", f"plain-control-{uuid.uuid4().hex}"
    pcap = tmp_path / "underlay.pcap"
    with legacy_plain_server(lab, 9999) as legacy_url, underlay_capture(lab, pcap):
        r = lab.curl("demo/client2", f"http://{v2['ip']}:8080/", "-H", f"x-marker: {secret}", "--data", secret)
        assert r["pod"] == "echo-v2" and r["headers"]["x-marker"] == secret and r["body_bytes"] == len(secret)
        assert r["peer"].split(":")[0] == client2["ip"], "the app sees the real client IP"
        c = lab.curl("demo/optout", legacy_url, "-H", f"x-marker: {control}")
        assert c["headers"]["x-marker"] == control
    raw = pcap.read_bytes()
    assert control.encode() in raw, "the control: plaintext between non-mesh pods is visible on the wire"
    assert secret.encode() not in raw, "the request and its echo must not cross the wire in clear"
    assert b'"pod": "echo-v2"' not in raw and b'"version": "v2"' not in raw, "nor the reply's content"

    hs = tshark_handshakes(pcap)
    hello = [h for h in hs if h[:4] == [client2["ip"], v2["ip"], "15008", "1"]]
    assert hello, f"no ClientHello from client2's own IP to echo-v2:15008 in {hs}"
    assert all("h2" in h[5] for h in hello)
    server_hello = [h for h in hs if h[0] == v2["ip"] and h[1] == client2["ip"] and h[3] == "2"]
    assert server_hello and all(h[4] == "0x0304" for h in server_hello), f"not TLS 1.3: {server_hello}"


def test_the_server_presents_the_destination_pods_spiffe_certificate(lab: Lab) -> None:
    v1 = lab.pod("demo/echo-v1")
    # legacy/client is not in the mesh: its connection to :15008 goes straight to echo-v1's ztunnel.
    p = lab.exec("legacy/client", "openssl", "s_client", "-connect", f"{v1['ip']}:15008", "-alpn", "h2",
                 "-showcerts", timeout=30)
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", p.stdout, re.S)
    assert pems, f"no certificate from {v1['ip']}:15008: {p.stdout[-500:]} {p.stderr[-500:]}"
    chain = [c for p in pems for c in Certificate.load_pems(p)]
    assert spiffe_id_of(chain[0]).uri == sid("demo", "echo")
    TrustBundle.from_pems([(lab.dir / "ca" / "ca.crt").read_text()]).verify(chain)   # issued by the lab's CA
    served = chain[0].serial
    assert certs(lab, "node1")[sid("demo", "echo")]["serial"] == f"{served:x}", "the one ztunnel reports"
    assert re.search(r"TLSv1\.3", p.stdout), p.stdout[-800:]


def test_identities_are_the_pods_service_accounts_and_the_ca_refuses_other_nodes_identities(lab: Lab) -> None:
    assert {sid("demo", "client"), sid("demo", "other"), sid("demo", "echo")} <= set(certs(lab, "node1"))
    assert sid("demo", "iperf") not in certs(lab, "node1"), "iperf runs on node2 only"
    assert all(c["state"] == "VALID" for n in ("node1", "node2") for c in certs(lab, n).values())

    token = (lab.dir / "node1" / "bootstrap-token").read_text().strip()

    async def ask(identity: str, node: str = "node1", tok: str = token) -> WorkloadCertificate:
        async with lab.controller_channel() as ch:
            key, csr = make_key_and_csr(identity)
            res = await GrpcCertificateFetcher(ch, node, lambda: tok).fetch(identity, csr, 600)
            return WorkloadCertificate.from_pems(identity, key, res.chain_pem, res.trust_bundle)

    assert asyncio.run(ask(sid("demo", "client"))).identity == sid("demo", "client")
    with pytest.raises(CertificateFetchError) as e:
        asyncio.run(ask(sid("demo", "iperf")))
    assert e.value.code == "PERMISSION_DENIED" and "node1" in e.value.detail and "demo/iperf" in e.value.detail
    with pytest.raises(CertificateFetchError) as e:
        asyncio.run(ask(sid("demo", "iperf"), node="node2"))     # node1's token claiming to be node2
    assert e.value.code == "UNAUTHENTICATED"


# --- policy --------------------------------------------------------------------------------------------

ALLOW_CLIENT = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "echo-allow-client", "namespace": "demo"},
                "spec": {"selector": {"matchLabels": {"app": "echo"}}, "action": "ALLOW",
                         "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/client"]}}],
                                    "to": [{"operation": {"ports": ["8080"]}}]}]}}
DENY_CLIENT = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "echo-deny-client", "namespace": "demo"},
               "spec": {"selector": {"matchLabels": {"app": "echo"}}, "action": "DENY",
                        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/client"]}}]}]}}


def refused_quickly(lab: Lab, pod: str) -> bool:
    """Refused by a reset: curl sees it as "couldn't connect" (7: the RST beat curl's connect
    check), an empty reply (52), or a reset while sending (55) or receiving (56); never a hang (28)."""
    rc, _ = curl_code(lab, pod)
    assert rc != 28, f"{pod}: the refusal must close the connection, not leave curl hanging until its timeout"
    return rc in (7, 52, 55, 56)


def deny_refuses_client(lab: Lab, deny: dict[str, Any], what: str) -> None:
    """Apply `deny` (a DENY selecting demo/echo that catches demo/client): demo/client is refused
    from then on, and ztunnel's log names the policy."""
    apply(lab, deny)
    lab.wait_for(lambda: refused_quickly(lab, "demo/client"), timeout=10, what=what)
    assert refused_quickly(lab, "demo/client")
    name = deny["metadata"]["name"]
    assert re.search(rf"denied HBONE .*sa/client\).*\[policy demo/{name}\]", ztunnel_logs(lab))


def allowed_again(lab: Lab, *pods: str) -> None:
    lab.wait_for(lambda: all(curl_code(lab, pod)[0] == 0 for pod in pods), timeout=10,
                 what="traffic allowed again after the policies are deleted")


def test_allow_admits_only_its_principal_and_deny_wins(lab: Lab) -> None:
    try:
        apply(lab, ALLOW_CLIENT)
        lab.wait_for(lambda: refused_quickly(lab, "demo/client2"), timeout=10, what="client2 refused by the ALLOW")
        for _ in range(4):                      # both endpoints (round robin) enforce it
            assert curl_code(lab, "demo/client")[0] == 0
            assert refused_quickly(lab, "demo/client2")
        denied = [r for n in ("node1", "node2") for r in lab.access_log(n)
                  if r["direction"] == "inbound" and r.get("src.identity") == sid("demo", "other") and "error" in r]
        assert denied and denied[-1]["policy"] == "demo/echo-allow-client" and denied[-1]["error"].startswith("403")
        assert re.search(r"denied HBONE .*spiffe://cluster.local/ns/demo/sa/other.*\[policy demo/echo-allow-client\]",
                         ztunnel_logs(lab))
        out = [r for r in lab.access_log("node1") if r["direction"] == "outbound" and r["src.workload"] == "client2"]
        assert out[-1]["policy"] == "demo/echo-allow-client", "the source side names the policy too"

        deny_refuses_client(lab, DENY_CLIENT, "the DENY to win over the ALLOW")
    finally:
        delete(lab, ALLOW_CLIENT, DENY_CLIENT)
    allowed_again(lab, "demo/client2", "demo/client")


def trust_domain_policy(name: str, action: str, trust_domains: list[str]) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"selector": {"matchLabels": {"app": "echo"}}, "action": action,
                     "rules": [{"from": [{"source": {"trustDomains": trust_domains}}]}]}}


def test_trust_domains_are_enforced_by_ztunnel(lab: Lab) -> None:
    """`trustDomains` at L4, no waypoint (Istio's ztunnel ignores the field): an ALLOW of the mesh's
    trust domain admits mesh clients and refuses plaintext, which has no trust domain; a DENY of
    any trust domain (`*`) refuses mesh clients, naming the policy."""
    allow = trust_domain_policy("echo-allow-td", "ALLOW", [TD])
    deny = trust_domain_policy("echo-deny-any-td", "DENY", ["*"])
    try:
        apply(lab, allow)
        lab.wait_for(lambda: refused_quickly(lab, "legacy/client"), timeout=10, what="the ALLOW to refuse plaintext")
        for _ in range(4):                      # both endpoints (round robin) enforce it
            assert curl_code(lab, "demo/client")[0] == 0
            assert curl_code(lab, "demo/client2")[0] == 0
        assert refused_quickly(lab, "legacy/client")

        deny_refuses_client(lab, deny, "the DENY of any trust domain")
        assert refused_quickly(lab, "demo/client2")
    finally:
        delete(lab, allow, deny)
    allowed_again(lab, "demo/client", "legacy/client")


def peer_authn(mode: str) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "demo-mtls", "namespace": "demo"}, "spec": {"mtls": {"mode": mode}}}


def test_strict_refuses_plaintext_clients_and_permissive_admits_them(lab: Lab) -> None:
    try:
        apply(lab, peer_authn("STRICT"))
        lab.wait_for(lambda: refused_quickly(lab, "legacy/client"), timeout=10, what="STRICT to refuse legacy/client")
        for _ in range(2):
            assert refused_quickly(lab, "legacy/client")
            assert curl_code(lab, "demo/client")[0] == 0, "mesh clients arrive over mTLS: unaffected"
        assert "plaintext refused: PeerAuthentication demo/demo-mtls requires mTLS (STRICT)" in ztunnel_logs(lab)
        apply(lab, peer_authn("PERMISSIVE"))
        lab.wait_for(lambda: curl_code(lab, "legacy/client")[0] == 0, timeout=10, what="PERMISSIVE to admit legacy")
        assert curl_code(lab, "demo/client")[0] == 0
    finally:
        delete(lab, peer_authn("STRICT"))
    lab.wait_for(lambda: curl_code(lab, "legacy/client")[0] == 0, timeout=10, what="legacy admitted after cleanup")


# --- routing, metrics, bulk ------------------------------------------------------------------------------

def test_service_requests_are_balanced_over_both_endpoints_across_nodes(lab: Lab) -> None:
    seen = [lab.curl("demo/client", ECHO)["version"] for _ in range(6)]
    assert set(seen) == {"v1", "v2"}, seen
    recs = [r for r in lab.access_log("node1")[-6:] if r["direction"] == "outbound"]
    assert {r["route"] for r in recs} == {"hbone"} and {r["dst.workload"] for r in recs} == {"echo-v1", "echo-v2"}
    assert all(r["dst.service"] == "echo.demo.svc.cluster.local" for r in recs)


def tcp_metrics(lab: Lab, node: str, **match: str) -> dict[str, float]:
    """Sum of each istio_tcp_* counter over the series whose labels include `match`."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(scrape(lab.dir / node / "metrics.sock")):
        for s in fam.samples:
            if s.name.startswith("istio_tcp_") and s.name.endswith("_total") and \
                    all(s.labels.get(k) == v for k, v in match.items()):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def test_metrics_count_connections_and_bytes_with_identities(lab: Lab) -> None:
    v2 = lab.pod("demo/echo-v2")
    dst = dict(reporter="destination", destination_workload="echo-v2", source_workload="client",
               source_principal=sid("demo", "client"), destination_principal=sid("demo", "echo"),
               connection_security_policy="mutual_tls", response_flags="-")
    src = dict(dst, reporter="source")
    before_d, before_s = tcp_metrics(lab, "node2", **dst), tcp_metrics(lab, "node1", **src)
    n, body = 5, "x" * 1000
    replies = 0
    for _ in range(n):
        p = lab.exec("demo/client", "curl", "-sS", "--fail", "-m", "5", "--data", body, f"http://{v2['ip']}:8080/")
        assert p.returncode == 0, p.stderr
        replies += len(p.stdout)

    def delta(node: str, labels: dict[str, str], before: dict[str, float]) -> dict[str, float]:
        now = tcp_metrics(lab, node, **labels)
        return {k.replace("istio_tcp_", "").replace("_total", ""): now.get(k, 0) - before.get(k, 0) for k in now}

    lab.wait_for(lambda: delta("node2", dst, before_d).get("connections_closed") == n, timeout=5,
                 what=f"{n} closed connections reported by the destination")
    for d in (delta("node2", dst, before_d), delta("node1", src, before_s)):
        assert d["connections_opened"] == n and d["connections_closed"] == n, d
        assert d["received_bytes"] >= n * len(body), d          # request direction, headers included
        assert d["sent_bytes"] >= replies, d                    # response direction
    assert delta("node2", dst, before_d)["received_bytes"] == delta("node1", src, before_s)["received_bytes"], \
        "both ends count the same request bytes"


def test_iperf3_across_nodes_through_two_ztunnels(lab: Lab) -> None:
    before1, before2 = len(lab.access_log("node1")), len(lab.access_log("node2"))
    p = lab.exec("demo/client", "iperf3", "-c", "iperf.demo.svc.cluster.local", "-t", "3", "-J", timeout=60)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)["end"]["sum_received"]["bytes"]
    assert got > 1_000_000
    out = lab.wait_for(lambda: [r for r in lab.access_log("node1")[before1:] if r["direction"] == "outbound"
                                and r["dst.workload"] == "iperf"], timeout=5, what="outbound iperf records")
    inb = lab.wait_for(lambda: [r for r in lab.access_log("node2")[before2:] if r["route"] == "inbound-hbone"
                                and r["dst.workload"] == "iperf"], timeout=5, what="inbound iperf records")
    assert {r["route"] for r in out} == {"hbone"}
    # bytes_sent is "towards the destination" on both sides
    assert max(r["bytes_sent"] for r in out) >= got and max(r["bytes_sent"] for r in inb) >= got


# --- rotation (its own lab: 12 s certificates, renewed at half-life) ---------------------------------------------------------

def test_traffic_flows_across_three_certificate_rotations(fresh_lab: Lab) -> None:
    lab = fresh_lab
    lab.up("--spec", str(Path(__file__).parent / "specs" / "mesh.yaml"), "--cert-ttl", "12")
    watched = {("node1", sid("demo", "client")), ("node1", sid("demo", "echo")), ("node2", sid("demo", "echo"))}
    serials: dict[tuple[str, str], list[str]] = {k: [] for k in watched}

    def note() -> int:
        for node in ("node1", "node2"):
            for ident, c in certs(lab, node).items():
                if (node, ident) in watched and c["serial"] and c["serial"] not in serials[(node, ident)]:
                    serials[(node, ident)].append(c["serial"])
        return min(len(s) for s in serials.values()) - 1      # rotations seen by the slowest identity

    loop = subprocess.Popen(
        lab.exec_argv("demo/client", "sh", "-c",
                      f"while :; do curl -s -o /dev/null -w '%{{http_code}}\\n' -m 5 {ECHO}; sleep 0.5; done"),
        env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    t0 = time.monotonic()
    try:
        deadline = t0 + 90
        while note() < 3:
            assert time.monotonic() < deadline, f"fewer than 3 rotations in 90 s: {serials}"
            assert loop.poll() is None
            time.sleep(1)
        time.sleep(2)       # a few requests after the third rotation
    finally:
        os.killpg(loop.pid, signal.SIGTERM)
        out, _ = loop.communicate(timeout=10)
    codes = [line for line in out.splitlines() if line.strip()][:-1]     # the last may have been cut
    print(f"rotation test: {len(codes)} requests over {time.monotonic() - t0:.0f}s; serials {serials}")
    assert len(codes) > 20 and set(codes) == {"200"}, f"failed requests during rotation: {codes}"
    assert all(c["state"] == "VALID" for n in ("node1", "node2") for c in certs(lab, n).values())


def test_the_root_rotates_under_traffic_without_restarting_anything(fresh_lab: Lab) -> None:
    """docs/operations.md "Rotating the root", each step an edit of the lab's CA directory while a
    client keeps requesting across nodes: the controller takes each step up on its own (its pid
    does not change), writes the roots where clients pin them, the ztunnels' certificates follow
    (under both roots, then signed by the new one, then under the new one alone), and no request
    fails."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from controller.ca import generate_root
    from controller.ca.authority import CAMaterial
    from controller.ca.storage import DirectoryStorage
    lab = fresh_lab
    lab.up("--spec", str(Path(__file__).parent / "specs" / "mesh.yaml"), "--cert-ttl", "12")
    store = DirectoryStorage(lab.dir / "ca")
    old = store.load()
    assert old is not None
    new = generate_root(TD)

    def pem(c: x509.Certificate) -> str:
        return c.public_bytes(Encoding.PEM).decode()
    both = TrustBundle.from_pems([pem(old.cert), pem(new.cert)]).fingerprint()
    new_only = TrustBundle.from_pems([pem(new.cert)])
    watched = [("node1", sid("demo", "client")), ("node2", sid("demo", "echo"))]

    def all_certs(pred: Any) -> bool:
        return all((c := certs(lab, n).get(i)) is not None and c["state"] == "VALID" and pred(c) for n, i in watched)

    def under_new(c: dict[str, Any]) -> bool:
        try:
            new_only.verify_pems(c["chain"])
        except ValueError:
            return False
        return True

    def pinned() -> int:
        return len(x509.load_pem_x509_certificates((lab.dir / "controller-root.pem").read_bytes()))
    controller = lab.proc_pid("controller")
    loop = subprocess.Popen(
        lab.exec_argv("demo/client", "sh", "-c",
                      f"while :; do curl -s -o /dev/null -w '%{{http_code}}\\n' -m 5 {ECHO}; sleep 0.3; done"),
        env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        # 1. Publish the new root beside the old, which still signs.
        store.save(CAMaterial(cert=old.cert, key=old.key, extra_roots=[new.cert]))
        lab.wait_for(lambda: pinned() == 2, timeout=20, what="both roots written where clients pin them")
        lab.wait_for(lambda: all_certs(lambda c: c["roots"] == both), timeout=60,
                     what="every watched certificate renewed under both roots")
        # 2. Sign under the new root; the old one stays trusted.
        store.save(CAMaterial(cert=new.cert, key=new.key, extra_roots=[old.cert]))
        lab.wait_for(lambda: all_certs(under_new), timeout=60, what="every watched certificate signed by the new root")
        # 4. Drop the old root (step 3, a workload lifetime, is the 12 s TTL's renewal above).
        store.save(CAMaterial(cert=new.cert, key=new.key))
        lab.wait_for(lambda: pinned() == 1, timeout=20, what="the old root dropped where clients pin them")
        lab.wait_for(lambda: all_certs(lambda c: c["roots"] == new_only.fingerprint()), timeout=60,
                     what="every watched certificate under the new root alone")
        time.sleep(2)       # a few requests on the new root alone
    finally:
        os.killpg(loop.pid, signal.SIGTERM)
        out, _ = loop.communicate(timeout=10)
    codes = [line for line in out.splitlines() if line.strip()][:-1]     # the last may have been cut
    assert len(codes) > 20 and set(codes) == {"200"}, f"failed requests during the rotation: {codes}"
    assert lab.proc_pid("controller") == controller, "the controller took the steps up without a restart"
    assert lab.log("controller").count("CA reloaded from directory") == 3
