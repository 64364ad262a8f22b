"""The controller's config flow: source snapshot -> translation -> config server.

A source (the lab store or the Kubernetes API) hands over full snapshots of last-good objects; each
is translated into the mesh model and given to the ConfigServer as a whole, under a version that is
a hash of the content. Content versions mean a restarted controller serves the same version for the
same config (ztunnels that already hold it get an empty delta), and a change that does not alter
the model (a label nobody selects on) pushes nothing.

What could not be used is kept as `errors()`: objects the source rejected (their last good version
stays in force), translation errors, and the controller's own failures (a translation that raised,
a snapshot the server refused). They are logged once when they appear and served on the Status RPC.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ambit.api import config_pb2
from ambit.configclient.codec import Encoded, encode
from ambit.model import ExtAuthzProvider, TcpKeepalive, TrafficPolicy, Workload
from controller.configserver import ConfigServer
from controller.encodings import Encodings
from controller.extauthz import bind_providers
from controller.jwks import JwksCache
from controller.sources import Snapshot, Source
from controller.translate import Translation, TranslationBug, TranslationMemo, translate
from controller.translate.autoalloc import AutoAllocate
from controller.translate.routes import flatten_policy
from controller.translate.waypoints import gateway_of
from controller.validation import FieldError, object_key

log = logging.getLogger("ambit.controller")


def encode_all(by_type: dict[str, list[Any]]) -> dict[int, Encoded]:
    """Every resource's encoding, by `id` of the resource: computed once per snapshot, for both
    its content version and the config server (encoding is most of their cost: 10,000 workloads
    are 10,000 JSON bodies and hashes). The long way: the controller reuses the last snapshot's
    encodings of unchanged resources (`controller.encodings.Encodings`), which give the same."""
    return {id(r): encode(r) for rs in by_type.values() for r in rs}


def content_version(by_type: dict[str, list[Any]], encoded: Mapping[int, Encoded] | None = None) -> str:
    """A version naming exactly this model: the hash of every (type, name, resource version).
    `encoded`: `encode_all(by_type)`, when the caller has it."""
    h = hashlib.sha256()
    found = encoded or {}
    for t in sorted(by_type):
        for e in sorted((found.get(id(r)) or encode(r) for r in by_type[t]), key=lambda e: e.name):
            h.update(f"{t}\0{e.name}\0{e.version}\n".encode())
    return "v" + h.hexdigest()[:12]


def mesh_locality(setting: dict[str, Any]) -> TrafficPolicy | None:
    """The mesh config's localityLbSetting as the waypoints read a DestinationRule's (the same
    flattening, controller.translate.routes): None when unset."""
    return flatten_policy({"loadBalancer": {"localityLbSetting": setting}}) if setting else None


def mesh_tcp_keepalive(setting: dict[str, Any] | None) -> TcpKeepalive | None:
    """The mesh config's tcpKeepalive as the waypoints read a DestinationRule's (the same
    flattening): None when unset ({} is set: SO_KEEPALIVE with the OS's values)."""
    return flatten_policy({"connectionPool": {"tcp": {"tcpKeepalive": setting}}}).tcp_keepalive \
        if setting is not None else None


class Controller:
    """Wires a Source to a ConfigServer. `on_snapshot` runs on the source's thread."""

    def __init__(self, source: Source, server: ConfigServer, *, trust_domain: str = "cluster.local",
                 root_namespace: str = "ambit-system", cluster_domain: str = "cluster.local",
                 on_applied: Callable[[Snapshot, Translation], None] | None = None,
                 trust_domain_aliases: tuple[str, ...] = (), jwks: JwksCache | None = None,
                 autoallocate: AutoAllocate | None = None):
        self.source = source
        self.autoallocate = autoallocate or AutoAllocate()    # ServiceEntry address auto-allocation
        self.jwks = jwks or JwksCache()           # RequestAuthentication jwksUri key sets, inlined
        self._jwks_wanted: dict[str, float] = {}  # the key sets the last translation names
        self._jwks_wake = threading.Event()       # a new one: the refresher fetches it now
        self.trust_domain_aliases = tuple(trust_domain_aliases)
        self.mesh_telemetry: tuple[list[dict[str, Any]], dict[str, list[str]]] = ([], {})  # see set_mesh_telemetry
        self.outbound_traffic_policy = "ALLOW_ANY"  # MeshConfig outboundTrafficPolicy.mode
        self.locality_lb_setting: dict[str, Any] = {}   # MeshConfig localityLbSetting ({}: unset)
        self.tcp_keepalive: dict[str, Any] | None = None    # MeshConfig tcpKeepalive (None: unset)
        self.ext_authz: tuple[ExtAuthzProvider, ...] = ()   # MeshConfig's external authorizers (CUSTOM)
        self._objects: Snapshot | None = None     # the last snapshot, to re-translate on a mesh change
        self._mesh_errors: list[FieldError] = []
        self._flow_lock = threading.Lock()        # the source thread and a mesh reload both translate
        self._encodings = Encodings()             # the last snapshot's, reused for unchanged resources
        self._workloads = TranslationMemo()          # the last translation's Workloads, reused for unchanged pods
        self.server = server
        self.trust_domain = trust_domain
        self.root_namespace = root_namespace
        self.cluster_domain = cluster_domain
        self.on_applied = on_applied
        self.translation: Translation | None = None
        self.version = ""
        # (the served snapshot's objects, their resourceVersions by key): `observed`'s cache
        self._observed_index: tuple[Snapshot, dict[tuple[str, str, str], str]] | None = None
        self.snapshots = 0
        self.last_applied_at = 0.0
        self._own_errors: list[FieldError] = []
        self._logged: set[FieldError] = set()
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self.first_snapshot = threading.Event()

    # -- the flow -----------------------------------------------------------------------------------
    def on_snapshot(self, objects: Snapshot) -> None:
        with self._flow_lock:
            self._objects = objects
            self._on_snapshot(objects)

    def set_trust_domain_aliases(self, aliases: tuple[str, ...]) -> None:
        """New `trustDomainAliases` (from the mesh config file): re-translate the last snapshot, so
        every ztunnel gets the new MeshSettings at once."""
        with self._flow_lock:
            if tuple(aliases) == self.trust_domain_aliases:
                return
            log.info("trust domain aliases: %s", ", ".join(aliases) or "none")
            self.trust_domain_aliases = tuple(aliases)
            if self._objects is not None:
                self._on_snapshot(self._objects)

    def set_mesh_telemetry(self, providers: list[dict[str, Any]], defaults: dict[str, list[str]]) -> None:
        """New MeshConfig `extensionProviders` / `defaultProviders` (controller.meshconfig): they
        ride in MeshSettings, so re-translate and push at once, as for the aliases."""
        with self._flow_lock:
            if (list(providers), dict(defaults)) == self.mesh_telemetry:
                return
            self.mesh_telemetry = (list(providers), dict(defaults))
            if self._objects is not None:
                self._on_snapshot(self._objects)

    def set_outbound_traffic_policy(self, mode: str) -> None:
        """New MeshConfig `outboundTrafficPolicy.mode`: it rides in MeshSettings, so re-translate
        and push at once, as for the aliases."""
        self._set_mesh_field("outbound_traffic_policy", mode, "outbound traffic policy")

    def set_locality_lb_setting(self, setting: dict[str, Any]) -> None:
        """New MeshConfig `localityLbSetting` (controller.meshconfig; {} when unset): it rides in
        MeshSettings to the waypoints, so re-translate and push at once."""
        self._set_mesh_field("locality_lb_setting", dict(setting), "mesh-wide localityLbSetting")

    def set_tcp_keepalive(self, setting: dict[str, Any] | None) -> None:
        """New MeshConfig `tcpKeepalive` (controller.meshconfig; None when unset): it rides in
        MeshSettings to the waypoints, so re-translate and push at once."""
        self._set_mesh_field("tcp_keepalive", dict(setting) if setting is not None else None,
                             "mesh-wide tcpKeepalive")

    def set_ext_authz(self, providers: tuple[ExtAuthzProvider, ...]) -> None:
        """New external authorizers (MeshConfig `extensionProviders` envoyExtAuthzHttp/Grpc,
        controller.extauthz): they ride in MeshSettings to the waypoints, and decide which CUSTOM
        policies can be checked, so re-translate and push at once."""
        self._set_mesh_field("ext_authz", tuple(providers), "external authorizers")

    def _set_mesh_field(self, attr: str, value: Any, what: str) -> None:
        with self._flow_lock:
            if value == getattr(self, attr):
                return
            log.info("%s: %s", what, value)
            setattr(self, attr, value)
            if self._objects is not None:
                self._on_snapshot(self._objects)

    def set_mesh_errors(self, errors: list[FieldError]) -> None:
        with self._lock:
            self._mesh_errors = list(errors)
        self.log_errors()

    def _on_snapshot(self, objects: Snapshot) -> None:
        started = time.monotonic()
        self.snapshots += 1
        own: list[FieldError] = []
        try:
            tr = self._translate(objects)
            for m in tr.mesh_settings:
                m.extension_providers, m.default_providers = self.mesh_telemetry
                m.outbound_traffic_policy = self.outbound_traffic_policy
                m.locality = mesh_locality(self.locality_lb_setting)
                m.tcp_keepalive = mesh_tcp_keepalive(self.tcp_keepalive)
                m.ext_authz = list(self.ext_authz)
            bind_providers(tr.authorizations, self.ext_authz)   # an undefined provider: DENY, as Istio
        except Exception as e:  # noqa: BLE001 - a translation bug must not take the mesh down
            ref = e.ref if isinstance(e, TranslationBug) else "controller"
            log.exception("translation failed at %s; keeping the previous config (version %s)",
                          ref, self.version or "-")
            reason = str(e) if isinstance(e, TranslationBug) else f"{type(e).__name__}: {e}"
            own.append(FieldError(ref, "", f"translation failed (a bug in Ambit; the previous config "
                                           f"stays in force for the whole mesh): {reason}"))
            self._set_own(own)
            return
        by_type = tr.by_type()
        encoded = self._encodings.encode_all(by_type, self._workloads.reused_ids)
        version = content_version(by_type, encoded)
        if version != self.version:
            try:
                self.server.update(by_type, version, encoded, source=objects)
            except ValueError as e:
                log.error("config server refused snapshot %s: %s; keeping version %s", version, e, self.version or "-")
                own.append(FieldError("controller", "", f"snapshot {version} refused: {e}"))
                self._set_own(own)
                return
            log.info("config version %s: %d workloads, %d services, %d authorizations, %d peer authns, "
                     "%d waypoint routes (%d objects, %.1f ms)", version, len(tr.workloads), len(tr.services),
                     len(tr.authorizations), len(tr.peer_authns), len(tr.waypoint_routes), len(objects),
                     (time.monotonic() - started) * 1000)
        else:
            self.server.same_content(objects)
        with self._lock:
            self.translation = tr
            self.version = version
            self.last_applied_at = time.time()
        self._set_own(own)
        note = getattr(self.source, "set_translation_errors", None)
        if note is not None:        # a source that writes status: valid objects it could not apply say so
            try:
                note(list(tr.errors))
            except Exception:  # noqa: BLE001 - a status bug never blocks config
                log.exception("passing translation errors to the source failed")
        addresses = getattr(self.source, "set_entry_addresses", None)
        if addresses is not None:   # ServiceEntries' auto-allocated addresses, into their status
            try:
                addresses(dict(tr.entry_addresses))
            except Exception:  # noqa: BLE001 - a status bug never blocks config
                log.exception("passing ServiceEntry addresses to the source failed")
        if self.on_applied is not None:
            try:
                self.on_applied(objects, tr)
            except Exception:  # noqa: BLE001 - side duties (e.g. lab node tokens) never block config
                log.exception("post-snapshot hook failed")
        self.first_snapshot.set()

    def observed(self, refs: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], str] | None:
        """The resourceVersion of each of `refs` (kind, namespace, name) in the snapshot behind the
        config version being served; a ref not in it is left out. None before any snapshot is served.

        `ambit apply --wait` asks this: an object is in force once the config served was built from
        a snapshot holding it (at least at the version written), and every proxy ACKed that config.
        A snapshot that failed to translate never reaches the config server, so a wait on it does
        not end as if it had."""
        _, objects = self.server.served_source()
        if objects is None:
            return None
        index = self._observed_index
        if index is None or index[0] is not objects:    # once per served snapshot, not per poll
            index = (objects, {object_key(o): str((o.get("metadata") or {}).get("resourceVersion") or "")
                               for o in objects})
            self._observed_index = index
        return {k: index[1][k] for k in refs if k in index[1]}

    def _translate(self, objects: Snapshot) -> Translation:
        tr = translate(objects, self.trust_domain, self.root_namespace, self.cluster_domain,
                       self.trust_domain_aliases, self.jwks.resolved(), memo=self._workloads,
                       autoallocate=self.autoallocate)
        # A jwksUri seen for the first time is published at once, failing closed (its rule carries
        # "not fetched yet": tokens of that issuer get 401, as with istiod's fake JWKS), and fetched
        # by the refresher thread, woken now; it re-translates and pushes once the keys are known.
        # Translation never waits on an identity provider.
        self._jwks_wanted = dict(tr.jwks_fetches)
        if self.jwks.missing(tr.jwks_fetches):
            self._jwks_wake.set()
        self.jwks.forget(tr.jwks_fetches)
        return tr

    def refresh_jwks(self) -> bool:
        """Fetch the key sets that are due, new ones first time (outside the flow lock: fetching
        waits on the network); when one changed (first keys, a rotation, a failure), re-translate
        and push. True when it pushed."""
        wanted = dict(self._jwks_wanted)
        changed = False
        for src in self.jwks.due(wanted):
            changed = self.jwks.fetch(src, wanted[src]) or changed
        if changed:
            with self._flow_lock:
                if self._objects is not None:
                    self._on_snapshot(self._objects)
        return changed

    def run_jwks_refresher(self, stop: threading.Event, tick: float = 1.0) -> threading.Thread:
        # every tick, or at once for a new jwksUri
        return woken_thread("jwks", stop, self._jwks_wake, self.refresh_jwks, "JWKS refresh failed", tick,
                            every_tick=True)

    def _set_own(self, own: list[FieldError]) -> None:
        with self._lock:
            self._own_errors = own
        self.log_errors()

    def log_errors(self) -> None:
        """Log problems that appeared or went away since the last call (the main loop calls this
        periodically too: a rejected update changes no snapshot, only the errors)."""
        with self._log_lock:
            current = set(self.errors())
            for e in sorted(current - self._logged, key=str):
                log.warning("rejected configuration: %s", e)
            for e in sorted(self._logged - current, key=str):
                log.info("resolved: %s", e)
            self._logged = current

    # -- what others ask --------------------------------------------------------------------------------
    def errors(self) -> list[FieldError]:
        """Every configuration problem in force now, deduplicated, in a stable order."""
        with self._lock:
            tr_errors = list(self.translation.errors) if self.translation else []
            own = list(self._own_errors) + list(self._mesh_errors)
        seen: dict[FieldError, None] = {}
        for e in [*own, *self.source.errors(), *tr_errors]:
            seen.setdefault(e, None)
        return list(seen)

    def pods_on_node(self, node: str) -> list[tuple[str, str]]:
        """(namespace, service account) of each running pod on `node`: the CA's node authorization."""
        with self._lock:
            workloads: list[Workload] = list(self.translation.workloads) if self.translation else []
        return sorted({(w.namespace, w.service_account) for w in workloads if w.node == node})

    def waypoint_pods_on_node(self, node: str) -> set[tuple[str, str, str]]:
        """(namespace, gateway, pod) of each waypoint pod on `node`: the pods labelled with a
        waypoint Gateway's name that run as its service account (the config stream's waypoint
        authorization, controller/configserver/auth.py)."""
        with self._lock:
            workloads: list[Workload] = list(self.translation.workloads) if self.translation else []
        out = set()
        for w in workloads:
            gw = gateway_of(w)
            if w.node == node and gw and w.service_account == gw.split("/", 1)[1]:
                out.add((w.namespace, gw.split("/", 1)[1], w.name))
        return out

    def is_waypoint_account(self, namespace: str, service_account: str) -> bool:
        """Is `namespace/service_account` the account of a waypoint's pods (a pod labelled with a
        waypoint Gateway of that name, running as it)? Such a token is a waypoint's own credential
        (controller.ca.credentials.TokenReviewVerifier)."""
        with self._lock:
            workloads: list[Workload] = list(self.translation.workloads) if self.translation else []
        return any(w.namespace == namespace and w.service_account == service_account
                   and gateway_of(w) == f"{namespace}/{service_account}" for w in workloads)

    def reapply(self) -> None:
        """Run the post-snapshot duties again on the last snapshot (a replica that just became the
        leader writes what it skipped while following)."""
        with self._flow_lock:
            objects, tr = self._objects, self.translation
            if objects is not None and tr is not None and self.on_applied is not None:
                try:
                    self.on_applied(objects, tr)
                except Exception:  # noqa: BLE001 - as in _on_snapshot
                    log.exception("post-snapshot hook failed")

    def run_reapplier(self, stop: threading.Event, wake: threading.Event, tick: float = 1.0) -> threading.Thread:
        """`reapply` whenever `wake` is set: something other than a snapshot changed what a status
        write says (an ingress pod's report of a port it cannot bind: ReportStore.on_change). On a
        thread of its own: the report arrives on the gRPC loop, and the writes wait on the API."""
        return woken_thread("reapply", stop, wake, self.reapply, "re-running the post-snapshot duties failed", tick)

    def run_source(self, stop: threading.Event) -> threading.Thread:
        """Run the source on a thread of its own (it blocks); returns the thread."""
        def run() -> None:
            try:
                self.source.run(self.on_snapshot, stop)
            except Exception:  # noqa: BLE001 - report and let the process supervisor restart us
                log.exception("configuration source failed")
                stop.set()
        t = threading.Thread(target=run, name="source", daemon=True)
        t.start()
        return t


class StatusServer(ConfigServer):
    """The config server, whose Status RPC also reports the configuration the controller rejected
    (`errors` is called per request, e.g. `Controller.errors`)."""

    def __init__(self, errors: Callable[[], list[FieldError]], **kw: Any):
        super().__init__(**kw)
        self._errors = errors

    def status_answer(self) -> Any:
        resp = super().status_answer()
        for e in self._errors():
            resp.config_errors.append(config_pb2.ConfigError(ref=e.ref, path=e.path, reason=e.reason))
        return resp


def woken_thread(name: str, stop: threading.Event, wake: threading.Event, work: Callable[[], Any],
                 failure: str, tick: float, every_tick: bool = False) -> threading.Thread:
    """A daemon thread running `work` whenever `wake` is set (and, `every_tick`, every `tick`
    seconds) until `stop`; a failure is logged and the next wake runs it again."""
    def run() -> None:
        while not stop.is_set():
            woken = wake.wait(tick)
            wake.clear()
            if stop.is_set():
                return
            if not (woken or every_tick):
                continue
            try:
                work()
            except Exception:  # noqa: BLE001 - one failed run must not stop later ones
                log.exception("%s", failure)
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t
