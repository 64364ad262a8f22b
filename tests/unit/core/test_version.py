"""Ambit's version: written once (ambit/version.py), read by the packaging and by every process."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from ambit.version import VERSION, parse


def test_the_installed_distribution_carries_the_version_the_code_reports() -> None:
    """pyproject.toml takes the version from ambit/version.py: what pip installed (and what
    `ambit version` compares across parts) is the constant, so the two cannot drift apart."""
    assert importlib.metadata.version("ambit") == VERSION
    assert parse(VERSION) is not None


def test_reading_the_version_loads_no_package_metadata_machinery() -> None:
    """Every proxy imports ambit.version (its reports carry it); importlib.metadata and what it
    pulls in cost a proxy 0.2-0.3 MB of RSS (docs/performance.md §75)."""
    code = ("import sys; before = set(sys.modules); import ambit.version; "
            "print(sorted(m for m in ('importlib.metadata', 'email', 'csv', 'zipfile') "
            "if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
