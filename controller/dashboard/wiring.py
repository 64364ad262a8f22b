"""Start the topology view from the controller's settings (called once from controller/__main__.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from controller.dashboard.graph import Mesh
from controller.dashboard.server import Dashboard, serve
from controller.dashboard.sources import DirectRates, PrometheusRates
from controller.dashboard.tracequery import TraceBackend

log = logging.getLogger("ambit.controller.dashboard")


def mesh_of(controller: Any, root_namespace: str) -> Callable[[], Mesh]:
    """The controller's current translation as the view's `Mesh` (empty before the first one)."""
    def mesh() -> Mesh:
        tr = controller.translation
        if tr is None:
            return Mesh(root_namespace=root_namespace)
        return Mesh(workloads=list(tr.workloads), services=list(tr.services), authorizations=list(tr.authorizations),
                    peer_authns=list(tr.peer_authns), root_namespace=root_namespace)
    return mesh


def start(args: Any, controller: Any) -> Callable[[], None] | None:
    """Serve the view at --dashboard-address (None when it is off). A port that cannot be bound is
    logged as an error and the controller runs on without the view: it is not what the mesh needs."""
    if not args.dashboard_address:
        return None
    mesh = mesh_of(controller, args.root_namespace)
    source: DirectRates | PrometheusRates
    if args.prometheus_url:
        source = PrometheusRates(args.prometheus_url)
        for flag in ("dashboard_ztunnel_metrics", "dashboard_waypoint_metrics"):
            if getattr(args, flag):
                log.warning("--%s is not used: --prometheus-url is set and the view reads rates from Prometheus",
                            flag.replace("_", "-"))
    else:
        source = DirectRates(mesh, args.dashboard_ztunnel_metrics, args.dashboard_waypoint_metrics,
                             interval=args.dashboard_refresh)
        if not (args.dashboard_ztunnel_metrics or args.dashboard_waypoint_metrics):
            log.warning("topology view: no --prometheus-url and no --dashboard-ztunnel-metrics/"
                        "--dashboard-waypoint-metrics: it shows workloads and services but no traffic")
    tracing = None
    if args.tracing_url:
        try:
            tracing = TraceBackend(args.tracing_url, args.tracing_api)
        except ValueError as e:
            log.error("topology view: %s; the panel will say there is no tracing backend", e)
    dash = Dashboard(mesh, source, args.dashboard_access_logs, refresh_seconds=args.dashboard_refresh, tracing=tracing)
    try:
        url, stop_http = serve(dash, args.dashboard_address)
    except (OSError, ValueError) as e:
        log.error("topology view not served on %s: %s", args.dashboard_address, e)
        return None
    source.start()
    log.info("topology view on %s (rates from %s; traces from %s)", url, source.source,
             f"{tracing.api} API at {tracing.url}" if tracing else "no backend")

    def stop() -> None:
        source.stop()
        stop_http()
    return stop
