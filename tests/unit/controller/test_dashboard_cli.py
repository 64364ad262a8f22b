"""`ambit dashboard` and the lab's wiring of the view: the URL printed is the controller's own
--dashboard-address, the lab's Prometheus is passed when it runs one, and a cluster gets the
port-forward that reaches the controller's loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambitctl.cli import main
from ambitctl.lab import dashboard, state
from ambitctl.lab.state import LabState, ProcSpec
from controller.settings import load


def lab_state(base: Path, prometheus: dict[str, int] | None = None) -> LabState:
    ctl = ProcSpec(id="controller", component="controller", cgroup="/x",
                   argv=["python", "-m", "controller", "--lab-store", str(base / "store.json")])
    return LabState(name="t", lab_dir=str(base), spec={"nodes": [], "pods": []}, processes=[ctl],
                    prometheus=prometheus or {})


def test_enable_gives_the_controller_flags_it_parses(tmp_path: Path) -> None:
    st = lab_state(tmp_path, {"port": 9090, "bridge_port": 9091})
    dashboard.enable(st, tmp_path)
    argv = st.proc("controller").argv
    args = load(argv[3:], {})
    assert dashboard.url(st) == f"http://{args.dashboard_address}/" and args.dashboard_address.startswith("127.0.0.1:")
    assert args.prometheus_url == "http://127.0.0.1:9090" and not args.dashboard_ztunnel_metrics
    assert args.dashboard_access_logs == tmp_path / "logs"
    plain = lab_state(tmp_path)           # no Prometheus: the controller scrapes the proxies' sockets
    dashboard.enable(plain, tmp_path)
    args = load(plain.proc("controller").argv[3:], {})
    assert not args.prometheus_url
    assert args.dashboard_ztunnel_metrics.format(node="node1") == f"unix:{tmp_path}/node1/metrics.sock"
    assert args.dashboard_waypoint_metrics.format(namespace="default", name="waypoint") == \
        f"unix:{tmp_path}/waypoints/default.waypoint.metrics.sock"


def test_ambit_dashboard_prints_the_labs_url_and_says_when_nothing_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        main(["dashboard"])
    assert e.value.code == 1 and "--kube" in capsys.readouterr().err     # no lab
    st = lab_state(tmp_path)
    dashboard.enable(st, tmp_path)
    state.save(st, tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["dashboard"])
    out = capsys.readouterr().out
    assert e.value.code == 1 and out.splitlines()[0] == dashboard.url(st) and "nothing answers" in out


def test_ambit_dashboard_kube_prints_the_port_forward(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["dashboard", "--kube", "-n", "mesh-ops", "--port", "16000"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "kubectl -n mesh-ops port-forward deploy/ambit-controller 16000:16000" in out
    assert "http://127.0.0.1:16000/" in out


def test_lab_tracing_points_the_waypoints_and_the_view_at_the_collector(tmp_path: Path) -> None:
    from ambitctl.lab import tracing
    from ambitctl.lab.spec import parse
    from waypoint.settings import load as waypoint_settings
    spec = parse({"pods": [{"name": "a", "node": "node1", "command": ["sleep", "1"]},
                           {"name": "b", "node": "node2", "command": ["sleep", "1"]}]})
    pod = tracing.add_collector(spec, tmp_path)
    assert (pod.namespace, pod.node, pod.ip) == ("ambit-system", "node1", "10.210.1.11")
    assert "ambit-system" in spec.namespaces and not spec.namespaces["ambit-system"]     # outside the mesh
    st = lab_state(tmp_path)
    assert tracing.waypoint_args(st) == [] and tracing.controller_args(st) == []
    tracing.enable(st, tmp_path, pod)
    dashboard.enable(st, tmp_path)
    args = load(st.proc("controller").argv[3:], {})
    assert (args.tracing_url, args.tracing_api) == (f"unix:{tmp_path}/tracing/query.sock", "zipkin")
    assert f"{tmp_path}/tracing/query.sock" in pod.command
    wp = waypoint_settings(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "node2",
                            *tracing.waypoint_args(st)], {})
    assert (wp.tracing_otlp, wp.tracing_sampling) == ("10.210.1.11:4317", 100.0)
