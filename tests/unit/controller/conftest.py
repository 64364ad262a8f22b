"""Shared fixtures for the controller's configuration tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:       # `tests.support` must import however pytest was started
    sys.path.insert(0, str(REPO))

@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    return tmp_path
