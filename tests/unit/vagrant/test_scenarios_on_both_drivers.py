"""Every e2e scenario runs on both drivers, or says why it cannot run on the cluster.

A scenario has a kube-driver path when it takes the `driver` fixture and reaches the mesh only
through the `Driver` protocol (and the helpers in tests/e2e/driver.py built on it), which
`KubeDriver` implements in full. One that needs the lab itself carries
`@pytest.mark.lab_only(reason=...)`; tests/e2e/conftest.py skips it on the cluster with that reason.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from tests.e2e import driver as drv

E2E = Path(__file__).resolve().parents[2] / "e2e"
PROTOCOL = {n for n, v in vars(drv.Driver).items() if callable(v) and not n.startswith("_")}


def scenarios() -> list[tuple[str, ast.FunctionDef]]:
    out = []
    for f in sorted(E2E.glob("test_*.py")):
        tree = ast.parse(f.read_text())
        out += [(f"{f.name}::{n.name}", n) for n in tree.body
                if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    return out


def lab_only_reason(fn: ast.FunctionDef) -> str | None:
    for d in fn.decorator_list:
        if (isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "lab_only"):
            kw = {k.arg: k.value for k in d.keywords}
            r = kw.get("reason")
            return r.value if isinstance(r, ast.Constant) and isinstance(r.value, str) else ""
    return None


def test_the_kube_driver_implements_the_whole_driver_protocol() -> None:
    assert PROTOCOL >= {"exec", "logs", "label_namespace", "pod_ip", "node_of", "wait_mesh_ready"}
    for name in PROTOCOL:
        mine = getattr(drv.KubeDriver, name, None)
        assert mine is not None and mine is not getattr(drv.Driver, name), f"KubeDriver.{name} missing"
        assert list(inspect.signature(mine).parameters) == list(inspect.signature(getattr(drv.Driver, name)).parameters)


def test_there_are_scenarios() -> None:
    assert len(scenarios()) >= 3


@pytest.mark.parametrize("name,fn", scenarios(), ids=[n for n, _ in scenarios()])
def test_scenario_has_a_kube_driver_path_or_says_why_not(name: str, fn: ast.FunctionDef) -> None:
    reason = lab_only_reason(fn)
    if reason is not None:
        assert len(reason) > 10, f"{name}: lab_only needs a reason saying why it cannot run on a cluster"
        return
    assert "driver" in [a.arg for a in fn.args.args], f"{name}: takes no `driver`: it cannot run on a cluster"
    for node in ast.walk(fn):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "driver":
            assert node.attr in PROTOCOL, (f"{name}: driver.{node.attr} is not in the Driver protocol, so "
                                           "KubeDriver has no path for it (or mark it lab_only with a reason)")
        if isinstance(node, ast.Name):
            assert node.id not in ("Lab", "LabDriver", "KubeDriver"), f"{name}: uses {node.id} directly"
