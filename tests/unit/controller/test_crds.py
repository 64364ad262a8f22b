"""The committed CRDs are exactly what the validator's schemas generate."""

from __future__ import annotations

from pathlib import Path

import yaml

from controller.kinds import KINDS
from controller.kinds.crds import main, render

CRD_DIR = Path(__file__).resolve().parents[3] / "deploy" / "crds"


def test_committed_crds_equal_generated_output() -> None:
    generated = render()
    committed = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    assert committed == generated, "stale CRDs: run `python -m controller.kinds.crds deploy/crds`"
    assert main(["--check", str(CRD_DIR)]) == 0


def test_every_ambit_kind_has_a_structural_crd() -> None:
    crds = {yaml.safe_load(t)["metadata"]["name"]: yaml.safe_load(t) for t in render().values()}
    assert set(crds) == {f"{k.plural}.{k.ambit_group}" for k in KINDS if k.ambit_group} == {
        "authorizationpolicies.security.ambit.io", "peerauthentications.security.ambit.io",
        "requestauthentications.security.ambit.io",
        "virtualservices.networking.ambit.io", "destinationrules.networking.ambit.io",
        "serviceentries.networking.ambit.io", "gateways.networking.ambit.io",
        "telemetries.telemetry.ambit.io"}
    ap = crds["authorizationpolicies.security.ambit.io"]["spec"]
    assert [v["name"] for v in ap["versions"]] == ["v1", "v1beta1"]
    assert [v["storage"] for v in ap["versions"]] == [True, False]
    action = ap["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["action"]
    assert action == {"type": "string", "enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]}


def test_check_mode_detects_drift(tmp_path: Path) -> None:
    for name, text in render().items():
        (tmp_path / name).write_text(text)
    assert main(["--check", str(tmp_path)]) == 0
    victim = tmp_path / "networking.ambit.io_virtualservices.yaml"
    victim.write_text(victim.read_text().replace("maximum: 100", "maximum: 1000", 1))
    assert main(["--check", str(tmp_path)]) == 1
