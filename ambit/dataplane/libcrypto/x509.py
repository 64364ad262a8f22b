"""X.509 certificates as the data plane reads them: parsed and chain-checked by libcrypto.

The data plane reads a handful of fields (serial, validity, URI SANs), compares fingerprints, checks
that a chain leads to a trust-bundle root and that a leaf matches a private key. A `Certificate`
owns one OpenSSL `X509` and its DER. Malformed input raises `ValueError` (an `OpenSSLError` with
OpenSSL's reason), never a crash: all parsing is OpenSSL's.
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Sequence

from ambit.dataplane.libcrypto import OpenSSLError, error, ffi, lib, mem_bio, read_bio

NID_SUBJECT_ALT_NAME = 85
GEN_URI = 6
V_ASN1_NEG_INTEGER = 0x102
X509_PURPOSE_SSL_CLIENT = 1
X509_V_FLAG_X509_STRICT = 0x20
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


class ChainError(OpenSSLError):
    """A chain that does not verify against the given roots; the message is OpenSSL's reason."""


class Certificate:
    """One parsed certificate (immutable; the `X509` is freed with the object)."""

    __slots__ = ("_x", "der")

    def __init__(self, x) -> None:
        """Takes ownership of `x`, an `X509 *`."""
        c = lib()
        self._x = ffi.gc(x, c.X509_free)
        n = c.i2d_X509(x, ffi.NULL)
        if n <= 0:
            raise error("i2d_X509")
        buf = ffi.new("unsigned char[]", n)
        out = ffi.new("unsigned char **", buf)
        c.i2d_X509(x, out)
        self.der: bytes = ffi.buffer(buf, n)[:]

    @classmethod
    def load_pems(cls, data: bytes | str) -> list[Certificate]:
        """Every `CERTIFICATE` block of `data`, in order; `ValueError` if one does not parse or
        there is none."""
        raw = data.encode() if isinstance(data, str) else data
        c = lib()
        bio = mem_bio(raw)
        certs = []
        while (x := c.PEM_read_bio_X509(bio, ffi.NULL, ffi.NULL, ffi.NULL)) != ffi.NULL:
            certs.append(cls(x))
        expected = raw.count(_PEM_BEGIN)
        if not certs or len(certs) < expected:
            raise error(f"PEM certificate {len(certs) + 1} of {max(expected, 1)}")
        c.ERR_clear_error()   # the end of the data leaves "no start line" queued
        return certs

    def pem(self) -> str:
        return read_bio(lambda bio: lib().PEM_write_bio_X509(bio, self._x)).decode()

    def fingerprint(self) -> bytes:
        """SHA-256 of the DER encoding."""
        return hashlib.sha256(self.der).digest()

    @property
    def serial(self) -> int:
        c = lib()
        s = c.X509_get0_serialNumber(self._x)
        value = int.from_bytes(_asn1_bytes(s))
        return -value if c.ASN1_STRING_type(s) == V_ASN1_NEG_INTEGER else value

    @property
    def not_before(self) -> float:
        """notBefore, in epoch seconds."""
        return _epoch(lib().X509_get0_notBefore(self._x))

    @property
    def not_after(self) -> float:
        """notAfter, in epoch seconds."""
        return _epoch(lib().X509_get0_notAfter(self._x))

    def uri_sans(self) -> list[str] | None:
        """The URI entries of subjectAltName; None without the extension, `ValueError` if it is
        repeated or does not parse."""
        c = lib()
        crit = ffi.new("int *")
        gens = c.X509_get_ext_d2i(self._x, NID_SUBJECT_ALT_NAME, crit, ffi.NULL)
        if gens == ffi.NULL:
            if crit[0] == -1:
                return None
            c.ERR_clear_error()
            raise OpenSSLError("subjectAltName is repeated" if crit[0] == -2 else "subjectAltName does not parse")
        gens = ffi.cast("OPENSSL_STACK *", gens)
        try:
            uris = []
            kind = ffi.new("int *")
            for i in range(c.OPENSSL_sk_num(gens)):
                value = c.GENERAL_NAME_get0_value(ffi.cast("GENERAL_NAME *", c.OPENSSL_sk_value(gens, i)), kind)
                if kind[0] == GEN_URI:
                    raw = _asn1_bytes(ffi.cast("ASN1_STRING *", value))
                    try:
                        uris.append(raw.decode("ascii"))
                    except UnicodeDecodeError:
                        raise OpenSSLError(f"URI SAN {raw!r} is not ASCII") from None
            return uris
        finally:
            c.GENERAL_NAMES_free(gens)

    def matches_key(self, key_pem: bytes) -> bool:
        """Whether `key_pem` (a PEM private key) is this certificate's key."""
        c = lib()
        key = c.PEM_read_bio_PrivateKey(mem_bio(key_pem), ffi.NULL, ffi.NULL, ffi.NULL)
        if key == ffi.NULL:
            raise error("private key PEM")
        try:
            ok = c.X509_check_private_key(self._x, key) == 1
        finally:
            c.EVP_PKEY_free(key)
        c.ERR_clear_error()   # a mismatch queues "key values mismatch"
        return ok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Certificate) and other.der == self.der

    def __hash__(self) -> int:
        return hash(self.der)

    def __repr__(self) -> str:
        return f"<Certificate serial={self.serial:x} sha256={self.fingerprint().hex()[:16]}>"


