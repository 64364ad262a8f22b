"""A proxy's periodic status report to the controller's debug API (ambit.debug.v1 Report).

The config stream already tells the controller what each proxy ACKed or NACKed; what it cannot
know is the proxy's own state: its build version, its certificates and their expiry, its
connection/request counters, a waypoint's clusters' health. `StatusReporter` sends that, as a
small JSON object, every `interval` seconds over the same channel kind and the same node
credential as the config stream. A failed report is logged once and retried at the next tick; it
never affects the data path. `wake()` sends the next report at once: a state the controller acts
on (an ingress port that cannot be bound) should not wait for the tick.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ambit.aiotask import cancel, wait_set
from ambit.api import debug_grpc, debug_pb2
from ambit.configclient import rpc, tls
from ambit.configclient.node import NodeInfo
from ambit.version import VERSION

log = logging.getLogger("ambit.configclient.report")

Collect = Callable[[], dict[str, Any]]


class StatusReporter:
    """Report `collect()` as `node` to the controller at `target` every `interval` seconds."""

    def __init__(self, target: str, node: NodeInfo, collect: Collect, *, interval: float = 10.0,
                 metadata: Callable[[], Sequence[tuple[str, str]]] | None = None,
                 trust: tls.ControllerTrust | None = None, timeout: float = 5.0) -> None:
        if interval <= 0:
            raise ValueError(f"StatusReporter.interval: {interval} must be positive")
        self.target, self.node, self.collect = target, node.validate(), collect
        self.interval, self.timeout = interval, timeout
        self._metadata = metadata
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # one channel for the reporter's life (a call after a lost connection makes a new one),
        # rebuilt if the pinned root changes
        self._channel = tls.PinnedChannel(target, trust)
        self.sent = 0
        self._wake = asyncio.Event()
        self.last_error = ""
        self.controller_version = ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"reporter:{self.node.key}")

    async def stop(self) -> None:
        self._stopping = True       # (read by `_run`: see there)
        try:
            await cancel(self._task)
        finally:
            self._stopping = False
        self._task = None
        await self._channel.close()

    def wake(self) -> None:
        """Report now rather than at the next tick."""
        self._wake.set()

    def report(self) -> debug_pb2.ProxyReport:
        state = json.dumps(self.collect(), sort_keys=True, default=str).encode()
        return debug_pb2.ProxyReport(node=self.node.to_proto(), version=VERSION, state_json=state)

    async def send_once(self) -> None:
        md = tuple(self._metadata()) if self._metadata is not None else None   # re-read: tokens rotate
        reply = await debug_grpc.DebugServiceStub(self._channel()).Report(self.report(), metadata=md,
                                                                        timeout=self.timeout)
        self.controller_version = reply.controller_version
        self.sent += 1

    async def _run(self) -> None:
        while True:
            try:
                await self.send_once()
                if self.last_error:
                    log.info("status report to %s: delivered again", self.target)
                self.last_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - reporting is best effort; say it once per failure kind
                why = rpc.describe(e) if rpc.failure(e) is not None else f"{e}"
                if why != self.last_error:
                    log.warning("status report to %s failed: %s", self.target, why)
                self.last_error = why
            if self._stopping:
                # `stop()` cancelled us, but the call turned the cancellation into its own error
                # (grpclib's deadline or lost connection arriving with it) or ended as if answered:
                # reporting on made `stop()` wait for ever (the config client's loop had the same bug).
                raise asyncio.CancelledError()
            await wait_set(self._wake, self.interval)
            self._wake.clear()
