"""The agent's stop decision: uninstall capture only when its DaemonSet is gone or being deleted,
read from a real (emulated) API server; keep it on a restart and when the API cannot be asked."""

from __future__ import annotations

from agent.settings import load
from agent.shutdown import decide, should_clean_up
from tests.support.kube_emulator import KubeEmulator

DS = {"apiVersion": "apps/v1", "kind": "DaemonSet",
      "metadata": {"name": "ambit-node", "namespace": "ambit-system"}, "spec": {}}


def test_decide() -> None:
    assert decide(None)[0] is True
    assert decide({"metadata": {"deletionTimestamp": "2026-12-02T18:00:00Z"}})[0] is True
    assert decide({"metadata": {}})[0] is False
    assert decide(None, "connection refused")[0] is False


def test_against_the_api_server() -> None:
    with KubeEmulator() as emu:
        emu.create(DS)
        assert should_clean_up("ambit-system/ambit-node", emu.url) == (
            False, "the DaemonSet still exists (a restart or an upgrade): keeping capture")
        emu.delete("apps/v1", "DaemonSet", "ambit-node", "ambit-system")
        assert should_clean_up("ambit-system/ambit-node", emu.url)[0] is True
        emu.create({**DS, "metadata": {**DS["metadata"], "deletionTimestamp": "2026-12-02T18:00:00Z"}})
        assert should_clean_up("ambit-system/ambit-node", emu.url)[0] is True
    clean, why = should_clean_up("ambit-system/ambit-node", "http://127.0.0.1:9")
    assert clean is False and "keeping capture" in why


def test_settings_check_the_reference() -> None:
    base = ["--node", "n", "--zds-socket", "/tmp/z", "--ztunnel-cgroup", "/sys/fs/cgroup/x", "--node-ip", "1.2.3.4"]
    assert load([*base, "--cleanup-on-delete", "ambit-system/ambit-node"]).cleanup_on_delete == "ambit-system/ambit-node"
    for bad in (["--cleanup-on-delete", "ambit-node"], ["--kube-api", "http://x"]):
        try:
            load([*base, *bad])
        except (ValueError, SystemExit):
            continue
        raise AssertionError(f"{bad} accepted")
