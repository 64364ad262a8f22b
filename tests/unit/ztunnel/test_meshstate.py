"""ztunnel's config consumer: validation, indexes, policy selection, and NACKs over a real stream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ambit.configclient.codec import encode
from ambit.configclient.state import TypeState
from ambit.dataplane import endpoint
from ambit.model import Authorization, Match, MeshSettings, PeerAuthn, Rule, Service, Workload
from controller.configserver import ConfigServer
from tests.unit.configstream.helpers import authz, eventually, peerauthn, service, workload
from ztunnel import admin
from ztunnel.meshstate import TYPES, ConfigRejected, MeshState, config_client


def push(cfg: MeshState, ts: TypeState, version: str, resources: list, removed: tuple[str, ...] = (),
         from_cache: bool = False) -> None:
    """Apply a delta through the client library's own staging, as the ConfigClient does."""
    staged = ts.stage(version, [encode(r) for r in resources], removed, from_cache=from_cache)
    cfg.apply(staged.update)
    ts.commit(staged)


def full(cfg: MeshState, version: str, workloads=(), services=(), auths=(), pas=(),
         mesh: MeshSettings | None = None) -> dict[str, TypeState]:
    states = {t: TypeState(t) for t in TYPES}
    push(cfg, states[MeshSettings.TYPE], version, [mesh or MeshSettings("cluster.local")])
    push(cfg, states[PeerAuthn.TYPE], version, list(pas))
    push(cfg, states[Authorization.TYPE], version, list(auths))
    push(cfg, states[Workload.TYPE], version, list(workloads))
    push(cfg, states[Service.TYPE], version, list(services))
    return states


def test_lookups_answer_from_the_indexed_view() -> None:
    a, b = workload("a", "n1", ip="10.1.0.1"), workload("b", "n2", ip="10.1.0.2", labels={"app": "web"})
    cfg = MeshState()
    full(cfg, "v1", [a, b], [service("web", endpoints=[b], vip="10.96.0.20")])
    assert cfg.synced and cfg.version == "v1"
    assert cfg.lookup_workload("10.1.0.2").uid == "b"
    assert cfg.lookup_workload("10.9.9.9") is None
    svc, port = cfg.lookup_service("10.96.0.20", 80)
    assert svc.name == "web" and port.target_port == 8080
    assert cfg.lookup_service("10.96.0.20", 81) is None, "a port the Service does not expose is not the Service"


def test_a_cached_state_serves_but_is_not_synced() -> None:
    cfg = MeshState()
    ts = TypeState(Workload.TYPE)
    push(cfg, ts, "v1", [workload("a", "n1")], from_cache=True)
    assert cfg.lookup_workload("10.0.0.1") is not None
    assert not cfg.synced


def test_two_services_on_one_vip_are_rejected_and_the_old_view_stays() -> None:
    cfg = MeshState()
    states = full(cfg, "v1", services=[service("echo", vip="10.96.0.10")])
    before = cfg.view
    with pytest.raises(ConfigRejected, match=r"VIP 10.96.0.10 is claimed by more than one Service "
                                             r"\(default/echo, default/echo-copy\)"):
        push(cfg, states[Service.TYPE], "v2", [service("echo-copy", vip="10.96.0.10")])
    assert cfg.view is before and cfg.version == "v1"
    assert "echo-copy" in cfg.rejections[Service.TYPE].message
    push(cfg, states[Service.TYPE], "v3", [service("other", vip="10.96.0.11")])
    assert Service.TYPE not in cfg.rejections, "an accepted update supersedes the rejection"
    assert cfg.service_by_vip("10.96.0.11").name == "other"


def test_two_mesh_workloads_on_one_ip_are_rejected_but_plain_ones_may_share() -> None:
    cfg = MeshState()
    ts = TypeState(Workload.TYPE)
    host1, host2 = workload("h1", "n1", ip="192.168.0.5"), workload("h2", "n1", ip="192.168.0.5")
    host1.protocol = host2.protocol = "TCP"
    push(cfg, ts, "v1", [host1, host2])        # host-network pods share their node's IP
    assert cfg.lookup_workload("192.168.0.5").uid == "h1"
    with pytest.raises(ConfigRejected, match="IP 10.0.0.7 is claimed by more than one mesh workload"):
        push(cfg, ts, "v2", [workload("x", "n1", ip="10.0.0.7"), workload("y", "n2", ip="10.0.0.7")])


@pytest.mark.parametrize("bad, field", [
    (lambda: Workload(uid="u", name="p", namespace="ns", ips=["10.0.0.300"], node="n", service_account="sa",
                      identity="spiffe://cluster.local/ns/ns/sa/sa", protocol="HBONE"), "ips[0]"),
    (lambda: Workload(uid="u", name="p", namespace="ns", ips=["10.0.0.3"], node="n", service_account="sa",
                      identity="not-a-spiffe-id", protocol="HBONE"), "identity"),
    (lambda: Authorization(name="a", namespace="ns", action="MAYBE"), "action"),
    (lambda: Authorization(name="a", namespace="ns", action="DENY",
                           rules=[Rule(clauses=[[Match(ip_blocks=["10.0.0.0/33"])]])]), "ip_blocks"),
    (lambda: PeerAuthn(name="p", namespace="ns", mode="SORTOF"), "mode"),
])
def test_values_ztunnel_cannot_enforce_are_rejected_naming_the_field(bad, field: str) -> None:
    r = bad()
    cfg = MeshState()
    with pytest.raises(ConfigRejected) as e:
        push(cfg, TypeState(r.TYPE), "v1", [r])
    assert field in str(e.value) and r.resource_name in str(e.value)


