"""A long-lived channel to the controller must not grow with the calls made on it (ztunnel's and
the agent's memory over time, docs/operations.md): a real grpc.aio controller on 127.0.0.1 and
the clients' grpclib channel."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from ambit.api import config_grpc, config_pb2
from ambit.configclient import rpc
from controller.configserver import ConfigServer

CALLS = 600


def test_a_channel_remembers_a_bounded_number_of_closed_streams() -> None:
    async def main() -> int:
        srv = ConfigServer(registry=CollectorRegistry())
        srv.update({}, "v1")
        port = await srv.start()
        ch = rpc.channel(f"127.0.0.1:{port}")
        try:
            stub = config_grpc.ConfigServiceStub(ch)
            for _ in range(CALLS):      # unary calls, as the status reports and certificate requests are
                assert (await stub.Status(config_pb2.StatusRequest(), timeout=5)).version == "v1"
            # h2 (the codec under grpclib) keeps each closed stream's id; before, up to 65,536
            return len(ch._protocol.connection._connection._closed_streams)
        finally:
            ch.close()
            await srv.stop()

    remembered = asyncio.run(asyncio.wait_for(main(), 60))
    assert 0 < remembered <= 256, f"{remembered} closed streams remembered after {CALLS} calls"
