"""Where a lab keeps its state, logs and store.

One lab per machine by default; tests point AMBIT_LAB_DIR elsewhere to keep their state apart.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_LAB_DIR = Path("/var/run/ambit-lab")


def lab_dir() -> Path:
    return Path(os.environ.get("AMBIT_LAB_DIR", str(DEFAULT_LAB_DIR)))


def store_path(base: Path | None = None) -> Path:
    return (base or lab_dir()) / "store.json"


def state_path(base: Path | None = None) -> Path:
    return (base or lab_dir()) / "state.json"


def log_dir(base: Path | None = None) -> Path:
    return (base or lab_dir()) / "logs"
