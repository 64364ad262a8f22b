"""HTTP/2 frame constants and the few frames we build by hand (RFC 9113 §4.1, §6.1, §6.9).

DATA and WINDOW_UPDATE are built here: they are the per-byte hot path. HEADERS, RST_STREAM and
SETTINGS ACKs come from libnghttp2 (connection.py); the few control frames connection.py builds
itself (SETTINGS, PING, GOAWAY, RST_STREAM for closed streams) use `pack_header`.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADER_LEN = 9

# Frame types
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags
END_STREAM = 0x1
ACK = 0x1           # on SETTINGS and PING
END_HEADERS = 0x4
PADDED = 0x8

# Error codes (RFC 9113 §7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
_ERROR_NAMES = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
                0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM",
                0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM",
                0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED"}


def error_name(code: int) -> str:
    """An error code as RFC 9113 §7 names it (for logs), or its number if it has no name."""
    return _ERROR_NAMES.get(code, f"error {code}")

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1
MAX_FRAME_LIMIT = 2**24 - 1

# A frame header: the 24-bit length split as (high 16, low 8), type, flags, stream id. The DATA
# paths use its `pack` and `unpack_from` directly (no slice, no Python call per frame): the length
# is hi << 8 | lo, and the stream id's reserved bit is theirs to mask.
HEADER = struct.Struct(">HBBBI")
_WU = struct.Struct(">HBBBII")


def pack_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    return HEADER.pack(length >> 8, length & 0xFF, ftype, flags, stream_id & 0x7FFFFFFF)


def unpack_header(buf: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
    """(length, type, flags, stream id) of a 9-byte frame header (the reserved bit is ignored)."""
    hi, lo, ftype, flags, sid = HEADER.unpack(buf)
    return (hi << 8) | lo, ftype, flags, sid & 0x7FFFFFFF


def data_header(length: int, stream_id: int, flags: int = 0) -> bytes:
    return pack_header(length, DATA, flags, stream_id)


def window_update(stream_id: int, increment: int) -> bytes:
    if not 0 < increment <= MAX_WINDOW:
        raise ValueError(f"WINDOW_UPDATE increment {increment} out of range")
    return _WU.pack(0, 4, WINDOW_UPDATE, 0, stream_id & 0x7FFFFFFF, increment)
