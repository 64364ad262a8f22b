"""mTLS for HBONE: `ssl.SSLContext` builders, the TLS 1.3 cipher policy, and peer identity checks.

Policy (both sides): TLS 1.3 only, AES-GCM suites only, ALPN `h2`, a certificate required from the
peer and verified against the trust bundle. Hostnames are not checked: the peer's *identity* is
its single SPIFFE URI SAN, which we extract after the handshake and compare with the identity the
control plane says belongs at that address (client side), or hand to authorization (server side).

Python 3.11's `ssl` has no `SSLContext.set_ciphersuites` (TLS 1.3 suites are not covered by
`set_ciphers`). We therefore call OpenSSL's `SSL_CTX_set_ciphersuites` on the context through
ctypes, after proving we hold the right `SSL_CTX*` (its options must equal `ctx.options`) and the
right libssl (its version must equal `ssl.OPENSSL_VERSION_NUMBER`); the result is read back with
`ctx.get_ciphers()`. If that is impossible, building a context fails rather than silently allowing
ChaCha20, and `check_negotiated` re-checks every session anyway.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ambit.dataplane.sharedlib import mapped
from ambit.dataplane.trust import UntrustedCertificate, spiffe_id_from_uris
from ambit.identity import SpiffeId, peercert_uris

if TYPE_CHECKING:
    from ambit.dataplane.identity import WorkloadCertificate

log = logging.getLogger("ambit.dataplane.tls")

ALPN = "h2"
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384")


class TLSPolicyError(RuntimeError):
    """The local TLS library cannot enforce the mesh TLS policy."""


class PeerIdentityError(ssl.SSLError):
    """The peer presented a certificate, but not the identity we require (or none we can read)."""


# --- TLS 1.3 cipher suites -----------------------------------------------------------------------

class _LibSSL:
    """The libssl that CPython's `_ssl` module is linked against, loaded once."""

    _lib: ctypes.CDLL | None = None

    @classmethod
    def get(cls) -> ctypes.CDLL:
        if cls._lib is None:
            path = mapped("/libssl.so", "libssl.so.3")
            lib = ctypes.CDLL(path)
            lib.OpenSSL_version_num.restype = ctypes.c_ulong
            if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
                raise TLSPolicyError(f"{path} is not the OpenSSL that Python's ssl uses ({ssl.OPENSSL_VERSION})")
            lib.SSL_CTX_get_options.restype = ctypes.c_uint64
            lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
            lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            # (libcrypto's, found through libssl's dependencies)
            lib.SSL_CTX_get_cert_store.restype = ctypes.c_void_p
            lib.SSL_CTX_get_cert_store.argtypes = [ctypes.c_void_p]
            lib.X509_STORE_set_flags.restype = ctypes.c_int
            lib.X509_STORE_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
            lib.X509_STORE_get0_param.restype = ctypes.c_void_p
            lib.X509_STORE_get0_param.argtypes = [ctypes.c_void_p]
            lib.X509_VERIFY_PARAM_get_flags.restype = ctypes.c_ulong
            lib.X509_VERIFY_PARAM_get_flags.argtypes = [ctypes.c_void_p]
            cls._lib = lib
        return cls._lib


