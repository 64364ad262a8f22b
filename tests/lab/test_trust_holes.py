"""Issue 9, "Source addresses cannot buy trust", "Trust domains" and "Config stream and CA", in a real lab.

Each attack runs from a real pod with a real client (a borrowed address on the pods' L2 segment;
an h2 HBONE client over TLS 1.3 with a mesh certificate; gRPC to the controller's socket), and each
has a positive control on the same path, so a lab that does not carry traffic cannot pass:

* plaintext from a mesh pod's address is refused; the same trick with an address that belongs to no
  workload reaches the app (the control: the spoofing works, and ipBlocks are honoured for it);
* `Forwarded: for=` from a mesh peer that is no waypoint is ignored for policy and for the app;
* a certificate of another trust domain, signed by the mesh root, is refused, and accepted (and
  matched by `namespaces`/`principals`) once that domain is a `trustDomainAliases` entry;
* the config stream wants the node credential and scopes by it; the CA refuses an absurd TTL.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ambit.api import ca_grpc, ca_pb2, config_grpc, config_pb2
from ambit.configclient import NodeInfo
from ambit.dataplane import endpoint
from ambit.dataplane.identity import GrpcCertificateFetcher, make_key_and_csr
from ambit.model import Workload
from ambitctl.lab.components import mesh_config_file
from controller.ca import CertificateAuthority, DirectoryStorage
from tests.lab.conftest import MESH_SPEC
from tests.lab.labctl import Lab, running_lab

pytestmark = pytest.mark.lab

ATTACKERS = Path(__file__).parent / "attackers.py"
PY = sys.executable
CLIENT_ID = "spiffe://cluster.local/ns/demo/sa/client"
EVIL_ID = "spiffe://evil.local/ns/demo/sa/client"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab of this module's own (policies and the mesh config file change here)."""
    with running_lab(tmp_path_factory.mktemp("htr"), "htr", MESH_SPEC, "trust-holes-lab") as lab:
        yield lab


# --- helpers ---------------------------------------------------------------------------------------------

def apply(lab: Lab, *objs: dict[str, Any]) -> None:
    lab.ambit("apply", "-f", "-", "--wait", input=yaml.safe_dump_all(list(objs)))      # in force when it returns


def delete(lab: Lab, *objs: dict[str, Any]) -> None:
    lab.ambit("delete", "-f", "-", "--ignore-not-found", "--wait", input=yaml.safe_dump_all(list(objs)),
              check=False)


def echo_policy(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"selector": {"matchLabels": {"app": "echo"}}, "action": "ALLOW",
                     "rules": [{"from": [{"source": source}]}]}}


def attacker(lab: Lab, pod: str, *argv: str) -> dict[str, Any]:
    p = lab.exec(pod, PY, str(ATTACKERS), *argv, timeout=60)
    assert p.returncode == 0 and p.stdout.strip(), f"attacker in {pod} failed: {p.stderr[-2000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def app_reply(reply: str) -> dict[str, Any]:
    """The echo app's JSON from a raw HTTP/1.1 response."""
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), reply[:300]
    return json.loads(body.splitlines()[0])


def inbound(lab: Lab, node: str, since: int, **match: str) -> list[dict[str, Any]]:
    return [r for r in lab.access_log(node)[since:]
            if r["direction"] == "inbound" and all(r.get(k) == v for k, v in match.items())]


def policy_in_force(lab: Lab, node: str, name: str, present: bool = True) -> None:
    def check() -> bool:
        status, pol = endpoint.get_json(lab.dir / node / "admin.sock", "/policies")
        names = {a["name"] for a in (pol or {}).get("authorizations", [])} if status == 200 else set()
        return (name in names) == present
    lab.wait_for(check, timeout=15, interval=0.2, what=f"policy {name} {'in' if present else 'out of'} force on {node}")


def write_pems(d: Path, name: str, key: bytes, chain: list[str], bundle: list[str]) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.key").write_bytes(key)
    (d / f"{name}.pem").write_text("".join(chain))
    (d / "ca.pem").write_text("".join(bundle))
    return ["--cert", str(d / f"{name}.pem"), "--key", str(d / f"{name}.key"), "--ca", str(d / "ca.pem")]


