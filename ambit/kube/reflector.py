"""One reflector: list+watch of one collection into a cache, with the consumer told of every change.

The classic loop, through the official client's listers (auth, TLS, kubeconfig come with it):

  list (paged) -> replace the cache -> watch from the list's resourceVersion -> apply events,
  tracking the newest resourceVersion from events and BOOKMARKs -> when the server ends the watch
  (timeoutSeconds), watch again from that resourceVersion.

- 410 Gone (the resourceVersion was compacted away) -> relist, replacing the whole cache, so objects
  deleted while we could not see events disappear too. So does "Too large resource version" (504,
  cause ResourceVersionTooLarge): the server is behind the resourceVersion we hold, as after an etcd
  restore from a backup; watching on from it would wait for ever and miss every write made since.
- Any other failure (dropped connection, server error) -> reconnect with jittered exponential
  backoff and watch from the last resourceVersion seen, so no event is lost and none applied twice.
- A paged list whose continue token expires (410 on a later page: the server compacted past the
  list's resourceVersion) starts over from the first page after the backoff, as a failure: one
  expiring on every page (a server compacting faster than a page is fetched) would otherwise be a
  loop of first pages as fast as the server answers. client-go instead falls back to one unpaged
  list; starting over keeps the pages, and the backoff's first delay is short.
- The backoff is reset only by a watch that made progress (an event or bookmark, or `min_watch`
  seconds open). A watch the server ends at once with nothing in it, or a relist whose watch is
  refused as expired again, waits the backoff before the next request, as client-go's reflector
  does: a server (or a proxy in front of it) that answers that way is never hammered in a loop.
- A collection the server does not serve (404: a CRD group not installed) is tried at each of the
  resource's versions; when `missing_retry` is set it then counts as synced and empty, and is
  retried every `missing_retry` seconds (when not set, it is an error like any other). An API
  server that is starting answers 404 for the CRDs it has not loaded yet, and taking that for
  "none" would be a config without the group's AuthorizationPolicies (fail open). So a first 404
  counts as empty only if `confirm_missing` agrees (the controller asks whether the CRD exists),
  and a collection that *was* listed keeps its objects on a 404 until it is listed again (a CRD's
  objects are deleted, as watch events, before the CRD goes).

Events are parsed from the raw stream, not deserialized into the client's models: those validate
strictly and would turn a field the model does not know into a lost event.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from ambit.backoff import Attempts, Backoff
from ambit.kube.resource import Obj, Resource

LISTED = "LISTED"           # Change.type after a (re)list: `objects` is the whole collection now
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"

Lister = Callable[..., Any]     # a typed API's list_* method, or CustomObjectsApi's, bound to a version

# The longest watch line (one event) read before the watch is given up as broken. The API server
# stores objects of at most 1.5 MiB (etcd's request limit) and sends each event as one JSON line;
# 16 MiB leaves room for JSON escaping and base64. Without a bound, a line that never ends (a
# broken or hostile server, a proxy in front of it) grew in memory for as long as it streamed.
MAX_EVENT_BYTES = 16 << 20


def watch_lines(resp: Any, limit: int = MAX_EVENT_BYTES, what: str = "watch") -> Iterator[str]:
    """The lines of a watch response as they arrive (kubernetes.watch's iter_resp_lines, bounded):
    a ValueError naming `what` when `limit` bytes pass without a newline. Invalid UTF-8 is
    replaced, as there."""
    buf = bytearray()
    start = 0                       # where the unread part of `buf` begins
    for segment in resp.stream(amt=None, decode_content=False):
        buf += segment if isinstance(segment, bytes) else segment.encode()
        while (nl := buf.find(b"\n", start)) != -1:
            yield buf[start:nl].decode("utf-8", errors="replace")
            start = nl + 1
        if start:
            del buf[:start]
            start = 0
        if len(buf) > limit:
            raise ValueError(f"{what}: a watch event longer than {limit} bytes (no newline in {len(buf)})")


@dataclass(frozen=True)
class Change:
    """What changed in a reflector's cache: LISTED (every object; empty when the collection is not
    served), or ADDED / MODIFIED / DELETED of one object (DELETED also when it stopped matching the
    selectors)."""

    type: str
    objects: tuple[Obj, ...]


@dataclass
class ReflectorState:
    """What one reflector holds and has done; read by status pages and tests."""

    objects: dict[str, Obj] = field(default_factory=dict)      # "namespace/name" -> object
    version: str = ""           # the API version in use (the first of the resource's the server serves)
    resource_version: str = ""
    synced: bool = False        # listed at least once (or known not to be served)
    missing: bool = False       # the server does not serve the collection (404)
    lists: int = 0
    relists: int = 0            # lists after a 410 Gone
    watches: int = 0
    reconnects: int = 0         # attempts after an error (dropped connection, server error)
    failures: int = 0           # consecutive failed attempts (0 once a list or watch makes progress)
    events: int = 0
    bookmarks: int = 0
    last_error: str = ""


class _Gone(Exception):
    pass


class _TooLarge(_Gone):
    """The server has not reached our resourceVersion (it went back: an etcd restore)."""


def _too_large(status: Obj) -> bool:
    """client-go's isTooLargeResourceVersionError: the ResourceVersionTooLarge cause, or (older
    servers) a 504 Timeout saying "Too large resource version"."""
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None   # the server's JSON: any type
    if isinstance(causes, list) and any(isinstance(c, dict) and c.get("reason") == "ResourceVersionTooLarge"
                                        for c in causes):
        return True
    return status.get("code") == 504 and "Too large resource version" in str(status.get("message") or "")


def _status_body(e: ApiException) -> Obj:
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


class _Missing(Exception):
    pass


class _ContinueExpired(Exception):
    """A later page's continue token was refused as expired (410): the list starts over, after the
    backoff, as any failed request does."""


def make_lister(api_client: kclient.ApiClient, resource: Resource, version: str) -> Lister:
    """The client's typed lister where it has one (CoreV1Api.list_pod_for_all_namespaces, ...), else
    CustomObjectsApi's (any group/version/plural under /apis, which is what CRDs need)."""
    api_cls = _typed_api_class(resource.group, version)
    if api_cls is None:
        if not resource.group:
            raise ValueError(f"resource {resource.name}: the kubernetes client has no core API {version!r}")
        return functools.partial(kclient.CustomObjectsApi(api_client).list_cluster_custom_object,
                                 resource.group, version, resource.plural)
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", resource.kind).lower()
    method = f"list_{snake}_for_all_namespaces" if resource.namespaced else f"list_{snake}"
    lister = getattr(api_cls(api_client), method, None)
    if lister is None:
        raise ValueError(f"resource {resource.name}: kind {resource.kind}: {api_cls.__name__} has no {method}")
    return lister


