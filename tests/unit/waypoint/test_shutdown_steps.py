"""The waypoint's shutdown: each step runs within its own time, so a step that never finishes (a
controller that went away first, a stream that does not end) is named in the log and left behind,
and the later steps and the process exit still happen. A make-test run once saw an ingress
gateway take over 10 s to exit after SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from waypoint.serve import _shut_down


def test_a_step_that_hangs_is_named_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def fails() -> None:
        raise RuntimeError("boom")

    async def record(name: str) -> None:
        done.append(name)

    async def main() -> float:
        t0 = time.monotonic()
        await _shut_down([("first", lambda: record("first"), 1.0), ("tap feed", hangs, 0.2),
                          ("broken", fails, 1.0), ("last", lambda: record("last"), 1.0)])
        return time.monotonic() - t0
    with caplog.at_level(logging.WARNING, logger="ambit.waypoint"):
        took = asyncio.run(main())
    assert done == ["first", "last"] and took < 5
    assert "shutdown: tap feed did not finish within 0.2 s" in caplog.text
    assert "shutdown: broken failed" in caplog.text
