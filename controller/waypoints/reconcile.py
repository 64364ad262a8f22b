"""The controller's writes for waypoints in a cluster (the IO edge of `controller.waypoints`).

After each translated snapshot (`Controller.on_applied`), `KubeWaypointReconciler.reconcile`:
- the same for ingress Gateways (class ambit/istio: controller.waypoints.ingress_status, a
  LoadBalancer Service), and the `status.parents` of the routes attached to them or to mesh
  parents (Services, waypoints);
- writes each waypoint Gateway's status (`gateways.desired_status`: Accepted, Programmed,
  addresses, listeners) when it differs, as a merge patch of `/status`;
- with deploy settings, makes sure each waypoint Gateway owns its ServiceAccount, Service and
  Deployment (`render`; not one whose `waypoint-for` label is invalid, which is no waypoint), with
  the overlays of its class's defaults ConfigMap (`class_defaults`), then of its
  `infrastructure.parametersRef` ConfigMap, and the HPA/PDB they ask for (`params`; invalid
  parameters deploy nothing and make the Gateway `Accepted=False`, `InvalidParameters`; an HPA/PDB
  no longer asked for is deleted):
  created when missing, updated when the fields the controller owns drifted, left alone (and
  reported) when an object of that name exists that the controller did not create. Deleting the
  Gateway deletes them through their ownerReferences (the garbage collector's job, not ours);
- writes the `ZtunnelAccepted` / `WaypointAccepted` condition of each AuthorizationPolicy
  (`advisories.policy_conditions`), keeping the conditions others wrote;
- creates the GatewayClass of each built-in class name that has none, once the source has listed
  GatewayClasses (`classes_served`: the Gateway API CRDs are installed), and writes the status of
  the classes of Ambit's controllerName (controller.waypoints.gatewayclasses); a class of a
  built-in name another controller owns is left alone and logged.
A failed write (an API error, a dropped connection) is logged and retried on its own, with the
status writer's pacing (`controller.sources.statuspace.StatusPace`: 0.5 s doubling to 30 s, jittered,
per object), until it succeeds or the next snapshot computes every write again: on a quiet cluster
no snapshot may come, and a waypoint would stay without its Deployment. It never blocks the config
flow. Only what differs is written, so a snapshot caused by our own write ends the loop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import urllib3
from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from ambit.backoff import Backoff
from controller.kinds import BY_KIND
from controller.sources.statuspace import StatusPace
from controller.translate.ingress import ALL_ROUTE_KINDS, is_ingress
from controller.waypoints import class_defaults, gatewayclasses, ingress_status
from controller.waypoints import gateways as gws
from controller.waypoints.advisories import advisories, conditions_update, has_free_status, object_conditions
from controller.waypoints.params import OPTIONAL_KINDS, Parameters, check, parameters_ref
from controller.waypoints.params import apply as apply_parameters
from controller.waypoints.policy_status import policy_updates
from controller.waypoints.render import (
    WaypointDeploySettings,
    apply_update,
    is_managed,
    needs_update,
    optional_objects,
    render,
    rendered_with_parameters,
)

log = logging.getLogger("ambit.controller.waypoints")
Obj = dict[str, Any]

# What the reconciler writes beyond the status of the Istio/Ambit kinds (which `ambit install`
# grants from controller.sources.kube.STATUS_GROUP_SUFFIXES): its ClusterRole adds these rules.
# `gateways/finalizers` update is what the API server's OwnerReferencesPermissionEnforcement asks
# of whoever sets `blockOwnerDeletion` on an ownerReference to a Gateway.
RBAC_RULES = [
    {"apiGroups": [""], "resources": ["serviceaccounts", "services"], "verbs": ["get", "create", "update"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create", "update"]},
    # what a parametersRef ConfigMap adds (controller/waypoints/params.py); deleted when its key goes
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
     "verbs": ["get", "create", "update", "delete"]},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["get", "create", "update", "delete"]},
    # status is only merge-patched (_patch_status)
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways/status"], "verbs": ["patch"]},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways/finalizers"], "verbs": ["update"]},
    # status.parents of the routes attached to ingress Gateways (controller/waypoints/ingress_status.py)
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["grpcroutes/status", "httproutes/status",
                                                   "tcproutes/status", "tlsroutes/status"],
     "verbs": ["patch"]},
    # status.ancestors of BackendTLSPolicies (controller/waypoints/policy_status.py)
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["backendtlspolicies/status"], "verbs": ["patch"]},
    # the built-in GatewayClasses, created when missing, and the status of those of Ambit's
    # controllerName (controller/waypoints/gatewayclasses.py); get/list/watch come with the watch
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gatewayclasses"], "verbs": ["create"]},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gatewayclasses/status"], "verbs": ["patch"]},
]
_PLURALS = {"ServiceAccount": "serviceaccounts", "Service": "services", "Deployment": "deployments",
            "HorizontalPodAutoscaler": "horizontalpodautoscalers", "PodDisruptionBudget": "poddisruptionbudgets",
            "Gateway": "gateways", "AuthorizationPolicy": "authorizationpolicies", "HTTPRoute": "httproutes",
            "GRPCRoute": "grpcroutes", "TLSRoute": "tlsroutes", "TCPRoute": "tcproutes",
            "BackendTLSPolicy": "backendtlspolicies"}


def object_path(obj: Obj, sub: str = "", named: bool = True) -> str:
    api_version = obj.get("apiVersion", "v1")
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    md = obj.get("metadata") or {}
    plural = _PLURALS.get(obj["kind"]) or BY_KIND[obj["kind"]].plural    # Istio's and Ambit's kinds: their spec's
    path = f"{base}/namespaces/{md.get('namespace') or 'default'}/{plural}"
    if named:
        path += f"/{md['name']}"
    return path + (f"/{sub}" if sub else "")


class KubeWaypointReconciler:
    def __init__(self, api: kclient.ApiClient, deploy: WaypointDeploySettings | None = None, *,
                 cluster_domain: str = "cluster.local", root_namespace: str = "ambit-system",
                 write_status: bool = True, resync: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 refused: Callable[[], Collection[tuple[str, str, str]]] = frozenset,
                 may_write: Callable[[], bool] = lambda: True, retry: Backoff | None = None,
                 unbound: Callable[[str], Mapping[str, Mapping[int, str]]] = lambda _ref: {},
                 classes_served: Callable[[], bool] = lambda: False):
        self.root_namespace = root_namespace
        # whether the API server serves GatewayClasses and the source has listed them
        # (KubeSource.serves): before that, a class missing from the snapshot is not known missing
        self.classes_served = classes_served
        # built-in class name -> when it was created (or found to exist): not created again until the
        # watch has brought it into a snapshot, or `resync` s have passed
        self._classes_created: dict[str, float] = {}
        self._foreign_logged: dict[str, str] = {}
        # ingress Gateway ref -> the listeners its pods report they cannot bind (ingress_status.bind_failures)
        self.unbound = unbound
        # Failed writes, retried on a timer thread (`_retry_due`) until they succeed or the next
        # pass computes them again; `may_write` (leading) is checked before each retry round.
        self.may_write = may_write
        self._pace: StatusPace[str, Callable[[], bool]] = StatusPace(retry=retry) if retry else StatusPace()
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._failing: set[str] = set()
        # Gateway API objects whose newest version validation refused, as (kind, ns, name): the
        # source writes their status (controller.sources.kube); the version in force here would
        # contradict it
        self.refused = refused
        # (gateway uid, resourceVersion) -> when its objects were last found as wanted: a snapshot
        # caused by anything else then costs no API calls; drift is repaired within `resync` s.
        self._settled: dict[tuple[str, str, tuple[int, ...], str], float] = {}
        self.resync = resync
        # gateway uid -> the digest of the invalid parameters last logged; (uid, rv, ports, ConfigMap) -> check()
        self._params_logged: dict[str, str] = {}
        self._params_seen: dict[tuple[str, str, tuple[int, ...], str], Parameters | None] = {}
        self._duplicates_logged = "{}"
        self.clock = clock
        self.api = api
        self.deploy = deploy
        self.cluster_domain = cluster_domain
        self.write_status = write_status
        self.errors: list[str] = []

    # -- HTTP ----------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
        req = self.api.param_serialize(method=method, resource_path=path, header_params={"Content-Type": content_type},
                                       body=body, auth_settings=["BearerToken"])
        try:
            resp = self.api.call_api(*req, _request_timeout=(10.0, 30.0))
            data = resp.read()
            status = resp.status
        except ApiException as e:
            return e.status or 0, None
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    def _write(self, what: str, method: str, path: str, body: Any, content_type: str = "application/json") -> bool:
        try:
            status, _ = self._call(method, path, body, content_type)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self.errors.append(f"{what}: {e}")
            log.warning("%s: %s", what, e)
            return False
        if status >= 300:
            self.errors.append(f"{what}: HTTP {status}")
            log.warning("%s: HTTP %s", what, status)
            return False
        return True

    # -- the pass --------------------------------------------------------------------------------------
    # -- retrying failed writes ---------------------------------------------------------------------
    def _attempt(self, key: str, write: Callable[[], bool]) -> bool:
        """Run `write`; a failure is queued to run again after the key's backoff. Only keys that
        failed are tracked (a success resets them), so writes that never fail cost no memory."""
        ok = write()
        if not ok or key in self._failing:
            self._pace.done(key, write, ok, self.clock())
            if ok:
                self._failing.discard(key)
            else:
                self._failing.add(key)
        return ok

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self._pace.due()
        if due is None:
            return
        self._timer = threading.Timer(max(0.0, due - self.clock()), self._retry_due)
        self._timer.daemon = True
        self._timer.start()

    def _retry_due(self) -> None:
        """Run the failed writes whose backoff has passed (the timer's thread)."""
        with self._lock:
            self._timer = None
            if not self.may_write():            # a new leader writes from its own pass
                self._pace.drop_pending()
                return
            while (nxt := self._pace.take(self.clock())) is not None:
                self._attempt(*nxt)
            self._schedule()

    def retrying(self) -> set[str]:
        """The writes waiting for a retry ("objects of waypoint ns/name", "status of Gateway ns/name")."""
        with self._lock:
            return self._pace.pending()

    def close(self) -> None:
        """Stop retrying (the controller is stopping)."""
        with self._lock:
            self._pace.drop_pending()
            self._schedule()

    def reconcile(self, objects: list[Obj], translation: Any = None) -> None:
        with self._lock:
            self._pace.drop_pending()       # this pass computes every write again
            self._reconcile(objects, translation)
            self._schedule()

    def _reconcile(self, objects: list[Obj], translation: Any = None) -> None:
        self.errors = []
        waypoints = [o for o in objects if gws.is_waypoint(o) or is_ingress(o)]
        now = self.clock()
        live = set()
        refused = self.refused() if self.write_status else frozenset()
        configmaps = {(o.get("metadata", {}).get("namespace") or "default", o.get("metadata", {}).get("name", "")): o
                      for o in objects if o.get("kind") == "ConfigMap"}
        labelled = [cm for cm in configmaps.values() if class_defaults.class_of(cm) is not None]
        self._log_duplicate_defaults(labelled)
        for gw in waypoints:
            md = gw.get("metadata") or {}
            ports = _served_ports(gw, translation)       # an Istio Gateway's new port redeploys too
            params = self._parameters(gw, configmaps, ports, labelled)
            # a changed parameters ConfigMap redeploys too
            key = (md.get("uid", ""), md.get("resourceVersion", ""), ports, params.digest if params else "")
            live.add(key)
            if params is not None and params.errors:
                if self._params_logged.get(key[0]) != params.digest:      # once per change, not per snapshot
                    log.warning("waypoint %s: %s", gws.gateway_ref(gw), params.message())
                    self._params_logged[key[0]] = params.digest
            elif self.deploy is not None and key[0] and (is_ingress(gw) or gws.valid_waypoint_for(gw)) and \
                    now - self._settled.get(key, -1e18) >= self.resync:
                self._attempt(f"objects of waypoint {gws.gateway_ref(gw)}",
                              lambda gw=gw, ports=ports, key=key, params=params:
                              self._deploy_settled(gw, ports, key, params))
            if self.write_status and ("Gateway", md.get("namespace") or "default", md.get("name")) not in refused:
                self._gateway_status(gw, objects, translation, params)
        self._settled = {k: v for k, v in self._settled.items() if k in live}
        uids = {k[0] for k in live}
        self._params_logged = {u: d for u, d in self._params_logged.items() if u in uids}
        self._params_seen = {k: v for k, v in self._params_seen.items() if k[0] in uids}
        if self.write_status:
            self._gateway_classes(objects, now)
            self._policy_status(objects, translation)
            if translation is not None:
                self._route_status(objects, translation, refused)
                self._backend_tls_status(objects, translation, refused)

    def _parameters(self, gw: Obj, configmaps: Mapping[tuple[str, str], Obj], ports: tuple[int, ...],
                    labelled: list[Obj] | None = None) -> Parameters | None:
        """`params.check` of the Gateway, computed again only when the Gateway, its ports, its
        ConfigMap or its class's defaults ConfigMaps changed (it renders and parses YAML; snapshots
        come for any change of the mesh). `labelled`: the ConfigMaps with a defaults-for-class label."""
        ref = parameters_ref(gw)
        cls = str((gw.get("spec") or {}).get("gatewayClassName") or "")
        defaults = class_defaults.claims(labelled if labelled is not None else configmaps.values(),
                                         self.root_namespace, cls)
        if ref is None and not defaults:
            return None
        md = gw.get("metadata") or {}
        cm = configmaps.get((md.get("namespace") or "default", ref.get("name", ""))) if ref is not None else None
        seen = (md.get("uid", ""), md.get("resourceVersion", ""), ports,
                json.dumps([cm, defaults[:1]], sort_keys=True))
        if seen not in self._params_seen:
            self._params_seen = {k: v for k, v in self._params_seen.items() if k[0] != seen[0]}
            self._params_seen[seen] = check(gw, configmaps, self.deploy, ports, root_namespace=self.root_namespace)
        return self._params_seen[seen]

    def _log_duplicate_defaults(self, labelled: list[Obj]) -> None:
        """Say once per change which classes have several defaults ConfigMaps, and which one applies."""
        found = class_defaults.duplicates(labelled, self.root_namespace)
        said = json.dumps({c: [class_defaults.ref(cm) for cm in cms] for c, cms in found.items()})
        if said != self._duplicates_logged:
            for cls, cms in found.items():
                log.warning("gateway class %s: %s", cls, class_defaults.duplicate_message(cls, cms))
            self._duplicates_logged = said

    def _deploy_settled(self, gw: Obj, ports: tuple[int, ...], key: tuple[str, str, tuple[int, ...], str],
                        params: Parameters | None = None) -> bool:
        """`_deploy`, remembering a success so the next snapshots skip it until `resync`."""
        if not self._deploy(gw, ports, params):
            return False
        self._settled[key] = self.clock()
        return True

    def _deploy(self, gw: Obj, ports: tuple[int, ...] = (), params: Parameters | None = None) -> bool:
        """Create or update the Gateway's objects (with its parameters' overlays; valid ones only:
        `_reconcile` deploys nothing for invalid ones); delete the autoscaler and disruption budget
        its parameters no longer ask for. True when all are as wanted (nothing failed)."""
        assert self.deploy is not None
        wanted, errors = apply_parameters(render(gw, self.deploy, ports), optional_objects(gw), params)
        if errors:         # an overlay that changes what Ambit owns: nothing of it is applied
            return True
        ok = True
        # whether the HPA/PDB may need deleting: parameters now, or objects rendered with them before
        # (nothing else: every other Gateway's pass would cost two GETs more)
        had_parameters = params is not None
        for want in wanted:
            ref = f"{want['kind']} {want['metadata']['namespace']}/{want['metadata']['name']}"
            try:
                status, existing = self._call("GET", object_path(want))
            except (urllib3.exceptions.HTTPError, OSError) as e:
                self.errors.append(f"{ref}: {e}")
                ok = False
                continue
            if status == 404:
                body = want
                if want["kind"] == "Deployment" and "replicas" not in want["spec"]:
                    # on creation only: from then on the count is kubectl scale's or an HPA's
                    body = {**want, "spec": {"replicas": self.deploy.replicas, **want["spec"]}}
                if self._write(f"create {ref}", "POST", object_path(want, named=False), body):
                    log.info("waypoint %s: created %s", gws.gateway_ref(gw), ref)
                else:
                    ok = False
            elif status < 300 and existing is not None:
                had_parameters = had_parameters or rendered_with_parameters(existing)
                if not is_managed(existing):
                    msg = f"{ref} exists and was not created by ambit; the waypoint does not take it over"
                    if msg not in self.errors:
                        log.warning("waypoint %s: %s", gws.gateway_ref(gw), msg)
                    self.errors.append(msg)
                    ok = False
                elif needs_update(existing, want):
                    if self._write(f"update {ref}", "PUT", object_path(want), apply_update(existing, want)):
                        log.info("waypoint %s: updated %s", gws.gateway_ref(gw), ref)
                    else:
                        ok = False
            else:
                self.errors.append(f"get {ref}: HTTP {status}")
                ok = False
        have = {o["kind"] for o in wanted}
        for gone in optional_objects(gw) if had_parameters else []:
            if gone["kind"] not in have and gone["kind"] in OPTIONAL_KINDS:
                ok = self._delete_unwanted(gw, gone) and ok
        return ok

    def _delete_unwanted(self, gw: Obj, obj: Obj) -> bool:
        """Delete `obj` if it is one the controller rendered for this Gateway (its parameters asked
        for it once and no longer do); anything else of that name is left alone."""
        ref = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
        try:
            status, existing = self._call("GET", object_path(obj))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self.errors.append(f"{ref}: {e}")
            return False
        if status == 404:
            return True
        if status >= 300 or existing is None:
            self.errors.append(f"get {ref}: HTTP {status}")
            return False
        uid = (gw.get("metadata") or {}).get("uid")
        if not is_managed(existing) or uid not in [r.get("uid") for r in
                                                   (existing.get("metadata") or {}).get("ownerReferences") or []]:
            return True
        if not self._write(f"delete {ref}", "DELETE", object_path(obj), None):
            return False
        log.info("waypoint %s: deleted %s (its parameters no longer ask for it)", gws.gateway_ref(gw), ref)
        return True

    def _gateway_status(self, gw: Obj, objects: list[Obj], translation: Any = None,
                        params: Parameters | None = None) -> None:
        if is_ingress(gw):      # its listeners' verdicts come from the translation
            listeners = translation.ingress.listeners.get(gws.gateway_ref(gw)) if translation is not None else None
            if listeners is None:
                return
            want = ingress_status.gateway_status(gw, gws.find_service(gw, objects), listeners,
                                                 self.unbound(gws.gateway_ref(gw)))
        else:
            want = gws.desired_status(gw, gws.find_service(gw, objects))
        if params is not None and params.errors:
            want = gws.invalid_parameters(want, gw, params.message())
        old = gw.get("status") or {}
        if not gws.status_differs(old, want):
            return
        body = {"status": gws.with_times(old, want)}
        self._patch_status(f"status of Gateway {gws.gateway_ref(gw)}", object_path(gw, "status"), body)

    def _route_status(self, objects: list[Obj], translation: Any, refused: Collection[tuple[str, str, str]]) -> None:
        """`status.parents` of the routes (HTTP, GRPC, TLS, TCP) attached to ingress Gateways, and of the
        HTTP/GRPC routes' mesh parents (Services, waypoints): Gateway API's verdicts from the translation;
        other controllers' parents entries are kept. A route with entries of ours and no parent of
        ours now (say, once valid again after a refusal) loses them; a refused one is not touched."""
        by_key = {(o.get("kind"), (o.get("metadata") or {}).get("namespace") or "default",
                   (o.get("metadata") or {}).get("name")): o for o in objects if o.get("kind") in ALL_ROUTE_KINDS}
        for key, want in ingress_status.route_updates(objects, translation.ingress, refused).items():
            self._patch_status(f"status of {key[0]} {key[1]}/{key[2]}", object_path(by_key[key], "status"),
                               {"status": want})

    def _backend_tls_status(self, objects: list[Obj], translation: Any,
                            refused: Collection[tuple[str, str, str]]) -> None:
        """`status.ancestors` of the BackendTLSPolicies: the translation's verdict per target."""
        by_key = {("BackendTLSPolicy", (o.get("metadata") or {}).get("namespace") or "default",
                   (o.get("metadata") or {}).get("name")): o for o in objects if o.get("kind") == "BackendTLSPolicy"}
        for key, want in policy_updates(objects, translation.backend_tls.ancestors, refused).items():
            self._patch_status(f"status of {key[0]} {key[1]}/{key[2]}", object_path(by_key[key], "status"),
                               {"status": want})

    def _gateway_classes(self, objects: list[Obj], now: float) -> None:
        """Create the missing built-in GatewayClasses; write the status of those that are Ambit's."""
        if not self.classes_served():
            return
        classes = [o for o in objects if gatewayclasses.is_class(o)]
        have = {gatewayclasses.name_of(o) for o in classes}
        self._classes_created = {n: t for n, t in self._classes_created.items()
                                 if n not in have and now - t < self.resync}
        # a class validation refused exists all the same (`ambit status` names its errors)
        refused = [name for kind, _ns, name in self.refused() if kind == "GatewayClass"]
        for name in gatewayclasses.missing(classes, refused):
            if name not in self._classes_created:
                self._attempt(f"create GatewayClass {name}", lambda name=name: self._create_class(name))
        foreign = gatewayclasses.foreign(classes)
        for name, controller in foreign.items():
            msg = gatewayclasses.foreign_message(name, controller)
            self.errors.append(msg)
            if self._foreign_logged.get(name) != controller:       # once per change, not per snapshot
                log.warning("%s", msg)
        self._foreign_logged = foreign
        for o in classes:
            want = gatewayclasses.desired_status(o)
            if want is not None:
                name = gatewayclasses.name_of(o)
                self._patch_status(f"status of GatewayClass {name}", class_path(name, "status"), {"status": want})

    def _create_class(self, name: str) -> bool:
        """POST the built-in class; one that exists already (another replica's, or its watch event
        not yet here) is fine."""
        try:
            status, _ = self._call("POST", class_path(), gatewayclasses.wanted(name))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self.errors.append(f"create GatewayClass {name}: {e}")
            log.warning("create GatewayClass %s: %s", name, e)
            return False
        if status == 409:
            log.debug("GatewayClass %s exists already", name)
        elif status >= 300:
            self.errors.append(f"create GatewayClass {name}: HTTP {status}")
            log.warning("create GatewayClass %s: HTTP %s", name, status)
            return False
        else:
            log.info("created GatewayClass %s (controllerName %s)", name, gatewayclasses.CONTROLLER_NAME)
        self._classes_created[name] = self.clock()
        return True

    def _policy_status(self, objects: list[Obj], translation: Any) -> None:
        """The advisories' conditions on Istio and Ambit objects (`advisories.object_conditions`)."""
        found = advisories(objects, self.cluster_domain, translation, self.root_namespace)
        for o in objects:
            if not has_free_status(o):
                continue
            merged = conditions_update(o, object_conditions(o, found))
            if merged is None:
                continue
            md = o.get("metadata") or {}
            self._patch_status(f"status of {o.get('kind')} {md.get('namespace')}/{md.get('name')}",
                               object_path(o, "status"), {"status": {"conditions": merged}})

    def _patch_status(self, what: str, path: str, body: Obj) -> bool:
        """A merge patch of `/status`, retried until it succeeds or the next pass replaces it."""
        return self._attempt(what, lambda: self._write(what, "PATCH", path, body, "application/merge-patch+json"))


def class_path(name: str = "", sub: str = "") -> str:
    """A GatewayClass's path (cluster-scoped), or its collection's."""
    return "/".join(p for p in (f"/apis/{gatewayclasses.GROUP}/v1/gatewayclasses", name, sub) if p)


def _served_ports(gw: Obj, translation: Any) -> tuple[int, ...]:
    """The ports an ingress Gateway's pods serve beyond its own listeners' (Istio Gateways' servers)."""
    served = translation.ingress.gateways if translation is not None else []
    return tuple(sorted({ln.port for m in served if m.resource_name == gws.gateway_ref(gw) for ln in m.listeners}))
