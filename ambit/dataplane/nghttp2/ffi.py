"""cffi binding of libnghttp2's session API (Debian's libnghttp2-14, 1.52), out-of-line ABI mode.

`ffi` comes from `_cdefs.py`, cffi's serialised form of the declarations in `build.py`, so importing
this module loads neither cffi's Python package nor its C parser (pycparser): ~3 MB less in every
process that uses the codec (docs/performance.md, round 7). The library is `dlopen`ed on first use
(ABI mode: no compiler at setup). The declarations, and why they are as they are, are in `build.py`.
"""

from __future__ import annotations

from ambit.dataplane.nghttp2._cdefs import ffi

__all__ = ["SONAME", "available", "ffi", "lib"]

SONAME = "libnghttp2.so.14"
_lib = None


def lib():
    """The loaded library; loaded on first use so that importing this module never fails."""
    global _lib
    if _lib is None:
        _lib = ffi.dlopen(SONAME)
    return _lib


def available() -> str | None:
    """None when libnghttp2 loads, else why not (for the setting's error message)."""
    try:
        lib()
    except OSError as e:
        return f"{SONAME} cannot be loaded ({e}); install Debian's libnghttp2-14"
    return None
