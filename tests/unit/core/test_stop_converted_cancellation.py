"""The status reporter, the tap feed and the certificate fetches stop when stopped, even when their gRPC call turns the
cancellation of `stop()` into an error of its own or swallows it: grpclib's call wrapper raises
its deadline or lost-connection error in place of a CancelledError that arrives with it (a
controller going away as the proxy stops), and a stream's end can look like the controller's.
Each loop then took it for one more failed attempt and went on, and `stop()` waited for ever: a
proxy's shutdown step that never ends (the config client had the same bug, fixed in its own
module). The loop runs in a thread, so that hang fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from ambit.backoff import Backoff
from ambit.configclient.node import NodeInfo
from ambit.configclient.report import StatusReporter
from ambit.dataplane import feed as feed_module
from ambit.dataplane.feed import TapFeed
from ambit.dataplane.identity import IdentityManager
from ambit.dataplane.tap import TapHub
from tests.unit.conftest import sid


def _within(main: Any, seconds: float = 10.0) -> list[Any]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(asyncio.run(main())), daemon=True)
    t.start()
    t.join(seconds)
    return out


async def _call(teardown: str) -> None:
    """A call in flight, whose teardown turns its cancellation into an error or swallows it."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        if teardown == "swallowed":
            return
        raise ConnectionResetError("stream torn down") from None


@pytest.mark.parametrize("teardown", ["error", "swallowed"])
def test_the_status_reporter_stops_when_its_call_eats_the_cancellation(teardown: str) -> None:
    attempts = 0

    async def send_once() -> None:
        nonlocal attempts
        attempts += 1
        await _call(teardown)

    async def main() -> int:
        reporter = StatusReporter("127.0.0.1:1", NodeInfo("ztunnel", "n1"), dict, interval=0.01)
        reporter.send_once = send_once      # type: ignore[method-assign]
        await reporter.start()
        await asyncio.sleep(0.05)
        await reporter.stop()
        return attempts
    assert _within(main) == [1]


class _Stub:
    """DebugServiceStub(channel).Feed.open(): a feed call whose set-up is in flight."""

    def __init__(self, teardown: str, attempts: list[int]) -> None:
        self.Feed, self.teardown, self.attempts = self, teardown, attempts

    def __call__(self, channel: Any) -> _Stub:
        return self

    def open(self, **kw: Any) -> _Stub:
        return self

    async def __aenter__(self) -> _Stub:
        self.attempts.append(1)
        await _call(self.teardown)
        raise ConnectionResetError("the controller ended the call")

    async def __aexit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("teardown", ["error", "swallowed"])
def test_the_tap_feed_stops_when_its_call_eats_the_cancellation(teardown: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []
    monkeypatch.setattr(feed_module.debug_grpc, "DebugServiceStub", _Stub(teardown, attempts))

    async def main() -> int:
        feed = TapFeed("127.0.0.1:1", NodeInfo("ztunnel", "n1"), TapHub("ztunnel/n1"), str, backoff=(0.01, 0.02))
        await feed.start()
        await asyncio.sleep(0.05)
        await feed.stop()
        return len(attempts)
    assert _within(main) == [1]


@pytest.mark.parametrize("teardown", ["error", "swallowed"])
def test_closing_the_identities_ends_a_fetch_whose_call_eats_the_cancellation(teardown: str) -> None:
    attempts: list[int] = []

    class Fetcher:
        async def fetch(self, identity: str, csr_pem: bytes, ttl: int) -> Any:
            attempts.append(1)
            await _call(teardown)
            raise ConnectionResetError("the CA ended the call")

    async def main() -> int:
        identities = IdentityManager(Fetcher(), backoff=Backoff(initial=0.01, maximum=0.02))
        identities.prefetch([sid("demo", "client")])
        await asyncio.sleep(0.05)
        await identities.close()
        return len(attempts)
    assert _within(main) == [1]
