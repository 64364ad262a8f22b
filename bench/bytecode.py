"""The code under test compiled to bytecode before a lab starts, as a deployed image has it.

Why: a module imported without an up-to-date `.pyc` is compiled from source in the process that
imports it, and the compiler's garbage stays in that process's heap. A ztunnel started from a tree
without bytecode read 41.9-42.1 MB of RSS idle against 40.4-40.5 MB with it (1.5 MB anonymous;
docs/performance.md, round 22). Nothing in a checkout writes the bytecode where
PYTHONDONTWRITEBYTECODE is set (it is on the dev machine), and an edit or a merge makes the changed
modules' bytecode stale. The image (deploy/Dockerfile) installs the package with pip, which
compiles every module, so the bench compiles what is missing or stale, once, before it starts
anything, and then measures what a deployment runs.

The check is the import system's own (`SourceFileLoader` with the default timestamp bytecode): the
source's mtime and size recorded in the `.pyc` header. Only the project's packages are compiled;
the standard library and the venv's packages came compiled with their installers.
"""

from __future__ import annotations

import importlib.util
import py_compile
from collections.abc import Iterable, Iterator
from pathlib import Path

# The packages whose processes the bench starts or whose modules they import.
PACKAGES = ("ambit", "ztunnel", "waypoint", "controller", "agent", "ambitctl")


def package_dirs(packages: Iterable[str] = PACKAGES) -> list[Path]:
    """Where each package is imported from by this interpreter (and so by the lab's processes, which
    inherit its environment: PYTHONPATH or the editable install)."""
    out = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            out.extend(Path(p) for p in spec.submodule_search_locations)
    return out


def sources(dirs: Iterable[Path]) -> Iterator[Path]:
    for d in dirs:
        yield from sorted(p for p in d.rglob("*.py") if "__pycache__" not in p.parts)


def is_current(source: Path) -> bool:
    """Whether the import system would use the cached bytecode of `source` as it is."""
    cached = Path(importlib.util.cache_from_source(str(source)))
    try:
        with cached.open("rb") as f:
            head = f.read(16)
        st = source.stat()
    except OSError:
        return False
    if len(head) < 16 or head[:4] != importlib.util.MAGIC_NUMBER:
        return False
    flags = int.from_bytes(head[4:8], "little")
    if flags != 0:          # hash-based bytecode: checked (or not) by its own rules; leave it alone
        return True
    mtime, size = int.from_bytes(head[8:12], "little"), int.from_bytes(head[12:16], "little")
    return mtime == (int(st.st_mtime) & 0xFFFFFFFF) and size == (st.st_size & 0xFFFFFFFF)


def compile_stale(dirs: Iterable[Path]) -> tuple[int, int, list[str]]:
    """Compile every source under `dirs` whose bytecode is missing or stale. Returns (compiled,
    sources seen, failures as "path: error"); a source that does not compile is left to fail at
    import, where it would anyway."""
    compiled = seen = 0
    failed: list[str] = []
    for src in sources(dirs):
        seen += 1
        if is_current(src):
            continue
        try:
            py_compile.compile(str(src), doraise=True)
            compiled += 1
        except (py_compile.PyCompileError, OSError) as e:
            failed.append(f"{src}: {e}")
    return compiled, seen, failed
