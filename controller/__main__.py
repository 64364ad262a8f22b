"""Run the controller: `python -m controller --lab-store PATH | --kube [--kubeconfig F] --listen ADDR`.
Every setting is in controller/settings.py (`--help` lists them with their environment variables).

One grpc.aio server carries the config stream (ambit.config.v1) and, with `--ca-dir` or
`--ca-secret`, the CA
(ambit.ca.v1); with the CA it serves TLS only, with a certificate its CA issues for its own SPIFFE
id (controller/ca_setup.py ServingCertificate). It starts serving only after the first snapshot is
translated: a ztunnel that connected earlier would be handed an empty config and drop everything
it routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ambit.aiotask import wait_set
from ambit.dataplane.gctune import parse_threshold
from ambit.trustdomain import TrustDomains
from controller import meshconfig
from controller.acceptgate import descriptors_needed, make_server, raise_descriptor_limit, serve
from controller.app import Controller, StatusServer
from controller.configserver.server import server_options
from controller.gcpolicy import SnapshotGC
from controller.grpcgate import CallGate
from controller.jwks import JwksCache
from controller.memguard import MemoryGuard
from controller.settings import ControllerSettings
from controller.settings import load as load_settings
from controller.sources import Snapshot, Source
from controller.translate import Translation
from controller.translate.autoalloc import AutoAllocate, parse_prefix
from controller.validation import FieldError

# seconds between a proxy's status reports (its --report-interval default): reports live six of them
REPORT_INTERVAL = 10.0

log = logging.getLogger("ambit.controller")
FIRST_SNAPSHOT_TIMEOUT = 300.0   # a large cluster's first list can be slow; the lab's takes ms


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ControllerSettings:
    """The controller's settings (controller/settings.py); a bad value exits naming it."""
    try:
        return load_settings(argv, environ)
    except ValueError as e:
        raise SystemExit(f"controller: {e}") from None


def make_source(args: ControllerSettings, leader: Callable[[], bool] | None = None) -> Source:
    if args.lab_store:
        from ambit.labstore import LabStore
        from controller.sources.lab import LabSource
        return LabSource(LabStore(args.lab_store))
    from controller.sources.kube import KubeSource, make_api_client
    return KubeSource(make_api_client(args.kube_host, args.kubeconfig), write_status=not args.no_status,
                      leader=leader)


def waypoint_hook(args: ControllerSettings, leader: Callable[[], bool] | None = None, source: Source | None = None,
                  unbound: Callable[[str], Mapping[str, Mapping[int, str]]] = lambda _ref: {}
                  ) -> Callable[[Snapshot, Translation], None] | None:
    """The controller's writes for waypoint Gateways after each snapshot: their status and
    AuthorizationPolicy conditions (lab store, or the API unless --no-status) and, with
    --waypoint-image in a cluster, their Deployment/Service/ServiceAccount. Gateway API objects
    the `source` refused are left to it (`KubeSource.refused`). `unbound(gateway ref)`: the
    listeners an ingress Gateway's pods report they cannot bind (ingress_status.bind_failures)."""
    if args.lab_store:
        from ambit.labstore import LabStore
        from controller.waypoints.labstatus import LabWaypointStatus
        lab = LabWaypointStatus(LabStore(args.lab_store), args.cluster_domain, args.root_namespace, unbound)

        def lab_waypoints(objects: Snapshot, tr: Translation) -> None:
            lab.reconcile(objects, tr)
        return lab_waypoints
    if args.no_status and not args.waypoint_image:
        return None
    from controller.sources.kube import make_api_client
    from controller.waypoints.reconcile import KubeWaypointReconciler
    from controller.waypoints.render import WaypointDeploySettings
    deploy = None
    if args.waypoint_image:
        deploy = WaypointDeploySettings(
            image=args.waypoint_image, pull_policy=args.waypoint_pull_policy,
            controller_address=args.waypoint_controller or f"ambit-controller.{args.root_namespace}.svc:15012",
            trust_domain=args.trust_domain, cluster_domain=args.cluster_domain,
            root_namespace=args.root_namespace, log_level=args.log_level, workers=args.waypoint_workers)
    rec = KubeWaypointReconciler(make_api_client(args.kube_host, args.kubeconfig), deploy,
                                 cluster_domain=args.cluster_domain, root_namespace=args.root_namespace,
                                 write_status=not args.no_status,
                                 refused=getattr(source, "refused", frozenset),
                                 may_write=leader or (lambda: True), unbound=unbound,
                                 classes_served=lambda: bool(getattr(source, "serves", lambda _g, _k: False)(
                                     "gateway.networking.k8s.io", "GatewayClass")))

    def kube_waypoints(objects: Snapshot, tr: Translation) -> None:
        if leader is None or leader():        # followers serve; the leader writes
            rec.reconcile(objects, tr)
    return kube_waypoints


