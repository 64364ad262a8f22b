"""A package's public names, imported on first use (PEP 562) instead of when the package is.

Why: a proxy's settings module imports a few small things from packages whose `__init__` re-exports
their heavy parts (the config client and grpc, the HBONE client and TLS, the HTTP engine). A
process that only parses settings, a workers' supervisor, would otherwise load all of them: about
30 MB it never uses, in every node's and every waypoint pod's supervisor (docs/performance.md)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """The package's `__getattr__`: `where` maps each public name to the module defining it."""
    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)
    return __getattr__
