"""The e2e driver: the netns lab by default, a real cluster with AMBIT_E2E_DRIVER=kube.

    .venv/bin/python -m pytest tests/e2e -q                                  # a lab of its own, here
    AMBIT_E2E_DRIVER=kube KUBECONFIG=~/.kube/config pytest tests/e2e -q      # a cluster (vagrant/)

The lab is named `ambit-e<pid>` and keeps its state in a temporary AMBIT_LAB_DIR, so it never collides
with a developer's lab or other test labs; it is torn down even when a test fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.driver import Driver, KubeDriver, LabDriver
from tests.lab.labctl import Lab, lab_name_for, sweep_stale

SPEC = Path(__file__).parent / "specs" / "e2e.yaml"
LAB_NAME = lab_name_for("e")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab_only(reason): a scenario that cannot run on a cluster, and why "
                            "(tests/unit/vagrant/test_scenarios_on_both_drivers.py requires the reason)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("AMBIT_E2E_DRIVER", "lab") != "kube":
        return
    for item in items:
        m = item.get_closest_marker("lab_only")
        if m is not None:
            item.add_marker(pytest.mark.skip(reason=f"lab only: {m.kwargs.get('reason', '')}"))


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    kind = os.environ.get("AMBIT_E2E_DRIVER", "lab")
    if kind == "kube":
        if not os.environ.get("KUBECONFIG"):
            pytest.fail("AMBIT_E2E_DRIVER=kube needs KUBECONFIG pointing at a cluster with Ambit installed")
        kube = KubeDriver(os.environ["KUBECONFIG"], os.environ.get("AMBIT_NAMESPACE", "ambit-system"))
        kube.wait_mesh_ready()
        yield kube
        return
    if kind != "lab":
        pytest.fail(f"AMBIT_E2E_DRIVER={kind!r}: expected 'lab' or 'kube'")
    lab = Lab(tmp_path_factory.mktemp("e2e") / "state", name=LAB_NAME)
    sweep_stale()                       # labs of earlier runs that were killed hard
    try:
        lab.up("--spec", str(SPEC))
        d = LabDriver(lab)
        d.wait_mesh_ready()
        yield d
    finally:
        artifacts = Path(os.environ.get("AMBIT_TEST_ARTIFACTS", "/tmp/ambit-test-artifacts")) / "e2e-lab"
        artifacts.mkdir(parents=True, exist_ok=True)
        lab.save_logs(artifacts)
        lab.down()
