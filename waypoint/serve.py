"""One waypoint process serving traffic: alone (`--workers 1`) or as one of a supervisor's workers
(waypoint/workers.py); `python -m waypoint` (waypoint/__main__.py) decides which.

The process: a config client (kind waypoint), an identity manager for the waypoint's own SPIFFE
id, the HBONE listener or the supervisor's hand-off link (waypoint/app.py), and the admin/metrics
endpoints."""

from __future__ import annotations

import logging
import os

from ambit.backoff import Backoff
from ambit.configclient import ConfigClient, NodeInfo, tls
from ambit.configclient.credential import node_metadata, read_token
from ambit.configclient.report import StatusReporter
from ambit.dataplane import memory, process, shutdown
from ambit.dataplane.feed import TapFeed, exposition
from ambit.dataplane.hbone import liveness
from ambit.dataplane.hbone.limits import CERTIFICATE_WAITS, DEFENSES, REFUSED
from ambit.dataplane.identity import CertStore, GrpcCertificateFetcher, IdentityManager
from ambit.dataplane.telemetry.health import HealthCollector
from ambit.dataplane.telemetry.metrics import Metrics, MetricsServer
from waypoint import admin
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import TYPES, WaypointConfig
from waypoint.settings import WaypointSettings
from waypoint.telemetry.metrics import HttpMetrics


def _split(address: str) -> tuple[str | None, int]:
    host, _, port = (address or "").rpartition(":")
    return host or None, int(port or 0)


def health_collector(client: ConfigClient | None = None,
                     identities: IdentityManager | None = None, proxy: WaypointProxy | None = None) -> HealthCollector:
    """The waypoint's `ambit_*` families: config, certificates, the protections it applied
    (`ambit_connections_refused_total{limit}`, `ambit_protocol_defenses_total{defense}`, counted
    in ambit.dataplane.hbone.limits where each fires) and, on an ingress gateway, its listener
    binds (`ambit_listener_bind_failures_total{port}`, `ambit_listeners_unbound`), else the HBONE
    handshakes that waited for its certificate (`ambit_handshake_certificate_waits_total{outcome}`),
    read at scrape time."""
    binds = proxy.ingress.binds if proxy is not None and proxy.ingress is not None else None
    waits = (lambda: dict(CERTIFICATE_WAITS)) if binds is None else None
    return HealthCollector(config=client, certs=identities, refused=lambda: dict(REFUSED),
                           defenses=lambda: dict(DEFENSES), binds=binds, certificate_waits=waits)


async def amain(args: WaypointSettings) -> None:
    log = logging.getLogger("ambit.waypoint")
    memory.limit_arenas(args.malloc_arena_max)     # before grpc's and the tracer's threads malloc
    config = WaypointConfig(Waypoint(args.namespace, args.name, args.gateway_class, args.root_namespace),
                            args.trust_domain, args.cluster_domain)
    client = None
    holder: list[WaypointProxy] = []

    async def on_change(update) -> None:
        config.apply(update)
        if holder:              # an ingress gateway's listeners follow its Gateway
            await holder[0].on_config()
    if args.controller:
        client = ConfigClient(args.controller, NodeInfo("waypoint", args.pod_name, args.waypoint, os.urandom(4).hex()),
                              list(TYPES), on_change, trust=args.controller_tls.trust(), cache_path=args.config_cache,
                              metadata=node_metadata(args.node_token_file, args.node) if args.node_token_file else None)
        await client.start()
    identities = channel = None
    if args.node_token_file and args.ca_target:
        trust = args.controller_tls.trust()
        channel = tls.PinnedChannel(args.ca_target, trust)
        token_file = args.node_token_file
        fetcher = GrpcCertificateFetcher(channel, args.node, lambda: read_token(token_file))
        # In a root rotation the pinned bundle moves first; the certificate follows it at once.
        identities = IdentityManager(fetcher, ttl=args.cert_ttl, backoff=Backoff(initial=0.25, maximum=30.0),
                                     pinned_roots=trust.roots if trust is not None else None,
                                     store=CertStore(args.cert_cache) if args.cert_cache is not None else None)
        identities.prefetch([args.identity])
    else:
        log.warning("no --node-token-file/CA: no certificate, so no HBONE will be served")
    # Istio's TCP families (opaque tunnels) and, on the same registry, HTTP
    metrics = Metrics(expiry=args.metrics_expiry)
    liveness.configure(args.tunnel.liveness)     # HBONE PINGs to find silent peers
    proxy = WaypointProxy(args, config, identities,
                          http_metrics=HttpMetrics(metrics.registry, expiry=args.metrics_expiry),
                          registry=metrics.registry, tcp_metrics=metrics)
    await proxy.start()
    holder.append(proxy)
    adm = admin.AdminServer(admin.routes(proxy, client), tap=proxy.tap)
    try:
        await adm.start(*_split(args.admin_address), args.admin_socket)
    except OSError as e:
        log.warning("admin endpoint %s: %s", args.admin_address, e)
    status = await admin.start_status(adm, args.status_address)
    metrics.registry.register(health_collector(client, identities, proxy))
    msrv = MetricsServer(metrics)
    try:
        await msrv.start(*_split(args.metrics_address), args.metrics_socket)
    except OSError as e:
        log.warning("metrics endpoint %s: %s", args.metrics_address, e)
    reporter = feed = None
    if client is not None:
        reporter = StatusReporter(args.controller, client.node, lambda: admin.status_report(proxy, args.node),
                                  interval=args.report_interval, trust=args.controller_tls.trust(),
                                  metadata=node_metadata(args.node_token_file, args.node) if args.node_token_file else None)
        await reporter.start()
        if proxy.ingress is not None:       # a port's bind outcome reaches the Gateway's status at once
            proxy.ingress.on_change = reporter.wake
        # `ambit tap`/`stat`/`top` in a cluster: the controller asks over a feed this proxy opens.
        feed = TapFeed(args.controller, client.node, proxy.tap, exposition(metrics.registry), trust=args.controller_tls.trust(),
                       metadata=node_metadata(args.node_token_file, args.node) if args.node_token_file else None)
        await feed.start()
    log.info("%s %s (%s) serving %s as %s; controller %s", "ingress gateway" if args.ingress else "waypoint",
             args.waypoint, args.pod_name, "its Gateway's listeners" if args.ingress else f"HBONE on {args.listen}",
             args.identity, args.controller or "-")
    trimmer = await process.serve_until_stopped(args, proxy, metrics.registry)
    drain = args.http.drain_timeout + args.http.drain_accept + 1.0
    step = shutdown.STEP_TIMEOUT
    await shutdown.run_steps([
        ("memory trimmer", lambda: memory.stop_trimming(trimmer), step),
        ("status reporter", reporter.stop if reporter is not None else None, step),
        ("tap feed", feed.stop if feed is not None else None, step),
        ("proxy drain", proxy.close, drain),
        ("admin endpoint", adm.close, step),
        ("status port", status.close if status is not None else None, step),
        ("metrics server", msrv.close, step),
        ("identities", identities.close if identities is not None else None, step),
        ("controller channel", channel.close if channel is not None else None, step),
        ("config client", client.stop if client is not None else None, step)], log)
