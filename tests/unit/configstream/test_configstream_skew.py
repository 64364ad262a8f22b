"""Version skew on the config stream: a newer controller serving an older data plane.

Istio's upgrade order is control plane first, so for a while a controller sends fields that the
ztunnels and waypoints do not know yet. A field a newer controller sets must never be dropped
silently when it could narrow a policy: here a real ConfigServer (grpc) serves resources of
"newer" model classes (subclasses with one more field, encoded by the server as it encodes any
resource) to a real ConfigClient.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from ambit.api import config_pb2, config_pb2_grpc
from ambit.configclient import Backoff, ConfigClient, ConfigUpdate, NodeInfo
from ambit.configclient import cache as cfgcache
from ambit.configclient.codec import Encoded, content_version
from ambit.model import (
    Authorization,
    Match,
    MeshSettings,
    PeerAuthn,
    Rule,
    Service,
    TelemetryPolicy,
    Workload,
)
from controller.configserver import ConfigServer
from waypoint.authz.evaluate import policy_set
from waypoint.binding import Waypoint
from waypoint.config import WaypointConfig
from ztunnel import authz
from ztunnel.meshstate import MeshState
from ztunnel.meshstate import config_client as zt_client

from .helpers import eventually, workload

ZT = NodeInfo("ztunnel", "node-a", instance_id="zt-1")
TYPES = [Authorization.TYPE, Workload.TYPE]
SERVER = workload("srv", "node-a", ns="demo", ip="10.0.1.5", sa="server")
CLIENT = "spiffe://cluster.local/ns/demo/sa/client"


@dataclass
class NewerMatch(Match):
    """A Match of a future version: one more source condition, narrowing what a rule matches."""

    source_service_accounts: list[str] = field(default_factory=list)


@dataclass
class NewerWorkload(Workload):
    """A Workload of a future version with a field whose meaning this version cannot know."""

    network: str = ""


@dataclass
class NewerAdvisoryWorkload(Workload):
    """A Workload of a future version whose new field only refines behaviour: its class says an
    older client may ignore it."""

    ADVISORY = (*Workload.ADVISORY, "rack")
    rack: str = ""


def allow(match: Match, name: str = "allow-admin") -> Authorization:
    return Authorization(name=name, namespace="demo", action="ALLOW", scope="namespace",
                         rules=[Rule(clauses=[[match]])])


def verdict(policies: dict[str, Authorization]) -> authz.Verdict:
    return authz.evaluate(policies.values(), SERVER, authz.ConnInfo(
        src_ip="10.0.0.7", src_identity=CLIENT, dst_ip="10.0.1.5", dst_port=8080), "istio-system")


class Recorder:
    def __init__(self) -> None:
        self.updates: list[ConfigUpdate] = []

    def __call__(self, u: ConfigUpdate) -> None:
        self.updates.append(u)


async def _serve(state, version: str = "v1") -> tuple[ConfigServer, int]:
    srv = ConfigServer(registry=CollectorRegistry())
    srv.update(state, version)
    return srv, await srv.start()


def test_a_condition_set_by_a_newer_controller_never_widens_an_allow():
    """ALLOW from namespace demo *and* service account admin: an older ztunnel that dropped the
    second condition allowed every workload of the namespace (before: allowed sa/client)."""
    async def main():
        newer = allow(NewerMatch(namespaces=["demo"], source_service_accounts=["admin"]))
        srv, port = await _serve({Authorization.TYPE: [newer], Workload.TYPE: [SERVER]})
        c = ConfigClient(f"127.0.0.1:{port}", ZT, TYPES, Recorder(), backoff=Backoff(0.05, 0.5))
        try:
            await c.start()
            await c.wait_synced(10)
            held = c.state(Authorization.TYPE)
            v = verdict(held)
            assert not v.allowed, v
            (m,) = held["demo/allow-admin"].rules[0].clauses[0]
            assert m.unsupported == ["source_service_accounts (a field this version of Ambit does not know)"]
            # The waypoint's evaluation (the same Match in http_rules) fails closed the same way.
            wp = Authorization(name="wp", namespace="demo", action="ALLOW", scope="waypoint",
                               target_refs=[{"group": "", "kind": "Service", "name": "web"}],
                               http_rules=[Rule(clauses=[[m]])])
            ps = policy_set([wp], Waypoint("demo", "waypoint"))
            assert ps.by_service["demo/web"][0].http_rules[0].clauses[0][0].unsupported
            # In a DENY the same condition counts as matched: deny more, never less.
            deny = Authorization(name="deny", namespace="demo", action="DENY", scope="namespace",
                                 rules=[Rule(clauses=[[m]])])
            assert not verdict({"demo/deny": deny}).allowed
            # A condition the newer controller leaves at its zero value means "not in use".
            srv.update({Authorization.TYPE: [allow(NewerMatch(namespaces=["demo"]))], Workload.TYPE: [SERVER]}, "v2")
            await eventually(lambda: c.versions()[Authorization.TYPE] == "v2", what="v2 applied")
            assert verdict(c.state(Authorization.TYPE)).allowed
        finally:
            await c.stop()
            await srv.stop(0)
    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_field_set_by_a_newer_controller_elsewhere_is_nacked_and_the_last_good_state_kept():
    async def main():
        old = workload("a1", "node-a", ip="10.0.1.1")
        srv, port = await _serve({Authorization.TYPE: [], Workload.TYPE: [old]})
        c = ConfigClient(f"127.0.0.1:{port}", ZT, TYPES, Recorder(), backoff=Backoff(0.05, 0.5))
        try:
            await c.start()
            await c.wait_synced(10)
            fields = {f.name: getattr(old, f.name) for f in dataclasses.fields(Workload)}
            # Unused (zero) new field: accepted as it is.
            srv.update({Authorization.TYPE: [], Workload.TYPE: [NewerWorkload(**{**fields, "ips": ["10.0.1.2"]})]}, "v2")
            await eventually(lambda: c.versions()[Workload.TYPE] == "v2", what="v2 applied")
            # Set: refused, naming the type, resource and field; the state of v2 stays in force.
            srv.update({Authorization.TYPE: [],
                        Workload.TYPE: [NewerWorkload(**{**fields, "ips": ["10.0.1.3"]}, network="east")]}, "v3")
            await eventually(lambda: any(t.last_nack for t in srv.status()[0].types), what="NACK recorded")
            (nack,) = [t.last_nack for t in srv.status()[0].types if t.last_nack]
            assert nack.version == "v3"
            assert "Workload.network: a field this version of Ambit does not know (set to 'east'" in nack.message
            assert "'a1'" in nack.message
            assert c.versions()[Workload.TYPE] == "v2" and c.state(Workload.TYPE)["a1"].ips == ["10.0.1.2"]
        finally:
            await c.stop()
            await srv.stop(0)
    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_field_a_newer_controller_marks_advisory_is_ignored_not_nacked():
    """A new field that only refines behaviour (as locality refines balancing) is named advisory on
    the wire: an older client ignores it and keeps taking updates, instead of NACKing every update
    of the type (every new pod unknown to it) until it is upgraded."""
    async def main():
        fields = {f.name: getattr(SERVER, f.name) for f in dataclasses.fields(Workload)}
        srv, port = await _serve({Workload.TYPE: [NewerAdvisoryWorkload(**fields, rack="r7")]})
        c = ConfigClient(f"127.0.0.1:{port}", ZT, [Workload.TYPE], Recorder(), backoff=Backoff(0.05, 0.5))
        try:
            await c.start()
            await c.wait_synced(10)
            assert not any(t.last_nack for t in srv.status()[0].types)
            (held,) = c.state(Workload.TYPE).values()
            assert held.uid == SERVER.uid and held.locality == SERVER.locality and not hasattr(held, "rack")
        finally:
            await c.stop()
            await srv.stop(0)
    asyncio.run(asyncio.wait_for(main(), 60))


def test_an_action_a_newer_controller_adds_is_refused_by_the_waypoint_not_skipped():
    """An action a newer controller might add (CUSTOM was one, before the waypoint enforced it). The
    waypoint used to skip a policy whose action it did not know, so the requests it was written to
    deny passed; now the update is NACKed and the waypoint keeps the DENY it held. So is a CUSTOM
    policy that names no provider (it could not be checked)."""
    async def main():
        ref = [{"group": "", "kind": "Service", "name": "web"}]
        deny = Authorization(name="guard", namespace="demo", action="DENY", scope="waypoint", target_refs=ref,
                             http_rules=[Rule(clauses=[[Match(paths=["/admin"])]])])
        srv, port = await _serve({Authorization.TYPE: [deny]})
        config = WaypointConfig(Waypoint("demo", "waypoint"), "cluster.local")
        c = ConfigClient(f"127.0.0.1:{port}", NodeInfo("waypoint", "wp-0", "demo/waypoint"), [Authorization.TYPE],
                         config.apply, backoff=Backoff(0.05, 0.5))
        try:
            await c.start()
            await c.wait_synced(10)
            for version, newer, why in (
                    ("v2", dataclasses.replace(deny, action="QUARANTINE"),
                     "Authorization demo/guard: action 'QUARANTINE' is not one of ALLOW, DENY, AUDIT, CUSTOM"),
                    ("v3", dataclasses.replace(deny, action="CUSTOM"),
                     "Authorization demo/guard: action CUSTOM names no provider")):
                srv.update({Authorization.TYPE: [newer]}, version)
                await eventually(lambda v=version: any(t.last_nack and t.last_nack.version == v
                                                       for t in srv.status()[0].types), what=f"NACK of {version}")
                (nack,) = [t.last_nack for t in srv.status()[0].types if t.last_nack]
                assert why in nack.message
                (held,) = config.view.policies.by_service["demo/web"]
                assert held.action == "DENY" and config.version == "v1"
        finally:
            await c.stop()
            await srv.stop(0)
    asyncio.run(asyncio.wait_for(main(), 60))


def _ztunnel_state() -> dict[str, list]:
    bad_deny = Authorization(name="deny-batch", namespace="demo", action="DENY", scope="namespace",
                             rules=[Rule(clauses=[[Match(ip_blocks=["10.0.9.0/24"])]])])
    return {MeshSettings.TYPE: [MeshSettings(trust_domain="cluster.local")], PeerAuthn.TYPE: [],
            Authorization.TYPE: [bad_deny], Workload.TYPE: [SERVER], Service.TYPE: [], TelemetryPolicy.TYPE: []}


async def _synced_cache(tmp_path) -> Path:
    """The cache file of a ztunnel that synced every type of `_ztunnel_state()`."""
    srv, port = await _serve(_ztunnel_state())
    cache = tmp_path / "config-cache.json"
    c = zt_client(MeshState(), f"127.0.0.1:{port}", "node-a", cache_path=cache)
    try:
        await c.start()
        await c.wait_synced(10)
    finally:
        await c.stop()
        await srv.stop(0)
    return cache


async def _restarted_from(cache: Path) -> MeshState:
    """A ztunnel's state right after its start with the controller away: what the cache gave it."""
    state = MeshState()
    c = zt_client(state, "127.0.0.1:1", "node-a", cache_path=cache)
    await c.start()
    await c.stop()
    return state


