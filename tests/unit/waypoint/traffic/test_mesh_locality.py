"""The mesh-wide `localityLbSetting` (MeshConfig, carried in MeshSettings) at the waypoint, in
Istio's order (`GetEffectiveLbSetting`): a DestinationRule's own `localityLbSetting` first, then
the Service's trafficDistribution, then the mesh's, then the default (enabled). Before, the mesh
config refused the field."""

from __future__ import annotations

from typing import Any

from ambit.model import MeshSettings, TrafficPolicy
from controller.app import mesh_locality
from tests.unit.waypoint.traffic.test_traffic_distribution import _apply, spread, waypoint, zone_a
from waypoint.app import WaypointProxy

OUTLIER = TrafficPolicy(outlier_detection=True)


def with_mesh(p: WaypointProxy, setting: dict[str, Any], version: str = "2") -> WaypointProxy:
    mesh = MeshSettings(trust_domain="cluster.local", locality=mesh_locality(setting))   # as the controller sends it
    _apply(p.config, MeshSettings.TYPE, {"mesh": mesh}, version)
    return p


def test_mesh_wide_enabled_false_turns_the_default_locality_failover_off() -> None:
    assert set(spread(waypoint("", OUTLIER))) == {"a1", "a2", "a3", "a4"}, "the default: the zone first"
    got = spread(with_mesh(waypoint("", OUTLIER), {"enabled": False}), 400)
    assert set(got) == {"a1", "a2", "a3", "a4", "b1", "b2", "c1"}


def test_mesh_wide_distribute_applies_without_outlier_detection() -> None:
    got = spread(with_mesh(waypoint(""), {"distribute": [{"from": "r1/z1/*", "to": {"r1/z2/*": 100}}]}))
    assert set(got) == {"b1", "b2"}


def test_mesh_wide_failover_applies_with_the_rules_outlier_detection() -> None:
    mesh = {"failover": [{"from": "r1", "to": "r2"}]}
    p = with_mesh(waypoint("", OUTLIER), mesh)
    assert set(spread(p)) == {"a1", "a2", "a3", "a4"}
    assert set(spread(with_mesh(waypoint(""), mesh))) == {"a1", "a2", "a3", "a4", "b1", "b2", "c1"}, \
        "failover without outlier detection does nothing, as a DestinationRule's"


def test_a_rules_own_setting_and_the_services_distribution_come_before_the_mesh() -> None:
    off = {"enabled": False}
    assert zone_a(spread(with_mesh(waypoint("PreferSameZone"), off))) == 200, "trafficDistribution wins"
    own = TrafficPolicy(outlier_detection=True, locality_set=True)
    assert set(spread(with_mesh(waypoint("", own), off))) == {"a1", "a2", "a3", "a4"}, "the rule's own wins"


def test_a_mesh_edit_reaches_the_clusters() -> None:
    p = waypoint("", OUTLIER)
    assert set(spread(p)) == {"a1", "a2", "a3", "a4"}
    with_mesh(p, {"enabled": False})
    assert len(set(spread(p, 400))) == 7
    with_mesh(p, {}, "3")
    assert set(spread(p)) == {"a1", "a2", "a3", "a4"}
