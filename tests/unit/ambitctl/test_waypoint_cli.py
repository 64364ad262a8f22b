"""`ambit waypoint apply|generate|list|status|delete` against a real LabStore, with the controller's
lab status writer standing in for the running controller."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
import yaml

from ambit.labstore import LabStore
from ambitctl.commands import waypoint
from ambitctl.lab.paths import store_path
from controller.validation import validate
from controller.waypoints.labstatus import LabWaypointStatus


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabStore:
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    s = LabStore(store_path())
    s.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}])
    return s


def run(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="ambit")
    waypoint.register(parser.add_subparsers())
    args = parser.parse_args(["waypoint", *argv])
    out, err = io.StringIO(), io.StringIO()
    args.stdout, args.stderr = out, err
    return args.func(args), out.getvalue(), err.getvalue()


def test_generate_writes_what_istioctl_writes_in_ambits_class() -> None:
    rc, out, _ = run("generate", "-n", "demo", "--for", "all")
    gw = yaml.safe_load(out)
    validate(gw)
    assert gw == {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                  "metadata": {"name": "waypoint", "namespace": "demo", "labels": {"ambit.io/waypoint-for": "all"}},
                  "spec": {"gatewayClassName": "ambit-waypoint",
                           "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def test_apply_enroll_list_status_delete(store: LabStore) -> None:
    rc, out, err = run("apply", "-n", "demo", "--enroll-namespace")
    assert rc == 0, err
    assert out.splitlines() == ["waypoint demo/waypoint applied",
                                'namespace demo labeled with "ambit.io/use-waypoint: waypoint"']
    assert store.get("Namespace", "", "demo")["metadata"]["labels"] == {"ambit.io/use-waypoint": "waypoint"}
    gw = store.get("Gateway", "demo", "waypoint")
    assert gw["metadata"]["labels"] == {"ambit.io/waypoint-for": "service"}

    # before the controller has seen it: no status, `status` says so and fails
    rc, out, _ = run("status", "-n", "demo")
    assert rc == 1 and "no status yet" in out
    rc, out, _ = run("list", "-n", "demo")
    assert out.splitlines()[1].split() == ["waypoint", "ambit-waypoint", "service", "Unknown", "<none>"]

    # the lab creates the waypoint's Service; the controller writes the status
    store.apply([{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "waypoint", "namespace": "demo"},
                  "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "mesh", "port": 15008}]}}])
    LabWaypointStatus(store).reconcile(store.list())
    rc, out, _ = run("list", "-A")
    assert out.splitlines()[0].split() == ["NAMESPACE", "NAME", "CLASS", "FOR", "PROGRAMMED", "ADDRESS"]
    assert out.splitlines()[1].split() == ["demo", "waypoint", "ambit-waypoint", "service", "True", "10.96.0.9"]
    rc, out, _ = run("status", "-n", "demo", "--name", "waypoint")
    assert rc == 0
    rows = [line.split()[:5] for line in out.splitlines()[1:]]
    assert ["demo", "waypoint", "True", "Programmed", "Programmed"] in rows
    assert ["demo", "waypoint", "True", "Accepted", "Accepted"] in rows
    rc, out, _ = run("apply", "-n", "demo", "--wait", "--timeout", "1")
    assert rc == 0 and "waypoint demo/waypoint programmed (10.96.0.9)" in out

    # a second waypoint does not steal the namespace without --overwrite
    rc, _, err = run("apply", "-n", "demo", "--name", "other", "--enroll-namespace")
    assert rc == 1 and 'already uses waypoint "waypoint"; pass --overwrite' in err
    rc, _, _ = run("apply", "-n", "demo", "--name", "other", "--enroll-namespace", "--overwrite", "--for", "workload")
    assert rc == 0 and store.get("Namespace", "", "demo")["metadata"]["labels"]["ambit.io/use-waypoint"] == "other"

    # non-waypoint Gateways are neither listed nor deleted
    store.apply([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                  "metadata": {"name": "ingress", "namespace": "demo"},
                  "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}])
    rc, out, _ = run("list", "-n", "demo")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["other", "waypoint"]
    rc, _, err = run("delete", "-n", "demo", "ingress")
    assert rc == 1 and "not a waypoint" in err and store.get("Gateway", "demo", "ingress")
    rc, out, _ = run("delete", "-n", "demo", "--all")
    assert rc == 0 and out.splitlines() == ["waypoint demo/other deleted", "waypoint demo/waypoint deleted"]
    rc, _, err = run("delete", "-n", "demo")
    assert rc == 1 and 'waypoint "waypoint" not found' in err


def test_apply_enroll_needs_the_namespace(store: LabStore) -> None:
    rc, _, err = run("apply", "-n", "nowhere", "--enroll-namespace")
    assert rc == 1 and 'namespace "nowhere" not found' in err
    assert store.get("Gateway", "nowhere", "waypoint") is None
    # without --enroll-namespace too (a typo in -n started a waypoint pod in no namespace)
    rc, _, err = run("apply", "-n", "nowhere")
    assert rc == 1 and 'namespace "nowhere" not found' in err
    assert store.get("Gateway", "nowhere", "waypoint") is None


def test_context_picks_the_cluster_as_the_other_read_commands_do(store: LabStore, tmp_path: Path) -> None:
    """`--context` (kubectl's habit, taken by every read command) selects that kubeconfig context's
    cluster, not the lab store; before, it was an unrecognised argument."""
    from tests.support.kube_emulator import KubeEmulator
    with KubeEmulator() as emu:
        emu.create(waypoint.gateway("waypoint", "prod", "service"))
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "dead",
            "clusters": [{"name": "dead", "cluster": {"server": "http://127.0.0.1:1"}},
                         {"name": "emu", "cluster": {"server": emu.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}},
                         {"name": "prod", "context": {"cluster": "emu", "user": "u", "namespace": "prod"}}]}))
        rc, out, err = run("list", "-A", "--kubeconfig", str(cfg), "--context", "prod")
        assert rc == 0, err
        assert [ln.split()[:2] for ln in out.splitlines()[1:]] == [["prod", "waypoint"]], out
        # no -n: the context's namespace, as kubectl (it was always "default")
        rc, out, err = run("status", "--kubeconfig", str(cfg), "--context", "prod")
        assert [ln.split()[:2] for ln in out.splitlines()[1:]] == [["prod", "waypoint"]], (out, err)
    assert not store.list("Gateway")
    rc, out, err = run("list")        # the lab: default
    assert rc == 0 and "No waypoints found in namespace default." in out + err


def test_delete_warns_while_the_namespace_still_uses_the_waypoint(store: LabStore) -> None:
    """Deleting the waypoint of an enrolled namespace leaves ztunnel refusing that namespace's
    traffic (fail closed): the delete says so and how to undo it; it said only `deleted`."""
    run("apply", "-n", "demo", "--enroll-namespace")
    run("apply", "-n", "demo", "--name", "spare")
    rc, out, err = run("delete", "-n", "demo", "spare")
    assert rc == 0 and out == "waypoint demo/spare deleted\n" and err == ""
    rc, out, err = run("delete", "-n", "demo")
    assert rc == 0 and out == "waypoint demo/waypoint deleted\n"
    assert err.startswith("Warning: namespace demo still has ambit.io/use-waypoint=waypoint: ztunnel refuses")
    assert "`ambit label ns demo ambit.io/use-waypoint-`" in err