def test_a_policy_type_rejected_since_the_start_is_not_cached_as_empty(tmp_path):
    """ztunnel NACKs the Authorization of its first sync (here an ip block it cannot parse; in an
    upgrade, a field of a newer controller) and, holding no policy, takes no pod. The cache used to
    be written with that type empty: restarted, ztunnel replayed "no policy", counted as populated
    and served its pods with the DENY gone, also once the controller answered (the NACK repeats)."""
    async def main():
        state = _ztunnel_state()
        state[Authorization.TYPE][0].rules[0].clauses[0][0].ip_blocks = ["not-a-cidr"]
        srv, port = await _serve(state)
        cache = tmp_path / "config-cache.json"
        first = MeshState()
        c = zt_client(first, f"127.0.0.1:{port}", "node-a", cache_path=cache)
        try:
            await c.start()
            await eventually(lambda: Authorization.TYPE in first.rejections and first.view.workloads,
                             what="Authorization NACKed, the rest applied")
            assert not first.populated
        finally:
            await c.stop()
            await srv.stop(0)
        assert cache.exists()       # the other types were cached
        restarted = await _restarted_from(cache)     # the controller is away: only the cache can speak
        assert not restarted.populated and not restarted.view.workloads
    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("damage", ["newer-field", "bit-rot", "never-accepted"])
