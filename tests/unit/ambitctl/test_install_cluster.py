"""`ambit install` / `upgrade` / `uninstall` against the API-server emulator (real HTTP, the
official client): idempotent apply, version rules, diff, prune, and a complete, idempotent removal."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ambitctl import kubeapply as ka
from ambitctl.cli import build_parser
from ambitctl.commands import install
from tests.support.kube_emulator import KubeEmulator


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator() as e:
        yield e


def run(capsys: pytest.CaptureFixture[str], emu: KubeEmulator, *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args([*argv, "--server", emu.url])
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


def all_installed(emu: KubeEmulator, ns: str = "ambit-system") -> list[ka.Ref]:
    objs = install.objects(install.parse(["--namespace", ns]))
    return [ka.ref(o) for o in objs if emu.get(o["apiVersion"], o["kind"], o["metadata"]["name"],
                                               o["metadata"].get("namespace", "default")) is not None]


def test_install_is_idempotent_and_records_its_inventory(emu: KubeEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, emu, "install", "--image", "ambit:0.1.0")
    n = len(install.objects(install.parse([])))
    assert rc == 0 and out.count(" created\n") == n + 1 and f"{n} objects: {n} created" in out
    assert len(all_installed(emu)) == n
    ds = emu.get("apps/v1", "DaemonSet", "ambit-node", "ambit-system")
    assert ds is not None and ds["metadata"]["annotations"]["ambit.io/version"] == "0.1.0"
    inv = emu.get("v1", "ConfigMap", ka.INVENTORY, "ambit-system")
    assert inv is not None and inv["data"]["version"] == "0.1.0" and len(json.loads(inv["data"]["objects"])) == n
    writes = sum(1 for m, _, _ in emu.requests if m in ("POST", "PUT"))

    rc, out, _ = run(capsys, emu, "install", "--image", "ambit:0.1.0")
    assert rc == 0 and f"{n} objects: {n} unchanged" in out and " created" not in out and " updated" not in out
    # the re-run wrote nothing but the (unchanged) inventory check
    assert sum(1 for m, _, _ in emu.requests if m in ("POST", "PUT")) == writes


def test_set_changes_the_objects_and_refuses_unknown_keys(emu: KubeEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, emu, "install", "--image", "ambit:0.1.0")[0] == 0
    rc, out, _ = run(capsys, emu, "install", "--image", "ambit:0.1.0", "--set", "logLevel=DEBUG")
    assert rc == 0 and "deployment/ambit-controller -n ambit-system updated" in out
    dep = emu.get("apps/v1", "Deployment", "ambit-controller", "ambit-system")
    assert dep is not None and "DEBUG" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    rc, _, err = run(capsys, emu, "install", "--set", "replicas=3")
    assert rc == 1 and "replicas=3" in err and "logLevel" in err
    rc, _, err = run(capsys, emu, "install", "--set", "capture=nft")
    assert rc == 1 and "nft" in err
    assert run(capsys, emu, "install", "--dry-run", "--image", "ambit:0.1.0", "--set", "logLevel=INFO")[1].count(
        " updated (dry run)") >= 1
    dep = emu.get("apps/v1", "Deployment", "ambit-controller", "ambit-system")
    assert dep is not None and "DEBUG" in dep["spec"]["template"]["spec"]["containers"][0]["args"]   # dry run


def test_upgrade_and_a_rerun_of_install_keep_the_installed_settings(emu: KubeEmulator,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`ambit upgrade --image ...` (as docs/operations.md shows it, without the install's --set)
    re-rendered the defaults: REGISTRY_ONLY went back to ALLOW_ANY, the trust domain and the CA
    Secret back to cluster.local and ambit-ca (a new CA, a new root). They are kept now."""
    def installed() -> tuple[str, list[str]]:
        cm = emu.get("v1", "ConfigMap", "ambit-mesh-config", "ambit-system")
        dep = emu.get("apps/v1", "Deployment", "ambit-controller", "ambit-system")
        assert cm is not None and dep is not None
        return cm["data"]["mesh.yaml"], dep["spec"]["template"]["spec"]["containers"][0]["args"]

    assert run(capsys, emu, "install", "--image", "ambit:0.1.0", "--set", "outboundTrafficPolicy=REGISTRY_ONLY",
               "--trust-domain", "corp.example", "--set", "caSecret=corp-ca")[0] == 0
    mesh, args = installed()
    assert "REGISTRY_ONLY" in mesh and "corp.example" in args and "corp-ca" in args

    rc, out, err = run(capsys, emu, "install", "--image", "ambit:0.1.0")          # a re-run: nothing changes
    assert rc == 0 and " updated" not in out and " created" not in out
    assert "keeping the installed settings" in err and "outboundTrafficPolicy.mode=REGISTRY_ONLY" in err
    rc, out, err = run(capsys, emu, "upgrade", "--image", "ambit:0.2.0")
    assert rc == 0 and "trustDomain=corp.example" in err and "caSecret=corp-ca" in err
    mesh, args = installed()
    assert "REGISTRY_ONLY" in mesh and "corp.example" in args and "corp-ca" in args and "ambit:0.2.0" in args[
        args.index("--waypoint-image") + 1]
    # Given explicitly, a setting changes, the default too; the others stay.
    rc, out, err = run(capsys, emu, "upgrade", "--image", "ambit:0.2.0", "--set", "outboundTrafficPolicy=ALLOW_ANY")
    mesh, args = installed()
    assert rc == 0 and "ALLOW_ANY" in mesh and "corp.example" in args
    # A value this version does not know (an inventory of a newer one, then a downgrade) is named.
    inv = emu.get("v1", "ConfigMap", ka.INVENTORY, "ambit-system")
    assert inv is not None
    inv["data"]["settings"] = inv["data"]["settings"].replace('"capture": "ebpf"', '"capture": "nft"')
    emu.update(inv)
    rc, _, err = run(capsys, emu, "upgrade", "--image", "ambit:0.2.0")
    assert rc == 1 and "the installed setting capture='nft' is not valid" in err


