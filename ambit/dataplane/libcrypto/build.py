"""The C declarations of the libcrypto binding, and the generator of `_cdefs.py` from them.

Same scheme as the nghttp2 binding (`ambit/dataplane/nghttp2/build.py`): cffi's out-of-line ABI
mode, the declarations parsed once here, their serialised form committed as `_cdefs.py`, so that
run time imports neither cffi's Python package nor its C parser, and needs no compiler.

Only what the data plane calls is declared, with OpenSSL 3.0's signatures (Debian 12's libssl3,
the library CPython's `ssl` module is linked against). Every structure stays opaque except
`struct tm` (glibc's layout, filled by `ASN1_TIME_to_tm`). OpenSSL's typed stacks
(`STACK_OF(X509)`, `GENERAL_NAMES`, `STACK_OF(X509_EXTENSION)`) are macros over the untyped
`OPENSSL_sk_*` functions, so they are declared as `OPENSSL_STACK`. `ASN1_INTEGER`, `ASN1_TIME`
and `ASN1_IA5STRING` are typedefs of `ASN1_STRING` in OpenSSL itself.

After editing CDEF, regenerate: `python -m ambit.dataplane.libcrypto.build`; a unit test fails
while `_cdefs.py` differs from what CDEF generates.
"""

from __future__ import annotations

from pathlib import Path

from ambit.dataplane import cffi_build

MODULE = "ambit.dataplane.libcrypto._cdefs"
TARGET = Path(__file__).with_name("_cdefs.py")

CDEF = """
typedef struct x509_st X509;
typedef struct X509_req_st X509_REQ;
typedef struct X509_extension_st X509_EXTENSION;
typedef struct x509_store_st X509_STORE;
typedef struct x509_store_ctx_st X509_STORE_CTX;
typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_pkey_ctx_st EVP_PKEY_CTX;
typedef struct evp_md_st EVP_MD;
typedef struct bio_st BIO;
typedef struct bio_method_st BIO_METHOD;
typedef struct asn1_string_st ASN1_STRING;
typedef struct stack_st OPENSSL_STACK;
typedef struct GENERAL_NAME_st GENERAL_NAME;
typedef long time_t;
struct tm { int tm_sec; int tm_min; int tm_hour; int tm_mday; int tm_mon; int tm_year; int tm_wday;
            int tm_yday; int tm_isdst; long tm_gmtoff; const char *tm_zone; };

unsigned long OpenSSL_version_num(void);
unsigned long ERR_get_error(void);
void ERR_clear_error(void);
void ERR_error_string_n(unsigned long, char *, size_t);

const BIO_METHOD *BIO_s_mem(void);
BIO *BIO_new(const BIO_METHOD *);
BIO *BIO_new_mem_buf(const void *, int);
int BIO_free(BIO *);
long BIO_ctrl(BIO *, int, long, void *);

X509 *PEM_read_bio_X509(BIO *, X509 **, void *, void *);
int PEM_write_bio_X509(BIO *, X509 *);
void X509_free(X509 *);
int X509_up_ref(X509 *);
int i2d_X509(X509 *, unsigned char **);
const ASN1_STRING *X509_get0_serialNumber(const X509 *);
const ASN1_STRING *X509_get0_notBefore(const X509 *);
const ASN1_STRING *X509_get0_notAfter(const X509 *);
void *X509_get_ext_d2i(const X509 *, int, int *, int *);
int X509_check_private_key(const X509 *, const EVP_PKEY *);

int ASN1_TIME_to_tm(const ASN1_STRING *, struct tm *);
int ASN1_STRING_length(const ASN1_STRING *);
const unsigned char *ASN1_STRING_get0_data(const ASN1_STRING *);
int ASN1_STRING_type(const ASN1_STRING *);
ASN1_STRING *ASN1_IA5STRING_new(void);
int ASN1_STRING_set(ASN1_STRING *, const void *, int);
void ASN1_STRING_free(ASN1_STRING *);

OPENSSL_STACK *OPENSSL_sk_new_null(void);
int OPENSSL_sk_num(const OPENSSL_STACK *);
void *OPENSSL_sk_value(const OPENSSL_STACK *, int);
int OPENSSL_sk_push(OPENSSL_STACK *, const void *);
void OPENSSL_sk_free(OPENSSL_STACK *);

GENERAL_NAME *GENERAL_NAME_new(void);
void GENERAL_NAME_free(GENERAL_NAME *);
void GENERAL_NAME_set0_value(GENERAL_NAME *, int, void *);
void *GENERAL_NAME_get0_value(const GENERAL_NAME *, int *);
void GENERAL_NAMES_free(OPENSSL_STACK *);
X509_EXTENSION *X509V3_EXT_i2d(int, int, void *);
void X509_EXTENSION_free(X509_EXTENSION *);

X509_REQ *X509_REQ_new(void);
void X509_REQ_free(X509_REQ *);
int X509_REQ_set_version(X509_REQ *, long);
int X509_REQ_set_pubkey(X509_REQ *, EVP_PKEY *);
int X509_REQ_add_extensions(X509_REQ *, const OPENSSL_STACK *);
int X509_REQ_sign(X509_REQ *, EVP_PKEY *, const EVP_MD *);
int PEM_write_bio_X509_REQ(BIO *, X509_REQ *);

const EVP_MD *EVP_sha256(void);
EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_name(void *, const char *, const char *);
int EVP_PKEY_keygen_init(EVP_PKEY_CTX *);
int EVP_PKEY_CTX_set_group_name(EVP_PKEY_CTX *, const char *);
int EVP_PKEY_generate(EVP_PKEY_CTX *, EVP_PKEY **);
void EVP_PKEY_CTX_free(EVP_PKEY_CTX *);
void EVP_PKEY_free(EVP_PKEY *);
int PEM_write_bio_PrivateKey(BIO *, const EVP_PKEY *, const void *, const unsigned char *, int, void *, void *);
EVP_PKEY *PEM_read_bio_PrivateKey(BIO *, EVP_PKEY **, void *, void *);

X509_STORE *X509_STORE_new(void);
void X509_STORE_free(X509_STORE *);
int X509_STORE_add_cert(X509_STORE *, X509 *);
X509_STORE_CTX *X509_STORE_CTX_new(void);
void X509_STORE_CTX_free(X509_STORE_CTX *);
int X509_STORE_CTX_init(X509_STORE_CTX *, X509_STORE *, X509 *, OPENSSL_STACK *);
int X509_STORE_CTX_set_purpose(X509_STORE_CTX *, int);
void X509_STORE_CTX_set_flags(X509_STORE_CTX *, unsigned long);
void X509_STORE_CTX_set_time(X509_STORE_CTX *, unsigned long, time_t);
int X509_verify_cert(X509_STORE_CTX *);
int X509_STORE_CTX_get_error(const X509_STORE_CTX *);
int X509_STORE_CTX_get_error_depth(const X509_STORE_CTX *);
const char *X509_verify_cert_error_string(long);
"""


def generate() -> str:
    """The text of `_cdefs.py` for CDEF, as this cffi writes it."""
    return cffi_build.generate(MODULE, CDEF)


if __name__ == "__main__":
    cffi_build.write(TARGET, generate())
