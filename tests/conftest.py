"""Shared test configuration.

tests/unit needs no root. tests/lab and tests/e2e need root, network namespaces and the kernel;
they are marked `lab` and, on a machine without root, are skipped with that reason (never here:
CI runs as root).
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="lab tests need root (network namespaces, cgroups, eBPF)")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)
