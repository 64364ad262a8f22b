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
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from ambit.configclient import Backoff, ConfigClient, ConfigUpdate, NodeInfo
from ambit.model import Authorization, Match, Rule, Workload
from controller.configserver import ConfigServer
from waypoint.authz.evaluate import policy_set
from waypoint.binding import Waypoint
from waypoint.config import WaypointConfig
from ztunnel import authz

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


def test_an_action_a_newer_controller_adds_is_refused_by_the_waypoint_not_skipped():
    """CUSTOM (external authorization) is what a newer controller might add. The waypoint used to
    skip a policy whose action it did not know, so the requests it was written to deny passed;
    now the update is NACKed and the waypoint keeps the DENY it held."""
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
            custom = dataclasses.replace(deny, action="CUSTOM")
            srv.update({Authorization.TYPE: [custom]}, "v2")
            await eventually(lambda: any(t.last_nack for t in srv.status()[0].types), what="NACK recorded")
            (nack,) = [t.last_nack for t in srv.status()[0].types if t.last_nack]
            assert "Authorization demo/guard: action 'CUSTOM' is not one of ALLOW, DENY, AUDIT" in nack.message
            (held,) = config.view.policies.by_service["demo/web"]
            assert held.action == "DENY" and config.version == "v1"
        finally:
            await c.stop()
            await srv.stop(0)
    asyncio.run(asyncio.wait_for(main(), 60))
