"""One ztunnel process serving a node: the config stream, certificates, the proxy, the agent's zds
socket, the admin and metrics endpoints; alone (`--workers 1`) or as one of a supervisor's workers
(ztunnel/workers.py). `python -m ztunnel` (ztunnel/__main__.py) decides which."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from ambit.configclient.credential import node_metadata
from ambit.configclient.report import StatusReporter
from ambit.dataplane import memory, process, shutdown
from ambit.dataplane.feed import TapFeed, exposition
from ambit.dataplane.hbone import liveness
from ambit.dataplane.tap import TapHub
from ambit.dataplane.telemetry.merge import MetricsMerger, parse_source
from ambit.dataplane.telemetry.metrics import Metrics, MetricsServer
from ztunnel import admin, identity_setup
from ztunnel.dns.forwarder import Forwarder
from ztunnel.dns.metrics import DnsMetrics
from ztunnel.dns.server import DnsProxy
from ztunnel.dns.settings import describe
from ztunnel.meshstate import MeshState, config_client
from ztunnel.proxy import Proxy
from ztunnel.settings import ZtunnelSettings
from ztunnel.tap import TapSink
from ztunnel.zdsserver import ZdsServer

# seconds ztunnel waits quietly for its first config before it warns that it takes no pods
FIRST_CONFIG_PATIENCE = 5.0


async def amain(args: ZtunnelSettings) -> None:
    loop = asyncio.get_running_loop()
    log = logging.getLogger("ambit.ztunnel")
    config = MeshState(root_namespace=args.root_namespace, trust_domain=args.trust_domain)
    client = None
    if args.controller:
        # Start (and replay the file cache) before taking pods, so they meet a populated config.
        client = config_client(config, args.controller, args.node, instance_id=os.urandom(4).hex(),
                               cache_path=args.config_cache, token_file=args.node_token_file,
                               trust=args.controller_tls.trust())
        await client.start()
    identities = ca_channel = None
    ca_target = args.ca_target
    if args.node_token_file and ca_target:
        identities, ca_channel = identity_setup.build(ca_target, args.node, args.node_token_file, args.cert_ttl,
                                                         args.cert_cache, args.controller_tls.trust())
        identity_setup.retry_on_workload_updates(config, identities)
    elif not args.node_token_file:
        log.warning("no --node-token-file: no workload certificates; mesh destinations will be refused")
    metrics = Metrics(expiry=args.metrics_expiry)
    tap_hub = TapHub(f"ztunnel/{args.node}")        # `ambit tap`: admin GET /tap
    upstreams = args.dns.upstreams()
    dns = DnsProxy(config, Forwarder(upstreams, args.dns.upstream_timeout),
                   DnsMetrics(metrics.registry, expiry=args.metrics_expiry), cluster_domain=args.cluster_domain,
                   trust_domain=args.trust_domain, max_forwards_per_pod=args.dns.max_forwards_per_pod)
    log.info("DNS proxy on 127.0.0.1:15053 in every pod's netns; cluster domain %s; upstream resolvers: %s",
             args.cluster_domain, describe(upstreams))
    liveness.configure(args.tunnel.liveness)     # HBONE PINGs to find silent peers
    proxy = Proxy(config=config, identities=identities, metrics=metrics, trust_domain=args.trust_domain,
                  tunnel=args.tunnel, limits=args.limits, keepalive=args.socket_keepalive, dns=dns)
    # the Telemetry API's sink (on/off, mode, filter, format per workload), also feeding `ambit tap`
    proxy.access_log = TapSink(proxy.access_log, tap_hub)
    metrics.registry.register(proxy.health(client))
    from ambit.dataplane.telemetry.otlp_logs import OtlpLogCollector
    metrics.registry.register(OtlpLogCollector(lambda: proxy.otlp_logs))
    # `--merge-metrics-from` (the agent's metrics): merged here only when this process is the
    # endpoint; a supervisor's workers get '' and the supervisor merges once (ztunnel/workers.py).
    merger = MetricsMerger(parse_source(args.merge_metrics_from)) if args.merge_metrics_from else None
    msrv = MetricsServer(metrics, merger)
    mhost, _, mport = (args.metrics_address or "").rpartition(":")
    try:
        await msrv.start(mhost or None, int(mport or 0), args.metrics_socket, reuse_port=True)
    except OSError as e:
        log.warning("metrics endpoint %s: %s", args.metrics_address, e)
    adm = admin.AdminServer(admin.routes(config, client, proxy), tap=tap_hub)
    host, _, port = (args.admin_address or "").rpartition(":")
    try:
        await adm.start(host or None, int(port or 0), args.admin_socket, reuse_port=True)
    except OSError as e:
        log.warning("admin endpoint %s: %s", args.admin_address, e)
    reporter = feed = None
    if client is not None:
        reporter = StatusReporter(args.controller, client.node, lambda: admin.status_report(config, args.node, proxy),
                                  interval=args.report_interval, trust=args.controller_tls.trust(),
                                  metadata=node_metadata(args.node_token_file, args.node) if args.node_token_file else None)
        await reporter.start()
        # `ambit tap`/`stat`/`top` in a cluster: the controller asks over a feed this proxy opens.
        feed = TapFeed(args.controller, client.node, tap_hub, exposition(metrics.registry), trust=args.controller_tls.trust(),
                       metadata=node_metadata(args.node_token_file, args.node) if args.node_token_file else None)
        await feed.start()
    if client is not None and not config.populated:
        # No cache and no answer yet: an empty config admits anything (no PeerAuthentication, no
        # AuthorizationPolicy). Take no pod until it arrives: their capture drops meanwhile, as
        # it does while ztunnel is down, instead of serving them without their policy.
        # A normal first start waits well under a second for it: a warning only once that is not so.
        log.info("waiting for the first mesh config (no cache) from controller %s: taking no pods until it "
                 "arrives", args.controller)
        first = asyncio.ensure_future(config.wait_populated())
        if not (await asyncio.wait({first}, timeout=FIRST_CONFIG_PATIENCE))[0]:
            log.warning("no mesh config yet after %.0f s (no cache; controller %s has not answered): taking no "
                        "pods until it arrives", FIRST_CONFIG_PATIENCE, args.controller)
            await first
    zds = ZdsServer(args.zds_socket, proxy.registry, loop)
    zds.start()
    log.info("ztunnel for %s ready; agent socket %s; controller %s; config version %s; CA %s", args.node,
             args.zds_socket, args.controller or "-", config.version or "-",
             ca_target if identities is not None else "-")
    trimmer = await process.serve_until_stopped(args, proxy, metrics.registry)
    # Stop accepting first (the agent's socket and every pod listener), then drain: a surge roll's
    # new ztunnel takes the new connections meanwhile (docs/operations.md). Each step has its own
    # time, so the process exits whatever one of them waits for (ambit/dataplane/shutdown.py).
    drain = args.termination_drain
    deadline = loop.time() + drain
    zds.stop()

    async def goaways() -> None:
        with contextlib.suppress(asyncio.TimeoutError):    # HBONE GOAWAYs: bounded by the same drain
            await asyncio.wait_for(proxy.close(), max(0.1, deadline - loop.time()))
    step = shutdown.STEP_TIMEOUT
    await shutdown.run_steps([
        ("pod drain", lambda: proxy.registry.shutdown(drain), drain + step),
        ("memory trimmer", lambda: memory.stop_trimming(trimmer), step),
        ("status reporter", reporter.stop if reporter is not None else None, step),
        ("tap feed", feed.stop if feed is not None else None, step),
        ("HBONE drain", goaways, max(0.1, drain) + step),
        ("identities", identities.close if identities is not None else None, step),
        ("CA channel", ca_channel.close if ca_channel is not None else None, step),
        ("metrics server", msrv.close, step),
        ("admin endpoint", adm.close, step),
        ("config client", client.stop if client is not None else None, step)], log)