def mesh_cert(lab: Lab, d: Path) -> list[str]:
    """demo/client's certificate, from the lab's CA with node1's credential (as node1's ztunnel gets it)."""
    token = (lab.dir / "node1" / "bootstrap-token").read_text().strip()

    async def fetch():
        async with lab.controller_channel() as ch:
            key, csr = make_key_and_csr(CLIENT_ID)
            return key, await GrpcCertificateFetcher(ch, "node1", lambda: token).fetch(CLIENT_ID, csr, 900)
    key, res = asyncio.run(fetch())
    return write_pems(d, "client", key, list(res.chain_pem), list(res.trust_bundle))


def foreign_cert(lab: Lab, d: Path) -> list[str]:
    """spiffe://evil.local/ns/demo/sa/client, signed by the mesh root itself (a shared root, or a CA
    mistake): everything about it verifies except its trust domain."""
    material = DirectoryStorage(lab.dir / "ca").load()
    assert material is not None
    ca = CertificateAuthority(material, "evil.local")
    key, csr = make_key_and_csr(EVIL_ID)
    return write_pems(d, "evil", key, ca.sign_csr(csr, EVIL_ID), ca.trust_bundle().pems())


def hbone(lab: Lab, pod: str, cert: list[str], marker: str, forwarded: str | None = None) -> dict[str, Any]:
    v1 = lab.pod("demo/echo-v1")["ip"]
    return attacker(lab, pod, "hbone", v1, "8080", marker, *cert, *(["--forwarded", forwarded] if forwarded else []))


# --- plaintext from a mesh workload's address ------------------------------------------------------------

def test_plaintext_from_a_mesh_pods_address_is_refused_and_a_free_address_is_the_control(lab: Lab) -> None:
    """demo/optout (not in the mesh, on echo-v1's node and L2 segment) borrows an address and wins
    the return path with gratuitous ARP. An ALLOW on ipBlocks names demo/client's address: before
    the fix, borrowing it bought demo/client's ipBlocks grant in plaintext."""
    v1, client = lab.pod("demo/echo-v1"), lab.pod("demo/client")
    free = "10.210.1.77"
    assert free not in {p["ip"] for p in lab.status()["pods"]}
    pol = echo_policy("allow-by-address", {"ipBlocks": [f"{client['ip']}/32", f"{free}/32"]})
    apply(lab, pol)
    try:
        policy_in_force(lab, "node1", "allow-by-address")
        # The control: the same trick with an address no workload owns reaches the app, which sees it.
        ctl = f"ctl-{uuid.uuid4().hex[:8]}"
        r = attacker(lab, "demo/optout", "spoof", free, v1["ip"], "8080", ctl)
        seen = app_reply(r["reply"])
        assert seen["path"] == f"/{ctl}" and seen["peer"].split(":")[0] == free, seen

        before = len(lab.access_log("node1"))
        atk = f"atk-{uuid.uuid4().hex[:8]}"
        r = attacker(lab, "demo/optout", "spoof", client["ip"], v1["ip"], "8080", atk)
        assert atk not in r["reply"] and not r["reply"], f"the spoofed connection got an answer: {r}"
        recs = lab.wait_for(lambda: inbound(lab, "node1", before, route="inbound-plaintext",
                                            **{"dst.workload": "echo-v1"}), timeout=5, what="the refusal's record")
        rec = recs[-1]
        assert rec["src.addr"].startswith(client["ip"] + ":") and rec["bytes_sent"] == 0, rec
        assert "the address of mesh workload demo/client" in rec["error"] and "spoofed" in rec["error"], rec
    finally:
        delete(lab, pol)
        # Undo the poisoned neighbour entry, so demo/client's own traffic finds demo/client again.
        subprocess.run(["ip", "-n", v1["netns"], "neigh", "del", client["ip"], "dev", "eth0"], capture_output=True)
    policy_in_force(lab, "node1", "allow-by-address", present=False)
    # And the real demo/client still reaches echo-v1 over the mesh.
    lab.wait_for(lambda: lab.exec("demo/client", "curl", "-sS", "-o", "/dev/null", "-m", "3",
                                  f"http://{v1['ip']}:8080/").returncode == 0, timeout=15, what="demo/client served")


# --- Forwarded -----------------------------------------------------------------------------------------------

