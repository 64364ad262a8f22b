"""The generator behind both cffi bindings' `build.py` (nghttp2, libcrypto): out-of-line ABI mode.

A binding's declarations are parsed once, at development time, into a committed pure-Python module
(`_cdefs.py`) holding cffi's serialised form of them; at run time that module is imported and the
library `dlopen`ed, with no compiler and without cffi's Python package or its C parser (~3 MB per
process, docs/performance.md, round 7). Only the `build.py` modules import this.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cffi import FFI


def generate(module: str, cdef: str) -> str:
    """The text of the `_cdefs.py` named `module` for the declarations `cdef`, as this cffi writes it."""
    builder = FFI()
    builder.cdef(cdef)
    builder.set_source(module, None)
    with tempfile.TemporaryDirectory() as tmp:
        return Path(builder.compile(tmpdir=tmp)).read_text()


def write(target: Path, text: str) -> None:
    target.write_text(text)
    print(f"wrote {target}")
