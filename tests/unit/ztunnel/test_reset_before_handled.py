"""A captured connection the client resets before ztunnel's handler runs: the kernel no longer knows
its peer (`getpeername` fails, the transport says None). Any pod can make such connections at
will; each used to end its handler in a TypeError, logged as an ERROR traceback."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from ambit.dataplane.relay import Leg
from ambit.zds import PodInfo
from ztunnel.proxy import Proxy


class ResetTransport(asyncio.Transport):
    """What uvloop's TCP transport answers once the peer's RST has been taken: no peer name."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


@pytest.mark.parametrize("handler", ["outbound", "inbound_plaintext"])
def test_a_connection_reset_before_it_is_handled_is_dropped_quietly(handler: str) -> None:
    async def main() -> ResetTransport:
        proxy = Proxy(original_dst=lambda _sock: ("10.0.0.1", 8080))
        t = ResetTransport()
        leg = Leg()
        leg.connection_made(t)
        pod = SimpleNamespace(pod=PodInfo(uid="u", name="p", namespace="ns", ip="10.0.0.1", node="n1",
                                          service_account="sa"))
        await getattr(proxy, handler)(pod, leg)
        await proxy.close()
        return t
    assert asyncio.run(main()).aborted