def test_forwarded_from_a_mesh_peer_that_is_no_waypoint_buys_no_address(lab: Lab, tmp_path: Path) -> None:
    """A real HBONE client (h2 over TLS 1.3) holding demo/client's mesh certificate, from
    legacy/client, claims `Forwarded: for=127.0.0.1` and for demo/optout's address."""
    cert = mesh_cert(lab, tmp_path)
    legacy, optout = lab.pod("legacy/client")["ip"], lab.pod("demo/optout")["ip"]
    claimed = echo_policy("allow-claimed", {"ipBlocks": ["127.0.0.1/32", f"{optout}/32"]})
    real = echo_policy("allow-real", {"ipBlocks": [f"{legacy}/32"]})
    try:
        apply(lab, claimed)
        policy_in_force(lab, "node1", "allow-claimed")
        for fwd in ("for=127.0.0.1", f"for={optout}", 'for="[::ffff:127.0.0.1]"'):
            before = len(lab.access_log("node1"))
            r = hbone(lab, "legacy/client", cert, f"fwd-{uuid.uuid4().hex[:8]}", fwd)
            assert (r["status"], r["reply"]) == (403, ""), f"{fwd}: {r}"
            rec = lab.wait_for(lambda before=before: inbound(lab, "node1", before, route="inbound-hbone"), timeout=5,
                               what="the refusal's record")[-1]
            assert rec["src.addr"].startswith(legacy + ":") and rec["policy"] == "demo/allow-claimed", rec

        # The control: the same client through the same tunnel is admitted by its real address,
        # and the app sees that address, with or without a Forwarded header.
        delete(lab, claimed)
        apply(lab, real)
        policy_in_force(lab, "node1", "allow-real")
        for fwd in (None, "for=127.0.0.1"):
            marker = f"ok-{uuid.uuid4().hex[:8]}"
            r = hbone(lab, "legacy/client", cert, marker, fwd)
            assert r["status"] == 200, r
            seen = app_reply(r["reply"])
            assert seen["path"] == f"/{marker}" and seen["peer"].split(":")[0] == legacy, seen
    finally:
        delete(lab, claimed, real)


# --- trust domains -------------------------------------------------------------------------------------------

def aliases_in_force(lab: Lab, want: list[str]) -> None:
    def check() -> bool:
        return all(endpoint.get_json(lab.dir / n / "admin.sock", "/config_dump")[1].get("trust_domains", {}).get("aliases")
                   == want for n in ("node1", "node2"))
    lab.wait_for(check, timeout=15, interval=0.2, what=f"trust domain aliases {want} on both ztunnels")


def test_a_foreign_trust_domain_is_refused_until_it_is_an_alias(lab: Lab, tmp_path: Path) -> None:
    evil, good = foreign_cert(lab, tmp_path / "evil"), mesh_cert(lab, tmp_path / "good")
    by_ns = echo_policy("allow-demo-ns", {"namespaces": ["demo"]})
    by_principal = echo_policy("allow-client-principal", {"principals": ["cluster.local/ns/demo/sa/client"]})
    mesh_cfg = mesh_config_file(lab.dir)
    try:
        apply(lab, by_ns)
        policy_in_force(lab, "node1", "allow-demo-ns")
        before = len(lab.access_log("node1"))
        r = hbone(lab, "legacy/client", evil, "evil-1")
        assert (r["status"], r["reply"]) == (401, ""), r
        rec = lab.wait_for(lambda: inbound(lab, "node1", before, route="inbound-hbone"), timeout=5,
                           what="the refusal's record")[-1]
        assert rec["src.identity"] == EVIL_ID and "trust domain 'evil.local'" in rec["error"], rec
        # The control: the mesh's own demo/client, same path, same policy.
        assert hbone(lab, "legacy/client", good, "good-1")["status"] == 200

        # evil.local becomes an alias (the controller watches its mesh config file): accepted, and
        # `namespaces: [demo]` and the cluster.local principal both match it.
        mesh_cfg.write_text(yaml.safe_dump({"trustDomainAliases": ["evil.local"]}))
        aliases_in_force(lab, ["evil.local"])
        for pol in (by_ns, by_principal):
            apply(lab, pol)
            policy_in_force(lab, "node1", pol["metadata"]["name"])
            if pol is by_principal:
                delete(lab, by_ns)
                policy_in_force(lab, "node1", "allow-demo-ns", present=False)
            marker = f"alias-{uuid.uuid4().hex[:8]}"
            r = hbone(lab, "legacy/client", evil, marker)
            assert r["status"] == 200, (pol["metadata"]["name"], r)
            assert app_reply(r["reply"])["path"] == f"/{marker}"

        mesh_cfg.unlink()
        aliases_in_force(lab, [])
        assert hbone(lab, "legacy/client", evil, "evil-2")["status"] == 401, "the alias is gone again"
    finally:
        mesh_cfg.unlink(missing_ok=True)
        delete(lab, by_ns, by_principal)