@pytest.mark.parametrize(("installed", "target", "force", "ok"), [
    ("0.1.0", "0.1.3", False, True), ("0.1.0", "0.2.0", False, True), ("0.1.0", "0.3.0", False, False),
    ("0.1.0", "0.3.0", True, True), ("0.2.0", "0.1.0", False, False), ("0.2.0", "0.1.0", True, True),
    ("0.9.0", "1.0.0", False, False), ("0.9.0", "1.0.0", True, False), ("0.1.0", "dev", False, False),
])
def test_upgrade_rules(installed: str, target: str, force: bool, ok: bool) -> None:
    assert ka.upgrade_verdict(installed, target, force)[0] is ok


def test_upgrade_shows_a_diff_refuses_jumps_and_prunes(emu: KubeEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, emu, "install", "--image", "ambit:0.1.0")[0] == 0
    rc, _, err = run(capsys, emu, "install", "--image", "ambit:0.2.0")
    assert rc == 1 and "ambit upgrade" in err
    rc, _, err = run(capsys, emu, "upgrade", "--image", "ambit:0.3.0")
    assert rc == 1 and "skips 1 minor" in err
    rc, _, err = run(capsys, emu, "upgrade", "--image", "ambit:1.0.0", "--force")
    assert rc == 1 and "major" in err
    # an object a previous version installed and this one does not render: pruned by the upgrade
    emu.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "old-sa", "namespace": "ambit-system"}})
    inv = emu.get("v1", "ConfigMap", ka.INVENTORY, "ambit-system")
    assert inv is not None
    objs = json.loads(inv["data"]["objects"]) + [["v1", "ServiceAccount", "ambit-system", "old-sa"]]
    inv["data"]["objects"] = json.dumps(objs)
    emu.update(inv)

    rc, out, err = run(capsys, emu, "upgrade", "--image", "ambit:0.2.0", "--dry-run")
    minus = [ln for ln in out.splitlines() if ln.startswith("-") and "image: ambit:0.1.0" in ln]
    plus = [ln for ln in out.splitlines() if ln.startswith("+") and "image: ambit:0.2.0" in ln]
    assert rc == 0 and minus and plus and "pruned (no longer part of Ambit 0.2.0) (dry run)" in out
    assert "--- live daemonset/ambit-node -n ambit-system" in out and "+++ wanted daemonset/ambit-node" in out
    assert "*id0" not in out and "&id0" not in out       # fields, not yaml aliases of what they share
    assert emu.get("apps/v1", "DaemonSet", "ambit-node", "ambit-system")["metadata"]["annotations"][  # type: ignore[index]
        "ambit.io/version"] == "0.1.0"                                                                 # dry run
    rc, out, err = run(capsys, emu, "upgrade", "--image", "ambit:0.2.0")
    assert rc == 0 and "compatible" in err and "serviceaccount/old-sa -n ambit-system pruned" in out
    assert emu.get("v1", "ServiceAccount", "old-sa", "ambit-system") is None
    ds = emu.get("apps/v1", "DaemonSet", "ambit-node", "ambit-system")
    assert ds is not None and ds["spec"]["template"]["spec"]["containers"][0]["image"] == "ambit:0.2.0"
    inv = emu.get("v1", "ConfigMap", ka.INVENTORY, "ambit-system")
    assert inv is not None and inv["data"]["version"] == "0.2.0" and "old-sa" not in inv["data"]["objects"]
    rc, out, _ = run(capsys, emu, "upgrade", "--image", "ambit:0.2.0")
    assert rc == 0 and " updated" not in out and " created" not in out


