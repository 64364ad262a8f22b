"""The bench compiles the code under test before it starts a lab (bench/bytecode.py): a process that
compiles its modules from source keeps the compiler's garbage, 1.5 MB of a fresh ztunnel's RSS."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from bench import bytecode


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("def f():\n    return 2\n")
    return pkg


def _loads_from_cache(tmp_path: Path, module: str, cached: Path) -> bool:
    """Whether a fresh interpreter that may not write bytecode (as the lab's processes here) loads
    `module`'s code from `cached` rather than compiling its source (`python -v` says which)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-v", "-c", f"import {module}"], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    return f"code object from '{cached}'" in out.stderr


def test_missing_and_stale_bytecode_is_compiled_and_current_bytecode_is_left_alone(tmp_path):
    pkg = _package(tmp_path)
    mod = pkg / "sub" / "mod.py"
    assert not bytecode.is_current(mod)
    assert bytecode.compile_stale([pkg]) == (3, 3, [])
    assert all(bytecode.is_current(p) for p in bytecode.sources([pkg]))
    cached = Path(importlib.util.cache_from_source(str(mod)))
    assert cached.exists()
    assert bytecode.compile_stale([pkg]) == (0, 3, [])      # nothing to do the second time

    # an edit (another size, a later mtime) makes it stale, as it does for the import system
    mod.write_text("def f():\n    return 3  # changed\n")
    os.utime(mod, (cached.stat().st_mtime + 5, cached.stat().st_mtime + 5))
    assert not bytecode.is_current(mod)
    assert bytecode.compile_stale([pkg]) == (1, 3, [])
    assert bytecode.is_current(mod)


def test_the_compiled_bytecode_is_what_the_import_system_loads(tmp_path):
    """The point of compiling: a process run with PYTHONDONTWRITEBYTECODE then loads the module
    without compiling it; before, it compiled it (and would at every start)."""
    pkg = _package(tmp_path)
    mod = pkg / "sub" / "mod.py"
    cached = Path(importlib.util.cache_from_source(str(mod)))
    assert not _loads_from_cache(tmp_path, "pkg.sub.mod", cached)
    bytecode.compile_stale([pkg])
    before = cached.stat().st_mtime_ns
    assert _loads_from_cache(tmp_path, "pkg.sub.mod", cached)
    assert cached.stat().st_mtime_ns == before       # read, not rewritten


def test_a_source_that_does_not_compile_is_reported_not_raised(tmp_path):
    pkg = _package(tmp_path)
    (pkg / "broken.py").write_text("def f(:\n")
    compiled, seen, failed = bytecode.compile_stale([pkg])
    assert (compiled, seen) == (3, 4)
    assert len(failed) == 1 and "broken.py" in failed[0]


def test_the_packages_are_found_where_this_interpreter_imports_them():
    dirs = bytecode.package_dirs()
    names = {d.name for d in dirs}
    assert {"ambit", "ztunnel", "waypoint"} <= names
    import ztunnel
    assert Path(ztunnel.__file__).parent in dirs
