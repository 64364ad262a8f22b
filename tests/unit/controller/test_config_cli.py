"""`ambit apply/get/delete` against a real LabStore in a temporary lab directory."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from ambit.labstore import LabStore
from ambitctl.commands import config
from ambitctl.lab.paths import store_path
from tests.unit.controller.ctl_examples import EXAMPLES


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="ambit")
    config.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    args.stdout, args.stderr, args.stdin = out, err, io.StringIO(stdin)
    rc = args.func(args)
    return rc, out.getvalue(), err.getvalue()


def test_apply_get_delete_round_trip(lab_dir: Path) -> None:
    rc, out, err = run("apply", "-f", str(EXAMPLES / "istio"), "-n", "demo")
    assert rc == 0, err
    assert "virtualservice.networking.istio.io/myapp created" in out.splitlines()
    assert "peerauthentication.security.istio.io/default created" in out.splitlines()
    assert len(out.splitlines()) == 8

    rc, out, _ = run("apply", "-f", str(EXAMPLES / "istio" / "virtual-service.yaml"), "-n", "demo")
    assert (rc, out) == (0, "virtualservice.networking.istio.io/myapp unchanged\n")

    changed = yaml.safe_load((EXAMPLES / "istio" / "virtual-service.yaml").read_text())
    changed["spec"]["http"][0]["timeout"] = "2s"
    rc, out, _ = run("apply", "-f", "-", "-n", "demo", stdin=yaml.safe_dump(changed))
    assert (rc, out) == (0, "virtualservice.networking.istio.io/myapp configured\n")
    stored = LabStore(store_path()).get("VirtualService", "demo", "myapp")
    assert stored["spec"]["http"][0]["timeout"] == "2s"

    for kind in ("vs", "virtualservices", "VirtualService", "virtualservice.networking.istio.io"):
        rc, out, _ = run("get", kind, "-n", "demo")
        assert rc == 0 and out.splitlines()[0].split() == ["NAME", "GATEWAYS", "HOSTS", "AGE"]
        assert sorted(line.split()[0] for line in out.splitlines()[1:]) == ["myapp", "myapp-canary"]

    rc, out, _ = run("get", "dr", "myapp-tls", "-n", "demo", "-o", "json")
    assert json.loads(out)["spec"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"
    rc, out, _ = run("get", "ap", "-A", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["kind"] == "List" and [i["metadata"]["name"] for i in doc["items"]] == ["myapp-auth"]
    rc, out, _ = run("get", "pa", "-A")
    assert out.splitlines()[1].split()[:3] == ["demo", "default", "STRICT"]

    rc, out, err = run("delete", "-f", str(EXAMPLES / "istio" / "virtual-service.yaml"), "-n", "demo")
    assert (rc, out) == (0, 'virtualservice.networking.istio.io "myapp" deleted\n')
    rc, out, err = run("get", "vs", "myapp", "-n", "demo")
    assert rc == 1 and 'virtualservices.networking.istio.io "myapp" not found' in err
    rc, out, err = run("delete", "vs", "myapp-canary", "gone", "-n", "demo")
    assert rc == 1 and out == 'virtualservice.networking.istio.io "myapp-canary" deleted\n'
    assert 'virtualservices.networking.istio.io "gone" not found' in err
    rc, _, err = run("get", "vs", "-n", "demo")
    assert rc == 0 and "No resources found in demo namespace." in err


def test_a_bad_batch_changes_nothing_and_reports_every_error(lab_dir: Path, tmp_path: Path) -> None:
    rc, _, _ = run("apply", "-f", str(EXAMPLES / "gateway-api" / "waypoint.yaml"))
    assert rc == 0
    before = LabStore(store_path()).snapshot()

    bad_dir = tmp_path / "batch"
    shutil.copytree(EXAMPLES / "istio", bad_dir)
    vs = yaml.safe_load((bad_dir / "virtual-service.yaml").read_text())
    vs["spec"]["http"][0]["route"][0]["weight"] = "ten"
    (bad_dir / "virtual-service.yaml").write_text(yaml.safe_dump(vs))
    pa = yaml.safe_load((bad_dir / "peer-authentication.yaml").read_text())
    pa["spec"]["mtls"]["mode"] = "STRICTEST"
    (bad_dir / "peer-authentication.yaml").write_text(yaml.safe_dump(pa))

    rc, out, err = run("apply", "-f", str(bad_dir))
    assert rc == 1 and out == ""
    assert err.splitlines() == [
        'error: PeerAuthentication/default/default: spec.mtls.mode: must be one of UNSET, DISABLE, PERMISSIVE, STRICT, '
        'got "STRICTEST"',
        'error: VirtualService/default/myapp: spec.http[0].route[0].weight: must be an integer 0..2147483647, got "ten"',
        "error: 2 problem(s) found; nothing was applied",
    ]
    after = LabStore(store_path()).snapshot()
    assert after.revision == before.revision and after.objects == before.objects


def test_apply_rejects_bad_input_cleanly(lab_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    rc, _, err = run("apply", "-f", str(broken))
    assert rc == 1 and "not valid YAML" in err
    rc, _, err = run("apply", "-f", str(tmp_path / "missing.yaml"))
    assert rc == 1 and "does not exist" in err
    doc = (EXAMPLES / "gateway-api" / "httproute-split.yaml").read_text()
    rc, _, err = run("apply", "-f", "-", "-n", "other", stdin=doc)
    assert rc == 1 and 'does not match the namespace "other"' in err
    rc, _, err = run("get", "frobs")
    assert rc == 1 and 'doesn\'t have a resource type "frobs"' in err
    assert not store_path().exists() or LabStore(store_path()).list() == []


def test_list_documents_and_core_kinds(lab_dir: Path) -> None:
    manifest = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"ambit.io/dataplane-mode": "ambient"}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "echo-1", "namespace": "demo", "labels": {"app": "echo"}},
         "spec": {"nodeName": "node-1", "containers": [{"name": "echo"}]},
         "status": {"phase": "Running", "podIP": "10.244.1.5"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "demo"},
         "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "echo"}, "ports": [{"port": 8080}]}},
    ]}
    rc, out, err = run("apply", "-f", "-", stdin=json.dumps(manifest))
    assert rc == 0, err
    assert out.splitlines() == ["namespace/demo created", "pod/echo-1 created", "service/echo created"]
    rc, out, _ = run("get", "po", "-n", "demo", "-o", "wide")
    assert out.splitlines()[1].split()[:4] == ["echo-1", "Running", "10.244.1.5", "node-1"]
    rc, out, _ = run("get", "ns")
    assert out.splitlines()[1].split()[:2] == ["demo", "Active"]
    rc, out, _ = run("get", "svc", "echo", "-n", "demo")
    assert out.splitlines()[1].split()[:3] == ["echo", "10.96.0.10", "8080/TCP"]


@pytest.mark.parametrize("name", ["vs", "dr", "ap", "pa", "po", "svc", "ns", "httproutes", "gateway", "telemetry"])
def test_short_names_resolve(name: str) -> None:
    assert config.by_name(name) is not None
