"""A P-256 key and a certificate signing request naming one URI SAN, made by libcrypto.

The CSR is what Istio's and Ambit's CAs expect from a workload: an empty subject, one critical
subjectAltName holding the SPIFFE URI, signed with ECDSA-SHA256. The key is returned as PKCS#8 PEM
(`BEGIN PRIVATE KEY`), which `ssl.SSLContext.load_cert_chain` reads.
"""

from __future__ import annotations

from ambit.dataplane.libcrypto import error, ffi, lib, read_bio
from ambit.dataplane.libcrypto.x509 import GEN_URI, NID_SUBJECT_ALT_NAME


def make_key_and_csr(uri: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key (PKCS#8 PEM) and a CSR for it whose only name is `uri` (PEM)."""
    c = lib()
    pctx = c.EVP_PKEY_CTX_new_from_name(ffi.NULL, b"EC", ffi.NULL)
    out = ffi.new("EVP_PKEY **")
    try:
        if (pctx == ffi.NULL or c.EVP_PKEY_keygen_init(pctx) != 1
                or c.EVP_PKEY_CTX_set_group_name(pctx, b"P-256") != 1 or c.EVP_PKEY_generate(pctx, out) != 1):
            raise error("generating a P-256 key")
    finally:
        c.EVP_PKEY_CTX_free(pctx)
    key = out[0]
    try:
        key_pem = read_bio(lambda bio: c.PEM_write_bio_PrivateKey(bio, key, ffi.NULL, ffi.NULL, 0, ffi.NULL, ffi.NULL))
        return key_pem, _csr(key, uri.encode("ascii"))
    finally:
        c.EVP_PKEY_free(key)


def _csr(key, uri: bytes) -> bytes:
    c = lib()
    req = c.X509_REQ_new()
    if req == ffi.NULL:
        raise error("X509_REQ_new")
    try:
        if c.X509_REQ_set_version(req, 0) != 1 or c.X509_REQ_set_pubkey(req, key) != 1:
            raise error("CSR version and key")
        ext = _san_extension(uri)
        exts = c.OPENSSL_sk_new_null()
        try:
            if exts == ffi.NULL or c.OPENSSL_sk_push(exts, ext) <= 0 or c.X509_REQ_add_extensions(req, exts) != 1:
                raise error("CSR extensions")
        finally:
            c.OPENSSL_sk_free(exts)          # the request holds its own copy
            c.X509_EXTENSION_free(ext)
        if c.X509_REQ_sign(req, key, c.EVP_sha256()) <= 0:
            raise error("signing the CSR")
        return read_bio(lambda bio: c.PEM_write_bio_X509_REQ(bio, req))
    finally:
        c.X509_REQ_free(req)


def _san_extension(uri: bytes):
    """A critical subjectAltName extension holding one URI."""
    c = lib()
    gens = c.OPENSSL_sk_new_null()
    if gens == ffi.NULL:
        raise error("GENERAL_NAMES")
    try:
        name = c.GENERAL_NAME_new()
        ia5 = c.ASN1_IA5STRING_new()
        if name == ffi.NULL or ia5 == ffi.NULL or c.ASN1_STRING_set(ia5, uri, len(uri)) != 1:
            c.GENERAL_NAME_free(name)
            c.ASN1_STRING_free(ia5)
            raise error("URI SAN")
        c.GENERAL_NAME_set0_value(name, GEN_URI, ia5)    # the name owns the string
        if c.OPENSSL_sk_push(gens, name) <= 0:
            c.GENERAL_NAME_free(name)
            raise error("URI SAN")
        ext = c.X509V3_EXT_i2d(NID_SUBJECT_ALT_NAME, 1, gens)
        if ext == ffi.NULL:
            raise error("subjectAltName extension")
        return ext
    finally:
        c.GENERAL_NAMES_free(gens)                      # frees the names pushed onto it
