"""The config stream client library used by the agent, ztunnel and waypoints.

    client = ConfigClient("controller:15010", NodeInfo("ztunnel", "node-1"),
                          [Workload.TYPE, Service.TYPE], on_change=apply)
    await client.start()
    await client.wait_synced(timeout=10)

See docs/config-stream.md for the protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ambit import lazy

if TYPE_CHECKING:
    from ambit.backoff import Backoff
    from ambit.configclient.client import ApplyCallback, ConfigClient
    from ambit.configclient.codec import DecodeError, Encoded, decode, encode
    from ambit.configclient.node import KINDS, NodeInfo
    from ambit.configclient.state import ConfigUpdate
    from ambit.configclient.status import fetch_status, format_status

_WHERE = {"Backoff": "ambit.backoff", "ApplyCallback": "ambit.configclient.client",
          "ConfigClient": "ambit.configclient.client", "DecodeError": "ambit.configclient.codec",
          "Encoded": "ambit.configclient.codec", "decode": "ambit.configclient.codec",
          "encode": "ambit.configclient.codec", "KINDS": "ambit.configclient.node",
          "NodeInfo": "ambit.configclient.node", "ConfigUpdate": "ambit.configclient.state",
          "fetch_status": "ambit.configclient.status", "format_status": "ambit.configclient.status"}
__getattr__ = lazy.exports(__name__, _WHERE)     # `.tls` alone (proxies' settings) loads no client or grpc

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
