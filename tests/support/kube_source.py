"""Running a controller source on its own thread for a test, and stopping it however the test ends."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def running(source: Any, on_snapshot: Callable[[list[dict[str, Any]]], None]) -> Iterator[threading.Event]:
    """`source.run(on_snapshot, stop)` on a daemon thread; yields `stop`, set (and the thread joined) on exit."""
    stop = threading.Event()
    t = threading.Thread(target=source.run, args=(on_snapshot, stop), daemon=True)
    t.start()
    try:
        yield stop
    finally:
        stop.set()
        t.join(timeout=10)
