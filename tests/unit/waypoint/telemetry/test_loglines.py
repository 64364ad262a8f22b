"""The waypoint's access lines: written directly (batched) exactly as `logging` would write them
under the proxy binaries' log setup, and through `logging` under any other setup."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

from ambit.dataplane.process import LOG_FORMAT
from waypoint.telemetry.loglines import LogLines, direct_stream, prefix

LINE = json.dumps({"method": "GET", "path": "/x", "response_code": 200})
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def _hierarchy(fmt: str = LOG_FORMAT) -> tuple[logging.Logger, logging.Logger, io.StringIO]:
    """A private root (as `process.run` sets it up) and the access logger under it."""
    root = logging.RootLogger(logging.INFO)
    stream = io.StringIO()
    h = logging.StreamHandler(stream)
    h.setFormatter(logging.Formatter(fmt))
    root.addHandler(h)
    access = logging.Manager(root).getLogger("ambit.waypoint.access")
    return root, access, stream


def test_the_prefix_is_what_the_formatter_writes() -> None:
    _root, access, _ = _hierarchy()
    rec = access.makeRecord(access.name, logging.INFO, __file__, 1, "%s", (LINE,), None)
    assert logging.Formatter(LOG_FORMAT).format(rec) == prefix(access, rec.created) + LINE


def test_lines_are_batched_to_the_end_of_the_loop_iteration() -> None:
    root, access, stream = _hierarchy()
    sink = LogLines(access, root)
    assert sink.stream is stream

    async def main() -> tuple[str, str]:
        sink(LINE)
        sink(LINE)
        before = stream.getvalue()
        await asyncio.sleep(0)
        return before, stream.getvalue()

    before, after = asyncio.run(main())
    assert before == ""
    lines = after.splitlines()
    assert len(lines) == 2
    for x in lines:
        assert STAMP.match(x) and STAMP.sub("", x) == f"INFO ambit.waypoint.access: {LINE}"


def test_below_info_nothing_is_written() -> None:
    root, access, stream = _hierarchy()
    access.setLevel(logging.WARNING)
    LogLines(access, root)(LINE)
    assert stream.getvalue() == ""


def test_another_setup_goes_through_logging() -> None:
    root, access, stream = _hierarchy(fmt="%(levelname)s|%(message)s")
    assert direct_stream(access, root) is None
    LogLines(access, root)(LINE)
    assert stream.getvalue() == f"INFO|{LINE}\n"
    root2, access2, _ = _hierarchy()
    access2.addHandler(logging.NullHandler())      # a handler of its own: logging decides
    assert direct_stream(access2, root2) is None
