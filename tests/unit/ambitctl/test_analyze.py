"""`ambit analyze`: each broken fixture under tests/fixtures/analyze/ yields exactly the findings its
`# expect:` lines name (code, object, field), nothing else at Warning or above; the shared examples
yield no false positive; exit codes suit CI; files, the lab's store, or both."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ambit.labstore import LabStore
from ambitctl import analyze as an
from ambitctl.cli import build_parser
from ambitctl.lab.paths import store_path
from tests.unit.controller.ctl_examples import EXAMPLES, example_files

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "analyze"
FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))


def directives(path: Path, name: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
            if line.startswith(f"# {name}:")]


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def significant(found: list[an.Finding]) -> set[tuple[str, str, str]]:
    return {(f.code, f.ref, f.path) for f in an.at_or_above(found, an.WARNING)}


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=[f.stem for f in FIXTURE_FILES])
def test_each_fixture_finds_its_problem_and_nothing_else(fixture: Path) -> None:
    expected = {tuple(e.split()) for e in directives(fixture, "expect")}
    assert expected, f"{fixture.name} has no `# expect:` lines"
    traffic = [t for f in directives(fixture, "traffic")
               for t in an.plaintext_from_metrics((FIXTURES / f).read_text())]
    found = an.analyze(load(fixture), complete=False, traffic=traffic)
    assert significant(found) == expected, "\n".join(str(f) for f in found)
    for f in found:
        assert f.message and f.ref.count("/") >= 1 and f.code in an.CODES


def test_the_fixtures_cover_every_listed_problem() -> None:
    covered = {tuple(e.split())[0] for f in FIXTURE_FILES for e in directives(f, "expect")}
    assert {"AMB0001", "AMB0101", "AMB0102", "AMB0103", "AMB0104", "AMB0105", "AMB0106", "AMB0107",
            "AMB0108", "AMB0109", "AMB0110", "AMB0120", "AMB0121", "AMB0122"} <= covered


def test_files_alone_do_not_call_a_gateway_or_a_grant_missing() -> None:
    """A route whose parent Gateway, or whose backend's ReferenceGrant, may live outside the files is
    not reported from the files alone; with the whole world (--assume-complete) it is."""
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "shop"},
             "spec": {"parentRefs": [{"name": "edge"}, {"group": "", "kind": "Service", "name": "reviews"}],
                      "rules": [{"backendRefs": [{"name": "ledger", "namespace": "payments", "port": 80}]}]}}
    reviews = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
               "spec": {"clusterIP": "10.96.1.10", "ports": [{"name": "http", "port": 9080}]}}
    assert not {c for c, _, _ in significant(an.analyze([route, reviews], complete=False))} & {"AMB0120", "AMB0122"}
    codes = {(c, p) for c, _, p in significant(an.analyze([route, reviews], complete=True))}
    assert {("AMB0120", "spec.parentRefs[0]"), ("AMB0122", "spec.rules[0].backendRefs[0]")} <= codes


@pytest.mark.parametrize("example", example_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_false_positive_on_the_shared_examples(example: Path) -> None:
    """Each example alone: nothing at Error; the only Warning is the Istio tutorial's selector policy
    with HTTP methods and paths, which ztunnel cannot enforce and fails closed on (true in Istio's
    ambient mode too: ZtunnelAccepted=False). Everything else is Info (fields not enforced yet)."""
    found = an.analyze(load(example), complete=False)
    assert not an.at_or_above(found, an.ERROR), "\n".join(map(str, found))
    warnings = {(f.code, f.ref) for f in an.at_or_above(found, an.WARNING)}
    if example.name == "authorization-policy.yaml":
        assert warnings == {("AMB0105", "AuthorizationPolicy/default/myapp-auth")}
    else:
        assert warnings == set(), "\n".join(map(str, found))


def test_files_alone_do_not_report_references_they_cannot_know() -> None:
    vs = load(EXAMPLES / "istio" / "virtual-service.yaml")
    assert significant(an.analyze(vs, complete=False)) == set()
    codes = {c for c, _, _ in significant(an.analyze(vs, complete=True))}
    assert "AMB0101" in codes              # --assume-complete: the files are the whole world


def test_a_translation_error_is_a_finding() -> None:
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "wp", "namespace": "shop", "labels": {"ambit.io/waypoint-for": "everything"}},
          "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "m", "port": 15008,
                                                                        "protocol": "HBONE"}]}}
    assert ("AMB0002", "Gateway/shop/wp", "metadata.labels") in significant(an.analyze([gw], complete=False))


def test_plaintext_facts_from_ztunnel_metrics() -> None:
    facts = an.plaintext_from_metrics((FIXTURES / "strict-plaintext.metrics").read_text())
    assert sorted((t.namespace, t.workload, t.source, t.connections) for t in facts) == [
        ("books", "ratings-v1", "unknown/unknown", 1), ("shop", "reviews-v1", "legacy/legacy-client", 3)]


# -- the command ------------------------------------------------------------------------------------------

@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "lab"
    monkeypatch.setenv("AMBIT_LAB_DIR", str(d))
    return d


def run(*argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    args.stdout, args.stderr = out, err
    return args.func(args), out.getvalue(), err.getvalue()


def test_exit_codes_suit_ci(lab_dir: Path) -> None:
    rc, out, _ = run("analyze", "-f", str(FIXTURES / "host-not-found.yaml"))
    assert rc == 79 and out.count("[AMB0101]") == 3
    rc, out, _ = run("analyze", "-f", str(FIXTURES / "subset-selects-no-pods.yaml"))
    assert rc == 0 and "Warning [AMB0103] (DestinationRule/shop/reviews spec.subsets[1].labels)" in out
    rc, _, _ = run("analyze", "-f", str(FIXTURES / "subset-selects-no-pods.yaml"), "--failure-threshold", "Warning")
    assert rc == 79
    rc, out, _ = run("analyze", "-f", str(EXAMPLES / "istio" / "virtual-service.yaml"))
    assert rc == 0 and out.startswith("✔ No validation issues found when analyzing the given files.")
    rc, _, err = run("analyze")
    assert rc == 1 and "no lab is up" in err


def test_json_output_names_code_severity_object_and_field(lab_dir: Path) -> None:
    rc, out, _ = run("analyze", "-f", str(FIXTURES / "weights-not-honoured.yaml"), "-o", "json",
                     "--output-threshold", "Error")
    doc = json.loads(out)
    assert rc == 79 and {d["code"] for d in doc} == {"AMB0109"}
    assert doc[0].keys() >= {"code", "severity", "name", "ref", "path", "message"}
    assert all(d["severity"] == "Error" and d["name"] == "WeightNotHonoured" for d in doc)


def test_against_the_lab_state_with_namespace_scope(lab_dir: Path) -> None:
    LabStore(store_path()).apply(load(FIXTURES / "use-waypoint-missing.yaml"))
    rc, out, _ = run("analyze", "-n", "shop", "--no-traffic")
    assert rc == 79 and "Service/shop/ratings" in out and "Namespace/books" not in out
    rc, out, _ = run("analyze", "-A", "--no-traffic")
    assert "Service/shop/ratings" in out and "Namespace/books" in out
    rc, out, _ = run("analyze", "-n", "default", "--no-traffic")
    assert rc == 0 and "namespace: default" in out


def test_files_on_top_of_the_lab_state(lab_dir: Path, tmp_path: Path) -> None:
    """A lab that has the Service: a route file alone is then checked against it; --offline ignores it."""
    LabStore(store_path()).apply([o for o in load(FIXTURES / "host-not-found.yaml")
                                  if o["kind"] in ("Namespace", "Gateway", "Service", "Pod")])
    route = tmp_path / "route.yaml"
    route.write_text(yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                                     "metadata": {"name": "r", "namespace": "shop"},
                                     "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {
                                         "host": "reviewz"}}]}]}}))
    rc, out, _ = run("analyze", "-f", str(route), "--no-traffic")
    assert rc == 79 and '[AMB0101] (VirtualService/shop/r spec.http[0].route[0].destination.host)' in out
    rc, out, _ = run("analyze", "-f", str(route), "--offline")
    assert rc == 0


def test_list_codes_and_the_cli_in_a_pipe(lab_dir: Path) -> None:
    rc, out, _ = run("analyze", "--list-codes")
    assert rc == 0 and len(out.splitlines()) == len(an.CODES)
    p = subprocess.run([sys.executable, "-m", "ambitctl.cli", "analyze", "-f", str(FIXTURES / "invalid.yaml")],
                       capture_output=True, text=True, cwd=REPO, timeout=60,
                       env={**os.environ, "AMBIT_LAB_DIR": str(lab_dir)})
    assert p.returncode == 79 and "\033" not in p.stdout and "Error [AMB0001]" in p.stdout


def test_offline_targets_and_waypoints_of_unknown_kinds_are_not_reported() -> None:
    """Files alone: a targetRefs Service or a Service's waypoint Gateway may exist in the cluster."""
    ap = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "p", "namespace": "shop"},
          "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "ratings"}],
                   "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}}
    assert significant(an.analyze([ap], complete=False)) == set()
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "ratings", "namespace": "shop", "labels": {"ambit.io/use-waypoint": "wp"}},
           "spec": {"clusterIP": "10.96.1.11", "selector": {"app": "ratings"}, "ports": [{"port": 80}]}}
    assert significant(an.analyze([ap, svc], complete=False)) == set()
    found = significant(an.analyze([ap, svc], complete=True))      # the whole world: wp does not exist
    assert ("AMB0105", "AuthorizationPolicy/shop/p", "spec.targetRefs[0]") in found
    assert ("AMB0108", "Service/shop/ratings", "metadata.labels[ambit.io/use-waypoint]") in found
    (msg,) = [f.message for f in an.analyze([ap, svc], complete=True) if f.code == "AMB0108"]
    assert "ztunnel refuses the traffic that should go through it" in msg, \
        "the label fails closed (ztunnel.routing.via_waypoint), it is not bypassed"


