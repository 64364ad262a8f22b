"""Lab fixtures: a real netns lab brought up through the CLI, and always torn down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.labctl import Lab, artifacts, lab_name_for, sweep_stale

MESH_SPEC = Path(__file__).parent / "specs" / "mesh.yaml"


_artifacts = artifacts


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The default lab, shared by tests that leave it as they found it."""
    sweep_stale()  # labs of earlier runs that were killed hard
    lab = Lab(tmp_path_factory.mktemp("lab") / "state", name=lab_name_for("t"))
    try:
        lab.up("--spec", str(MESH_SPEC))
        yield lab
    finally:
        lab.save_logs(_artifacts("session-lab"))
        lab.down()


@pytest.fixture
def fresh_lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A lab of the test's own (not yet up), for tests that change or break it."""
    lab = Lab(tmp_path / "state", name=lab_name_for("f"))
    try:
        yield lab
    finally:
        lab.save_logs(_artifacts(request.node.name))
        lab.down()