def debug_readers(args: ControllerSettings) -> Any:
    """Who may read the debug API (controller/debug/readers.py); None refuses every reader."""
    from controller.debug import TokenFileReaders, TokenReviewReaders
    if args.debug_token_file:
        return TokenFileReaders(args.debug_token_file)
    if args.kube:
        from controller.sources.kube import make_api_client
        return TokenReviewReaders(make_api_client(args.kube_host, args.kubeconfig), args.debug_readers)
    log.warning("debug API: no --debug-token-file, so it refuses every reader (proxy reports are still taken)")
    return None


def make_elector(args: ControllerSettings, on_change: Callable[[bool], None]) -> Any:
    """The Lease elector (controller/leader.py) with --kube and --leader-elect, else None."""
    if not (args.kube and args.leader_elect):
        return None
    from controller.leader import LEASE_NAME, LeaseElector
    from controller.sources.kube import make_api_client
    return LeaseElector(make_api_client(args.kube_host, args.kubeconfig), args.root_namespace, LEASE_NAME,
                        replica_name(args),
                        lease_duration=args.leader_lease_duration, renew_deadline=args.leader_renew_deadline,
                        retry_period=args.leader_retry_period, on_change=on_change)


def replica_name(args: ControllerSettings) -> str:
    """This replica's name: its Lease identity, and how the debug API labels it (its pod's name)."""
    import socket
    return args.pod_name or os.environ.get("POD_NAME") or socket.gethostname()


def peer_replicas(args: ControllerSettings, ca_servicer: Any) -> Any:
    """With --kube, the other controller replicas the debug API asks (controller/debug/fanout.py):
    the pods of the controller's Service (named after its service account) in the root namespace,
    reached over the TLS the CLI uses (the CA's roots, the controller's identity). None in the lab."""
    if not args.kube:
        return None
    from ambit.configclient.rpc import parse_target
    from controller.debug.fanout import Replicas
    try:
        port = parse_target(args.listen)[1]
    except ValueError:
        port = None

    def trust() -> tuple[bytes, str] | None:
        if ca_servicer is None:
            return None         # --insecure-config-stream: the replicas serve plaintext
        return ca_servicer.ca.trust_bundle().pem_bundle().encode(), args.identity
    return Replicas(replica_name(args), args.root_namespace, args.controller_service_account, port, trust)


