"""Read and print the controller's config stream status (for `ambit status` and debugging)."""

from __future__ import annotations

import time

from ambit.api import config_grpc, config_pb2
from ambit.configclient import tls


async def fetch_status(target: str, trust: tls.ControllerTrust | None = None,
                       timeout: float = 5.0, token: str = "") -> config_pb2.StatusResponse:
    """The controller's Status; `token` is the debug API's reader credential, which the
    controller requires (the lab's admin token, or a Kubernetes bearer token in a cluster)."""
    md = (("authorization", f"Bearer {token}"),) if token else None
    async with tls.channel(target, trust) as channel:
        return await config_grpc.ConfigServiceStub(channel).Status(config_pb2.StatusRequest(), metadata=md,
                                                                  timeout=timeout)


def _ago(ts, now: float) -> str:
    secs = max(0, int(now - ts.ToSeconds()))
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


def format_status(resp: config_pb2.StatusResponse, now: float | None = None) -> str:
    """One block per subscriber: identity, connection, and per type acked version and last NACK."""
    now = time.time() if now is None else now
    lines = [f"config version {resp.version}, {len(resp.subscribers)} subscriber(s)"]
    for s in resp.subscribers:
        who = f"{s.node.kind}/{s.node.name}" + (f" waypoint={s.node.waypoint}" if s.node.waypoint else "")
        if s.connected:
            conn = f"connected {_ago(s.connected_since, now)} ago from {s.peer}"
        else:
            conn = f"DISCONNECTED {_ago(s.disconnected_at, now)} ago"
        lines.append(f"{who} [{s.node.instance_id or '-'}] {conn}")
        for t in s.types:
            sync = "in sync" if t.in_sync else "OUT OF SYNC"
            lines.append(f"  {t.type_url:<24} acked={t.acked_version or '-':<12} sent={t.sent_version or '-':<12} "
                         f"{t.resources:>5} res  {sync}")
            if t.HasField("last_nack"):
                n = t.last_nack
                lines.append(f"    last NACK of {n.version} {_ago(n.time, now)} ago: {n.message}")
    return "\n".join(lines)