def test_a_cache_with_one_type_this_version_cannot_read_is_ignored_whole(tmp_path, damage):
    """Rollback of a data-plane component: its cache was written by a newer version whose
    Authorization sets a field this one does not know. The other types used to be replayed alone (a
    waypoint, which has no `populated` gate, then served its routes with no policy until the
    controller answered); the cache is now ignored whole. The same for an entry damaged on disk
    (its body no longer matches its version), and for the empty entry that earlier versions wrote
    for a type they had not accepted: a ztunnel upgraded over such a cache read it as "no policy"."""
    async def main():
        cache = await _synced_cache(tmp_path)
        types = cfgcache.load(cache, "ztunnel/node-a")
        sv, (entry,) = types[Authorization.TYPE]
        body = json.loads(entry.body)
        if damage == "newer-field":
            body["enforcement"] = "strict"          # a newer version's top-level field, set
            raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
            types[Authorization.TYPE] = (sv, [Encoded(entry.name, content_version(raw), raw)])
        elif damage == "bit-rot":
            types[Authorization.TYPE] = (sv, [Encoded(entry.name, entry.version,
                                                      entry.body.replace(b'"DENY"', b'"DENZ"'))])
        else:       # what earlier versions wrote for a type not accepted yet (or NACKed since the start)
            types[Authorization.TYPE] = ("", [])
        cfgcache.save(cache, "ztunnel/node-a", types)
        restarted = await _restarted_from(cache)
        assert not restarted.view.workloads and not restarted.populated and not restarted.versions
    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_type_the_controller_does_not_serve_leaves_the_others_served():
    """A client newer than the controller (a controller rolled back first) subscribes to a type
    the controller does not know. The stream used to end with INVALID_ARGUMENT: the client got
    no type at all and retried forever. Now the others are served, that one goes unanswered."""
    async def main():
        registry = CollectorRegistry()
        srv = ConfigServer(registry=registry)
        srv.update({Workload.TYPE: [SERVER]}, "v1")
        port = await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = config_pb2_grpc.ConfigServiceStub(ch).DeltaStream()
                await call.write(config_pb2.DeltaRequest(node=ZT.to_proto(), type_url="ambit.io/FromTheFuture",
                                                         subscribe=True))
                await call.write(config_pb2.DeltaRequest(type_url=Workload.TYPE, subscribe=True))
                resp = await call.read()
                assert resp.type_url == Workload.TYPE and [r.name for r in resp.resources] == ["srv"]
                await call.write(config_pb2.DeltaRequest(type_url=Workload.TYPE, response_nonce=resp.nonce))
                srv.update({Workload.TYPE: [SERVER, workload("b1", "node-b", ip="10.0.2.1")]}, "v2")
                resp = await call.read()         # the stream lives on and carries the next update
                assert resp.type_url == Workload.TYPE and resp.system_version_info == "v2"
                call.cancel()
            assert registry.get_sample_value("ambit_config_unknown_type_subscriptions_total", {"kind": "ztunnel"}) == 1
        finally:
            await srv.stop(0)
    asyncio.run(asyncio.wait_for(main(), 60))


