"""`ambit apply --dry-run`: the same validation, translation and advisories as a real apply (one
code path, `plan_apply`), printing what would change and applying nothing; usable in CI with no lab."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ambit.labstore import LabStore
from ambitctl.cli import build_parser
from ambitctl.lab.paths import store_path
from tests.unit.controller.ctl_examples import EXAMPLES

REPO = Path(__file__).resolve().parents[3]

WAYPOINT_BAD_FOR = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo, labels: {ambit.io/waypoint-for: everything}}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "lab"
    monkeypatch.setenv("AMBIT_LAB_DIR", str(d))
    return d


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    args.stdout, args.stderr, args.stdin = out, err, io.StringIO(stdin)
    return args.func(args), out.getvalue(), err.getvalue()


def test_dry_run_needs_no_lab_and_writes_nothing(lab_dir: Path) -> None:
    rc, out, err = run("apply", "--dry-run", "-f", str(EXAMPLES / "istio"), "-n", "demo")
    assert rc == 0, err
    assert "virtualservice.networking.istio.io/myapp created (dry run)" in out.splitlines()
    assert "Warning: DestinationRule/demo/myapp-tls: spec.trafficPolicy.tls" in err   # warnings still printed
    assert not lab_dir.exists(), "a dry run must not create the lab directory or its store"


def test_dry_run_predicts_what_the_real_apply_then_does(lab_dir: Path) -> None:
    for step in ("first", "again", "changed"):
        if step == "changed":
            vs = yaml.safe_load((EXAMPLES / "istio" / "virtual-service.yaml").read_text())
            vs["spec"]["http"][0]["timeout"] = "3s"
            argv, stdin = ("-f", "-"), yaml.safe_dump(vs)
        else:
            argv, stdin = ("-f", str(EXAMPLES / "istio")), ""
        rev = LabStore(store_path()).revision() if store_path().exists() else None
        rc, dry, dry_err = run("apply", "--dry-run=server", *argv, "-n", "demo", stdin=stdin)
        assert rc == 0
        assert (LabStore(store_path()).revision() if store_path().exists() else None) == rev, "dry run wrote"
        rc, real, real_err = run("apply", *argv, "-n", "demo", stdin=stdin)
        assert rc == 0
        assert dry.replace(" (dry run)", "") == real, step
        assert dry_err == real_err, step
    assert "virtualservice.networking.istio.io/myapp configured" in real


def test_dry_run_refuses_what_apply_refuses_with_a_non_zero_exit(lab_dir: Path, tmp_path: Path) -> None:
    vs = yaml.safe_load((EXAMPLES / "istio" / "virtual-service.yaml").read_text())
    vs["spec"]["http"][0]["route"][0]["weight"] = "ten"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(vs))
    for extra in (["--dry-run"], []):
        rc, out, err = run("apply", *extra, "-f", str(bad), "-n", "demo")
        assert rc == 1 and out == ""
        assert "VirtualService/demo/myapp: spec.http[0].route[0].weight: must be an integer" in err
        assert "nothing was applied" in err


def test_translation_errors_refuse_the_batch_in_both_modes(lab_dir: Path) -> None:
    """Validation passes, translation does not (an unknown waypoint-for value): refused, named."""
    for extra in (["--dry-run"], []):
        rc, out, err = run("apply", *extra, "-f", "-", stdin=WAYPOINT_BAD_FOR)
        assert rc == 1, (extra, out, err)
        assert "Gateway/demo/waypoint: metadata.labels: waypoint-for 'everything' is not one of" in err
    assert not store_path().exists() or LabStore(store_path()).list("Gateway") == []


def test_warnings_as_errors(lab_dir: Path) -> None:
    rc, _, err = run("apply", "--dry-run", "--warnings-as-errors", "-f", str(EXAMPLES / "istio" / "destination-rule.yaml"))
    assert rc == 1 and "Warning: " in err and "--warnings-as-errors" in err
    rc, _, err = run("apply", "--dry-run", "--warnings-as-errors", "-f", "-",
                     stdin="apiVersion: v1\nkind: Namespace\nmetadata: {name: quiet}\n")
    assert rc == 0 and err == ""


def test_ci_usage_from_the_command_line(tmp_path: Path) -> None:
    """What a CI job runs: no lab, no root, a lab directory that does not exist."""
    env = {**os.environ, "AMBIT_LAB_DIR": str(tmp_path / "nowhere")}
    ok = subprocess.run([sys.executable, "-m", "ambitctl.cli", "apply", "--dry-run", "-f", str(EXAMPLES / "gateway-api")],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert all(line.endswith("(dry run)") for line in ok.stdout.splitlines()) and ok.stdout
    bad = subprocess.run([sys.executable, "-m", "ambitctl.cli", "apply", "--dry-run", "-f", "-"],
                         input="apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\n"
                               "spec: {hosts: [x], http: [{route: [{destination: {host: x}}], bogus: 1}]}\n",
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert bad.returncode == 1 and "spec.http[0].bogus: unknown field" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_status_written_by_the_controller_is_not_a_change(lab_dir: Path) -> None:
    """The store keeps the status the controller wrote when the applied object has none: the
    dry run must not predict `configured` for it (found in the lab: targetRefs policies)."""
    rc, _, _ = run("apply", "-f", str(EXAMPLES / "istio" / "peer-authentication.yaml"), "-n", "demo")
    store = LabStore(store_path())
    [pa] = store.list("PeerAuthentication", "demo")
    store.apply([{**pa, "status": {"conditions": [{"type": "Accepted", "status": "True"}]}}])
    rc, out, _ = run("apply", "--dry-run", "-f", str(EXAMPLES / "istio" / "peer-authentication.yaml"), "-n", "demo")
    assert out.endswith("unchanged (dry run)\n"), out
    rc, out, _ = run("apply", "-f", str(EXAMPLES / "istio" / "peer-authentication.yaml"), "-n", "demo")
    assert out.endswith("unchanged\n"), out


def test_a_status_the_controller_writes_at_once_does_not_make_a_new_object_unchanged(
        lab_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The running controller writes a new policy's status as soon as it sees it. Landing between
    the apply and the read-back that decided the verdict, that write gave the object a newer
    resourceVersion than the apply's, and `ambit apply` printed `unchanged` for an object it had just
    created (a lab test failed so under load). The verdict now comes from the write itself."""
    real_apply = LabStore.apply

    def apply_then_controller_writes_status(self: LabStore, objs: list, written: set | None = None) -> int:
        rev = real_apply(self, objs, written)
        controller = LabStore(store_path())     # another writer on the same store, as the controller is
        for o in controller.list("PeerAuthentication", "demo"):
            if "status" not in o:
                real_apply(controller, [{**o, "status": {"conditions": [{"type": "Accepted", "status": "True"}]}}])
        return rev

    monkeypatch.setattr(LabStore, "apply", apply_then_controller_writes_status)
    pa = str(EXAMPLES / "istio" / "peer-authentication.yaml")
    rc, out, err = run("apply", "-f", pa, "-n", "demo")
    assert rc == 0 and out.endswith(" created\n") and "unchanged" not in out, (out, err)
    assert LabStore(store_path()).list("PeerAuthentication", "demo")[0]["status"]     # the status did land
    rc, out, _ = run("apply", "-f", pa, "-n", "demo")
    assert rc == 0 and out.endswith(" unchanged\n"), out


