"""The tap hub: zero cost untapped, bounded per-subscriber queues that drop and count, and a real
NDJSON stream over a unix-socket admin endpoint that lets go of its subscription when the reader goes."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from ambit.dataplane.endpoint import LocalEndpoint, Response
from ambit.dataplane.tap import TAP_PATH, TapHub, tap_response


def test_untapped_publish_never_builds_the_event() -> None:
    hub = TapHub("ztunnel/n1")
    calls = []
    hub.publish(lambda: calls.append(1) or {"x": 1})
    assert calls == [] and hub.published == 0


def test_a_slow_reader_drops_and_counts_and_never_blocks() -> None:
    hub = TapHub("ztunnel/n1", queue_size=3)
    slow, fast = hub.subscribe(), hub.subscribe()
    assert slow is not None and fast is not None
    for i in range(5):
        hub.publish(lambda i=i: {"n": i})
        if i % 2 == 0:
            fast.drain()
    got = slow.drain()
    assert [e["n"] for e in got] == [0, 1, 2] and slow.dropped == 2
    assert fast.dropped == 0 and all(e["source"] == "ztunnel/n1" for e in got)


def test_a_failing_mapping_never_reaches_the_data_path() -> None:
    hub = TapHub("w")
    assert hub.subscribe() is not None
    hub.publish(lambda: 1 / 0)    # type: ignore[arg-type,return-value]
    assert hub.published == 0


def test_subscribers_are_bounded() -> None:
    hub = TapHub("w", max_subscribers=2)
    assert hub.subscribe() and hub.subscribe()
    assert hub.subscribe() is None
    assert tap_response(hub).status == 503


class _Admin(LocalEndpoint):
    def __init__(self, hub: TapHub) -> None:
        super().__init__()
        self.hub = hub

    def handle(self, method: str, path: str) -> Response:
        return tap_response(self.hub) if path == TAP_PATH else Response(404, b"{}")


def test_stream_over_a_unix_socket_and_unsubscribe_when_the_reader_goes(tmp_path: Path) -> None:
    async def main() -> None:
        hub = TapHub("ztunnel/n1")
        ep = _Admin(hub)
        sock = tmp_path / "admin.sock"
        await ep.start(None, 0, sock)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b"GET /tap HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"application/x-ndjson" in head
        first = json.loads(await reader.readline())
        assert first["type"] == "status" and first["source"] == "ztunnel/n1"
        for _ in range(50):
            if hub.active:
                break
            await asyncio.sleep(0.01)
        hub.publish(lambda: {"type": "flow", "n": 1})
        ev = json.loads(await asyncio.wait_for(reader.readline(), 2))
        assert ev == {"type": "flow", "n": 1, "source": "ztunnel/n1"}
        writer.transport.get_extra_info("socket").shutdown(socket.SHUT_WR)
        writer.close()
        for _ in range(100):
            if not hub.active:
                break
            await asyncio.sleep(0.01)
        assert not hub.active, "the subscription outlived its reader"
        await ep.close()

    asyncio.run(main())


def test_the_access_time_stamp_matches_strftime_across_seconds_and_before_1970() -> None:
    """iso_time keeps the last second's text: it must give what formatting each stamp afresh gives,
    in and out of order, across second boundaries, and for stamps before 1970 (not cached)."""
    import time

    from ambit.dataplane.accesslog_time import iso_time

    def fresh(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"

    base = 1_790_000_000.0
    stamps = [base + i * 0.37 for i in range(40)] + [base + 3.9999995, base + 1, base, 0.0, 0.5, -0.5, -1.25, -0.0]
    for t in stamps + stamps[::-1]:
        assert iso_time(t) == fresh(t), t