def root_publisher(args: ControllerSettings, pems: Callable[[], list[str]], leader: Callable[[], bool] | None
                   ) -> tuple[Callable[[Snapshot, Translation], None], Callable[[], None]]:
    """A post-snapshot hook writing the ambit-root-cert ConfigMap (controller/ca/publish.py) to the
    root namespace and each namespace with a waypoint Gateway, once per namespace per leadership
    term and per bundle (`pems()`, the CA's current roots: a reload may change them); and the
    function that starts a new term (the leader may have changed the bundle)."""
    from controller.ca.publish import publish_root
    from controller.sources.kube import make_api_client
    from controller.waypoints.gateways import is_waypoint
    api = make_api_client(args.kube_host, args.kubeconfig)
    done: set[str] = set()
    published: list[list[str]] = [[]]

    def publish(objects: Snapshot, _tr: Translation) -> None:
        if leader is not None and not leader():
            return
        bundle = pems()
        if bundle != published[0]:
            done.clear()                                            # a reloaded CA: every namespace again
            published[0] = bundle
        wanted = {args.root_namespace} | {o["metadata"].get("namespace", "default") for o in objects
                                          if o.get("kind") == "Gateway" and is_waypoint(o)}
        if wanted - done:
            done.update(publish_root(api, wanted - done, bundle))   # a failed namespace is retried next time
    return publish, done.clear


def ca_reload(args: ControllerSettings, storage: Any, ca: Any, servings: list[Any], controller: Controller,
              on_roots: Callable[[], None] | None = None) -> Any:
    """The CAReloader (controller/ca/reload.py) reading `storage` every --ca-reload-interval: a CA it
    takes up re-issues the controller's serving certificate at the next handshake, and new roots
    are republished (the leader's ambit-root-cert ConfigMaps, through the post-snapshot duties run
    again; the lab's pinned root file)."""
    from controller.ca.reload import CAReloader

    def after(root_changed: bool) -> None:
        for serving in servings:        # the gRPC port's certificate and the webhook's
            serving.renew_now()
        if root_changed:
            if on_roots is not None:        # the admission webhook's caBundle, at once
                on_roots()
            if args.root_cert_file is not None:
                write_root_file(args.root_cert_file, ca.trust_bundle().pem_bundle())
            controller.reapply()
    return CAReloader(ca, storage.load, getattr(storage, "where", "the CA storage"), after, args.ca_reload_interval,
                      settle=1.0)


def start_webhook(args: ControllerSettings, certificate: Any) -> Any:
    """The admission webhook's HTTPS server (controller/admission), serving at once: validation
    needs no snapshot. None (logged) when its port cannot be bound."""
    from controller.admission import parse_listen
    from controller.admission.server import TLSContexts, WebhookServer
    try:
        server = WebhookServer(parse_listen(args.webhook_listen), TLSContexts(certificate.pem_if_due))
    except OSError as e:
        log.error("--webhook-listen %s: %s", args.webhook_listen, e)
        return None
    server.certificate = certificate
    server.autoallocate = args.ip_autoallocate
    server.start()
    log.info("admission webhook serving on %s", args.webhook_listen)
    return server


def write_root_file(path: Path, bundle: str) -> None:
    """The roots where a lab's clients pin them (what the ambit-root-cert ConfigMap is in a
    cluster), replaced atomically so a reader never sees half a bundle."""
    from controller.ca.storage import write_atomic
    write_atomic(path, bundle.encode(), 0o644)
    log.info("wrote the mesh root bundle to %s", path)


def ca_storage(args: ControllerSettings) -> Any:
    """Where the CA lives: --ca-secret (a Secret in the root namespace) or --ca-dir."""
    from controller.ca import DirectoryStorage
    if args.ca_secret:
        from controller.ca.storage import SecretStorage
        from controller.sources.kube import make_api_client
        return SecretStorage(make_api_client(args.kube_host, args.kubeconfig), args.root_namespace, args.ca_secret)
    assert args.ca_dir is not None
    return DirectoryStorage(args.ca_dir)