def _typed_api_class(group: str, version: str) -> type | None:
    """"" v1 -> CoreV1Api, discovery.k8s.io v1 -> DiscoveryV1Api; None for groups the client lacks."""
    base = "".join(p.capitalize() for p in group.removesuffix(".k8s.io").split(".")) if group else "Core"
    return getattr(kclient, f"{base}{version.capitalize()}Api", None)


def _check_object(obj: Any, what: str) -> None:
    """ValueError unless `obj` is a whole object as the API server sends one: a JSON object with
    `metadata` an object, `metadata.name` a non-empty string, and `namespace`, `resourceVersion`,
    `labels` (an object of strings) of their types where present. Anything else would be kept
    under a made-up key (`demo/` for a nameless object, `demo/5` for a number) or pass a
    resourceVersion that is no string to the next watch."""
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: a JSON {type(obj).__name__}, not an object")
    md = obj.get("metadata")
    if not isinstance(md, dict):
        raise ValueError(f"{what}: metadata is missing or no object")
    name, ns, rv = md.get("name"), md.get("namespace", ""), md.get("resourceVersion", "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what}: metadata.name is missing or no string ({str(name)[:64]!r})")
    if not isinstance(ns, str | None) or not isinstance(rv, str | None):
        raise ValueError(f"{what} {name}: metadata.namespace or resourceVersion is no string")
    labels = md.get("labels")
    if labels is not None and not (isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())):
        raise ValueError(f"{what} {name}: metadata.labels is no object of strings")


def object_key(obj: Obj) -> str:
    md = obj.get("metadata") or {}
    return f"{md.get('namespace') or ''}/{md.get('name', '')}"


