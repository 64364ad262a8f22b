"""`--cluster-domain` means one thing in every component: the controller, ztunnel and the waypoint
accept and refuse the same values (ambit/clusterdomain.py, which `ambit install` checks too), so a
domain one of them takes is never one another refuses at start, crash-looping it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ambit.settings import SettingsError
from controller.settings import load as controller
from waypoint.settings import load as waypoint
from ztunnel.settings import load as ztunnel

COMPONENTS: dict[str, Callable[[list[str]], Any]] = {
    "controller": lambda extra: controller(["--kube", *extra], {}),
    "ztunnel": lambda extra: ztunnel(["--node", "n1", "--zds-socket", "/tmp/zds.sock", *extra], {}),
    "waypoint": lambda extra: waypoint(["--waypoint", "demo/wp", "--pod-name", "wp-0", "--node", "n1", *extra], {}),
}


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("good", ["cluster.local", "corp.example", "k8s-prod.example.com", "local", "0.example"])
def test_every_component_takes_a_dns_name(component: str, good: str) -> None:
    assert COMPONENTS[component]([f"--cluster-domain={good}"]).cluster_domain == good


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize(("bad", "reason"), [
    ("cluster.local.", "trailing dot"), ("Cluster.Local", "'Cluster' is not"), ("corp example", "is not"),
    ("corp_example", "is not"), ("", "not empty"), ("a.-b", "'-b' is not"),
])
def test_every_component_refuses_what_install_refuses(component: str, bad: str, reason: str) -> None:
    from ambitctl.commands import install
    with pytest.raises(SettingsError, match="--cluster-domain") as e:
        COMPONENTS[component]([f"--cluster-domain={bad}"])
    assert reason in str(e.value)
    with pytest.raises(install.InstallError, match=reason):
        install.apply_sets(install.parse([]), [f"clusterDomain={bad}"])
