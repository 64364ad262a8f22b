"""The waypoint's View after an update: built only from what the update changed (a Workload delta
does not rebuild the route table or the policies), and equal, part for part, to a View built from
scratch from the same state, over a random sequence of updates of every type. No timing here:
bench/ctrlscale.py's synthetic cluster measures it (docs/performance.md, "The waypoint at 10,000
pods")."""

from __future__ import annotations

import logging
import random

import pytest

from ambit.configclient.codec import encode
from ambit.configclient.state import ConfigUpdate, TypeState
from ambit.model import (
    Authorization,
    HttpMatch,
    HttpRoute,
    MeshSettings,
    Service,
    StringMatch,
    WaypointRoutes,
    Workload,
)
from bench.ctrlscale import churn, cluster
from controller.sources.cache import LastGoodCache
from controller.translate import translate
from waypoint.authz import Waypoint
from waypoint.config import TYPES, WaypointConfig

PARTS = ("workloads", "by_ip", "services", "by_vip", "table", "policies", "l4_policies", "l4_custom", "trust_domains",
         "telemetry", "mesh", "authn", "ingress", "custom")


def by_type(objs: list[dict]) -> dict[str, list]:
    c = LastGoodCache()
    c.replace(objs, owns=lambda _k: True)
    return translate(c.objects()).by_type()


def update(t: str, resources: list) -> ConfigUpdate:
    state = {r.resource_name: r for r in resources}
    return ConfigUpdate(t, "v", state, frozenset(), state)


@pytest.fixture(scope="module")
def states() -> list[dict[str, list]]:
    objs = cluster(400, seed=3)
    rng = random.Random(5)
    out = [by_type(objs)]
    for _ in range(3):
        objs = churn(objs, 10, rng)
        out.append(by_type(objs))
    # a route and a policy gone too, so those types change as well
    last = dict(out[-1])
    last[WaypointRoutes.TYPE] = last[WaypointRoutes.TYPE][1:]
    last[Authorization.TYPE] = last[Authorization.TYPE][1:]
    out.append(last)
    return out


def fresh(state: dict[str, dict]) -> WaypointConfig:
    cfg = WaypointConfig(Waypoint("ns-0", "waypoint"), "cluster.local")
    for t in TYPES:
        cfg.apply(ConfigUpdate(t, "v", state[t], frozenset(), state[t]))
    return cfg


def test_a_workload_delta_rebuilds_only_the_workload_indexes(states: list[dict[str, list]]) -> None:
    cfg = WaypointConfig(Waypoint("ns-0", "waypoint"), "cluster.local")
    for t in TYPES:
        cfg.apply(update(t, states[0].get(t, [])))
    before = cfg.view
    cfg.apply(update(Workload.TYPE, states[1][Workload.TYPE]))
    after = cfg.view
    assert after.workloads is not before.workloads and after.by_ip is not before.by_ip
    for part in ("services", "by_vip", "table", "policies", "l4_policies", "custom", "l4_custom", "authn", "ingress"):
        assert getattr(after, part) is getattr(before, part), part
    cfg.apply(update(Service.TYPE, states[1][Service.TYPE]))
    assert cfg.view.custom is not after.custom          # CUSTOM targets resolve through the Services
    assert cfg.view.table is after.table


def test_any_sequence_of_updates_gives_the_view_a_fresh_build_gives(states: list[dict[str, list]]) -> None:
    rng = random.Random(11)
    cfg = WaypointConfig(Waypoint("ns-0", "waypoint"), "cluster.local")
    for t in TYPES:
        cfg.apply(update(t, states[0].get(t, [])))
    for _ in range(25):
        t = rng.choice([Workload.TYPE, Service.TYPE, WaypointRoutes.TYPE, Authorization.TYPE, MeshSettings.TYPE])
        cfg.apply(update(t, rng.choice(states).get(t, [])))
        want = fresh(cfg.state).view
        for part in PARTS:
            got, exp = getattr(cfg.view, part), getattr(want, part)
            if part == "table":
                got, exp = (got.hosts, got.by_service, got.errors), (exp.hosts, exp.by_service, exp.errors)
            assert got == exp, part


def test_route_table_warnings_are_logged_when_the_table_changes_not_on_every_update(
        states: list[dict[str, list]], caplog: pytest.LogCaptureFixture) -> None:
    cfg = WaypointConfig(Waypoint("ns-0", "waypoint"), "cluster.local")
    bad = WaypointRoutes(hostname="bad.example", http=[HttpRoute(name="bad", source="VirtualService/ns-0/bad",
                                                                matches=[HttpMatch(path=StringMatch("regex", "("))])])
    for t in TYPES:
        cfg.apply(update(t, states[0].get(t, [])))
    with caplog.at_level(logging.WARNING, logger="ambit.waypoint"):
        cfg.apply(update(WaypointRoutes.TYPE, [*states[0][WaypointRoutes.TYPE], bad]))
        warned = [r for r in caplog.records if "route table" in r.getMessage()]
        cfg.apply(update(Workload.TYPE, states[1][Workload.TYPE]))
        cfg.apply(update(Workload.TYPE, states[2][Workload.TYPE]))
    assert warned and [r for r in caplog.records if "route table" in r.getMessage()] == warned


def test_a_view_from_the_wire_equals_one_from_the_objects_and_indexes_by_name_once(
        states: list[dict[str, list]]) -> None:
    """What the config client hands over (bodies decoded, strings shared, a read-only state per
    update) gives, over random updates, the View a build from the controller's own objects gives;
    its by-uid and by-name maps are those states, not copies of them."""
    rng = random.Random(13)
    types = {t: TypeState(t) for t in TYPES}
    wire = WaypointConfig(Waypoint("ns-0", "waypoint"), "cluster.local")

    def send(t: str, resources: list) -> None:
        staged = types[t].stage("v", [encode(r) for r in resources], set(types[t].resources) - {
            r.resource_name for r in resources})
        wire.apply(staged.update)
        types[t].commit(staged)
    for t in TYPES:
        send(t, states[0].get(t, []))
    for _ in range(12):
        t = rng.choice([Workload.TYPE, Service.TYPE, WaypointRoutes.TYPE, Authorization.TYPE, MeshSettings.TYPE])
        send(t, rng.choice(states).get(t, []))
        want = fresh({t: {r.resource_name: r for r in rs} for t, rs in
                      ((t, list(types[t].resources.values())) for t in TYPES)}).view
        for part in PARTS:
            got, exp = getattr(wire.view, part), getattr(want, part)
            if part == "table":
                got, exp = (got.hosts, got.by_service, got.errors), (exp.hosts, exp.by_service, exp.errors)
            assert got == exp, part
        v = wire.view
        assert v.workloads == {w.uid: w for w in types[Workload.TYPE].resources.values()}
        assert v.services == {s.resource_name: s for s in types[Service.TYPE].resources.values()}
        assert v.workloads is wire.state[Workload.TYPE] and v.services is wire.state[Service.TYPE]
