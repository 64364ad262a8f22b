"""HTTP/2 frames read by hand (hyperframe) in tests that watch a server's GOAWAYs: the `h2`
library stops reading at the first GOAWAY, but a draining server sends two and keeps answering
the streams they let finish."""

from __future__ import annotations

from hyperframe.frame import Frame


def split_frames(buf: bytes) -> tuple[list[Frame], bytes]:
    """The whole frames at the start of `buf`, and the bytes of the next, partial one."""
    frames = []
    while len(buf) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
        if len(buf) < 9 + length:
            break
        frame.parse_body(memoryview(buf[9:9 + length]))
        frames.append(frame)
        buf = buf[9 + length:]
    return frames, buf