def bind_reports(args: ControllerSettings, hooks: list[Callable[[Snapshot, Translation], None]]) -> tuple[
        Any, Callable[[str], Mapping[str, Mapping[int, str]]], Callable[[threading.Event, Controller], Any]]:
    """The proxies' status reports (the debug API's Report), where an ingress pod's ports it cannot
    bind come from for its Gateway's status (`unbound(gateway ref)`, ingress_status.bind_failures),
    and the function that starts what keeps that current (given `stop` and the controller).

    In a cluster the replica a report reaches writes it onto the reporting pod as the condition
    ambit.io/ListenersBound (controller/waypoints/podcondition.py), and the leader reads the
    condition back off the Pods it watches: reports reach whichever replica the ingress is
    connected to, and only the leader writes status. The writer's `observe` joins `hooks` (before
    the Gateway status hook, which reads it); a written condition comes back as a Pod change, a
    new snapshot. The reports of pods that are not watched (nowhere to write them) count from
    memory, as in the lab (one controller, no Pods): read directly, and a report that changes
    them reruns the status writes at once."""
    from controller.debug.reports import ReportStore
    from controller.waypoints.ingress_status import bind_failures
    ttl = max(60.0, 6 * REPORT_INTERVAL)
    if args.lab_store or args.no_status:
        rewrite = threading.Event()
        reports = ReportStore(ttl=ttl, on_change=rewrite.set)
        return (reports, lambda ref: bind_failures(reports.of_waypoint(ref)),
                lambda stop, controller: controller.run_reapplier(stop, rewrite))
    from controller.app import woken_thread
    from controller.sources.kube import make_api_client
    from controller.waypoints.podcondition import PodConditionWriter
    writer = PodConditionWriter(make_api_client(args.kube_host, args.kubeconfig))
    hooks.append(writer.observe)
    rewrite = threading.Event()
    reports = ReportStore(ttl=ttl, on_change=rewrite.set, on_report=writer.offer)

    def start(stop: threading.Event, controller: Controller) -> None:
        controller.run_reapplier(stop, rewrite)         # reports of pods that are not watched
        woken_thread("pod-conditions", stop, writer.wake, writer.flush,
                     "writing ingress pods' ListenersBound conditions failed", 1.0)
    return reports, lambda ref: bind_failures(writer.unreported(reports.of_waypoint(ref), ref)), start


def gc_policy(args: ControllerSettings) -> SnapshotGC:
    """The collector's settings (controller/gcpolicy.py), thresholds applied now."""
    policy = SnapshotGC(freeze=args.gc_freeze, threshold=parse_threshold(args.gc_threshold),
                        full_interval=args.gc_full_interval)
    policy.start()
    log.info("garbage collector: %s", policy.describe())
    return policy


def node_names(objects: Snapshot) -> list[str]:
    return [o["metadata"]["name"] for o in objects if o.get("kind") == "Node" and (o.get("metadata") or {}).get("name")]