def test_a_namespace_the_lab_does_not_have_is_warned(lab_dir: Path) -> None:
    """`-n defualt` put the object where nothing lives, silently (kubectl is refused by the API server)."""
    LabStore(store_path()).apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
                                  for n in ("default", "demo")])
    vs = str(EXAMPLES / "istio" / "virtual-service.yaml")
    for dry in ((), ("--dry-run",)):
        rc, _, err = run("apply", *dry, "-f", vs, "-n", "defualt")
        assert rc == 0
        assert ('Warning: VirtualService/defualt/myapp: metadata.namespace: namespace "defualt" does not exist in '
                "the lab (it has default, demo)") in err
    rc, _, err = run("apply", "-f", vs, "-n", "demo")
    assert rc == 0 and "does not exist" not in err
    rc, out, err = run("apply", "-n", "shop", "-f", "-", stdin="apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
                       "---\n" + (EXAMPLES / "istio" / "virtual-service.yaml").read_text())
    assert rc == 0 and "does not exist" not in err      # the batch creates it
    assert LabStore(store_path()).get("VirtualService", "shop", "myapp") is not None


# -- manifests read as strictly as kubectl reads them ----------------------------------------------

DENY_THEN_ALLOW = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: demo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
  action: ALLOW
"""


@pytest.mark.parametrize("command", ["apply", "analyze"])
def test_a_key_written_twice_is_refused_naming_both_lines(lab_dir: Path, command: str) -> None:
    """PyYAML kept the last `action`: a DENY policy was applied as ALLOW, silently."""
    argv = ("apply", "--dry-run", "-f", "-") if command == "apply" else ("analyze", "--offline", "-f", "-")
    rc, out, err = run(*argv, stdin=DENY_THEN_ALLOW)
    assert rc == 1 and out == ""
    assert err.strip() == 'error: <stdin>: not valid YAML: line 8: mapping key "action" already defined at line 6'
    merged = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: demo}
spec:
  <<: {hosts: [other]}
  hosts: [echo]
  http: [{route: [{destination: {host: echo}}]}]
"""
    rc, out, err = run(*argv, stdin=merged)      # an explicit key overriding a merged one is YAML
    assert rc == 0, err


