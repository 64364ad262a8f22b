"""The config stream client library used by the agent, ztunnel and waypoints.

    client = ConfigClient("controller:15010", NodeInfo("ztunnel", "node-1"),
                          [Workload.TYPE, Service.TYPE], on_change=apply)
    await client.start()
    await client.wait_synced(timeout=10)

See docs/config-stream.md for the protocol.
"""

from ambit.backoff import Backoff
from ambit.configclient.client import ApplyCallback, ConfigClient
from ambit.configclient.codec import DecodeError, Encoded, decode, encode
from ambit.configclient.node import KINDS, NodeInfo
from ambit.configclient.state import ConfigUpdate
from ambit.configclient.status import fetch_status, format_status

__all__ = [
    "KINDS",
    "ApplyCallback",
    "Backoff",
    "ConfigClient",
    "ConfigUpdate",
    "DecodeError",
    "Encoded",
    "NodeInfo",
    "decode",
    "encode",
    "fetch_status",
    "format_status",
]
