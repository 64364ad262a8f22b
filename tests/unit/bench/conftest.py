from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).with_name("fixtures")


@pytest.fixture
def fixture_text():
    """Read a recorded tool output from tests/unit/bench/fixtures (captured on the dev machine)."""
    def read(name: str) -> str:
        return (FIXTURES / name).read_text()
    return read