async def amain(args: ControllerSettings) -> int:
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)

    controller_box: list[Controller] = []

    def errors() -> list[FieldError]:
        return controller_box[0].errors() if controller_box else []

    guard = MemoryGuard.from_proc(args.memory_guard_fraction)
    if guard.threshold is not None:
        log.info("memory guard: new config streams are refused past %d MiB (%.0f%% of %d MiB, %s)",
                 guard.threshold >> 20, guard.fraction * 100, (guard.limit or 0) >> 20, guard.source)
    server = StatusServer(errors, debounce=args.debounce, max_streams_per_client=args.max_config_streams_per_client,
                          memory_guard=guard)
    # Every call's credential is checked before its request is read (controller/grpcgate.py).
    gate = CallGate()
    # Connections are admitted per peer address before grpc sees them (controller/acceptgate.py).
    short = raise_descriptor_limit(descriptors_needed(args.max_connections, args.max_connections_per_peer, args.listen))
    if short:
        log.warning("%s", short)
    grpc_server, accept = make_server(args.listen, args.max_connections, args.max_connections_per_peer,
                                      server_options, [gate])
    server.add_to_server(grpc_server)
    gate.guard(server.guards())

    hooks: list[Callable[[Snapshot, Translation], None]] = []
    on_lead: list[Callable[[], None]] = []      # run on gaining leadership (writes skipped while following)

    def on_leadership(leading: bool) -> None:
        if leading:
            for f in on_lead:
                f()
    elector = make_elector(args, on_leadership)
    leader = elector.is_leader if elector is not None else None
    tokens = None
    if args.ca_dir:
        from controller.ca import BootstrapTokens
        from controller.ca_setup import TOKEN_DIGESTS, ensure_node_tokens
        if args.lab_store:
            tokens = BootstrapTokens(args.ca_dir / TOKEN_DIGESTS)
            if args.node_token_dir:
                token_dir = args.node_token_dir

                def node_tokens(objects: Snapshot, _tr: Translation) -> None:
                    ensure_node_tokens(tokens, node_names(objects), token_dir)
                hooks.append(node_tokens)
    source = make_source(args, leader)
    reports, unbound, start_binds = bind_reports(args, hooks)
    waypoints = waypoint_hook(args, leader, source, unbound)
    if waypoints is not None:
        hooks.append(waypoints)

    collector = gc_policy(args)

    def on_applied(objects: Snapshot, tr: Translation) -> None:
        for hook in hooks:
            try:
                hook(objects, tr)
            except Exception:  # noqa: BLE001 - one duty failing must not skip the others
                log.exception("post-snapshot hook %s failed", getattr(hook, "__name__", hook))
        collector.on_applied(objects, tr)       # last: what the hooks made is frozen too

    try:
        flag_aliases = TrustDomains.of(args.trust_domain, args.trust_domain_alias).aliases
    except ValueError as e:
        log.error("--trust-domain / --trust-domain-alias: %s", e)
        return 2
    watcher = meshconfig.Watcher(args.mesh_config) if args.mesh_config else None
    controller = Controller(source, server, trust_domain=args.trust_domain,
                            root_namespace=args.root_namespace, cluster_domain=args.cluster_domain,
                            on_applied=on_applied,
                            trust_domain_aliases=_aliases(flag_aliases, watcher, args.trust_domain, None),
                            jwks=JwksCache(refresh=args.jwks_refresh),
                            autoallocate=AutoAllocate(args.ip_autoallocate, parse_prefix(args.ip_autoallocate_ipv4_prefix)))
    controller_box.append(controller)
    if watcher is not None:     # extensionProviders / defaultProviders of the first read (checked above)
        with contextlib.suppress(ValueError):
            first = meshconfig.load(watcher.path, args.trust_domain)
            controller.set_mesh_telemetry(list(first.extension_providers), dict(first.default_providers))
            controller.set_outbound_traffic_policy(first.outbound_traffic_policy)
            controller.set_locality_lb_setting(first.locality_lb_setting)
            controller.set_tcp_keepalive(first.tcp_keepalive)
            controller.set_ext_authz(first.ext_authz)

    ca_servicer = serving = ca_reloader = webhook = None
    if args.with_ca:
        from controller.ca import CAConfigError
        from controller.ca_setup import mount_ca
        from controller.configserver.auth import NodeAuthenticator
        if tokens is not None:
            verifier: Any = tokens
        else:
            from controller.ca import TokenReviewVerifier
            from controller.sources.kube import make_api_client
            sa = args.ztunnel_service_account or f"system:serviceaccount:{args.root_namespace}:ztunnel"
            verifier = TokenReviewVerifier(make_api_client(args.kube_host, args.kubeconfig), {sa},
                                           workload_accounts=controller.is_waypoint_account)
            reviews = verifier

            def bound_objects(objects: Snapshot, _tr: Translation) -> None:
                """A cached TokenReview holds while its pod, account and node are watched."""
                reviews.observe(objects)
            hooks.append(bound_objects)
        try:
            from controller.fairness import RequestRate
            ca_rate = RequestRate(args.ca_request_rate, args.ca_request_burst, time.monotonic)
            storage = ca_storage(args)
            ca_servicer = mount_ca(grpc_server, storage, args.trust_domain, verifier, controller.pods_on_node, ca_rate)
        except CAConfigError as e:
            log.error("CA: %s", e)
            return 2
        gate.guard(ca_servicer.guards())
        if args.kube:
            ca = ca_servicer.ca
            publish, new_term = root_publisher(args, lambda: ca.trust_bundle().pems(), leader)
            hooks.append(publish)
            on_lead.append(new_term)
        # Config stream and CA over TLS, as the controller's own identity (ambit/configclient/tls.py).
        from controller.ca_setup import ServingCertificate, serving_hosts
        try:
            serving = ServingCertificate(ca_servicer.ca, args.identity,
                                         serving_hosts(args.identity, args.cluster_domain, args.serving_host))
        except ValueError as e:
            log.error("--controller-service-account / --serving-host: %s", e)
            return 2
        servings = [serving]
        patcher = None
        if args.webhook_listen:
            webhook = start_webhook(args, ServingCertificate(
                ca_servicer.ca, args.identity, serving_hosts(args.identity, args.cluster_domain, args.serving_host)))
            if webhook is None:
                return 1
            servings.append(webhook.certificate)
            if args.kube and args.webhook_config:
                from prometheus_client import REGISTRY

                from controller.admission.patcher import WebhookPatcher, WebhookStateCollector
                from controller.sources.kube import make_api_client
                ca = ca_servicer.ca
                patcher = WebhookPatcher(make_api_client(args.kube_host, args.kubeconfig), args.root_namespace,
                                         lambda: ca.trust_bundle().pem_bundle(), leading=leader or (lambda: True),
                                         name=args.webhook_config)
                patcher.run(stop)
                REGISTRY.register(WebhookStateCollector(patcher))
        ca_reloader = ca_reload(args, storage, ca_servicer.ca, servings, controller,
                                on_roots=patcher.poke if patcher is not None else None)
        if args.insecure_config_stream:
            log.error("--insecure-config-stream with --ca-dir: the node credentials exist, so the config stream "
                      "requires them; drop the flag")
            return 2
        # The config stream takes the same node credential as the CA, and scopes by it.
        server.authenticator = NodeAuthenticator(verifier, controller.waypoint_pods_on_node)
    elif not args.insecure_config_stream:
        log.error("the config stream needs node credentials, which come with the CA (--ca-dir); "
                  "pass --insecure-config-stream to serve it to anyone who can connect")
        return 2
    else:
        log.warning("config stream is NOT authenticated (--insecure-config-stream): anyone who reaches %s "
                    "reads every workload and policy", args.listen)

    from controller.debug import DebugServicer
    try:
        from controller.fairness import RequestRate
        peers = peer_replicas(args, ca_servicer)
        if peers is not None:
            hooks.append(peers.observe)
        debug = DebugServicer(server, debug_readers(args), reports, REPORT_INTERVAL, report_rate=RequestRate(
            args.status_report_rate, args.status_report_burst, time.monotonic, limit="report_rate"),
            observed=controller.observed, replica=replica_name(args), peers=peers,
            ca_problem=ca_reloader.status if ca_reloader is not None else None)
        debug.add_to_server(grpc_server)
        gate.guard(debug.guards())
    except ValueError as e:
        log.error("%s", e)
        return 2

    from prometheus_client import REGISTRY

    from controller.health import ControllerHealth
    REGISTRY.register(ControllerHealth(controller, ca_servicer, ca_reloader=ca_reloader))
    stop_metrics_socket = None
    if args.metrics_port:
        from prometheus_client import start_http_server
        start_http_server(args.metrics_port, args.metrics_address)
    if args.metrics_socket:
        from controller.health import serve_unix
        stop_metrics_socket = serve_unix(args.metrics_socket)

    if elector is not None:
        resync = getattr(source, "resync_status", None)
        on_lead.extend([controller.reapply, *([resync] if resync else [])])
        elector_thread = elector.start(stop)
    source_thread = controller.run_source(stop)
    if ca_reloader is not None:
        ca_reloader.start(stop)
    start_binds(stop, controller)
    controller.run_jwks_refresher(stop)
    from controller.dashboard.wiring import start as start_dashboard
    stop_dashboard = start_dashboard(args, controller)
    deadline = loop.time() + FIRST_SNAPSHOT_TIMEOUT
    while not (controller.first_snapshot.is_set() or done.is_set() or stop.is_set() or loop.time() > deadline):
        await wait_set(done, 0.02)
    if not controller.first_snapshot.is_set():
        if not done.is_set():
            log.error("no configuration snapshot after %.0fs; exiting", FIRST_SNAPSHOT_TIMEOUT)
        stop.set()
        return 0 if done.is_set() else 1

    _unlink_stale_socket(args.listen)
    try:
        from controller.ca.authority import CAExpired
        try:
            credentials = serving.credentials() if serving is not None else None
        except CAExpired as e:     # nothing it signs verifies: say so, rather than serve TLS no client accepts
            log.error("CA: %s", e)
            stop.set()
            return 2
        await serve(grpc_server, accept, args.listen, credentials)
    except OSError as e:
        log.error("%s", e)
        stop.set()
        return 1
    log.info("controller serving config version %s on %s%s", controller.version, args.listen,
             f" over TLS as {args.identity} (with CA)" if serving is not None else " (plaintext)")
    while not done.is_set() and not stop.is_set():
        if watcher is not None and watcher.changed():
            controller.set_trust_domain_aliases(_aliases(flag_aliases, watcher, args.trust_domain, controller))
        controller.log_errors()
        await wait_set(done, 0.5)
    log.info("controller stopping")
    stop.set()
    server.end_streams()        # streams end cleanly (clients reconnect) instead of being cancelled
    debug.close()
    await grpc_server.stop(1.0)
    if debug.peers is not None:
        await debug.peers.close()
    if accept is not None:
        await accept.stop()
    source_thread.join(timeout=5)
    if elector is not None:
        elector_thread.join(timeout=5)       # it gives the Lease up on the way out
    _unlink_stale_socket(args.listen)
    if stop_metrics_socket is not None:
        stop_metrics_socket()
    if stop_dashboard is not None:
        stop_dashboard()
    if webhook is not None:
        webhook.stop()
    return 0


