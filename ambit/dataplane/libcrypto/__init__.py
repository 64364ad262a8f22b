"""cffi binding of the libcrypto that CPython's `ssl` module already loaded (OpenSSL 3.0).

Why not the `cryptography` package: the data plane needs only a key, a CSR, a few certificate
fields and a chain check, and `cryptography` carries its own statically linked OpenSSL. Importing
and using it cost each proxy ~12 MB of resident memory (its 8 MB Rust binding, ~4 MB anonymous),
for work the OpenSSL that `ssl` maps anyway does (docs/performance.md, round 13). The controller,
which signs certificates, keeps `cryptography`.

The library is the one `ssl` is linked against: found in this process's mappings after `ssl` is
imported, and refused unless its version is `ssl.OPENSSL_VERSION_NUMBER`, so one OpenSSL verifies
both the TLS handshakes and the certificates checked here. The declarations live in `build.py`.

OpenSSL keeps a per-thread error queue that `ssl` also reads; every failure here drains it
(`error()`), so no stale entry can surface in an unrelated `ssl.SSLError`.
"""

from __future__ import annotations

import ssl

from ambit.dataplane.libcrypto._cdefs import ffi
from ambit.dataplane.sharedlib import mapped

__all__ = ["OpenSSLError", "error", "ffi", "lib", "read_bio", "mem_bio"]

_lib = None


class OpenSSLError(ValueError):
    """A libcrypto call failed; the message carries OpenSSL's own reason."""


def lib():
    """The loaded library (loaded on first use, so importing this module never fails)."""
    global _lib
    if _lib is None:
        path = mapped("/libcrypto.so", "libcrypto.so.3")
        loaded = ffi.dlopen(path)
        if loaded.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
            raise OSError(f"{path} is not the OpenSSL that Python's ssl uses ({ssl.OPENSSL_VERSION})")
        _lib = loaded
    return _lib


def error(what: str) -> OpenSSLError:
    """`what` failed: an exception with OpenSSL's queued reasons, the queue left empty."""
    c = lib()
    reasons = []
    buf = ffi.new("char[256]")
    while code := c.ERR_get_error():
        c.ERR_error_string_n(code, buf, 256)
        reasons.append(ffi.string(buf).decode(errors="replace"))
    return OpenSSLError(f"{what}: {'; '.join(reasons) or 'failed'}")


def mem_bio(data: bytes):
    """A read-only memory BIO over `data` (freed with the returned object; keep `data` alive)."""
    bio = lib().BIO_new_mem_buf(data, len(data))
    if bio == ffi.NULL:
        raise error("BIO_new_mem_buf")
    return ffi.gc(bio, lib().BIO_free)


_BIO_CTRL_INFO = 3   # BIO_get_mem_data(b, pp) is BIO_ctrl(b, BIO_CTRL_INFO, 0, pp)


def read_bio(write) -> bytes:
    """What `write(bio)` (a `PEM_write_bio_*` call, 1 on success) writes to a fresh memory BIO."""
    c = lib()
    bio = c.BIO_new(c.BIO_s_mem())
    if bio == ffi.NULL:
        raise error("BIO_new")
    try:
        if write(bio) != 1:
            raise error("PEM write")
        ptr = ffi.new("char **")
        n = c.BIO_ctrl(bio, _BIO_CTRL_INFO, 0, ptr)
        return ffi.unpack(ptr[0], n)
    finally:
        c.BIO_free(bio)