def test_a_billion_laughs_manifest_is_refused_at_once(lab_dir: Path) -> None:
    """Nine anchors of nine aliases each: ~700 bytes that expand to ~10^9 nodes. Quoting the label
    value in the error (json) walked all of them: `ambit apply --dry-run` hung, eating memory."""
    bomb = "".join(f"  x{i}: &x{i} [" + ",".join([f"*x{i - 1}"] * 9) + "]\n" for i in range(1, 9))
    doc = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nstatus:\n  x0: &x0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
           + bomb + "metadata: {name: bomb, namespace: demo, labels: {app: *x8}}\n"
           "spec: {hosts: [echo], http: [{route: [{destination: {host: echo}}]}]}\n")
    rc, _, err = run("apply", "--dry-run", "-f", "-", stdin=doc)
    assert rc == 1
    assert "not valid YAML: document contains excessive aliasing: its" in err


def test_a_manifest_that_contains_itself_is_refused_at_once(lab_dir: Path) -> None:
    """`&x [*x]`: YAML allows a node to contain itself; the aliasing check walked it for ever."""
    doc = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: loop, namespace: demo}\n"
           "status: {x: &x [1, *x]}\nspec: {hosts: [echo], http: [{route: [{destination: {host: echo}}]}]}\n")
    rc, _, err = run("apply", "--dry-run", "-f", "-", stdin=doc)
    assert rc == 1 and "a Kubernetes object cannot contain itself" in err


def test_a_manifest_nested_too_deeply_is_refused_without_a_traceback(lab_dir: Path) -> None:
    rc, _, err = run("apply", "--dry-run", "-f", "-", stdin="a: " + "[" * 3000 + "]" * 3000 + "\n")
    assert (rc, err.strip()) == (1, "error: <stdin>: not valid YAML: nested too deeply to read")


def test_an_unquoted_date_stays_a_string_and_a_set_is_refused(lab_dir: Path) -> None:
    """PyYAML made `2024-01-01T00:00:00Z` a datetime: the dry run said "created", then the real
    apply died with a traceback (the store's JSON cannot hold a datetime)."""
    doc = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ts, namespace: demo}\n"
           "spec: {hosts: [echo], http: [{route: [{destination: {host: echo}}]}]}\n"
           "status: {observed: 2024-01-01T00:00:00Z}\n")
    rc, out, err = run("apply", "-f", "-", stdin=doc)
    assert rc == 0, err
    assert out.strip() == "virtualservice.networking.istio.io/ts created"
    stored = LabStore(store_path()).snapshot().objects[("VirtualService", "demo", "ts")]
    assert stored["status"] == {"observed": "2024-01-01T00:00:00Z"}
    rc, _, err = run("apply", "-f", "-", stdin="apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\nstatus: !!set {a}\n")
    assert (rc, err.strip()) == (1, "error: <stdin>: not valid YAML: line 4: a YAML set has no JSON form, and a "
                                    "Kubernetes object is JSON")


CUSTOM_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: demo}
spec:
  action: CUSTOM
  provider: {name: opa}
  targetRefs: [{kind: Service, group: "", name: myapp}]
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"""


def test_a_custom_policy_is_warned_only_when_the_lab_mesh_config_lacks_its_authorizer(lab_dir: Path) -> None:
    """`ambit apply` reads the lab controller's mesh config for the external authorizers: a CUSTOM
    policy naming one it defines gets no provider warning; one it does not define is warned (its
    rules deny until it is). `ambit analyze -f` without a lab cannot know them, and says nothing."""
    from ambitctl.lab.components import mesh_config_file
    rc, _, err = run("apply", "--dry-run", "-f", "-", stdin=CUSTOM_POLICY)
    assert rc == 0, err
    assert 'spec.provider.name: provider "opa" is not an external authorizer defined' in err
    lab_dir.mkdir(parents=True)
    mesh_config_file(lab_dir).write_text(yaml.safe_dump({"extensionProviders": [
        {"name": "opa", "envoyExtAuthzGrpc": {"service": "opa.authz.svc.cluster.local", "port": 9191}}]}))
    rc, _, err = run("apply", "--dry-run", "-f", "-", stdin=CUSTOM_POLICY)
    assert rc == 0 and "spec.provider.name" not in err, err
    f = lab_dir / "policy.yaml"
    f.write_text(CUSTOM_POLICY)
    rc, out, err = run("analyze", "--offline", "-f", str(f), "-A")
    assert "spec.provider.name" not in out + err


GATEWAY_WITH_PARAMETERS = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
  infrastructure:
    parametersRef: {group: "", kind: ConfigMap, name: wp-options}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: wp-options, namespace: demo}
data:
  deployment: |
    spec: {template: {spec: {serviceAccountName: default}}}
"""


