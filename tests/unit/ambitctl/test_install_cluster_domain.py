"""`ambit install --cluster-domain`: a cluster whose DNS domain is not cluster.local. The domain
reaches every component that builds Service names (the controller, which passes it on to the
waypoints it deploys, and ztunnel's DNS proxy), each parsing its own rendered arguments; the default
renders nothing new; a value no kubelet could have is refused before anything is rendered or
applied; an upgrade keeps it."""

from __future__ import annotations

import pytest
import yaml

from ambitctl.commands import install
from tests.support.kube_emulator import KubeEmulator
from tests.unit.ambitctl.test_install_cluster import emu, run  # noqa: F401 - emu is a fixture
from tests.unit.deploy.test_manifests import container, expand, render


def test_the_cluster_domain_reaches_the_controller_and_ztunnel_as_their_own_settings() -> None:
    from controller.settings import load as controller_settings
    from ztunnel.settings import load as ztunnel_settings
    docs = render("--cluster-domain", "corp.example")
    ctl = container(docs, "Deployment", "ambit-controller", "controller")
    zt = container(docs, "DaemonSet", "ambit-node", "ztunnel")
    assert controller_settings(expand(ctl["args"], ctl), {}).cluster_domain == "corp.example"
    assert ztunnel_settings(expand(zt["args"], zt), {}).cluster_domain == "corp.example"
    # the agent names no Service: it has no such setting, and gets none
    assert "--cluster-domain" not in container(docs, "DaemonSet", "ambit-node", "agent")["args"]
    # the header says how to render it again
    text = install.render(install.parse(["--cluster-domain", "corp.example"]))
    assert text.splitlines()[0] == "# Ambit: rendered by `ambit install --dry-run --cluster-domain corp.example`; " \
                                   "do not edit."


def test_the_default_cluster_domain_changes_no_rendered_object() -> None:
    """Clusters that applied the default manifests see no change (no roll) from this option."""
    default = install.render(install.parse([]))
    assert install.render(install.parse(["--cluster-domain", "cluster.local"])) == default
    assert "--cluster-domain" not in default
    docs = [d for d in yaml.safe_load_all(default) if d]
    from controller.settings import load as controller_settings
    from ztunnel.settings import load as ztunnel_settings
    ctl = container(docs, "Deployment", "ambit-controller", "controller")
    zt = container(docs, "DaemonSet", "ambit-node", "ztunnel")
    assert controller_settings(expand(ctl["args"], ctl), {}).cluster_domain == "cluster.local"
    assert ztunnel_settings(expand(zt["args"], zt), {}).cluster_domain == "cluster.local"


@pytest.mark.parametrize(("bad", "reason"), [
    ("", "not empty"),
    ("corp.example.", "trailing dot"),
    ("Corp.Example", "'Corp' is not"),
    ("corp example", "'corp example' is not"),
    ("-corp.example", "'-corp' is not"),
    ("corp..example", "'' is not"),
    ("corp_example.local", "'corp_example' is not"),
    ("a" * 64 + ".example", "1-63"),
    (".".join(["abcdefgh"] * 29), "at most 253"),
])
def test_a_cluster_domain_that_is_no_dns_name_is_refused_naming_the_flag_and_why(
        bad: str, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ambitctl.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["install", "--dry-run", f"--cluster-domain={bad}"])
    out, err = capsys.readouterr()
    assert out == "", "nothing is rendered"
    assert "--cluster-domain" in err and repr(bad) in err and reason in err
    with pytest.raises(install.InstallError, match=r"--cluster-domain.*" + reason.replace(".", r"\.")):
        install.apply_sets(install.parse([]), [f"clusterDomain={bad}"])


def test_a_bad_cluster_domain_applies_nothing(emu: KubeEmulator, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    rc, out, err = run(capsys, emu, "install", "--image", "ambit:0.1.0", "--set", "clusterDomain=corp.example.")
    assert rc == 1 and "--cluster-domain" in err and "trailing dot" in err and out == ""
    assert not [r for r in emu.requests if r[0] in ("POST", "PUT", "PATCH", "DELETE")]


def test_install_applies_the_cluster_domain_and_upgrade_keeps_it(emu: KubeEmulator,  # noqa: F811
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """An upgrade that dropped it would point every route host and DNS answer at cluster.local."""
    def domains() -> tuple[str, str]:
        dep = emu.get("apps/v1", "Deployment", "ambit-controller", "ambit-system")
        ds = emu.get("apps/v1", "DaemonSet", "ambit-node", "ambit-system")
        assert dep is not None and ds is not None
        ctl = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        [zt] = [c["args"] for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "ztunnel"]
        return ctl[ctl.index("--cluster-domain") + 1], zt[zt.index("--cluster-domain") + 1]

    assert run(capsys, emu, "install", "--image", "ambit:0.1.0", "--cluster-domain", "corp.example")[0] == 0
    assert domains() == ("corp.example", "corp.example")
    rc, _, err = run(capsys, emu, "upgrade", "--image", "ambit:0.2.0")
    assert rc == 0 and "clusterDomain=corp.example" in err
    assert domains() == ("corp.example", "corp.example")
