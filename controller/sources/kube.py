"""The Kubernetes source: list+watch of cluster state and mesh configuration.

One reflector thread per resource type (`ambit.kube.reflector`, shared with the agent) keeps that
type's objects: list (paged), watch from the list's resourceVersion with bookmarks, relist on 410
Gone (so objects deleted unseen disappear), reconnect with backoff on a dropped connection (so no
event is lost or applied twice). A custom-resource group that is not installed (404, and no
CustomResourceDefinition serving it: `_crd_absent`) is skipped quietly and retried every
`missing_retry` seconds; both Istio's groups and Ambit's are watched, whichever exist. Every change goes through the `LastGoodCache`, which validates it.

Snapshots are published from one thread, only once every type has been listed (so ztunnels never see
pods without their policies), and debounced so a burst of events gives one snapshot.
Optionally (`write_status=True`) the verdict on each Istio/Ambit object is written to its
`status.conditions` (type `Accepted`), so `kubectl get -o yaml` shows why an object was rejected:
validation's, and the translation's for a valid object that still cannot be applied as it is (a
ServiceEntry address another Service holds), which the controller passes in after each
translation (`set_translation_errors`), and a ServiceEntry's auto-allocated `status.addresses`
(`set_entry_addresses`, controller.translate.autoalloc), which every replica reads back. A Gateway API route whose newest version validation refused
gets `status.parents` saying so (`ingress_status.refused_route_status`), and a waypoint or ingress
Gateway `Accepted`/`Programmed=False`; a valid one's status is the waypoint reconciler's, which
skips the objects `refused()` names. Status is written on one thread, conditional on the
resourceVersion it was computed from (409: read again, write what is needed now), leadership
checked before each write, failures retried and rewrites of a contested object paced
(`statuspace.StatusPace`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from ambit.kube.client import make_api_client
from ambit.kube.reflector import DELETED, LISTED, Change, Reflector, ReflectorState
from ambit.kube.resource import Resource
from controller.kinds import KINDS
from controller.sources import OnSnapshot
from controller.sources.cache import CacheKey, LastGoodCache, cache_key
from controller.sources.statuspace import StatusPace
from controller.translate.autoalloc import status_differs
from controller.translate.ingress import ALL_ROUTE_KINDS, GATEWAY_GROUP, is_ingress
from controller.translate.parents import is_gateway_parent, is_service_parent
from controller.validation import FieldError, object_ref, reasons
from controller.waypoints.class_defaults import DEFAULTS_FOR_CLASS_LABEL
from controller.waypoints.gateways import STATUS_GROUP_SUFFIXES, is_waypoint
from controller.waypoints.ingress_status import refused_route_status, untimed
from controller.waypoints.params import MAX_OVERLAY_BYTES, OVERLAY_KEYS
from controller.waypoints.policy_status import POLICY_KINDS, refused_policy_status, untimed_ancestors

log = logging.getLogger(__name__)

Obj = dict[str, Any]
_BUILTIN_GROUPS = ("", "discovery.k8s.io")

TypeState = ReflectorState          # what one type's reflector knows and has done

__all__ = ["KubeSource", "TypeState", "WatchedType", "accepted_condition", "default_types", "make_api_client"]


@dataclass(frozen=True)
class WatchedType(Resource):
    """A resource type the controller watches (group, versions in preference order, plural, kind,
    namespaced), with the paths its status writes need."""

    @property
    def optional(self) -> bool:
        return self.group not in _BUILTIN_GROUPS

    def path(self, version: str, namespace: str | None = None, name: str | None = None,
             sub: str | None = None) -> str:
        base = "/api/v1" if not self.group else f"/apis/{self.group}/{version}"
        parts = [base] + ([f"namespaces/{namespace}"] if namespace and self.namespaced else []) + [self.plural]
        parts += [p for p in (name, sub) if p]
        return "/".join(parts)

    def owns(self, key: CacheKey) -> bool:
        return key[0] == self.group and key[1] == self.kind


# Secrets are watched for certificates: an ingress listener's (certificateRefs, credentialName, of
# type kubernetes.io/tls) and a DestinationRule's credentialName for TLS origination, which Istio
# reads from Secrets of any type (`kubectl create secret generic ... --from-file=ca.crt`, and a CA
# alone cannot be a kubernetes.io/tls Secret). As istiod does (pilot/pkg/credentials/kube/
# secrets.go), the API server leaves out the two large kinds no certificate is in: Helm releases
# and service account tokens. Each Secret is cut down as it arrives to its type, name and the keys
# a certificate is read from (`SECRET_KEYS`); the rest of an application's Secret is never kept,
# and a change to it publishes nothing (docs/security.md).
FIELD_SELECTORS = {"Secret": "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token"}
SECRET_KEYS = ("tls.crt", "tls.key", "ca.crt", "ca.crl", "cert", "key", "cacert", "crl")

# ConfigMaps are watched for the CA bundles an ingress Gateway's client certificate validation
# names (spec.tls.frontend caCertificateRefs, key `ca.crt`), and a BackendTLSPolicy's
# (validation.caCertificateRefs), as istiod does. A reference may name
# any ConfigMap, so no selector can narrow the watch; instead each one is cut down to its name and
# `ca.crt` as it arrives (`Resource.project`): the rest of its data (up to 1 MiB), its annotations
# and its resourceVersion are never kept, and a change to them publishes nothing (docs/operations.md).
#
# A Gateway's parametersRef ConfigMap (controller/waypoints/params.py) is read too: its overlay keys
# are kept, each only up to MAX_OVERLAY_BYTES (16 KiB; keys named `service` or `deployment` are
# common in applications' ConfigMaps, so five such keys of every ConfigMap are at most 80 KiB
# each); a larger value is dropped and its size kept, with the names of up to 16 other keys, so a
# Gateway can say what is wrong with its parameters (`omittedData`, ambit.kube.resource).
#
# So is a Gateway class's defaults ConfigMap (controller/waypoints/class_defaults.py): the same
# overlay keys, and of its labels only `gateway.istio.io/defaults-for-class` (with the
# creationTimestamp, which picks the oldest of several); the controller reads it in its root
# namespace, which the cluster-wide watch covers.
DATA_KEYS = {"ConfigMap": ("ca.crt",), "Secret": SECRET_KEYS}
BOUNDED_KEYS = {"ConfigMap": (OVERLAY_KEYS, MAX_OVERLAY_BYTES)}
KEPT_LABELS = {"ConfigMap": (DEFAULTS_FOR_CLASS_LABEL,)}

# Kinds read for ingress alone: an install that does not grant them (a cluster admin who removed
# the rule, a controller upgraded before its ClusterRole) must not hold back every other snapshot.
# Forbidden at the first list, they count as empty (the listeners that need them report it) and
# the failure shows in `ambit status` until a list succeeds.
FORBIDDEN_EMPTY = ("Secret", "ConfigMap")

# Consecutive failed requests of one kind before it is reported (errors(), `ambit status`): a dropped
# watch that reconnects at once is routine, three failures in a row (over a second) are not.
FAILING_AFTER = 3

# Whether a kind that answers 404 is really not installed is read from its CustomResourceDefinition.
CRD_RBAC = {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get"]}


def default_types() -> list[WatchedType]:
    """Every group/kind in the registry: core kinds, Istio's groups, Ambit's groups, Gateway API."""
    return [WatchedType(group, versions, k.plural, k.kind, k.namespaced, FIELD_SELECTORS.get(k.kind, ""),
                        data_keys=DATA_KEYS.get(k.kind), bounded_keys=BOUNDED_KEYS.get(k.kind, ((), 0))[0],
                        key_bound=BOUNDED_KEYS.get(k.kind, ((), 0))[1], kept_labels=KEPT_LABELS.get(k.kind, ()))
            for k in KINDS for group, versions in k.groups]


class KubeSource:
    def __init__(self, api_client: kclient.ApiClient, types: list[WatchedType] | None = None, *,
                 watch_timeout: int = 300, backoff: tuple[float, float] = (0.2, 10.0),
                 missing_retry: float = 30.0, debounce: float = 0.05, write_status: bool = False,
                 page_size: int = 500, leader: Callable[[], bool] | None = None):
        self.api = api_client
        self.types = types if types is not None else default_types()
        self.debounce = debounce
        self.write_status = write_status
        self.leader = leader            # with leader election: write status only while leading
        self.cache = LastGoodCache()
        self.reflectors: dict[WatchedType, Reflector] = {
            t: Reflector(api_client, t, lambda change, t=t: self._apply(t, change), watch_timeout=watch_timeout,
                         backoff=backoff, page_size=page_size, missing_retry=missing_retry, logger=log,
                         confirm_missing=(lambda t=t: self._crd_absent(t)) if t.optional else None,
                         forbidden_empty=t.kind in FORBIDDEN_EMPTY and not t.group)
            for t in self.types}
        self.state: dict[WatchedType, TypeState] = {t: rf.state for t, rf in self.reflectors.items()}
        self._cond = threading.Condition()
        self._status_cv = threading.Condition()
        self.status_pace: StatusPace[tuple[WatchedType, CacheKey], tuple[WatchedType, Obj]] = StatusPace()
        self.clock: Callable[[], float] = time.monotonic
        self._not_applied: dict[str, list[FieldError]] = {}    # ref -> the translation's errors for it
        # ServiceEntry (ns, name) -> the status.addresses the last translation wants; an entry it did
        # not see (none yet, or created since) is left alone: written before the first translation,
        # "none wanted" would wipe the addresses every replica is about to read back
        self._entry_addresses: dict[tuple[str, str], list[Obj]] = {}
        self._crd_unreadable_logged = False

    # -- the Source interface ---------------------------------------------------------------------
    def run(self, on_snapshot: OnSnapshot, stop: threading.Event) -> None:
        threads = [threading.Thread(target=rf.run, args=(stop,), daemon=True,
                                    name=f"kube-{t.group or 'core'}-{t.plural}") for t, rf in self.reflectors.items()]
        if self.write_status:
            threads.append(threading.Thread(target=self._status_writer, args=(stop,), daemon=True,
                                            name="kube-status"))
        pub = threading.Thread(target=self._publish, args=(on_snapshot, stop), daemon=True, name="kube-publish")
        for th in threads + [pub]:
            th.start()
        stop.wait()
        with self._cond:
            self._cond.notify_all()
        for rf in self.reflectors.values():
            rf.abort()
        with self._status_cv:
            self._status_cv.notify_all()
        for th in threads + [pub]:
            th.join(timeout=5)

    def errors(self) -> list[FieldError]:
        """Validation's errors, and the kinds the API server has been failing to serve: `ambit
        status` shows that the config in force is the last one listed, not the cluster's now."""
        return self.source_errors() + self.cache.errors()

    def source_errors(self) -> list[FieldError]:
        return [FieldError(f"kubernetes-api/{t.name}", "", f"{st.failures} list/watch requests in a row failed "
                           f"(last: {st.last_error}); the objects last listed stay in force")
                for t, st in self.state.items() if st.failures >= FAILING_AFTER]

    def synced(self) -> bool:
        return all(s.synced for s in self.state.values())

    def serves(self, group: str, kind: str) -> bool:
        """Whether the API server serves `kind` of `group` (its CRD is installed) and it has been
        listed: only then does an object of it missing from a snapshot really not exist."""
        return any(t.group == group and t.kind == kind and st.synced and not st.missing
                   for t, st in self.state.items())

    # -- publishing -------------------------------------------------------------------------------
    def _apply(self, t: WatchedType, change: Change) -> None:
        """A reflector's change, into the last-good cache (which validates it)."""
        if change.type == LISTED:
            self.cache.replace(change.objects, owns=t.owns)
            for o in change.objects:
                self._maybe_status(t, o)
        elif change.type == DELETED:
            self.cache.delete(cache_key(change.objects[0]))
        else:
            obj = change.objects[0]
            self.cache.upsert(obj)
            self._maybe_status(t, obj)
        with self._cond:
            self._cond.notify_all()

    def _publish(self, on_snapshot: OnSnapshot, stop: threading.Event) -> None:
        published = -1
        while not stop.is_set():
            with self._cond:
                while not stop.is_set() and (not self.synced() or self.cache.version == published):
                    self._cond.wait(1.0)
            if stop.is_set():
                return
            stop.wait(self.debounce)                  # let a burst of events settle
            published = self.cache.version
            try:
                on_snapshot(self.cache.objects())
            except Exception:                         # a consumer bug must not stop the source
                log.exception("snapshot consumer failed")

    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        req = self.api.param_serialize(method=method, resource_path=path, header_params=dict(headers or {}),
                                       body=body, auth_settings=["BearerToken"])
        return self.api.call_api(*req, _request_timeout=(10.0, 30.0))

    def _crd_absent(self, t: WatchedType) -> bool:
        """Is `t` really not installed? Its CustomResourceDefinition is read from etcd by the API
        server's own handler, which answers while the server is still loading CRDs (when their
        collections answer 404). No CRD, or one that serves none of our versions: absent. Without
        RBAC to read CRDs (an install from before this rule) a 404 is taken at its word, as before."""
        resp = self._request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{t.plural}.{t.group}")
        body = resp.read()
        if resp.status == 404:
            return True
        if resp.status in (401, 403):
            if not self._crd_unreadable_logged:
                self._crd_unreadable_logged = True
                log.warning("cannot read CustomResourceDefinitions (HTTP %s; RBAC: get customresourcedefinitions): a "
                            "kind that answers 404 is taken as not installed", resp.status)
            return True
        if resp.status >= 300:
            raise ValueError(f"reading its CustomResourceDefinition: HTTP {resp.status}")
        served = {v.get("name") for v in (json.loads(body).get("spec") or {}).get("versions") or [] if v.get("served")}
        return not served & set(t.versions)

    # -- status conditions ------------------------------------------------------------------------
    def resync_status(self) -> None:
        """Check every object's status condition again (a replica that just became the leader
        writes what the previous one left undone)."""
        for t, rf in self.reflectors.items():
            for obj in rf.objects():
                self._maybe_status(t, obj)

    def set_translation_errors(self, errors: list[FieldError]) -> None:
        """The translation's errors of the snapshot just translated: valid objects it could not
        apply. Their `Accepted` condition says so, and goes back to True once the error is gone."""
        fresh: dict[str, list[FieldError]] = {}
        for e in errors:
            fresh.setdefault(e.ref, []).append(e)
        old, self._not_applied = self._not_applied, fresh
        changed = {ref for ref in old.keys() | fresh.keys() if old.get(ref) != fresh.get(ref)}
        if not changed or not self.write_status:
            return
        for t, rf in self.reflectors.items():
            if t.group.endswith(STATUS_GROUP_SUFFIXES):
                for obj in rf.objects():
                    if object_ref(obj) in changed:
                        self._maybe_status(t, obj)

    def set_entry_addresses(self, wanted: dict[tuple[str, str], list[Obj]]) -> None:
        """The `status.addresses` each ServiceEntry should have (the translation's auto-allocation,
        controller.translate.autoalloc): the leader writes those that differ, so every replica and
        every restart reads the same addresses back from status."""
        old, self._entry_addresses = self._entry_addresses, dict(wanted)
        changed = {k for k in old.keys() | wanted.keys() if old.get(k) != wanted.get(k)}
        if not changed or not self.write_status:
            return
        for t, rf in self.reflectors.items():
            if t.kind == "ServiceEntry":
                for obj in rf.objects():
                    md = obj.get("metadata") or {}
                    if (md.get("namespace") or "default", md.get("name", "")) in changed:
                        self._maybe_status(t, obj)

    def refused(self) -> set[tuple[str, str, str]]:
        """(kind, namespace, name) of the Gateway API objects (Gateways, routes) whose newest version
        validation refused: their status is written here, and the waypoint reconciler, which sees
        only the version in force, leaves them alone."""
        return {(k[1], k[2], k[3]) for k in self.cache.rejected() if k[0] == GATEWAY_GROUP}

    def _maybe_status(self, t: WatchedType, obj: Obj) -> None:
        """Queue a status write for `obj` if it is ours to write and not already right."""
        if not self.write_status or (self.leader is not None and not self.leader()):
            return
        if self._desired_status(t, obj) is not None:
            with self._status_cv:
                self.status_pace.put((t, cache_key(obj)), (t, obj))
                self._status_cv.notify()

    def _desired_status(self, t: WatchedType, obj: Obj) -> Obj | None:
        """The status to write for `obj` as it is now (None: it is right already, or not ours)."""
        if t.group == GATEWAY_GROUP and t.kind == "Gateway":
            # A waypoint or ingress Gateway's status is the waypoint reconciler's (controller.waypoints);
            # only a version validation rejected is written here, since the reconciler never sees it.
            # Other classes are other controllers'.
            if is_waypoint(obj) or is_ingress(obj):
                errors = self.cache.rejected().get(cache_key(obj), [])
                if errors and _condition_differs(obj, accepted_condition(obj, errors)):
                    return _conditions_status(obj, accepted_condition(obj, errors))
            return None
        if t.group == GATEWAY_GROUP and t.kind in ALL_ROUTE_KINDS:
            return self._route_status(obj)
        if t.group == GATEWAY_GROUP and t.kind in POLICY_KINDS:
            return self._refused_policy_status(obj)
        if not t.group.endswith(STATUS_GROUP_SUFFIXES):
            return None
        errors = self.cache.rejected().get(cache_key(obj), [])
        not_applied = [] if errors else self._not_applied.get(object_ref(obj), [])
        cond = accepted_condition(obj, errors, not_applied)
        out = _conditions_status(obj, cond) if _condition_differs(obj, cond) else {}
        if t.kind == "ServiceEntry" and not errors:    # a rejected version's addresses wait for a valid one
            md = obj.get("metadata") or {}
            wanted = self._entry_addresses.get((md.get("namespace") or "default", md.get("name", "")))
            if wanted is not None and status_differs(obj, wanted):
                out["addresses"] = wanted
        return out or None

    def _route_status(self, obj: Obj) -> Obj | None:
        """A refused route's `status.parents` (its parents that are ours: Services, and Gateways of
        an ambit class); a valid one's is the reconciler's."""
        key = cache_key(obj)
        errors = self.cache.rejected().get(key, [])
        if not errors:
            return None
        good = {cache_key(o): o for o in self.cache.objects()}
        gateways = {(k[2], k[3]): o for k, o in good.items() if k[0] == GATEWAY_GROUP and k[1] == "Gateway"}

        def ours(p: Obj, ns: str) -> bool:
            if is_service_parent(p):
                return True
            gw = gateways.get((p.get("namespace") or ns, p["name"])) if is_gateway_parent(p) else None
            return gw is not None and (is_waypoint(gw) or is_ingress(gw))
        want = refused_route_status(obj, errors, ours, good.get(key))
        if want is None:    # another controller's route: its refusal is in `ambit status`, not on it
            log.debug("%s refused (%s); none of its parents is ambit's, so no status is written",
                      object_ref(obj), reasons(errors))
            return None
        return want if untimed(want) != untimed(obj.get("status")) else None

    def _refused_policy_status(self, obj: Obj) -> Obj | None:
        """A refused BackendTLSPolicy's `status.ancestors` (Accepted=False Invalid on each target);
        a valid one's is the reconciler's."""
        key = cache_key(obj)
        errors = self.cache.rejected().get(key, [])
        if not errors:
            return None
        in_force = next((o for o in self.cache.objects() if cache_key(o) == key), None)
        want = refused_policy_status(obj, errors, in_force)
        return want if want is not None and untimed_ancestors(want) != untimed_ancestors(obj.get("status")) else None

    def _status_writer(self, stop: threading.Event) -> None:
        """Write queued statuses one at a time, paced by `status_pace` (retries, rewrites)."""
        while not stop.is_set():
            with self._status_cv:
                now = self.clock()
                nxt = self.status_pace.take(now)
                if nxt is None:
                    due = self.status_pace.due()
                    self._status_cv.wait(1.0 if due is None else min(1.0, max(0.0, due - now)))
                    continue
            key, item = nxt
            try:
                ok = self._write_status(*item)
            except Exception:  # noqa: BLE001 - one object must not end the writer (every later status lost)
                log.exception("status of %s: writing it failed", object_ref(item[1]))
                ok = True       # not retried: the same object would fail the same way; its next change retries
            with self._status_cv:
                contested = self.status_pace.done(key, item, ok, self.clock())
            if contested:
                log.warning("status of %s is set back each time it is written (another writer disagrees: a second "
                            "controller without leader election, or another version?); rewriting it only after "
                            "a backoff", object_ref(item[1]))

    def _write_status(self, t: WatchedType, obj: Obj) -> bool:
        """PATCH `obj`'s status, conditional on the resourceVersion it was computed from; on 409
        Conflict read the object again and write what it needs now. False: retry later."""
        for attempt in (1, 2):
            if self.leader is not None and not self.leader():
                return True         # no longer ours to write: a replica that stepped down stops at once
            want = self._desired_status(t, obj)
            if want is None:
                return True
            md = obj.get("metadata") or {}
            path = t.path(self.state[t].version, md.get("namespace"), md.get("name"))
            patch: Obj = {"status": want}
            if md.get("resourceVersion"):
                patch["metadata"] = {"resourceVersion": md["resourceVersion"]}
            try:
                resp = self._request("PATCH", path + "/status", body=patch,
                                     headers={"Content-Type": "application/merge-patch+json"})
                body = resp.read()
                if resp.status == 409 and attempt == 1:
                    fresh = self._request("GET", path)
                    data = fresh.read()
                    if fresh.status == 200:
                        obj = json.loads(data)
                        continue
                    resp = fresh
            except (urllib3.exceptions.HTTPError, ApiException, OSError, ValueError) as e:
                log.warning("status of %s: %s; will retry", object_ref(obj), e)
                return False
            if resp.status == 404:
                return True         # deleted meanwhile
            if resp.status >= 300:
                log.warning("status of %s: HTTP %s %s; will retry", object_ref(obj), resp.status, body[:200])
                return False
            return True
        return False


def _conditions_status(obj: Obj, cond: Obj) -> Obj:
    """The object's status with `cond` in place of its `Accepted` condition (others' kept). A
    rejected Gateway is not `Programmed` either (Gateway API)."""
    others = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") != "Accepted"]
    if obj.get("kind") == "Gateway" and str(obj.get("apiVersion", "")).startswith(GATEWAY_GROUP + "/"):
        others = [c for c in others if c.get("type") != "Programmed"] + [
            {**cond, "type": "Programmed", "message": "the Gateway is not accepted"}]
    return {"conditions": others + [cond]}


def accepted_condition(obj: Obj, errors: Sequence[FieldError], not_applied: Sequence[FieldError] = ()) -> Obj:
    """`errors`: validation's (the last valid version stays in force); `not_applied`: the
    translation's, for a valid version that is not applied as it is."""
    md = obj.get("metadata") or {}
    if errors:
        status, reason = "False", "Invalid"
        msg = reasons(errors) + " (the last valid version, if any, stays in force)"
    elif not_applied:
        status, reason, msg = "False", "TranslationError", reasons(not_applied)
    else:
        status, reason, msg = "True", "Accepted", "accepted by ambit"
    return {"type": "Accepted", "status": status, "reason": reason, "message": msg[:32768],
            "observedGeneration": md.get("generation", 0),
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _condition_differs(obj: Obj, want: Obj) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Accepted":
            return any(c.get(k) != want[k] for k in ("status", "reason", "message", "observedGeneration"))
    return True