# --- config stream and CA ---------------------------------------------------------------------------------------

@dataclass
class Refused:
    status: Status
    message: str

    def code(self) -> Status:
        return self.status

    def details(self) -> str:
        return self.message


def first_response(lab: Lab, node: NodeInfo, md: list[tuple[str, str]] | None) -> Any:
    """The server's first answer on a fresh stream, or its refusal. The controller reads the first
    request before it refuses a stream, and sends its headers once it admits one, so the client
    waits for one or the other (as the ConfigClient does) and a refusal always carries its status."""
    async def go() -> Any:
        async with lab.controller_channel() as ch:
            try:
                async with config_grpc.ConfigServiceStub(ch).DeltaStream.open(metadata=md) as call:
                    await call.send_message(config_pb2.DeltaRequest(node=node.to_proto(), type_url=Workload.TYPE,
                                                                    subscribe=True))
                    await asyncio.wait_for(call.recv_initial_metadata(), 10)   # a refusal raises here
                    first = await asyncio.wait_for(call.recv_message(), 10)
                    await call.cancel()
                    return first
            except GRPCError as e:
                return Refused(e.status, e.message or "")
    return asyncio.run(go())


def test_the_config_stream_needs_the_node_credential_and_a_node_gets_only_its_scope(lab: Lab) -> None:
    tok = {n: (lab.dir / n / "bootstrap-token").read_text().strip() for n in ("node1", "node2")}

    def creds(node: str, token: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {token}"), ("x-ambit-node", node)]

    r = first_response(lab, NodeInfo("ztunnel", "node1"), None)
    assert isinstance(r, Refused) and r.code() == Status.UNAUTHENTICATED, r
    assert "needs the node credential" in r.details()
    r = first_response(lab, NodeInfo("agent", "node2"), creds("node2", tok["node1"]))
    assert isinstance(r, Refused) and r.code() == Status.UNAUTHENTICATED, r
    r = first_response(lab, NodeInfo("agent", "node2"), creds("node1", tok["node1"]))
    assert isinstance(r, Refused) and r.code() == Status.PERMISSION_DENIED, r
    assert "node 'node1''s, but the stream subscribes as agent/node2" in r.details()

    # The right credential: node1's agent view holds node1's pods only; its ztunnel's holds all.
    r = first_response(lab, NodeInfo("agent", "node1"), creds("node1", tok["node1"]))
    assert isinstance(r, config_pb2.DeltaResponse), r
    nodes = {json.loads(x.body)["node"] for x in r.resources}
    assert nodes == {"node1"} and len(r.resources) >= 4
    r = first_response(lab, NodeInfo("ztunnel", "node1"), creds("node1", tok["node1"]))
    assert {json.loads(x.body)["node"] for x in r.resources} == {"node1", "node2"}
    # And the lab's own agents and ztunnels, which present their credential, are served.
    status = lab.ambit("status").stdout
    assert "agent/node1" in status and "ztunnel/node2" in status, status


def test_the_ca_refuses_an_absurd_ttl_cleanly(lab: Lab) -> None:
    token = (lab.dir / "node1" / "bootstrap-token").read_text().strip()

    async def ask(ttl: int) -> Any:
        async with lab.controller_channel() as ch:
            _, csr = make_key_and_csr(CLIENT_ID)
            try:
                return await ca_grpc.CertificateServiceStub(ch).CreateCertificate(
                    ca_pb2.CSRRequest(csr_pem=csr.decode(), identity=CLIENT_ID, ttl_seconds=ttl),
                    metadata=[("authorization", f"Bearer {token}"), ("x-ambit-node", "node1")], timeout=10)
            except GRPCError as e:
                return e

    r = asyncio.run(ask(2**62))
    assert isinstance(r, GRPCError) and r.status == Status.INVALID_ARGUMENT, r
    assert "ttl_seconds: 4611686018427387904 exceeds the maximum of 604800 seconds" in (r.message or "")
    assert isinstance(asyncio.run(ask(600)), ca_pb2.CSRResponse), "the control: a sane TTL is served"
