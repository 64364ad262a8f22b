"""`connectionPool.tcp.tcpKeepalive` and MeshConfig `tcpKeepalive`, on the controller's side:
validated (whole seconds, the kernel's limits), flattened with Istio's DestinationRule merge rules,
served to waypoints (the mesh's in MeshSettings) as an advisory field, and no longer warned as
"not applied". Before, the rule's was accepted and warned, and the mesh's refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ambit.model import MeshSettings, TcpKeepalive, WaypointRoutes, wire_dict
from controller import meshconfig
from controller.app import Controller
from controller.configserver import ConfigServer
from controller.validation import validate_object
from controller.waypoints.advisories import advisories
from tests.unit.controller.test_config_translate import SVCS, routes_for
from tests.unit.controller.test_meshconfig import _NoSource, settings

HOST = "reviews.demo.svc.cluster.local"
KA = "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive"


def dr(traffic_policy: dict[str, Any], subsets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"host": HOST, "trafficPolicy": traffic_policy, "subsets": subsets or []}}


def keepalive(**ka: Any) -> dict[str, Any]:
    return {"connectionPool": {"tcp": {"tcpKeepalive": ka}}}


def test_the_rules_keepalive_reaches_the_waypoint_in_whole_seconds_and_is_not_warned() -> None:
    rule = dr(keepalive(time="2m", interval="15s", probes=4))
    wr = routes_for([*SVCS, rule], HOST)
    assert wr.policy is not None and wr.policy.tcp_keepalive == TcpKeepalive(time=120, interval=15, probes=4)
    assert not [a for a in advisories([*SVCS, rule]) if "tcpKeepalive" in a.path], "honoured now: no warning"
    # set at all, even empty, it turns SO_KEEPALIVE on with the OS's values (Envoy's empty tcp_keepalive)
    empty = routes_for([*SVCS, dr(keepalive())], HOST)
    assert empty.policy is not None and empty.policy.tcp_keepalive == TcpKeepalive()
    unset = routes_for([*SVCS, dr({"connectionPool": {"tcp": {"maxConnections": 5}}})], HOST)
    assert unset.policy is not None and unset.policy.tcp_keepalive is None


def test_port_level_and_subset_policies_follow_istios_merge() -> None:
    """A portLevelSettings entry inherits nothing from the rule's trafficPolicy (its connectionPool
    included); a subset's connectionPool replaces the host's whole; a subset without one inherits
    the host's (pilot/pkg/networking/util/util.go MergeTrafficPolicy)."""
    top = {**keepalive(time="60s"),
           "portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}]}
    wr = routes_for([*SVCS, dr(top, [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": keepalive(probes=2)},
        {"name": "v3", "labels": {"version": "v3"},
         "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 3}}}}])], HOST)
    assert wr.policy is not None and wr.policy.tcp_keepalive == TcpKeepalive(time=60)
    [port] = wr.port_policies
    assert port.policy.tcp_keepalive is None, "a port-level entry inherits nothing"
    v1, v2, v3 = wr.subsets
    assert v1.policy is not None and v1.policy.tcp_keepalive == TcpKeepalive(time=60)
    assert v2.policy is not None and v2.policy.tcp_keepalive == TcpKeepalive(probes=2), \
        "the subset's connectionPool replaces the host's whole (no field-wise merge between levels)"
    assert v3.policy is not None and v3.policy.tcp_keepalive is None


@pytest.mark.parametrize("ka, field, words", [
    ({"time": "1.5s"}, "time", "whole seconds from 1s to 32767s"),
    ({"interval": "500ms"}, "interval", "whole seconds from 1s to 32767s"),
    ({"time": "0s"}, "time", "whole seconds from 1s"),
    ({"interval": "10h"}, "interval", "the kernel at most 32767"),
    ({"probes": 128}, "probes", "0..127"),
    ({"probes": -1}, "probes", "0..127"),
])
def test_values_the_kernel_cannot_take_are_refused_naming_the_field(ka: dict[str, Any], field: str,
                                                                      words: str) -> None:
    errs = validate_object(dr(keepalive(**ka)))
    assert [e.path for e in errs] == [f"{KA}.{field}"] and words in errs[0].reason, errs
    at_port = validate_object(dr({"portLevelSettings": [{"port": {"number": 9080}, **keepalive(**ka)}]}))
    assert [e.path for e in at_port] == [f"spec.trafficPolicy.portLevelSettings[0].connectionPool.tcp.tcpKeepalive"
                                         f".{field}"]


def test_the_kernels_largest_values_are_accepted() -> None:
    assert validate_object(dr(keepalive(time="32767s", interval="1s", probes=127))) == []
    assert validate_object(dr(keepalive(probes=0))) == [], "0 is unset, as Istio's proto3 uint32"


def test_the_mesh_wide_keepalive_is_checked_as_a_rules_and_served_to_waypoints(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text("tcpKeepalive: {time: 300s, interval: 30s, probes: 3}\n")
    assert meshconfig.load(f, "cluster.local").tcp_keepalive == {"time": "300s", "interval": "30s", "probes": 3}
    f.write_text("tcpKeepalive: {}\n")
    assert meshconfig.load(f, "cluster.local").tcp_keepalive == {}, "set: SO_KEEPALIVE with the OS's values"
    for text, msg in [("tcpKeepalive: {time: 250ms}\n", "tcpKeepalive.time: must be whole seconds"),
                      ("tcpKeepalive: {probes: 500}\n", "tcpKeepalive.probes: must be an integer 0..127"),
                      ("tcpKeepalive: {idle: 5s}\n", "tcpKeepalive.idle: unknown field")]:
        f.write_text(text)
        with pytest.raises(ValueError, match=msg):
            meshconfig.load(f, "cluster.local")
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
    ctl = Controller(_NoSource(), server)
    ctl.on_snapshot([])
    assert settings(server)[0].tcp_keepalive is None
    ctl.set_tcp_keepalive({"time": "300s", "probes": 3})
    assert settings(server)[0].tcp_keepalive == TcpKeepalive(time=300, probes=3)
    ctl.set_tcp_keepalive(None)
    assert settings(server)[0].tcp_keepalive is None


def test_keepalive_is_advisory_on_the_wire() -> None:
    """An older waypoint applied no tcpKeepalive (the rule's was warned, the mesh's refused): it may
    ignore the field rather than NACK every update, and then behaves as before."""
    wr = WaypointRoutes(HOST, policy=routes_for([*SVCS, dr(keepalive(time="30s"))], HOST).policy)
    assert "tcp_keepalive" in wire_dict(wr)["policy"]["_advisory"]
    assert "tcp_keepalive" in wire_dict(MeshSettings("cluster.local", tcp_keepalive=TcpKeepalive()))["_advisory"]
