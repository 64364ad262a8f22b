"""The C declarations of the libnghttp2 binding, and the generator of `_cdefs.py` from them.

The binding is cffi's out-of-line ABI mode: the declarations below are parsed once, here, and
`_cdefs.py` holds cffi's serialised form of them (a pure-Python module, committed). At run time
`ffi.py` imports that module and `dlopen`s the library: no compiler at setup, and no C parser at
import. Why: in-line ABI mode (`FFI().cdef(...)` at import) imports pycparser and builds its tables
in every process that uses the codec, ~3 MB of resident memory (docs/performance.md, round 7).

The declarations copy the struct layouts of nghttp2.h 1.52 (Debian's libnghttp2-14) exactly for the
structs whose fields we read (frame headers, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY,
WINDOW_UPDATE, nv, data provider). Byte pointers are declared `char *` where the header says `uint8_t *` (same ABI)
so that cffi hands them over as `bytes` without a conversion. Only what `connection.py` calls is
declared.

After editing CDEF, regenerate: `python -m ambit.dataplane.nghttp2.build`; a unit test fails while
`_cdefs.py` differs from what CDEF generates.
"""

from __future__ import annotations

from pathlib import Path

from ambit.dataplane import cffi_build

MODULE = "ambit.dataplane.nghttp2._cdefs"
TARGET = Path(__file__).with_name("_cdefs.py")

