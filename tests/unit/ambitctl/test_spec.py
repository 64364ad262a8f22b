from __future__ import annotations

import pytest

from ambitctl.lab import spec


def test_default_spec_has_the_demo_topology() -> None:
    s = spec.default_spec()
    assert [n.name for n in s.nodes] == ["node1", "node2"]
    assert s.namespaces["demo"] == {"ambit.io/dataplane-mode": "ambient"}
    assert s.namespaces["legacy"] == {}
    v1, v2 = s.pod("demo/echo-v1"), s.pod("demo/echo-v2")
    assert (v1.node, v2.node) == ("node1", "node2")
    assert v1.labels == {"app": "echo", "version": "v1"}
    assert s.pod("demo/client").node == "node1" and s.pod("legacy/client").node == "node2"
    echo = next(x for x in s.services if x.name == "echo")
    assert {p.name for p in s.endpoints(echo)} == {"echo-v1", "echo-v2"}
    assert echo.vip.startswith("10.96.0.")
    # the seed examples' myapp (v1, v2) and the principal their AuthorizationPolicy names
    myapp = next(x for x in s.services if x.name == "myapp" and x.namespace == "default")
    assert {p.labels["version"] for p in s.endpoints(myapp)} == {"v1", "v2"}
    assert s.pod("default/frontend").service_account == "frontend"
    assert s.namespaces["default"] == {"ambit.io/dataplane-mode": "ambient"}


def test_addresses_are_unique_and_inside_node_cidrs() -> None:
    s = spec.default_spec(nodes=3)
    ips = [p.ip for p in s.pods]
    assert len(set(ips)) == len(ips)
    for p in s.pods:
        assert p.ip.startswith(s.node(p.node).pod_cidr.rsplit(".", 1)[0] + ".")
    assert len({n.underlay_ip for n in s.nodes}) == 3


def test_nodes_flag_folds_pods_onto_remaining_nodes() -> None:
    s = spec.default_spec(nodes=1)
    assert {p.node for p in s.pods} == {"node1"}


@pytest.mark.parametrize("doc,needle", [
    ({"pods": [{"name": "Web", "command": ["x"]}]}, "pods[0].name"),
    ({"pods": [{"name": "web", "command": "x"}]}, "pods[0].command"),
    ({"pods": [{"name": "web", "node": "node9", "command": ["x"]}]}, "pods[0].node"),
    ({"pods": [{"name": "web", "command": ["x"], "ports": [{"containerPort": 70000}]}]}, "pods[0].ports[0].containerPort"),
    ({"services": [{"name": "s", "ports": []}]}, "services[0].ports"),
    ({"nodes": 0}, "nodes"),
    ({"podz": []}, "podz"),
    ({"pods": [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}]}, "duplicate pod default/a"),
    ({"nodeLabels": {"node9": {"topology.kubernetes.io/zone": "z"}}}, "nodeLabels.node9"),
    ({"nodeLabels": {"node1": ["z"]}}, "nodeLabels.node1"),
])
def test_bad_specs_name_the_field(doc: dict, needle: str) -> None:
    with pytest.raises(spec.SpecError) as e:
        spec.parse(doc, source="t.yaml")
    assert needle in str(e.value) and "t.yaml" in str(e.value)


def test_named_target_port_resolves_against_container_ports() -> None:
    s = spec.default_spec()
    echo = next(x for x in s.services if x.name == "echo")
    assert spec.resolve_target_port(echo.ports[0], s.pod("demo/echo-v1")) == 8080
    assert spec.resolve_target_port(echo.ports[0], s.pod("demo/client")) is None


def test_a_spec_file_that_is_not_text_is_refused_by_name(tmp_path: object) -> None:
    """`ambit lab up --spec FILE` with a binary or UTF-16 file was a UnicodeDecodeError traceback."""
    from pathlib import Path
    f = Path(str(tmp_path)) / "lab.yaml"
    f.write_bytes(b"\xff\xfenodes: 2\n")
    with pytest.raises(spec.SpecError, match=r"lab.yaml: not UTF-8 text \(byte 0\)"):
        spec.load(f)


def test_node_labels_reach_the_labs_node_objects() -> None:
    """`nodeLabels` put topology labels on the lab's Nodes, where the controller reads a pod's
    locality (locality load balancing)."""
    from ambitctl.lab import lab, topology
    s = spec.parse({"nodeLabels": {"node2": {"topology.kubernetes.io/zone": "zb"}}})
    nodes = {o["metadata"]["name"]: o["metadata"]["labels"] for o in lab.store_objects(s, topology.LabNames("cl"))
             if o["kind"] == "Node"}
    assert nodes == {"node1": {"kubernetes.io/hostname": "node1"},
                     "node2": {"topology.kubernetes.io/zone": "zb", "kubernetes.io/hostname": "node2"}}
