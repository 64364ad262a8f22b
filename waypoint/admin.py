"""The waypoint's admin endpoint: read-only JSON, as ztunnel's (config_dump, routes, certs,
healthz/ready). Served on 127.0.0.1:15000 in the waypoint pod's netns and, in the lab, on a unix
socket in the lab dir so the CLI reads it without entering the netns."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ambit.dataplane.endpoint import HealthEndpoint, LocalEndpoint, Response
from ambit.dataplane.memory import memory_report
from ambit.dataplane.tap import TAP_PATH, TapHub, tap_response

log = logging.getLogger("ambit.waypoint.admin")

Handler = Callable[[], tuple[int, Any]]


def routes(proxy: Any, client: Any) -> dict[str, Handler]:
    """`proxy` is a WaypointProxy; `client` the ConfigClient (or None without a controller)."""
    config = proxy.config

    def ready() -> tuple[int, Any]:
        cert = proxy.identities.current(proxy.identity) if proxy.identities is not None else None
        synced = client is None or config.synced
        stopping = bool(getattr(proxy, "stopping", False))
        ok = (synced and cert is not None and (proxy.server is not None or proxy.ingress is not None)
              and not stopping)
        # A port that cannot be bound does not make the pod unready (docs/ingress.md, "Ports that
        # cannot be bound"): the Gateway's status says so, and the body here names it.
        unbound = [f["port"] for f in proxy.ingress.binds.report() if not f["bound"]] if proxy.ingress else []
        return (200 if ok else 503), {"ready": ok, "synced": synced, "certificate": cert is not None,
                                      "stopping": stopping, "version": config.version, "identity": proxy.identity,
                                      **({"unbound_ports": unbound} if proxy.ingress is not None else {})}

    def config_dump() -> tuple[int, Any]:
        out = config.dump()
        out["waypoint"] = proxy.settings.waypoint
        out["identity"] = proxy.identity
        out["client"] = None if client is None else {"target": client.target, "connected": client.connected,
                                                     "last_error": client.last_error}
        return 200, out

    def route_dump() -> tuple[int, Any]:
        t = config.view.table
        return 200, {"hosts": {h: [r.name for r in hr.routes] for h, hr in t.hosts.items()},
                     "errors": list(t.errors)}

    def certs() -> tuple[int, Any]:
        ids = proxy.identities
        return 200, ids.dump() if ids is not None else []

    def stats() -> tuple[int, Any]:
        return 200, {"tunnels": proxy.tunnels, "refused": proxy.refused, "requests": proxy.requests,
                     "overloaded": (proxy.server.over_limit if proxy.server is not None else 0)
                     + (proxy.ingress.overloaded if proxy.ingress is not None else 0),
                     "mirrors": proxy.engine.mirrors.stats() if proxy.engine is not None else {}}

    def clusters() -> tuple[int, Any]:
        return 200, proxy.current_clusters().dump()

    return {"/healthz/ready": ready, "/config_dump": config_dump, "/routes": route_dump, "/certs": certs,
            "/stats": stats, "/clusters": clusters,
            # RSS/PSS split, threads, the collector; the top Python lines with PYTHONTRACEMALLOC=N
            "/memory": lambda: (200, memory_report(gc_stats=getattr(proxy, "gc_stats", None)))}


def status_report(proxy: Any, node: str) -> dict[str, Any]:
    """What a waypoint reports to the controller's debug API (ambit.configclient.report): its
    certificate, request/tunnel counters, per cluster, endpoints healthy vs ejected and, for an
    ingress gateway, each port's bind outcome (`ingress`: the controller writes the Gateway
    listeners' status from it, controller.waypoints.ingress_status.bind_failures)."""
    clusters = []
    for c in proxy.current_clusters().dump():
        eps = c.get("endpoints") or []
        clusters.append({"name": c["name"], "endpoints": len(eps),
                         "ejected": sum(1 for e in eps if e.get("ejected")),
                         "active": sum(int(e.get("active") or 0) for e in eps)})
    return {"node": node, "identity": proxy.identity, "config_version": proxy.config.version,
            "synced": proxy.config.synced,
            "certs": proxy.identities.dump() if proxy.identities is not None else [],
            "requests": proxy.requests, "tunnels": proxy.tunnels, "refused": proxy.refused, "clusters": clusters,
            **({"ingress": proxy.ingress.binds.report()}
               if proxy.ingress is not None and proxy.ingress.binds.settled else {})}


class AdminServer(LocalEndpoint):
    def __init__(self, handlers: Mapping[str, Handler], tap: TapHub | None = None) -> None:
        super().__init__()
        self.handlers = handlers
        self.tap = tap

    def handle(self, method: str, path: str) -> Response:
        if self.tap is not None and method == "GET" and path.rstrip("/") == TAP_PATH:
            return tap_response(self.tap)
        if method != "GET":
            return Response(405, _json({"error": "the admin endpoint is read-only"}))
        h = self.handlers.get(path.rstrip("/") or "/")
        if h is None:
            return Response(404, _json({"error": f"no such path {path!r}", "paths": sorted(self.handlers)}))
        try:
            status, body = h()
        except Exception as e:  # noqa: BLE001 - a broken dump must not take the endpoint down
            log.exception("admin %s failed", path)
            return Response(500, _json({"error": f"{type(e).__name__}: {e}"}))
        return Response(status, _json(body))


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode() + b"\n"


async def start_status(admin: LocalEndpoint, address: str) -> HealthEndpoint | None:
    """`--status-address`: `admin`'s readiness alone on HOST:PORT (None when '' or not bindable,
    which is logged: the probe then fails and says why)."""
    if not address:
        return None
    host, _, port = address.rpartition(":")
    status = HealthEndpoint(admin)
    try:
        await status.start(host or None, int(port), reuse_port=True)
    except OSError as e:
        log.warning("status endpoint %s: %s", address, e)
        return None
    return status
