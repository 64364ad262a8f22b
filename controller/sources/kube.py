"""The Kubernetes source: list+watch of cluster state and mesh configuration.

One thread per resource type does the classic reflector loop with the official client's ApiClient
(which brings auth, TLS and kubeconfig/in-cluster config):

  list (paged) -> replace that type's objects in the cache -> watch from the list's resourceVersion
  -> apply events, tracking the newest resourceVersion from events and BOOKMARKs -> when the server
  ends the watch (timeoutSeconds), watch again from that resourceVersion.

- 410 Gone (the resourceVersion was compacted away) -> relist, replacing the cache for that type, so
  objects deleted while we could not see events disappear too.
- A dropped connection -> reconnect with exponential backoff and watch from the last
  resourceVersion seen, so no event is lost and none is applied twice.
- A custom-resource group that is not installed (404) is skipped quietly and retried later; both
  Istio's groups and Ambit's are watched, whichever exist.

Snapshots are published from one thread, only once every type has been listed (so ztunnels never see
pods without their policies), and debounced so a burst of events gives one snapshot.
Optionally (`write_status=True`) the verdict of validation is written to each Istio/Ambit object's
`status.conditions` (type `Accepted`), so `kubectl get -o yaml` shows why an object was rejected.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from controller.kinds import KINDS
from controller.sources import OnSnapshot
from controller.sources.cache import CacheKey, LastGoodCache, cache_key
from controller.validation import FieldError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
_BUILTIN_GROUPS = ("", "discovery.k8s.io")
_STATUS_GROUP_SUFFIXES = (".istio.io", ".ambit.io")   # kinds whose status we may write (free-form)


@dataclass(frozen=True)
class WatchedType:
    group: str
    versions: tuple[str, ...]       # preference order; the first one the server serves is used
    plural: str
    kind: str
    namespaced: bool

    @property
    def optional(self) -> bool:
        return self.group not in _BUILTIN_GROUPS

    def path(self, version: str, namespace: str | None = None, name: str | None = None,
             sub: str | None = None) -> str:
        base = "/api/v1" if not self.group else f"/apis/{self.group}/{version}"
        parts = [base] + ([f"namespaces/{namespace}"] if namespace and self.namespaced else []) + [self.plural]
        parts += [p for p in (name, sub) if p]
        return "/".join(parts)

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def owns(self, key: CacheKey) -> bool:
        return key[0] == self.group and key[1] == self.kind


def default_types() -> list[WatchedType]:
    """Every group/kind in the registry: core kinds, Istio's groups, Ambit's groups, Gateway API."""
    return [WatchedType(group, versions, k.plural, k.kind, k.namespaced) for k in KINDS for group, versions in k.groups]


@dataclass
class TypeState:
    """What one reflector knows and has done; exposed for status pages and tests."""

    version: str = ""
    resource_version: str = ""
    synced: bool = False
    missing: bool = False
    lists: int = 0
    relists: int = 0           # lists after a 410 Gone
    watches: int = 0
    reconnects: int = 0        # watches after an error (dropped connection, server error)
    events: int = 0
    bookmarks: int = 0
    last_error: str = ""


class _Gone(Exception):
    pass


class _Missing(Exception):
    pass


class _ServerError(Exception):
    pass


@dataclass
class Backoff:
    initial: float = 0.2
    maximum: float = 10.0
    _current: float = field(default=0.0, init=False)

    def next(self) -> float:
        self._current = self.initial if not self._current else min(self._current * 2, self.maximum)
        return self._current * (0.8 + 0.4 * random.random())    # jitter: reconnect storms spread out

    def reset(self) -> None:
        self._current = 0.0


def make_api_client(host: str | None = None, kubeconfig: str | None = None) -> kclient.ApiClient:
    """An ApiClient for `host` (plain, for tests and `kubectl proxy`), else in-cluster, else kubeconfig."""
    cfg = kclient.Configuration()
    if host:
        cfg.host = host
    else:
        try:
            kconfig.load_incluster_config(client_configuration=cfg)
        except kconfig.ConfigException:
            kconfig.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return kclient.ApiClient(cfg)


class KubeSource:
    def __init__(self, api_client: kclient.ApiClient, types: list[WatchedType] | None = None, *,
                 watch_timeout: int = 300, backoff: tuple[float, float] = (0.2, 10.0),
                 missing_retry: float = 30.0, debounce: float = 0.05, write_status: bool = False,
                 page_size: int = 500):
        self.api = api_client
        self.types = types if types is not None else default_types()
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.missing_retry = missing_retry
        self.debounce = debounce
        self.write_status = write_status
        self.page_size = page_size
        self.cache = LastGoodCache()
        self.state: dict[WatchedType, TypeState] = {t: TypeState() for t in self.types}
        self._cond = threading.Condition()
        self._active: set[Any] = set()
        self._status_q: queue.Queue[tuple[WatchedType, Obj, list[FieldError]] | None] = queue.Queue()

    # -- the Source interface ---------------------------------------------------------------------
    def run(self, on_snapshot: OnSnapshot, stop: threading.Event) -> None:
        threads = [threading.Thread(target=self._reflect, args=(t, stop), daemon=True,
                                    name=f"kube-{t.group or 'core'}-{t.plural}") for t in self.types]
        if self.write_status:
            threads.append(threading.Thread(target=self._status_writer, args=(stop,), daemon=True,
                                            name="kube-status"))
        pub = threading.Thread(target=self._publish, args=(on_snapshot, stop), daemon=True, name="kube-publish")
        for th in threads + [pub]:
            th.start()
        stop.wait()
        with self._cond:
            self._cond.notify_all()
        self._abort_streams()
        self._status_q.put(None)
        for th in threads + [pub]:
            th.join(timeout=5)

    def errors(self) -> list[FieldError]:
        return self.cache.errors()

    def synced(self) -> bool:
        return all(s.synced for s in self.state.values())

    # -- publishing -------------------------------------------------------------------------------
    def _changed(self) -> None:
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

    # -- the reflector loop -----------------------------------------------------------------------
    def _reflect(self, t: WatchedType, stop: threading.Event) -> None:
        st = self.state[t]
        backoff = Backoff(*self.backoff)
        relist = True
        while not stop.is_set():
            try:
                if relist:
                    self._list(t, st)
                    relist = False
                    backoff.reset()
                self._watch(t, st, stop)
                backoff.reset()              # the server ended the watch cleanly: re-watch now
            except _Gone:
                st.relists += 1
                relist = True
                log.info("%s: resourceVersion %s expired, relisting", t.plural, st.resource_version)
            except _Missing:
                self._mark_missing(t, st)
                relist = True
                stop.wait(self.missing_retry)
            except (urllib3.exceptions.HTTPError, ApiException, OSError, ValueError, _ServerError) as e:
                if stop.is_set():
                    return
                st.last_error = f"{type(e).__name__}: {e}"
                st.reconnects += 1
                log.debug("%s: %s; reconnecting", t.plural, st.last_error)
                stop.wait(backoff.next())

    def _request(self, method: str, path: str, query: list[tuple[str, Any]] | None = None,
                 body: Any = None, headers: dict[str, str] | None = None, read_timeout: float = 30.0) -> Any:
        req = self.api.param_serialize(method=method, resource_path=path, query_params=query or [],
                                       header_params=dict(headers or {}), body=body, auth_settings=["BearerToken"])
        return self.api.call_api(*req, _request_timeout=(10.0, read_timeout))

    def _list(self, t: WatchedType, st: TypeState) -> None:
        versions = [st.version] if st.version else list(t.versions)
        for version in versions:
            items: list[Obj] = []
            cont = ""
            while True:
                q: list[tuple[str, Any]] = [("limit", self.page_size)] + ([("continue", cont)] if cont else [])
                resp = self._request("GET", t.path(version), q)
                body = resp.read()
                if resp.status == 404:
                    break
                if resp.status == 410:      # the continue token expired mid-list: start over
                    items, cont = [], ""
                    continue
                if resp.status != 200:
                    raise _ServerError(f"list {t.path(version)}: HTTP {resp.status}: {body[:200]!r}")
                data = json.loads(body)
                items += [self._typed(t, version, o) for o in data.get("items") or []]
                cont = (data.get("metadata") or {}).get("continue") or ""
                if not cont:
                    st.version, st.missing = version, False
                    st.resource_version = (data.get("metadata") or {}).get("resourceVersion", "")
                    st.lists += 1
                    self.cache.replace(items, owns=t.owns)
                    for o in items:
                        self._maybe_status(t, o)
                    st.synced = True
                    self._changed()
                    return
        raise _Missing()

    def _mark_missing(self, t: WatchedType, st: TypeState) -> None:
        if not st.missing:
            log.info("%s.%s is not served; will retry", t.plural, t.group)
        st.missing, st.version = True, ""
        self.cache.replace([], owns=t.owns)
        st.synced = True
        self._changed()

    def _watch(self, t: WatchedType, st: TypeState, stop: threading.Event) -> None:
        q = [("watch", "1"), ("resourceVersion", st.resource_version), ("allowWatchBookmarks", "true"),
             ("timeoutSeconds", self.watch_timeout)]
        resp = self._request("GET", t.path(st.version), q, read_timeout=self.watch_timeout + 30)
        if resp.status == 410:
            resp.read()
            raise _Gone()
        if resp.status == 404:
            resp.read()
            raise _Missing()
        if resp.status != 200:
            raise _ServerError(f"watch {t.path(st.version)}: HTTP {resp.status}: {resp.read()[:200]!r}")
        st.watches += 1
        raw = resp.response
        with self._cond:
            self._active.add(raw)
        try:
            if stop.is_set():
                return
            for line in iter_resp_lines(raw):
                if not line.strip():
                    continue
                ev = json.loads(line)
                self._event(t, st, ev.get("type", ""), ev.get("object") or {})
        finally:
            with self._cond:
                self._active.discard(raw)
            raw.release_conn()

    def _event(self, t: WatchedType, st: TypeState, etype: str, obj: Obj) -> None:
        if etype == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise _ServerError(f"watch error: {obj.get('message') or obj}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if etype == "BOOKMARK":
            st.bookmarks += 1
        elif etype in ("ADDED", "MODIFIED"):
            obj = self._typed(t, st.version, obj)
            self.cache.upsert(obj)
            self._maybe_status(t, obj)
            st.events += 1
        elif etype == "DELETED":
            self.cache.delete(cache_key(self._typed(t, st.version, obj)))
            st.events += 1
        else:
            raise _ServerError(f"unknown watch event type {etype!r}")
        if rv:
            st.resource_version = rv
        if etype != "BOOKMARK":
            self._changed()

    @staticmethod
    def _typed(t: WatchedType, version: str, obj: Obj) -> Obj:
        """List items of built-in kinds come without apiVersion/kind; managedFields are noise."""
        obj.setdefault("apiVersion", t.api_version(version))
        obj.setdefault("kind", t.kind)
        (obj.get("metadata") or {}).pop("managedFields", None)
        return obj

    def _abort_streams(self) -> None:
        with self._cond:
            active = list(self._active)
        for raw in active:
            try:
                raw.shutdown()      # unblocks a thread waiting in a read
            except Exception:       # noqa: BLE001 - best effort during shutdown
                pass

    # -- status conditions ------------------------------------------------------------------------
    def _maybe_status(self, t: WatchedType, obj: Obj) -> None:
        if not self.write_status or not t.group.endswith(_STATUS_GROUP_SUFFIXES):
            return
        errors = self.cache.rejected().get(cache_key(obj), [])
        if _condition_differs(obj, accepted_condition(obj, errors)):
            self._status_q.put((t, obj, errors))

    def _status_writer(self, stop: threading.Event) -> None:
        while not stop.is_set():
            item = self._status_q.get()
            if item is None:
                return
            t, obj, errors = item
            md = obj.get("metadata") or {}
            cond = accepted_condition(obj, errors)
            others = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") != "Accepted"]
            patch = {"status": {"conditions": others + [cond]}}
            try:
                resp = self._request("PATCH", t.path(self.state[t].version, md.get("namespace"), md.get("name"), "status"),
                                     body=patch, headers={"Content-Type": "application/merge-patch+json"})
                resp.read()
                if resp.status >= 300:
                    log.warning("status of %s/%s: HTTP %s", t.kind, md.get("name"), resp.status)
            except (urllib3.exceptions.HTTPError, ApiException, OSError) as e:
                log.warning("status of %s/%s: %s", t.kind, md.get("name"), e)


def accepted_condition(obj: Obj, errors: list[FieldError]) -> Obj:
    md = obj.get("metadata") or {}
    if errors:
        msg = "; ".join(f"{e.path}: {e.reason}" if e.path else e.reason for e in errors)
        status, reason = "False", "Invalid"
        msg += " (the last valid version, if any, stays in force)"
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