CDEF = """
typedef struct nghttp2_session nghttp2_session;
typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
typedef struct nghttp2_option nghttp2_option;

typedef struct { char *name; char *value; size_t namelen; size_t valuelen; uint8_t flags; } nghttp2_nv;
typedef enum { NGHTTP2_HCAT_REQUEST = 0, NGHTTP2_HCAT_RESPONSE = 1, NGHTTP2_HCAT_PUSH_RESPONSE = 2,
               NGHTTP2_HCAT_HEADERS = 3 } nghttp2_headers_category;
typedef struct { size_t length; int32_t stream_id; uint8_t type; uint8_t flags; uint8_t reserved; }
    nghttp2_frame_hd;
typedef struct { nghttp2_frame_hd hd; size_t padlen; } nghttp2_data;
typedef struct { int32_t stream_id; int32_t weight; uint8_t exclusive; } nghttp2_priority_spec;
typedef struct { nghttp2_frame_hd hd; size_t padlen; nghttp2_priority_spec pri_spec; nghttp2_nv *nva;
                 size_t nvlen; nghttp2_headers_category cat; } nghttp2_headers;
typedef struct { nghttp2_frame_hd hd; nghttp2_priority_spec pri_spec; } nghttp2_priority;
typedef struct { nghttp2_frame_hd hd; uint32_t error_code; } nghttp2_rst_stream;
typedef struct { int32_t settings_id; uint32_t value; } nghttp2_settings_entry;
typedef struct { nghttp2_frame_hd hd; size_t niv; nghttp2_settings_entry *iv; } nghttp2_settings;
typedef struct { nghttp2_frame_hd hd; size_t padlen; nghttp2_nv *nva; size_t nvlen; int32_t promised_stream_id;
                 uint8_t reserved; } nghttp2_push_promise;
typedef struct { nghttp2_frame_hd hd; uint8_t opaque_data[8]; } nghttp2_ping;
typedef struct { nghttp2_frame_hd hd; int32_t last_stream_id; uint32_t error_code; char *opaque_data;
                 size_t opaque_data_len; uint8_t reserved; } nghttp2_goaway;
typedef struct { nghttp2_frame_hd hd; int32_t window_size_increment; uint8_t reserved; } nghttp2_window_update;
typedef struct { nghttp2_frame_hd hd; void *payload; } nghttp2_extension;
typedef union { nghttp2_frame_hd hd; nghttp2_data data; nghttp2_headers headers; nghttp2_priority priority;
                nghttp2_rst_stream rst_stream; nghttp2_settings settings; nghttp2_push_promise push_promise;
                nghttp2_ping ping; nghttp2_goaway goaway; nghttp2_window_update window_update;
                nghttp2_extension ext; } nghttp2_frame;
typedef union { int fd; void *ptr; } nghttp2_data_source;
typedef ssize_t (*nghttp2_data_source_read_callback)(nghttp2_session *, int32_t, char *, size_t, uint32_t *,
                                                     nghttp2_data_source *, void *);
typedef struct { nghttp2_data_source source; nghttp2_data_source_read_callback read_callback; }
    nghttp2_data_provider;

typedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session *, const nghttp2_frame *, void *);
typedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session *, uint8_t, int32_t, const char *, size_t,
                                                   void *);
typedef int (*nghttp2_on_stream_close_callback)(nghttp2_session *, int32_t, uint32_t, void *);
typedef int (*nghttp2_on_header_callback)(nghttp2_session *, const nghttp2_frame *, const char *, size_t,
                                          const char *, size_t, uint8_t, void *);
typedef int (*nghttp2_on_begin_headers_callback)(nghttp2_session *, const nghttp2_frame *, void *);
typedef int (*nghttp2_on_invalid_frame_recv_callback)(nghttp2_session *, const nghttp2_frame *, int, void *);
typedef int (*nghttp2_error_callback2)(nghttp2_session *, int, const char *, size_t, void *);

int nghttp2_session_callbacks_new(nghttp2_session_callbacks **);
void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *,
                                                          nghttp2_on_frame_recv_callback);
void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *,
                                                               nghttp2_on_data_chunk_recv_callback);
void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *,
                                                            nghttp2_on_stream_close_callback);
void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *, nghttp2_on_header_callback);
void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *,
                                                             nghttp2_on_begin_headers_callback);
void nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(nghttp2_session_callbacks *,
                                                                  nghttp2_on_invalid_frame_recv_callback);
void nghttp2_session_callbacks_set_error_callback2(nghttp2_session_callbacks *, nghttp2_error_callback2);

int nghttp2_option_new(nghttp2_option **);
void nghttp2_option_del(nghttp2_option *);
void nghttp2_option_set_no_auto_window_update(nghttp2_option *, int);
void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option *, uint64_t, uint64_t);
void nghttp2_option_set_max_continuations(nghttp2_option *, size_t);

int nghttp2_session_server_new2(nghttp2_session **, const nghttp2_session_callbacks *, void *,
                                const nghttp2_option *);
int nghttp2_session_client_new2(nghttp2_session **, const nghttp2_session_callbacks *, void *,
                                const nghttp2_option *);
void nghttp2_session_del(nghttp2_session *);
ssize_t nghttp2_session_mem_recv(nghttp2_session *, const char *, size_t);
ssize_t nghttp2_session_mem_send(nghttp2_session *, const char **);
int nghttp2_session_want_read(nghttp2_session *);
int nghttp2_session_want_write(nghttp2_session *);

int nghttp2_submit_settings(nghttp2_session *, uint8_t, const nghttp2_settings_entry *, size_t);
int32_t nghttp2_submit_headers(nghttp2_session *, uint8_t, int32_t, const nghttp2_priority_spec *,
                               const nghttp2_nv *, size_t, void *);
int nghttp2_submit_data(nghttp2_session *, uint8_t, int32_t, const nghttp2_data_provider *);
int nghttp2_submit_trailer(nghttp2_session *, int32_t, const nghttp2_nv *, size_t);
int nghttp2_submit_rst_stream(nghttp2_session *, uint8_t, int32_t, uint32_t);
int nghttp2_submit_ping(nghttp2_session *, uint8_t, const char *);
int nghttp2_submit_goaway(nghttp2_session *, uint8_t, int32_t, uint32_t, const char *, size_t);
int nghttp2_session_terminate_session(nghttp2_session *, uint32_t);
int nghttp2_session_set_local_window_size(nghttp2_session *, uint8_t, int32_t, int32_t);
int nghttp2_session_consume(nghttp2_session *, int32_t, size_t);
int nghttp2_session_resume_data(nghttp2_session *, int32_t);
int32_t nghttp2_session_get_stream_remote_window_size(nghttp2_session *, int32_t);
int32_t nghttp2_session_get_remote_window_size(nghttp2_session *);
uint32_t nghttp2_session_get_remote_settings(nghttp2_session *, int);
uint32_t nghttp2_session_get_next_stream_id(nghttp2_session *);
int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *);
const char *nghttp2_strerror(int);
"""


def generate() -> str:
    """The text of `_cdefs.py` for CDEF, as this cffi writes it."""
    return cffi_build.generate(MODULE, CDEF)


if __name__ == "__main__":
    cffi_build.write(TARGET, generate())