def _asn1_bytes(s) -> bytes:
    """The content octets of an ASN1_STRING (an INTEGER's magnitude, an IA5String's text)."""
    c = lib()
    return ffi.unpack(ffi.cast("char *", c.ASN1_STRING_get0_data(s)), c.ASN1_STRING_length(s))


def _epoch(t) -> float:
    tm = ffi.new("struct tm *")
    if lib().ASN1_TIME_to_tm(t, tm) != 1:
        raise error("certificate time")
    return float(calendar.timegm((tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)))


def verify_chain(roots: Sequence[Certificate], chain: Sequence[Certificate], *, at: float | None = None) -> None:
    """Check that `chain` (leaf first, then any intermediates) leads to one of `roots`.

    OpenSSL's path builder, as in the TLS handshakes, with the TLS-client purpose (a leaf's
    extendedKeyUsage, when present, must allow client auth), RFC 5280's stricter checks
    (`X509_V_FLAG_X509_STRICT`) and, with `at`, validity judged at that epoch time instead of now.
    Raises `ChainError` with OpenSSL's reason and the failing certificate's depth.
    """
    if not chain:
        raise ChainError("empty certificate chain")
    c = lib()
    store = c.X509_STORE_new()
    ctx = c.X509_STORE_CTX_new()
    untrusted = c.OPENSSL_sk_new_null()
    try:
        if ffi.NULL in (store, ctx, untrusted):
            raise error("allocating a certificate store")
        for r in roots:
            if c.X509_STORE_add_cert(store, r._x) != 1:
                raise error("adding a trust root")
        for cert in chain[1:]:          # the stack borrows; `chain` keeps them alive for the call
            if c.OPENSSL_sk_push(untrusted, cert._x) <= 0:
                raise error("building the chain")
        if c.X509_STORE_CTX_init(ctx, store, chain[0]._x, untrusted) != 1:
            raise error("X509_STORE_CTX_init")
        c.X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT)
        c.X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_X509_STRICT)
        if at is not None:
            c.X509_STORE_CTX_set_time(ctx, 0, int(at))
        if c.X509_verify_cert(ctx) != 1:
            code = c.X509_STORE_CTX_get_error(ctx)
            depth = c.X509_STORE_CTX_get_error_depth(ctx)
            c.ERR_clear_error()
            reason = ffi.string(c.X509_verify_cert_error_string(code)).decode()
            raise ChainError(f"{reason} (at depth {depth} of the chain)")
    finally:
        c.X509_STORE_CTX_free(ctx)
        c.OPENSSL_sk_free(untrusted)
        c.X509_STORE_free(store)
