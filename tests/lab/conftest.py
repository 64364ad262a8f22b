"""Lab fixtures: a real netns lab brought up through the CLI, and always torn down."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambit.dataplane import endpoint
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


# How much of each log a failing lab test's report carries: enough to tell a refused connection
# from a stalled one when all CI keeps is the console output.
REPORT_LINES = 25


def lab_excerpt(lab: Lab) -> str:
    """The latest warnings, errors and failed access-log records of every component of `lab`."""
    out = []
    for log in sorted((lab.dir / "logs").glob("*.log")):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        notable = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or '"error": "' in ln
                   or "Traceback" in ln]
        if notable:
            out.append(f"--- {log.name} ({len(lines)} lines; last {min(REPORT_LINES, len(notable))} notable)")
            out.extend(ln[:400] for ln in notable[-REPORT_LINES:])
    # ztunnel's HBONE pool and open tunnels, as it sees them at the failure.
    for sock in sorted(lab.dir.glob("node*/admin.sock")):
        try:
            status, body = endpoint.get_json(sock, "/connections")
            out.append(f"--- {sock.parent.name} /connections: {json.dumps(body)[:3000]}")
        except Exception as e:  # noqa: BLE001 - a report must not fail on a component that is down
            out.append(f"--- {sock.parent.name} /connections: unavailable ({e})")
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for name in ("lab", "fresh_lab"):
            lab = getattr(item, "funcargs", {}).get(name)
            if isinstance(lab, Lab) and (lab.dir / "logs").exists():
                rep.sections.append((f"{name} logs (notable lines)", lab_excerpt(lab)))