def test_policies_for_selects_like_the_enforcer() -> None:
    web = workload("w", "n1", ns="shop", labels={"app": "web"})
    auths = [authz("ns-wide", ns="shop"), authz("other-ns", ns="bank"),
             Authorization(name="mesh", namespace="ambit-system", action="DENY", scope="global"),
             Authorization(name="db-only", namespace="shop", action="ALLOW", selector={"app": "db"}),
             Authorization(name="wp", namespace="shop", action="ALLOW", scope="waypoint")]
    pas = [peerauthn("default", ns="shop"), PeerAuthn(name="mesh", namespace="ambit-system", mode="STRICT", root=True),
           PeerAuthn(name="db", namespace="shop", mode="DISABLE", selector={"app": "db"})]
    cfg = MeshState(root_namespace="ambit-system")
    full(cfg, "v1", [web], auths=auths, pas=pas)
    p = cfg.policies_for(web)
    assert sorted(a.name for a in p.authorizations) == ["mesh", "ns-wide"]
    assert sorted(x.name for x in p.peer_authns) == ["default", "mesh"]


def test_admin_answers_json_and_refuses_writes() -> None:
    cfg = MeshState()
    full(cfg, "v7", [workload("a", "n1")])
    handlers = admin.routes(cfg)
    status, body = admin.respond(handlers, "GET", endpoint.request_path(b"/workloads?x=1"))
    assert status == 200 and json.loads(body)[0]["uid"] == "a"
    assert admin.respond(handlers, "POST", "/workloads")[0] == 405
    status, body = admin.respond(handlers, "GET", "/nope")
    assert status == 404 and "/config_dump" in json.loads(body)["paths"]
    cold = MeshState()
    not_started = config_client(cold, "127.0.0.1:1", "n1")
    assert admin.respond(admin.routes(cold, not_started), "GET", "/healthz/ready")[0] == 503
    assert admin.respond(admin.routes(cfg, not_started), "GET", "/healthz/ready")[0] == 200


def test_nack_and_cache_over_a_real_stream(tmp_path: Path) -> None:
    """A colliding VIP is NACKed (the server records it), the old view keeps serving, and a new
    client with the cache serves the last good state before it reaches any controller."""
    async def main() -> None:
        server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
        port = await server.start("127.0.0.1:0")
        good = {Service.TYPE: [service("echo", vip="10.96.0.10")], Workload.TYPE: [workload("a", "n1")]}
        server.update(good, "v1")
        cfg = MeshState()
        client = config_client(cfg, f"127.0.0.1:{port}", "n1", cache_path=tmp_path / "cache.json")
        await client.start()
        try:
            await client.wait_synced(10)
            server.update({**good, Service.TYPE: [*good[Service.TYPE], service("dup", vip="10.96.0.10")]}, "v2")

            def nacked() -> bool:
                ts = [t for s in server.status() for t in s.types if t.type_url == Service.TYPE]
                return bool(ts) and ts[0].last_nack is not None and ts[0].last_nack.version == "v2"
            await eventually(nacked, what="the server to record the NACK")
            nack = next(t for s in server.status() for t in s.types if t.type_url == Service.TYPE).last_nack
            assert "default/dup" in nack.message
            assert sorted(cfg.view.services) == ["default/echo"]
        finally:
            await client.stop()
            await server.stop()
        cold = MeshState()
        offline = config_client(cold, "127.0.0.1:1", "n1", cache_path=tmp_path / "cache.json")
        await offline.start()
        try:
            assert cold.lookup_service("10.96.0.10", 80)[0].name == "echo"
            assert not cold.synced
        finally:
            await offline.stop()
    asyncio.run(main())


def test_mesh_settings_set_the_trust_domains_and_bad_ones_are_rejected() -> None:
    cfg = MeshState(trust_domain="cluster.local")
    assert cfg.trust_domains.all == ("cluster.local",) and not cfg.dump()["trust_domains"]["from_controller"]
    states = full(cfg, "v1", mesh=MeshSettings("cluster.local", ["old.td", "cluster.local", "old.td"]))
    assert cfg.trust_domains.all == ("cluster.local", "old.td")
    assert cfg.dump()["trust_domains"] == {"trust_domain": "cluster.local", "aliases": ["old.td"],
                                           "from_controller": True}
    with pytest.raises(ConfigRejected, match=r"trustDomainAliases\[0\]: 'Evil Domain' is not a trust domain"):
        push(cfg, states[MeshSettings.TYPE], "v2", [MeshSettings("cluster.local", ["Evil Domain"])])
    two = MeshSettings("cluster.local", name="other")
    with pytest.raises(ConfigRejected, match="the mesh has exactly one"):
        push(cfg, states[MeshSettings.TYPE], "v3", [MeshSettings("cluster.local"), two])
    assert cfg.trust_domains.all == ("cluster.local", "old.td"), "the last good settings stay in force"
