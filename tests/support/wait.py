"""Polling for a condition in tests: the one helper every test module uses."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(pred: Callable[[], Any], what: str = "condition", timeout: float = 15.0,
             interval: float = 0.02) -> Any:
    """Return pred()'s first truthy value; fail naming `what` (and the last value) after `timeout`.

    An AssertionError raised by `pred` counts as "not yet" and is reported if time runs out."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = pred()
            if last:
                return last
        except AssertionError as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
