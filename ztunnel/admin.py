"""ztunnel's admin endpoint: read-only JSON about config, workloads, policies, certs, connections.

Served on 127.0.0.1:15000 in the node netns (where ztunnel runs, as Istio's ztunnel does) and,
optionally, on a unix socket: in the lab the CLI lives in the host netns and reaches every node's
ztunnel through its socket file, without entering netns.

HTTP/1.1, GET only, one request per connection; requests are parsed with httptools, and each answer
is computed from the current immutable config view, so a dump is always one consistent state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ambit.configclient import ConfigClient
from ambit.dataplane.endpoint import LocalEndpoint, Response
from ambit.dataplane.memory import memory_report
from ambit.dataplane.tap import TAP_PATH, TapHub, tap_response
from ztunnel.meshstate import MeshState

log = logging.getLogger("ambit.ztunnel.admin")

Handler = Callable[[], tuple[int, Any]]
MAX_REQUEST = 64 * 1024


def routes(config: MeshState, client: ConfigClient | None = None, proxy: Any = None) -> dict[str, Handler]:
    """The ztunnel admin paths. `proxy` may offer `identities` (an IdentityManager with dump())
    and `connections` (anything JSON-able); both are optional so this works before they exist."""

    def config_dump() -> tuple[int, Any]:
        out = config.dump()
        out["client"] = _client_info(client)
        return 200, out

    def workloads() -> tuple[int, Any]:
        return 200, config.dump()["workloads"]

    def services() -> tuple[int, Any]:
        return 200, config.dump()["services"]

    def policies() -> tuple[int, Any]:
        d = config.dump()
        return 200, {"authorizations": d["authorizations"], "peer_authns": d["peer_authns"]}

    def certs() -> tuple[int, Any]:
        ids = getattr(proxy, "identities", None)
        dump = getattr(ids, "dump", None)
        return 200, dump() if callable(dump) else []

    def connections() -> tuple[int, Any]:
        conns = getattr(proxy, "connections", {})
        conns = conns() if callable(conns) else conns
        if isinstance(conns, Mapping):
            conns = dict(conns)
        elif not isinstance(conns, list):
            conns = list(conns)
        return 200, conns

    def pods() -> tuple[int, Any]:
        # The pods this ztunnel serves, and those it could not (e.g. a squatted port): the truth
        # about capture, whatever the agent believes.
        reg = getattr(proxy, "registry", None)
        view = getattr(reg, "view", None)
        return 200, view() if callable(view) else {"serving": [], "failed": []}

    def ready() -> tuple[int, Any]:
        # Ready means able to serve every pod handed over: the controller has confirmed every type
        # (without a controller there is nothing to wait for; a cached state serves, but is not
        # "ready"), every identity of those pods has a valid certificate (without one, inbound
        # handshakes are refused and outbound ones wait for the CA), and not stopping (SIGTERM:
        # the listeners are closing). The kubelet's probe and the lab ask only this.
        synced = client is None or config.synced
        missing = _without_certificate(proxy)
        stopping = bool(getattr(getattr(proxy, "registry", None), "shutting_down", False))
        ok = synced and not missing and not stopping
        body = {"ready": ok, "synced": config.synced, "version": config.version, "stopping": stopping,
                "certificates_missing": missing, **_client_info(client)}
        return (200 if ok else 503), body

    return {"/config_dump": config_dump, "/workloads": workloads, "/services": services,
            "/policies": policies, "/certs": certs, "/connections": connections, "/pods": pods, "/healthz/ready": ready,
            "/memory": lambda: (200, memory_report(gc_stats=getattr(proxy, "gc_stats", None)))}


def _without_certificate(proxy: Any) -> list[str]:
    """The identities ztunnel manages (those of the pods it serves) with no valid certificate now."""
    ids = getattr(proxy, "identities", None)
    if ids is None:
        return []
    return [i for i in ids.identities() if ids.current(i) is None]


def status_report(config: MeshState, node: str, proxy: Any = None) -> dict[str, Any]:
    """What ztunnel reports to the controller's debug API (ambit.configclient.report): its certs
    and expiry, its connection counts and config version; small, so it can be sent every few seconds."""
    ids = getattr(proxy, "identities", None)
    pool = getattr(proxy, "pool", None)
    per_src, per_dst = getattr(proxy, "per_src_pod", None), getattr(proxy, "per_dst_pod", None)
    return {"node": node, "config_version": config.version, "synced": config.synced,
            "certs": ids.dump() if ids is not None else [],
            "connections": {"outbound": per_src.total() if per_src is not None else 0,
                            "inbound": per_dst.total() if per_dst is not None else 0,
                            "hbone_pool": sum(pool.connections().values()) if pool is not None else 0}}


def _client_info(client: ConfigClient | None) -> dict[str, Any]:
    if client is None:
        return {"controller": None, "connected": False, "last_error": "no controller configured"}
    return {"controller": client.target, "connected": client.connected, "connected_since": client.connected_since,
            "last_error": client.last_error}


def respond(handlers: Mapping[str, Handler], method: str, path: str) -> tuple[int, bytes]:
    """(status, JSON body) for one request. Pure, so it is tested without sockets."""
    if method != "GET":
        return 405, _json({"error": f"{method} not allowed; the admin endpoint is read-only"})
    h = handlers.get(path.rstrip("/") or "/")
    if h is None:
        return 404, _json({"error": f"no such path {path!r}", "paths": sorted(handlers)})
    try:
        status, body = h()
    except Exception as e:  # noqa: BLE001 - a broken dump must not take the admin endpoint down
        log.exception("admin %s failed", path)
        return 500, _json({"error": f"{type(e).__name__}: {e}"})
    return status, _json(body)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode() + b"\n"


class AdminServer(LocalEndpoint):
    def __init__(self, handlers: Mapping[str, Handler], tap: TapHub | None = None):
        super().__init__()
        self.handlers = handlers
        self.tap = tap

    async def start(self, host: str | None = "127.0.0.1", port: int = 15000, unix_path: Path | None = None,
                    reuse_port: bool = False) -> None:
        await super().start(host, port, unix_path, reuse_port)

    def handle(self, method: str, path: str) -> Response:
        if self.tap is not None and method == "GET" and path.rstrip("/") == TAP_PATH:
            return tap_response(self.tap)
        status, body = respond(self.handlers, method, path)
        return Response(status, body)