def test_a_parameters_ref_is_no_silent_no_op_in_the_lab(lab_dir: Path) -> None:
    """The lab runs gateways as processes: `ambit apply` says the overlays apply in a cluster only,
    and what a cluster's controller would refuse of them."""
    rc, _, err = run("apply", "--dry-run", "-f", "-", stdin=GATEWAY_WITH_PARAMETERS)
    assert rc == 0, err
    [warning] = [w for w in err.splitlines() if "parametersRef" in w]
    assert warning.startswith("Warning: Gateway/demo/waypoint: spec.infrastructure.parametersRef: not applied in "
                              "the lab, which runs gateways as processes, not Deployments")
    assert "InvalidParameters): parametersRef ConfigMap demo/wp-options: key deployment: " \
           "spec.template.spec.serviceAccountName is Ambit's" in warning
    rc, _, err = run("apply", "--dry-run", "-f", "-",
                     stdin=GATEWAY_WITH_PARAMETERS.replace("serviceAccountName: default", "priorityClassName: x"))
    [warning] = [w for w in err.splitlines() if "parametersRef" in w]
    assert warning.endswith("its overlays apply in a cluster only")


CLASS_DEFAULTS = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: waypoint-defaults
  namespace: ambit-system
  labels: {gateway.istio.io/defaults-for-class: ambit-waypoint}
data:
  deployment: |
    spec: {template: {spec: {serviceAccountName: default}}}
"""
# the Gateway of GATEWAY_WITH_PARAMETERS, named plain, without its parametersRef
PLAIN_WAYPOINT = GATEWAY_WITH_PARAMETERS.split("  infrastructure:")[0].replace("{name: waypoint,", "{name: plain,")


def test_class_defaults_are_no_silent_no_op_in_the_lab(lab_dir: Path) -> None:
    """A class defaults ConfigMap applies in a cluster only: `ambit apply` says so of the ConfigMap,
    with what a cluster's controller would refuse of it, and of a Gateway of the class applied later."""
    rc, _, err = run("apply", "--dry-run", "-f", "-", stdin=CLASS_DEFAULTS)
    assert rc == 0, err
    [warning] = [w for w in err.splitlines() if "defaults-for-class" in w]
    assert warning.startswith("Warning: ConfigMap/ambit-system/waypoint-defaults: metadata.labels.gateway.istio.io/"
                              "defaults-for-class: the defaults of the Gateways of class ambit-waypoint, not applied "
                              "in the lab"), warning
    assert "key deployment: spec.template.spec.serviceAccountName is Ambit's" in warning
    rc, _, err = run("apply", "-f", "-", stdin=CLASS_DEFAULTS.replace("serviceAccountName: default",
                                                                      "priorityClassName: x"))
    assert rc == 0, err
    rc, _, err = run("apply", "--dry-run", "-f", "-", stdin=PLAIN_WAYPOINT)
    assert rc == 0, err
    [warning] = [w for w in err.splitlines() if "defaults-for-class" in w]
    assert warning == ("Warning: Gateway/demo/plain: class defaults (gateway.istio.io/defaults-for-class: "
                       "ambit-waypoint) ConfigMap ambit-system/waypoint-defaults: not applied in the lab, which runs "
                       "gateways as processes, not Deployments: its overlays apply in a cluster only"), warning


ISTIOD_WARNED = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pg, namespace: demo}
spec:
  hosts: [pg.example.com]
  resolution: NONE
  ports: [{number: 5432, name: pg, protocol: TCP}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: traces, namespace: demo}
spec:
  tracing: [{providers: [{name: zipkin}, {name: otel}]}]
"""


def test_istiods_warnings_on_entries_and_telemetries_are_printed(lab_dir: Path) -> None:
    """istiod's webhook would warn about both objects; `ambit apply` says the same, naming each."""
    rc, _, err = run("apply", "--dry-run", "-f", "-", stdin=ISTIOD_WARNED)
    assert rc == 0, err
    assert ("Warning: ServiceEntry/demo/pg: spec.ports[0]: addresses are required for ports serving TCP (or unset) "
            "protocol when IP Autoallocation is not enabled (istiod warns too)") in err
    assert ("Warning: Telemetry/demo/traces: spec.tracing[0].providers: multiple providers is not currently "
            "supported") in err
