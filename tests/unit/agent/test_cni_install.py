"""Chaining the plugin into a node's CNI configuration and out again (agent/cni/install.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cni import install

FLANNEL = {"name": "cbr0", "cniVersion": "1.0.0", "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}
ENTRY = {"name": "ambit-cni", "agentSocket": "/var/run/ambit/cni.sock", "labStore": "/x/store.json"}


def test_chain_appends_once_and_unchain_restores() -> None:
    once = install.chain(FLANNEL, ENTRY)
    assert [p["type"] for p in once["plugins"]] == ["flannel", "portmap", "ambit-cni"]
    assert install.chain(once, {**ENTRY, "timeoutSeconds": 5})["plugins"][-1]["timeoutSeconds"] == 5
    assert len(install.chain(once, ENTRY)["plugins"]) == 3
    assert install.unchain(once) == FLANNEL


def test_a_single_plugin_conf_is_refused_with_the_reason() -> None:
    with pytest.raises(install.InstallError, match="plugins"):
        install.chain({"cniVersion": "0.3.1", "name": "x", "type": "bridge"}, ENTRY)


def test_install_and_uninstall_on_disk(tmp_path: Path) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    with pytest.raises(install.InstallError, match="no CNI network configuration"):
        install.install(conf_dir, bin_dir, ENTRY)
    conf_dir.mkdir()
    (conf_dir / "10-flannel.conflist").write_text(json.dumps(FLANNEL))
    (conf_dir / "99-other.conflist").write_text(json.dumps({**FLANNEL, "name": "other"}))
    assert install.install(conf_dir, bin_dir, ENTRY) == conf_dir / "10-flannel.conflist"
    chained = json.loads((conf_dir / "10-flannel.conflist").read_text())
    assert chained["plugins"][-1] == {**ENTRY, "type": "ambit-cni"}
    assert json.loads((conf_dir / "99-other.conflist").read_text())["name"] == "other"   # not the runtime's
    plugin = bin_dir / "ambit-cni"
    assert plugin.stat().st_mode & 0o111 and plugin.read_bytes().startswith(b"#!/usr/bin/python3 -IS\n")
    assert install.uninstall(conf_dir, bin_dir) == [conf_dir / "10-flannel.conflist"]
    assert json.loads((conf_dir / "10-flannel.conflist").read_text()) == FLANNEL
    assert not plugin.exists()
    assert sorted(p.name for p in tmp_path.rglob("*.ambit-tmp")) == []


def test_kube_credentials_copy_the_token_for_the_host(tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok")
    (sa / "ca.crt").write_text("ca")
    (tmp_path / "net.d").mkdir()
    creds = install.kube_credentials(tmp_path / "net.d", sa, {"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                                                               "KUBERNETES_SERVICE_PORT": "443"})
    assert creds["server"] == "https://10.96.0.1:443" and Path(creds["tokenFile"]).read_text() == "tok"
    with pytest.raises(install.InstallError, match="KUBERNETES_SERVICE_HOST"):
        install.kube_credentials(tmp_path / "net.d", sa, {})