def _legacy_file(cache: Path) -> dict:
    """The cache as the whole-file JSON (format 1) that versions before the journal wrote."""
    types = cfgcache.load(cache, "ztunnel/node-a")
    doc = {"format": 1, "node": "ztunnel/node-a",
           "types": {t: {"system_version": sv, "resources": {e.name: {"version": e.version, "body": e.body.decode()}
                                                             for e in res}}
                     for t, (sv, res) in types.items()}}
    cache.write_text(json.dumps(doc))
    return doc


def test_a_cache_file_of_the_format_before_the_journal_is_replayed(tmp_path):
    """An upgrade while the controller is away: the new version serves the old version's file."""
    async def main():
        cache = await _synced_cache(tmp_path)
        _legacy_file(cache)
        restarted = await _restarted_from(cache)
        assert restarted.view.workloads and restarted.populated
    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("damage", ["truncated", "types-list", "entry-list", "version-null", "body-number"])
def test_a_cache_file_of_another_shape_is_ignored_not_raised(tmp_path, damage):
    """A node that lost power mid-write, or a file another version wrote: the component starts as
    without a cache. `"types": [...]` raised AttributeError out of `start()`, on every restart."""
    async def main():
        cache = await _synced_cache(tmp_path)
        doc = _legacy_file(cache)
        text = cache.read_text()
        entry = doc["types"][Workload.TYPE]
        if damage == "truncated":
            cache.write_text(text[: len(text) // 2])
        elif damage == "types-list":
            doc["types"] = list(doc["types"].values())
        elif damage == "entry-list":
            entry["resources"] = list(entry["resources"].values())
        elif damage == "version-null":
            next(iter(entry["resources"].values()))["version"] = None
        else:
            next(iter(entry["resources"].values()))["body"] = 42
        if damage != "truncated":
            cache.write_text(json.dumps(doc))
        restarted = await _restarted_from(cache)
        assert not restarted.view.workloads and not restarted.populated
    asyncio.run(asyncio.wait_for(main(), 60))


def _as_older_process(monkeypatch, name, older):
    """Decode as a process whose model has `older` for the nested class `name`: the per-class decode
    plans (`model._PLANS`) resolve nested classes once, so a process that never had the newer class
    starts with none of the plans this one made."""
    from ambit import model
    monkeypatch.setitem(model._NESTED, name, older)
    monkeypatch.setattr(model, "_PLANS", {})
    monkeypatch.setattr(model, "_PLAN_NAMES", {})


def _older(cls, drop):
    """`cls` as a version without the fields `drop` had it (same name, same other fields)."""
    specs = []
    for f in dataclasses.fields(cls):
        if f.name in drop:
            continue
        kw = {k: v for k, v in (("default", f.default), ("default_factory", f.default_factory))
              if v is not dataclasses.MISSING}
        specs.append((f.name, f.type, dataclasses.field(**kw)))
    return dataclasses.make_dataclass(cls.__name__, specs)


def test_an_older_waypoint_ignores_the_route_fields_it_never_applied(monkeypatch):
    """Mesh `tcp` routes' source matches and `tls` routes are newer than some waypoints, which
    applied neither (they were warned as not applied): the controller names them advisory at the
    level they sit (inside each TcpRoute, and on the WaypointRoutes), so such a waypoint keeps
    taking route updates as before instead of refusing every one until it is upgraded."""
    from ambit import model
    wr = model.WaypointRoutes(hostname="db.default.svc.cluster.local",
                              tcp=[model.TcpRoute(port=5432, source_labels={"app": "reports"}, source_namespace="b")],
                              tls=[model.TcpRoute(sni_hosts=["a.example.com"])])
    wire = json.loads(json.dumps(model.wire_dict(wr)))
    _as_older_process(monkeypatch, "TcpRoute", _older(model.TcpRoute, {"source_labels", "source_namespace", "sni_hosts"}))
    old_routes = _older(model.WaypointRoutes, {"tls"})
    held = model._from_dict(old_routes, wire)
    assert held.hostname == wr.hostname and [t.port for t in held.tcp] == [5432]
    wire["tcp"][0]["weight_by_moon"] = 3         # control: a set field not named advisory is refused
    with pytest.raises(ValueError, match="TcpRoute.weight_by_moon"):
        model._from_dict(old_routes, wire)


def test_traffic_distribution_and_locality_set_are_advisory_on_the_wire():
    """Both only refine balancing (an older ztunnel or waypoint balances over every endpoint, as it
    did): they are named advisory where they are set, so older data planes keep taking Services and
    routes instead of NACKing every update that carries them."""
    from ambit.model import TrafficPolicy, WaypointRoutes, wire_dict
    svc = Service(name="near", namespace="demo", hostname="near.demo.svc.cluster.local",
                  traffic_distribution="PreferSameZone")
    assert wire_dict(svc)["_advisory"] == ["traffic_distribution"]
    assert "_advisory" not in wire_dict(dataclasses.replace(svc, traffic_distribution=""))
    routes = WaypointRoutes(hostname="near.demo.svc.cluster.local", policy=TrafficPolicy(locality_set=True))
    assert wire_dict(routes)["policy"]["_advisory"] == ["locality_set"]


def test_an_older_waypoint_refuses_an_inline_ca_bundle_rather_than_drop_it(monkeypatch):
    """A BackendTLSPolicy's CA bundle travels inline (TrafficPolicy.ca_certificate_pem). A
    waypoint older than the field that dropped it would verify the backend against the system's
    roots instead of the policy's CA: it must NACK (keep its last good routes) instead, so the
    field is not advisory; and a policy without it (no BackendTLSPolicy) still goes through."""
    from ambit import model
    wr = model.WaypointRoutes(hostname="api.example.com", policy=model.TrafficPolicy(
        tls_mode="SIMPLE", sni="api.example.com", ca_certificate_pem="-----BEGIN CERTIFICATE-----\n..."))
    wire = json.loads(json.dumps(model.wire_dict(wr)))
    assert "_advisory" not in wire["policy"]
    _as_older_process(monkeypatch, "TrafficPolicy", _older(model.TrafficPolicy, {"ca_certificate_pem"}))
    with pytest.raises(ValueError, match="TrafficPolicy.ca_certificate_pem"):
        model._from_dict(model.WaypointRoutes, wire)
    plain = json.loads(json.dumps(model.wire_dict(model.WaypointRoutes(
        hostname="api.example.com", policy=model.TrafficPolicy(tls_mode="SIMPLE", sni="api.example.com")))))
    assert model._from_dict(model.WaypointRoutes, plain).policy.sni == "api.example.com"