def test_uninstall_removes_everything_but_crds_and_is_idempotent(emu: KubeEmulator,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, emu, "install", "--image", "ambit:0.1.0")[0] == 0
    rc, out, _ = run(capsys, emu, "uninstall")
    left = all_installed(emu)
    assert rc == 0 and left and all(r[1] == "CustomResourceDefinition" for r in left)
    assert emu.get("v1", "ConfigMap", ka.INVENTORY, "ambit-system") is None
    assert "kept (--purge-crds" in out and out.strip().splitlines()[-2].startswith("namespace/ambit-system deleted")
    rc, out, _ = run(capsys, emu, "uninstall", "--purge-crds")
    assert rc == 0 and all_installed(emu) == [] and "customresourcedefinition/" in out
    rc, out, _ = run(capsys, emu, "uninstall", "--purge-crds")
    assert rc == 0 and "0 objects deleted" in out and " deleted\n" not in out.replace("0 objects deleted\n", "")


def test_no_cluster_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["uninstall", "--server", "http://127.0.0.1:9"])
    assert args.func(args) == 1
    assert "cannot reach the API server" in capsys.readouterr().err


def test_an_image_tag_that_is_no_version_needs_force(emu: KubeEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/operations.md "Upgrading": `ambit:dev` is refused unless --force. Its tag was read as
    this CLI's version, so any `:dev` or `:latest` image passed as compatible."""
    assert run(capsys, emu, "install", "--image", "ambit:0.1.0")[0] == 0
    rc, _, err = run(capsys, emu, "upgrade", "--image", "reg/ambit:dev", "--dry-run")
    assert rc == 1 and "'dev' is not MAJOR.MINOR.PATCH" in err
    rc, _, err = run(capsys, emu, "upgrade", "--image", "reg/ambit:dev", "--force", "--dry-run")
    assert rc == 0 and "--force given" in err
    # no tag (a digest, a registry port): the version is this CLI's
    for image in ("reg:5000/ambit", f"reg/ambit@sha256:{'0' * 64}"):
        rc, _, err = run(capsys, emu, "upgrade", "--image", image, "--dry-run")
        assert rc == 0 and "compatible" in err, (image, err)


def test_upgrade_stops_when_this_version_refuses_configuration_the_cluster_holds(
        emu: KubeEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """An object the new version's validation refuses has no last good version in the controller the
    upgrade starts, so it would silently stop being in force (a refused AuthorizationPolicy is as
    good as deleted). `ambit upgrade` (and its --dry-run) names each refusal first, and stops."""
    assert run(capsys, emu, "install", "--image", "ambit:0.1.0")[0] == 0
    # written by a client that skipped this version's checks (an older Ambit, kubectl without the CRD schema)
    emu.create({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "block-admin", "namespace": "shop"},
                "spec": {"action": "DENY", "targetRefs": [{"kind": "Service", "group": "", "name": "api"}]}})
    emu.create({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "fine", "namespace": "shop"},
                "spec": {"rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}})
    for extra in ((), ("--dry-run",)):
        rc, out, err = run(capsys, emu, "upgrade", "--image", "ambit:0.2.0", *extra)
        assert rc == 1, err
        assert "refuses 1 object(s) of this cluster" in err
        assert "AuthorizationPolicy/shop/block-admin: spec.rules: DENY action without `rules` is meaningless" in err
        assert "shop/fine" not in err
    ds = emu.get("apps/v1", "DaemonSet", "ambit-node", "ambit-system")
    assert ds is not None and ds["spec"]["template"]["spec"]["containers"][0]["image"] == "ambit:0.1.0"
    rc, _, err = run(capsys, emu, "upgrade", "--image", "ambit:0.2.0", "--force")
    assert rc == 0 and "upgrading anyway (--force)" in err
    ds = emu.get("apps/v1", "DaemonSet", "ambit-node", "ambit-system")
    assert ds is not None and ds["spec"]["template"]["spec"]["containers"][0]["image"] == "ambit:0.2.0"


def test_a_rerun_keeps_the_webhook_ca_and_failure_policy_the_controller_wrote(
        emu: KubeEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """`ambit install` renders the webhook configuration without a caBundle and `Ignore`; the
    controller's leader fills in the roots and switches it to `Fail` (controller/admission/patcher.py).
    A re-run or an upgrade must not take it back to "no CA, Ignore" (writes unchecked until the
    controller noticed), nor report a change that is the controller's."""
    from controller.admission.patcher import CONFIG_NAME
    assert run(capsys, emu, "install", "--image", "ambit:0.1.0")[0] == 0
    cfg = emu.get("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", CONFIG_NAME, "")
    assert cfg is not None and cfg["webhooks"][0]["failurePolicy"] == "Ignore"
    cfg["webhooks"][0]["clientConfig"]["caBundle"] = "LS0tLS1CRUdJTg=="
    cfg["webhooks"][0]["failurePolicy"] = "Fail"
    emu.update(cfg)
    rc, out, _ = run(capsys, emu, "install", "--image", "ambit:0.1.0")
    assert rc == 0 and f"validatingwebhookconfiguration/{CONFIG_NAME} unchanged" in out
    rc, out, _ = run(capsys, emu, "install", "--image", "ambit:0.1.0", "--set", "logLevel=DEBUG")
    assert rc == 0
    now = emu.get("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", CONFIG_NAME, "")
    assert now is not None and now["webhooks"][0]["failurePolicy"] == "Fail"
    assert now["webhooks"][0]["clientConfig"]["caBundle"] == "LS0tLS1CRUdJTg=="
    # a change of the rendering itself still lands, with the controller's fields kept
    now["webhooks"][0]["timeoutSeconds"] = 3
    emu.update(now)
    rc, out, _ = run(capsys, emu, "install", "--image", "ambit:0.1.0", "--set", "logLevel=DEBUG")
    assert rc == 0 and f"validatingwebhookconfiguration/{CONFIG_NAME} updated" in out
    now = emu.get("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", CONFIG_NAME, "")
    assert now is not None and now["webhooks"][0]["timeoutSeconds"] == 10
    assert now["webhooks"][0]["failurePolicy"] == "Fail" and now["webhooks"][0]["clientConfig"]["caBundle"]
    # uninstall removes it (a Fail configuration left behind would refuse every write of Istio's kinds)
    assert run(capsys, emu, "uninstall")[0] == 0
    assert emu.get("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", CONFIG_NAME, "") is None