def _aliases(flag_aliases: tuple[str, ...], watcher: meshconfig.Watcher | None, trust_domain: str,
             controller: Controller | None) -> tuple[str, ...]:
    """The flag's aliases plus the mesh config file's. A file that cannot be used is reported and
    the aliases in force stay (the flag's alone on the first read)."""
    if watcher is None:
        return flag_aliases
    if controller is None:
        watcher.changed()                      # the first read happens now; the loop sees later edits
    try:
        mesh_file = meshconfig.load(watcher.path, trust_domain)
        from_file = mesh_file.trust_domain_aliases
    except ValueError as e:
        log.error("mesh config %s not used: %s", watcher.path, e)
        if controller is not None:
            controller.set_mesh_errors([FieldError("mesh-config", str(watcher.path), str(e))])
            return controller.trust_domain_aliases
        raise SystemExit(f"controller: {e}") from None
    if controller is not None:
        controller.set_mesh_errors([])
        controller.set_mesh_telemetry(list(mesh_file.extension_providers), dict(mesh_file.default_providers))
        controller.set_outbound_traffic_policy(mesh_file.outbound_traffic_policy)
        controller.set_locality_lb_setting(mesh_file.locality_lb_setting)
        controller.set_tcp_keepalive(mesh_file.tcp_keepalive)
        controller.set_ext_authz(mesh_file.ext_authz)
    return tuple(dict.fromkeys(flag_aliases + from_file))


def _unlink_stale_socket(listen: str) -> None:
    if listen.startswith("unix:"):
        path = listen[len("unix:"):].removeprefix("//")
        with contextlib.suppress(FileNotFoundError):
            if os.path.exists(path):
                os.unlink(path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