def test_ingress_only_virtual_services_are_not_the_mesh_s() -> None:
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "ingress", "namespace": "shop"},
          "spec": {"hosts": ["shop.example.com"], "gateways": ["istio-system/ingress"],
                   "http": [{"route": [{"destination": {"host": "external.example.com"}}]}]}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "shop"},
           "spec": {"clusterIP": "10.96.1.11", "ports": [{"port": 80}]}}
    assert not [f for f in an.analyze([vs, svc], complete=True) if f.code == "AMB0101"]


def test_controller_flag_in_the_lab_reads_traffic_through_it(lab_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--controller` in the lab was accepted and ignored (traffic facts came from the node sockets):
    it reads them through that controller's debug API `Metrics`, as stat/top do."""
    from types import SimpleNamespace

    from ambitctl import cluster
    LabStore(store_path()).apply(load(FIXTURES / "strict-plaintext.yaml"))
    asked: list[str] = []

    def call(target: cluster.DebugTarget, method: str, request: object, timeout: float) -> SimpleNamespace:
        asked.append(f"{target.address} {method}")
        return SimpleNamespace(metrics={"ztunnel/n1": (FIXTURES / "strict-plaintext.metrics").read_text()}, missing=[])
    monkeypatch.setattr(cluster, "call", call)
    rc, out, _ = run("analyze", "-A")
    assert "AMB0110" not in out and asked == []                      # the lab's sockets: no lab state here
    rc, out, err = run("analyze", "-A", "--controller", "unix:/elsewhere.sock", "--token", "t")
    assert asked == ["unix:/elsewhere.sock Metrics"] and "[AMB0110]" in out, err


def test_a_null_field_is_unset_for_the_analyzers_too() -> None:
    """`weight:` with nothing is a valid (unset) field: the AMB0109 check read it as int(None) and
    `ambit analyze` died with a TypeError instead of reporting anything."""
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "r", "namespace": "demo"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                      "rules": [{"backendRefs": [{"name": "reviews", "port": 9080, "weight": None}]}]}}
    found = an.analyze([route], complete=False)
    assert [f.code for f in found if f.code in ("AMB0001", "AMB0109")] == []
    zero = {**route, "spec": {**route["spec"], "rules": [{"backendRefs": [
        {"name": "reviews", "port": 9080, "weight": 0}, {"name": "ratings", "port": 9080, "weight": None}]}]}}
    assert "AMB0109" not in [f.code for f in an.analyze([zero], complete=False)]   # unset weighs 1


def test_gateway_parameters_are_judged_by_the_controllers_own_check() -> None:
    """AMB0127 says what the controller would find (Accepted=False, InvalidParameters): the message
    names the ConfigMap and each reason. A ConfigMap missing from files alone may be in the
    cluster; with the whole state (the lab) it is missing."""
    objs = load(FIXTURES / "gateway-parameters.yaml")
    [bad] = [f for f in an.analyze(objs, complete=False) if f.code == "AMB0127"]
    assert "waypoint-options" in bad.message and "command" in bad.message, bad.message
    assert an.CODES["AMB0127"].severity == an.ERROR
    alone = [o for o in objs if o["kind"] != "ConfigMap"]        # the Gateways' files without the ConfigMaps
    assert not [f for f in an.analyze(alone, complete=False) if f.code == "AMB0127"]
    whole = {f.ref: f.message for f in an.analyze(alone, complete=True) if f.code == "AMB0127"}
    assert set(whole) == {"Gateway/shop/waypoint", "Gateway/shop/sized"}
    assert all("does not exist" in m for m in whole.values()), whole


def test_class_defaults_are_judged_once_of_their_configmap() -> None:
    """AMB0128 names the class defaults ConfigMap, the key and the reason, once however many Gateways
    the class has; a Gateway's own parametersRef is not blamed for them (AMB0127 stays its own)."""
    objs = load(FIXTURES / "gateway-class-defaults.yaml")
    [bad] = [f for f in an.analyze(objs, complete=False) if f.code == "AMB0128"]
    assert bad.message.startswith("class defaults (gateway.istio.io/defaults-for-class: ambit-waypoint) ConfigMap "
                                  "ambit-system/waypoint-defaults: key service: spec.selector is Ambit's"), bad.message
    assert an.CODES["AMB0128"].severity == an.ERROR
    [dup] = [f for f in an.analyze(objs, complete=False) if f.ref == "ConfigMap/ambit-system/ingress-defaults-new"]
    assert "the oldest, ConfigMap ambit-system/ingress-defaults, is applied" in dup.message
    # more Gateways of the class, one with a valid parametersRef of its own: still one AMB0128, no AMB0127
    more = [*objs, *[o for o in load(FIXTURES / "gateway-parameters.yaml")
                     if o["metadata"]["name"] in ("sized", "sized-options")]]
    codes = [f.code for f in an.analyze(more, complete=False) if f.code in ("AMB0127", "AMB0128")]
    assert codes == ["AMB0128"]
