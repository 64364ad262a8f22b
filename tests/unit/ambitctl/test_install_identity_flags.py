"""`ambit install --trust-domain` and `--namespace` are checked before anything is rendered or
applied. A trust domain the controller refuses renders a controller that exits at start (no node
ever gets a certificate); a namespace the API server refuses fails half-way through an apply. Both
are refused by the CLI, naming the flag and why, whether given as a flag or as `--set`."""

from __future__ import annotations

import pytest

from ambitctl.commands import install
from tests.support.kube_emulator import KubeEmulator
from tests.unit.ambitctl.test_install_cluster import emu, run  # noqa: F401 - emu is a fixture
from tests.unit.deploy.test_manifests import container, expand, render


@pytest.mark.parametrize("bad", ["", "Corp.Example", "corp/example", "spiffe://corp", "-corp", "corp.", "a" * 256])
def test_a_trust_domain_the_controller_would_refuse_is_refused_naming_the_flag(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ambitctl.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["install", "--dry-run", f"--trust-domain={bad}"])
    out, err = capsys.readouterr()
    assert out == "", "nothing is rendered"
    assert "--trust-domain" in err and repr(bad) in err and "not a trust domain" in err
    with pytest.raises(install.InstallError, match=r"--trust-domain.*not a trust domain"):
        install.apply_sets(install.parse([]), [f"trustDomain={bad}"])


@pytest.mark.parametrize("bad", ["", "Ambit", "ambit_system", "ambit.system", "-ambit", "a" * 64])
def test_a_namespace_that_is_no_kubernetes_name_is_refused_naming_the_flag(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ambitctl.cli import build_parser
    for cmd in ("install", "uninstall"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([cmd, f"--namespace={bad}"])
        out, err = capsys.readouterr()
        assert out == "" and "--namespace" in err and repr(bad) in err and "not a namespace name" in err


def test_a_good_trust_domain_reaches_the_controller_as_its_own_setting() -> None:
    """The value the CLI lets through is one the controller itself starts with."""
    from controller.settings import load as controller_settings
    docs = render("--trust-domain", "corp.example_1")
    ctl = container(docs, "Deployment", "ambit-controller", "controller")
    assert controller_settings(expand(ctl["args"], ctl), {}).trust_domain == "corp.example_1"


def test_a_bad_trust_domain_applies_nothing(emu: KubeEmulator, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    rc, out, err = run(capsys, emu, "install", "--image", "ambit:0.1.0", "--set", "trustDomain=Corp")
    assert rc == 1 and "--trust-domain" in err and "'Corp'" in err and out == ""
    assert not [r for r in emu.requests if r[0] in ("POST", "PUT", "PATCH", "DELETE")]