class Reflector:
    """Keeps `state.objects` equal to the collection on the server; calls `on_change` (from the
    reflector's thread, outside its lock) after every change of it."""

    def __init__(self, api_client: kclient.ApiClient, resource: Resource,
                 on_change: Callable[[Change], None] | None = None, *, watch_timeout: int = 300,
                 backoff: tuple[float, float] = (0.2, 10.0), page_size: int = 500,
                 missing_retry: float | None = None, logger: logging.Logger | None = None,
                 min_watch: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 confirm_missing: Callable[[], bool] | None = None, forbidden_empty: bool = False,
                 max_event_bytes: int = MAX_EVENT_BYTES):
        self.resource = resource
        self.max_event_bytes = max_event_bytes
        # A collection the install may not grant (the controller's Secrets and ConfigMaps, read for
        # ingress alone): forbidden (403) at the first list, it counts as listed and empty, so the
        # consumer is not held back waiting for it; the error is kept and the list retried.
        self.forbidden_empty = forbidden_empty
        self.confirm_missing = confirm_missing      # is a 404 at the first list really "not installed"?
        self.min_watch = min_watch
        self.clock = clock
        self._watch_opened: float | None = None    # clock() when the current watch was answered
        self._watch_seen = 0                       # events and bookmarks it delivered
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.page_size = page_size
        self.missing_retry = missing_retry
        self.log = logger or logging.getLogger(__name__)
        self.state = ReflectorState()
        self.lock = threading.Lock()
        self._listers = {v: make_lister(api_client, resource, v) for v in resource.versions}
        self._resp: Any = None

    def objects(self) -> list[Obj]:
        """A copy of the cache, in key order: safe to mutate, consistent with itself."""
        with self.lock:
            return copy.deepcopy([self.state.objects[k] for k in sorted(self.state.objects)])

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Reflect until `stop` is set (then call `abort` to unblock a watch waiting for events)."""
        st = self.state
        backoff = Backoff(*self.backoff).attempts()
        relist = True
        while not stop.is_set():
            self._watch_opened, self._watch_seen = None, 0
            try:
                if relist:
                    self._list()
                    relist = False
                    st.failures = 0
                self._watch(stop)
                if self._watch_progressed():
                    backoff.reset()             # the server ended a healthy watch: watch again now
                    st.failures = 0
                elif not stop.is_set():
                    self._failed(stop, backoff, "the watch ended at once with no event")
            except _Gone as e:
                st.relists += 1
                relist = True
                self.log.info("%s: resourceVersion %s %s; relisting", self.resource.name, st.resource_version,
                              "is ahead of the server (etcd restored from a backup?)"
                              if isinstance(e, _TooLarge) else "expired")
                if self._watch_progressed():
                    backoff.reset()
                    st.failures = 0
                else:                           # expired again at once: wait before listing again
                    stop.wait(backoff.next_delay())
            except _Missing:
                relist = True
                if st.synced and not st.missing:
                    self._failed(stop, backoff, f"{self.resource.name} is not served (404) any more; keeping its "
                                                f"{len(st.objects)} objects until it is listed again")
                    continue
                if self.missing_retry is not None and self._absent():
                    self._mark_missing()
                    stop.wait(self.missing_retry)
                    continue
                self._failed(stop, backoff, f"{self.resource.name} is not served (404)" + (
                    "" if self.missing_retry is None else ", but its CustomResourceDefinition exists: the API "
                                                          "server has not loaded it yet?"))
            except _ContinueExpired as e:
                self._failed(stop, backoff, str(e))
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                if stop.is_set():
                    return
                if isinstance(e, ApiException) and e.status == 403 and self.forbidden_empty and not st.synced:
                    with self.lock:
                        st.synced = True
                    self._emit(Change(LISTED, ()))
                self._failed(stop, backoff, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
            except Exception as e:  # noqa: BLE001 - the reflector must outlive any one object
                # A response no handler above expects (an object nested too deeply for json, a
                # consumer that fails on one object) would otherwise end this thread: the
                # collection would silently stop being watched until a restart. Relist instead,
                # so that once the object is fixed or deleted the collection is whole again.
                if stop.is_set():
                    return
                self.log.exception("%s: unexpected failure", self.resource.name)
                relist = True
                self._failed(stop, backoff, f"{type(e).__name__}: {str(e).strip()[:300]}")

    def _absent(self) -> bool:
        """Is a collection that answers 404 really not installed (`confirm_missing`)? A failure to
        tell counts as no: it is retried as an error rather than taken for empty."""
        if self.confirm_missing is None:
            return True
        try:
            return self.confirm_missing()
        except Exception as e:  # noqa: BLE001 - any failure to confirm: not confirmed
            self.log.warning("%s: cannot tell whether it is installed: %s", self.resource.name, e)
            return False

    def _watch_progressed(self) -> bool:
        """Did the last watch deliver something, or stay open `min_watch` seconds?"""
        opened = self._watch_opened
        return self._watch_seen > 0 or (opened is not None and self.clock() - opened >= self.min_watch)

    def _failed(self, stop: threading.Event, backoff: Attempts, error: str) -> None:
        self.state.last_error = error
        self.state.reconnects += 1
        self.state.failures += 1
        self.log.warning("%s: %s; retrying", self.resource.name, error)
        stop.wait(backoff.next_delay())

    def abort(self) -> None:
        """Unblock a watch waiting for the next event (after `stop` is set)."""
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()
            except Exception:       # noqa: BLE001 - best effort while stopping
                pass

    def _selectors(self) -> dict[str, str]:
        r = self.resource
        return {k: v for k, v in (("field_selector", r.field_selector), ("label_selector", r.label_selector)) if v}

    # -- list -------------------------------------------------------------------------------------
    def _list(self) -> None:
        st = self.state
        versions = [st.version] * bool(st.version) + [v for v in self.resource.versions if v != st.version]
        for version in versions:
            try:
                items, rv = self._list_pages(version)
            except ApiException as e:
                if e.status == 404:
                    continue
                raise
            objects = {object_key(o): o for o in (self._typed(o, version) for o in items)}
            with self.lock:
                st.objects, st.version, st.missing, st.resource_version = objects, version, False, rv
                st.lists += 1
                st.synced = True
            self._emit(Change(LISTED, tuple(objects.values())))
            return
        raise _Missing()

    def _list_pages(self, version: str) -> tuple[list[Obj], str]:
        lister = self._listers[version]
        items: list[Obj] = []
        cont = ""
        tokens: set[str] = set()
        while True:
            try:
                resp = lister(limit=self.page_size, _continue=cont or None, _preload_content=False,
                              _request_timeout=(10, 60), **self._selectors())
            except ApiException as e:
                if e.status == 410 and cont:    # the continue token expired mid-list: start over
                    raise _ContinueExpired(f"the list's continue token expired after {len(items)} objects "
                                           f"(410); listing again from the first page") from None
                raise
            page, cont, rv = self._page(resp.data, len(items))
            items += page
            if not cont:
                return items, rv
            if cont in tokens:
                # a server (or something posing as one) answering every page with a token it gave
                # before would hold this thread in a loop of pages, the items growing for ever
                raise ValueError(f"{self.resource.name}: the list's continue token repeats after {len(items)} "
                                 "objects (a server that pages in a loop)")
            tokens.add(cont)

    def _page(self, raw: bytes | str, before: int = 0) -> tuple[list[Obj], str, str]:
        """One list page, decoded: (its items that match the selectors, projected; the continue
        token, "" on the last page; the list's resourceVersion). A page that is not a list's
        JSON, or an item that is not a whole object, is a ValueError naming it: the list fails
        whole and is tried again, the cache keeping what it had."""
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ValueError(f"{self.resource.name}: a list page nested too deeply to decode") from None
        name = self.resource.name
        if not isinstance(data, dict):
            raise ValueError(f"{name}: a list page is a JSON {type(data).__name__}, not an object")
        items = data.get("items") or []
        md = data.get("metadata") or {}
        if not isinstance(items, list) or not isinstance(md, dict):
            raise ValueError(f"{name}: a list page's items is no list or its metadata no object")
        cont, rv = md.get("continue") or "", md.get("resourceVersion", "")
        if not isinstance(cont, str) or not isinstance(rv, str):
            raise ValueError(f"{name}: a list page's metadata.continue or resourceVersion is no string")
        for i, o in enumerate(items):
            _check_object(o, f"{name}: list item {before + i}")
        # matched and projected page by page: a list keeps no more than one page of whole objects
        return [self.resource.project(o) for o in items if self.resource.matches(o)], cont, rv

    def _mark_missing(self) -> None:
        st = self.state
        with self.lock:
            was = st.missing
            st.missing, st.version, st.objects, st.synced = True, "", {}, True
        if not was:
            self.log.info("%s is not served; will retry every %ss", self.resource.name, self.missing_retry)
        self._emit(Change(LISTED, ()))

    # -- watch ------------------------------------------------------------------------------------
    def _watch(self, stop: threading.Event) -> None:
        """One watch request, until the server ends it (timeoutSeconds) or it fails."""
        st = self.state
        try:
            resp = self._listers[st.version](
                watch=True, resource_version=st.resource_version, timeout_seconds=self.watch_timeout,
                allow_watch_bookmarks=True, _preload_content=False,
                _request_timeout=(10, self.watch_timeout + 30), **self._selectors())
        except ApiException as e:
            if e.status == 410:
                raise _Gone() from e
            if e.status == 504 and _too_large(_status_body(e)):
                raise _TooLarge() from e
            if e.status == 404:
                raise _Missing() from e
            raise
        self._resp = resp
        self._watch_opened = self.clock()
        st.failures = 0                 # the server answers (a watch that then ends at once counts again)
        st.watches += 1
        ended = False
        try:
            if stop.is_set():           # stopped before `abort` could see this response
                return
            for line in watch_lines(resp, self.max_event_bytes, self.resource.name):
                if stop.is_set():
                    return
                if line.strip():
                    self._line(line)
            ended = True
        finally:
            self._resp = None
            if not ended:
                # The server is still streaming on this connection (we stopped, or an event failed):
                # pooled, the next request of the shared client would be written where the server
                # reads none and wait for its read timeout (KubeSource's stop waited 5 s a thread).
                resp.close()
            resp.release_conn()

    def _line(self, line: bytes | str) -> None:
        """Apply one line of a watch: an event, decoded and checked. A line that is no event (not
        JSON, not an object, a type that is no string, an object that is not a whole one: no
        metadata, a name that is no string, a resourceVersion that is no string) is a ValueError
        naming it, and changes nothing: the watch is opened again from the last resourceVersion
        (after the backoff), as after any failed request."""
        name = self.resource.name
        try:
            ev = json.loads(line)
        except RecursionError:
            raise ValueError(f"{name}: a watch event nested too deeply to decode") from None
        if not isinstance(ev, dict):
            raise ValueError(f"{name}: a watch event is a JSON {type(ev).__name__}, not an object")
        etype, obj = ev.get("type", ""), ev.get("object") or {}
        if not isinstance(etype, str) or not isinstance(obj, dict):
            raise ValueError(f"{name}: a watch event's type is no string or its object no object: {str(ev)[:200]}")
        if etype in (ADDED, MODIFIED, DELETED):
            _check_object(obj, f"{name}: {etype} event")
        elif etype == "BOOKMARK":
            md = obj.get("metadata") or {}
            if not isinstance(md, dict) or not isinstance(md.get("resourceVersion", ""), str):
                raise ValueError(f"{name}: a BOOKMARK whose metadata.resourceVersion is no string")
        self._event(etype, obj)

    def _event(self, etype: str, obj: Obj) -> None:
        name = self.resource.name
        if etype == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            if _too_large(obj):
                raise _TooLarge()
            raise ValueError(f"{name}: watch error: {obj.get('message') or obj}")
        if etype not in (ADDED, MODIFIED, DELETED, "BOOKMARK"):
            raise ValueError(f"{name}: unknown watch event type {etype!r}")
        st = self.state
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        change = None
        self._watch_seen += 1
        with self.lock:
            if etype == "BOOKMARK":
                st.bookmarks += 1
            else:
                st.events += 1
                obj = self._typed(obj, st.version)
                key = object_key(obj)
                if etype != DELETED and self.resource.matches(obj):
                    obj = self.resource.project(obj)
                    change = Change(MODIFIED if key in st.objects else ADDED, (obj,))
                    st.objects[key] = obj
                elif st.objects.pop(key, None) is not None:     # deleted, or no longer matching
                    change = Change(DELETED, (obj,))
            if rv:
                st.resource_version = rv
        if change is not None:
            self._emit(change)

    def _emit(self, change: Change) -> None:
        if self.on_change is not None:
            self.on_change(change)

    def _typed(self, obj: Obj, version: str) -> Obj:
        """List items of built-in kinds come without apiVersion/kind; managedFields are noise."""
        obj.setdefault("apiVersion", self.resource.api_version(version))
        obj.setdefault("kind", self.resource.kind)
        (obj.get("metadata") or {}).pop("managedFields", None)
        return obj
