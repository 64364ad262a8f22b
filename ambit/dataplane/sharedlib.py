"""Which file of a shared library this process has already mapped.

The ctypes and cffi bindings of libssl and libcrypto must load the very library CPython's `ssl`
module is linked against (its `SSL_CTX *` and error queue are the ones they touch, and a second
copy would cost memory), so they look it up in `/proc/self/maps` rather than by name.
"""

from __future__ import annotations


def mapped(fragment: str, default: str) -> str:
    """The path of the first mapping whose path contains `fragment`, else `default` (a soname)."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.rstrip("\n").split(" ")[-1]
            if fragment in path:
                return path
    return default