def set_tls13_ciphersuites(ctx: ssl.SSLContext, suites: tuple[str, ...] = TLS13_SUITES) -> None:
    """Restrict the TLS 1.3 suites of `ctx`; raises `TLSPolicyError` if it cannot be done safely."""
    setter = getattr(ctx, "set_ciphersuites", None)
    if setter is not None:  # Python versions that grow the API
        setter(":".join(suites))
    else:
        lib = _LibSSL.get()
        # PySSLContext is `PyObject_HEAD; SSL_CTX *ctx; ...`: the pointer follows the object header.
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not ptr or lib.SSL_CTX_get_options(ptr) != ctx.options:
            raise TLSPolicyError("cannot locate the SSL_CTX of this SSLContext to set TLS 1.3 suites")
        if lib.SSL_CTX_set_ciphersuites(ptr, ":".join(suites).encode()) != 1:
            raise TLSPolicyError(f"OpenSSL refused TLS 1.3 suites {suites}")
    got = tuple(c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3")
    if set(got) != set(suites):
        raise TLSPolicyError(f"TLS 1.3 suites are {got}, wanted {suites}")


# --- contexts ------------------------------------------------------------------------------------

def load_chain_from_memory(ctx: ssl.SSLContext, key_pem: bytes, chain_pem: list[str]) -> None:
    """`load_cert_chain` only takes paths; give it an anonymous memfd so the key never hits disk."""
    fd = os.memfd_create("ambit-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem + b"\n" + "".join(chain_pem).encode())
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


# --- revocation lists ----------------------------------------------------------------------------

CRL_BLOCK = re.compile(r"-----BEGIN X509 CRL-----[A-Za-z0-9+/=\s]+-----END X509 CRL-----")
_CRL_CHECK, _CRL_CHECK_ALL = 0x4, 0x8       # X509_V_FLAG_CRL_CHECK, X509_V_FLAG_CRL_CHECK_ALL


def crl_blocks(pem: str) -> list[str]:
    """The PEM CRL blocks of `pem` (the text around them, and any certificate, left out)."""
    return CRL_BLOCK.findall(pem)


def load_crls(ctx: ssl.SSLContext, pem: str, *, per_store: bool = False) -> None:
    """Check the peer's chain against the CRLs in `pem`, every CA of it, as Envoy does with a
    `CertificateValidationContext.crl` and no `only_verify_leaf_cert_crl` (what Istio sends):
    OpenSSL's CRL_CHECK | CRL_CHECK_ALL, so a CA of the chain without a CRL here fails the
    verification of every certificate below it (Envoy's documented behaviour). Raises
    ssl.SSLError when `pem` holds no CRL or one that does not load: never a context that
    quietly checks nothing.

    `per_store`: also set the flags on the context's X509_STORE, as Envoy does
    (X509_STORE_set_flags). A server context that an SNI callback swaps in keeps the verify flags of
    the context the handshake began with (OpenSSL copies them into the connection at SSL_new; tried:
    `verify_flags` on the swapped context is ignored), but verification starts from the store's
    own flags, and the store is the swapped context's."""
    blocks = crl_blocks(pem)
    if not blocks:
        raise ssl.SSLError("holds no PEM CRL (-----BEGIN X509 CRL-----)")
    # load_verify_locations(cadata=) reads certificates only; a file is read for CRLs as well
    fd = os.memfd_create("ambit-crl", os.MFD_CLOEXEC)
    try:
        os.write(fd, "\n".join(blocks).encode())
        ctx.load_verify_locations(cafile=f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    if per_store:
        _set_store_flags(ctx, _CRL_CHECK | _CRL_CHECK_ALL)


def _set_store_flags(ctx: ssl.SSLContext, flags: int) -> None:
    """X509_STORE_set_flags on `ctx`'s trust store (no Python API), proved as in
    `set_tls13_ciphersuites` and read back; raises TLSPolicyError when it cannot be done."""
    lib = _LibSSL.get()
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr or lib.SSL_CTX_get_options(ptr) != ctx.options:
        raise TLSPolicyError("cannot locate the SSL_CTX of this SSLContext to turn revocation checks on")
    store = lib.SSL_CTX_get_cert_store(ptr)
    if not store or lib.X509_STORE_set_flags(store, flags) != 1 or \
            lib.X509_VERIFY_PARAM_get_flags(lib.X509_STORE_get0_param(store)) & flags != flags:
        raise TLSPolicyError("OpenSSL did not turn revocation checks on for this trust store")


def _context(purpose: int, cert: WorkloadCertificate) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    set_tls13_ciphersuites(ctx)
    ctx.check_hostname = False          # identity = SPIFFE SAN, checked after the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert.bundle.pem_bundle())
    ctx.set_alpn_protocols([ALPN])
    load_chain_from_memory(ctx, cert.key_pem, cert.chain_pem)
    return ctx


def client_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """Context for dialing HBONE as `cert.identity` (the *source* workload)."""
    return _context(ssl.PROTOCOL_TLS_CLIENT, cert)


def server_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """Context for accepting HBONE as `cert.identity` (the *destination* workload)."""
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, cert)
    # Our clients pool connections instead of resuming sessions; tickets would only cost CPU.
    ctx.num_tickets = 0
    return ctx


def selecting_server_context(select: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """A server context that takes its certificate, per handshake, from `select()`.

    A listener keeps one SSLContext for its lifetime, but the certificate behind it rotates (and
    may not exist yet when the listener opens). OpenSSL's servername callback runs after the
    ClientHello of every handshake (with or without SNI); it swaps in the current context, whose
    certificate, key and trust store then serve that handshake. The base context carries the
    policy that OpenSSL copies into each connection at accept time (TLS 1.3 only, AES-GCM, peer
    certificate required, ALPN h2), so it is enforced whatever `select()` returns. If `select()`
    fails (no certificate yet) the handshake is refused with an alert.
    """
    base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    base.minimum_version = ssl.TLSVersion.TLSv1_3
    base.maximum_version = ssl.TLSVersion.TLSv1_3
    set_tls13_ciphersuites(base)
    base.check_hostname = False
    base.verify_mode = ssl.CERT_REQUIRED
    base.set_alpn_protocols([ALPN])
    base.num_tickets = 0

    def pick(sslobj: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        try:
            sslobj.context = select()
        except Exception as e:  # noqa: BLE001 - an exception here would only be printed by ssl
            log.warning("refusing a TLS handshake: no server certificate: %s", e)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    base.sni_callback = pick
    return base


@dataclass
class _Cached:
    key: tuple[int, str]
    ctx: ssl.SSLContext


class ContextCache:
    """One client and one server context per identity, rebuilt when its certificate rotates.

    Building a context parses PEMs and keys (~ms); doing it per connection would cost as much as a
    handshake. Keyed on (serial, trust-bundle fingerprint) so a rotation or a root change is seen
    by the next connection while established ones keep their session.
    """

    def __init__(self) -> None:
        self._client: dict[str, _Cached] = {}
        self._server: dict[str, _Cached] = {}

    def client(self, cert: WorkloadCertificate) -> ssl.SSLContext:
        return self._get(self._client, cert, client_context)

    def server(self, cert: WorkloadCertificate) -> ssl.SSLContext:
        return self._get(self._server, cert, server_context)

    def forget(self, identity: str) -> None:
        self._client.pop(identity, None)
        self._server.pop(identity, None)

    @staticmethod
    def _get(table: dict[str, _Cached], cert: WorkloadCertificate, build) -> ssl.SSLContext:
        key = (cert.serial, cert.bundle.fingerprint())
        hit = table.get(cert.identity)
        if hit is None or hit.key != key:
            hit = _Cached(key, build(cert))
            table[cert.identity] = hit
        return hit.ctx


# --- after the handshake ---------------------------------------------------------------------------

def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> SpiffeId:
    """The SPIFFE id in the peer's (already chain-verified) leaf certificate.

    Read from `getpeercert()`, the fields `ssl` decodes from a verified certificate: every context
    here requires and verifies the peer's certificate, so the dictionary is there whenever a
    handshake completed.
    """
    cert = ssl_object.getpeercert()
    if not cert:
        raise PeerIdentityError("peer presented no certificate")
    try:
        return spiffe_id_from_uris(peercert_uris(cert))
    except UntrustedCertificate as e:
        raise PeerIdentityError(f"peer certificate has no usable identity: {e}") from None


def verify_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: str) -> SpiffeId:
    """Client side: the server must be exactly the workload identity we meant to reach."""
    got = peer_identity(ssl_object)
    if got.uri != expected:
        raise PeerIdentityError(f"peer identity is {got.uri}, expected {expected}")
    return got


def check_negotiated(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> None:
    """Belt and braces: refuse a session that is not TLS 1.3 + AES-GCM + h2."""
    version = ssl_object.version()
    cipher = (ssl_object.cipher() or ("", "", 0))[0]
    alpn = ssl_object.selected_alpn_protocol()
    if version != "TLSv1.3" or cipher not in TLS13_SUITES or alpn != ALPN:
        raise PeerIdentityError(f"negotiated {version} {cipher} alpn={alpn}, policy is TLSv1.3 AES-GCM h2")
