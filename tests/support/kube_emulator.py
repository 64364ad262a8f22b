"""A small Kubernetes API server for tests: real HTTP, real list/watch semantics.

It speaks the JSON the real API server speaks, so the official `kubernetes` client runs against it
unmodified:
- lists: `{"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "42"}, "items": [...]}`
  (items of built-in kinds carry no apiVersion/kind, as on a real server; custom resources do),
  with `limit`/`continue` paging;
- watches: `?watch=1&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S`, a chunked stream
  of newline-delimited `{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": {...}}`;
  a resourceVersion older than the compaction point gets an ERROR event carrying a 410 Status
  ("too old resource version"), as etcd compaction causes on a real cluster;
- custom resources under `/apis/<group>/<version>/...` only for installed groups (404 otherwise),
  each group served at all its versions;
- `GET` of one object and `PATCH`/`PUT` of `/status` (merge patch; a strategic merge patch of a
  pod's `status.conditions` merges them by `type`, as the API server does), for status conditions; a body
  naming `metadata.resourceVersion` (or `metadata.uid`) is conditional on it (409 Conflict when
  stale); a pod's status patch may write its labels and annotations, as the pod status strategy
  allows (the agent labels uncaptured pods so: agent/repair_kube.py);
- Secrets and coordination.k8s.io/v1 Leases among the built-in kinds (the controller's CA Secret
  and its leader election);
- `POST` (create; a Service gets a cluster IP), `PUT` (update, with optimistic concurrency on
  metadata.resourceVersion: 409 Conflict when stale) and `DELETE` of objects (a body's
  `preconditions` uid / resourceVersion are checked: 409 Conflict), with the garbage
  collector's background cascade: deleting an object deletes every object whose
  `metadata.ownerReferences` names its uid (transitively), and an object written with an owner
  whose uid no longer exists is deleted, as kube-controller-manager does.

- `GET /api/v1/namespaces/NS/pods/NAME/log` (`container`, `tailLines`, `limitBytes`), answering
  what a test set with `set_log()`, as the API server proxies the kubelet's container logs;
- `POST /apis/authentication.k8s.io/v1/tokenreviews`, answered from the tokens a test registers
  with `add_token()` as the API server answers for projected service-account tokens: an unknown
  token or one for another audience gets `authenticated: false` with an error; a known one gets the
  user (`system:serviceaccount:NS:SA`) with the pod and node claims in `extra`.

For kubectl (tests/unit/vagrant/test_kube_driver.py drives the e2e KubeDriver through it):
- discovery (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`), the legacy (non-aggregated) form;
- with `KubeEmulator(apply_selectors=True)`, `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`) and
  `fieldSelector` (`path=v`, `path!=v`) on lists and watches; set-based terms (`in`, `notin`) get 400,
  not a silent full list. By default selectors are ignored, as a proxy that drops them would
  (tests/unit/kube checks that clients filter again what comes back);
- `PATCH` of objects with a JSON merge patch; a strategic merge patch is applied as a merge patch
  (the same for maps such as labels; lists are replaced whole rather than merged by key);
- pod logs as above; `write_log()` appends to what `set_log()` sets.
`exec`/`attach`/`port-forward` (SPDY or WebSocket streams) are not emulated.

Admission (admissionregistration.k8s.io/v1 ValidatingWebhookConfiguration, a built-in kind), as
kube-apiserver's validating webhook plugin: an HTTP create, update or merge patch of an object (not
`/status`, not DELETE; never the Python `create()`/`update()`/`apply()` a test seeds state with) is
first sent, as an `admission.k8s.io/v1` AdmissionReview, to every webhook whose rules (operations,
apiGroups, apiVersions, resources — a bare `*` is no subresource —, scope; matchPolicy Equivalent
matches another version of the resource), namespaceSelector and objectSelector match, configurations
by name, over HTTPS verified with its caBundle: `clientConfig.url`, or `clientConfig.service` reached
at the address a test gives with `route_service(namespace, name, port, host, real_port)` (TLS
verifies `NAME.NAMESPACE.svc`). A refusal answers the webhook's Status (`admission webhook "W"
denied the request: ...`); a failed call (refused, TLS, timeout, non-200, a bad or mismatched
response) answers 500 `failed calling webhook "W": ...` under failurePolicy Fail, and is ignored
under Ignore; `response.warnings` become `Warning: 299 - "..."` headers. `?dryRun=All` admits with
`dryRun: true` (400 "does not support dry run" for a webhook whose sideEffects are not None or
NoneOnDryRun) and stores nothing. Webhooks are called with no lock held (one may read from this
server meanwhile), one after another (kube-apiserver: in parallel); `admission_calls` records each.
matchConditions (CEL) are refused with a 500, not ignored; mutating webhooks are not emulated.

Knobs for tests: `compact()`, `drop_watches()` (closes every open watch mid-stream, like a broken
connection), `hold_watches()` (new watch requests wait: a window in which changes happen unseen),
`bookmark()`, `install_group()`, and `requests` (a log of every request, to assert what a client did).

Faults (`inject(Fault(...))`, `clear_faults()`): the requests a `Fault` matches (method, a path
fragment, watch or not, a later list page or not) are answered with an error status
(410/429/500/503/504, with `Retry-After`), a delay first, a watch that ends at once with no event, or a watch whose first event is cut off
mid-JSON (`truncate`: the connection closes inside a chunk), bytes given as they are (`body`), or
the same bytes for ever (`endless`) — what an overloaded or restarting API
server, or a proxy in front of it, does. `restore(rv)` puts the resourceVersion back, as an etcd
restore from backup does: a watch from a resourceVersion the server has not reached gets 504
"Too large resource version", as the API server's watch cache answers.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    group: str              # "" for the core group
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool

    def api_version(self, version: str | None = None) -> str:
        v = version or self.versions[0]
        return f"{self.group}/{v}" if self.group else v


_MESH_GROUPS = {
    "security.istio.io": (("v1", "v1beta1"), [("authorizationpolicies", "AuthorizationPolicy"),
                                              ("peerauthentications", "PeerAuthentication")]),
    "networking.istio.io": (("v1", "v1beta1", "v1alpha3"), [("virtualservices", "VirtualService"),
                                                            ("destinationrules", "DestinationRule"),
                                                            ("gateways", "Gateway"),
                                                            ("serviceentries", "ServiceEntry")]),
    "telemetry.istio.io": (("v1", "v1alpha1"), [("telemetries", "Telemetry")]),
    "security.ambit.io": (("v1", "v1beta1"), [("authorizationpolicies", "AuthorizationPolicy"),
                                              ("peerauthentications", "PeerAuthentication")]),
    "networking.ambit.io": (("v1", "v1beta1"), [("virtualservices", "VirtualService"),
                                                ("destinationrules", "DestinationRule")]),
    "telemetry.ambit.io": (("v1",), [("telemetries", "Telemetry")]),
    "gateway.networking.k8s.io": (("v1", "v1beta1"), [("httproutes", "HTTPRoute"), ("grpcroutes", "GRPCRoute"),
                                                      ("gateways", "Gateway"),
                                                      ("backendtlspolicies", "BackendTLSPolicy"),
                                                      ("gatewayclasses", "GatewayClass", False)]),
}

BUILTIN = [
    ResourceType("", ("v1",), "namespaces", "Namespace", False),
    ResourceType("", ("v1",), "nodes", "Node", False),
    ResourceType("", ("v1",), "pods", "Pod", True),
    ResourceType("", ("v1",), "services", "Service", True),
    ResourceType("", ("v1",), "serviceaccounts", "ServiceAccount", True),
    ResourceType("discovery.k8s.io", ("v1",), "endpointslices", "EndpointSlice", True),
    ResourceType("apps", ("v1",), "deployments", "Deployment", True),
    # what owns a Deployment's pods, and the Events the agent records on pods it repairs (agent/repair_kube.py)
    ResourceType("apps", ("v1",), "replicasets", "ReplicaSet", True),
    ResourceType("", ("v1",), "events", "Event", True),
    # what `ambit install` writes (tests/unit/ambitctl/test_install_cluster.py)
    ResourceType("apps", ("v1",), "daemonsets", "DaemonSet", True),
    # what a Gateway's parametersRef adds to its objects (controller/waypoints/params.py)
    ResourceType("autoscaling", ("v2",), "horizontalpodautoscalers", "HorizontalPodAutoscaler", True),
    ResourceType("policy", ("v1",), "poddisruptionbudgets", "PodDisruptionBudget", True),
    ResourceType("", ("v1",), "configmaps", "ConfigMap", True),
    # the controller's CA (--ca-secret) and its leader election (controller/leader.py)
    ResourceType("", ("v1",), "secrets", "Secret", True),
    ResourceType("coordination.k8s.io", ("v1",), "leases", "Lease", True),
    ResourceType("rbac.authorization.k8s.io", ("v1",), "clusterroles", "ClusterRole", False),
    ResourceType("rbac.authorization.k8s.io", ("v1",), "clusterrolebindings", "ClusterRoleBinding", False),
    ResourceType("rbac.authorization.k8s.io", ("v1",), "roles", "Role", True),
    ResourceType("rbac.authorization.k8s.io", ("v1",), "rolebindings", "RoleBinding", True),
    ResourceType("apiextensions.k8s.io", ("v1",), "customresourcedefinitions", "CustomResourceDefinition", False),
    # the controller's admission webhook, called on HTTP writes (see "Admission" above)
    ResourceType("admissionregistration.k8s.io", ("v1",), "validatingwebhookconfigurations",
                 "ValidatingWebhookConfiguration", False),
]


BUILTIN_GROUPS = ("", "discovery.k8s.io", "apps", "autoscaling", "policy", "rbac.authorization.k8s.io",
                  "apiextensions.k8s.io", "coordination.k8s.io", "admissionregistration.k8s.io")


_REASONS = {409: "Conflict", 410: "Expired", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}


def crd_types(group: str) -> list[ResourceType]:
    """A group's kinds: (plural, kind), namespaced, or (plural, kind, False) for a cluster-scoped one."""
    versions, kinds = _MESH_GROUPS[group]
    return [ResourceType(group, versions, k[0], k[1], bool(k[2]) if len(k) > 2 else True) for k in kinds]


def _status(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class _Dropped(Exception):
    pass


class _CallFailed(Exception):
    """A webhook call that failed (kube-apiserver's ErrCallingWebhook): its failurePolicy decides."""


@dataclass
class Fault:
    """How to answer the requests that match: `method` (None: any), `path` (a fragment of the URL
    path), `watch` (True: watches only, False: everything else, None: both), `continued` (True: only
    the pages after a list's first); `times` answers
    (None: until cleared). `status` > 0 answers that HTTP error (with `retry_after` seconds);
    `delay` waits first; `watch_end` answers a watch with 200 and ends it at once; `truncate`
    sends half of an event line and drops the connection; `body` answers 200 with these bytes as
    they are (a list page, or a watch's stream of event lines, which then ends): what a server, or
    something posing as one, may send that no real one does; `endless` answers a watch with these
    bytes sent again and again until the client goes (a line that never ends, when they hold no
    newline)."""

    path: str = ""
    method: str | None = "GET"
    watch: bool | None = None
    continued: bool | None = None     # True: only list pages after the first (a `continue` token)
    status: int = 0
    retry_after: int | None = None
    delay: float = 0.0
    watch_end: bool = False
    truncate: bool = False
    body: bytes | None = None
    endless: bytes | None = None
    times: int | None = None
    hits: int = 0

    def matches(self, method: str, path: str, query: dict[str, str]) -> bool:
        is_watch = query.get("watch") in ("1", "true")
        return ((self.method is None or self.method == method) and self.path in path
                and (self.watch is None or self.watch == is_watch)
                and (self.continued is None or self.continued == bool(query.get("continue")))
                and (self.times is None or self.hits < self.times))


class KubeEmulator:
    def __init__(self, groups: Iterable[str] = tuple(_MESH_GROUPS), bookmark_interval: float | None = None,
                 port: int = 0, apply_selectors: bool = False):
        self._apply_selectors = apply_selectors
        self._lock = threading.Condition()
        self._types: dict[tuple[str, str], ResourceType] = {}
        for t in BUILTIN:
            self._types[(t.group, t.plural)] = t
        for g in groups:
            self.install_group(g)
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._events: list[tuple[int, tuple[str, str], str, Obj]] = []
        self._rv = 100
        self._next_ip = 100
        self._compacted = 0
        self._drop_gen = 0
        self._bookmark_gen = 0
        self._held = False
        self._closing = False
        self._bookmark_interval = bookmark_interval
        self._sockets: set[socket.socket] = set()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._tokens: dict[str, Obj] = {}
        # False: TokenReview answers as an authenticator that is not audience-aware (a webhook
        # token authenticator may be): it ignores spec.audiences and returns no status.audiences,
        # which the API documents as "valid for the API server's own audience".
        self.audience_aware = True
        self._reviews_open = threading.Event()
        self._reviews_open.set()
        self._logs: dict[tuple[str, str, str], str] = {}
        self._faults: list[Fault] = []
        self._service_routes: dict[tuple[str, str, int], tuple[str, int]] = {}
        # every validating webhook call made: configuration, webhook, operation, dryRun, resource,
        # namespace, name, request (the AdmissionReview's), result ("allowed", "denied", "error: ...")
        self.admission_calls: list[Obj] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        # a short poll interval: stop() (shutdown) waits for it, and tests start and stop many servers
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kube-emulator", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KubeEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._close_watch_sockets()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- test knobs -------------------------------------------------------------------------------
    def install_group(self, group: str) -> None:
        for t in crd_types(group):
            self._types[(t.group, t.plural)] = t

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def compact(self) -> int:
        """Forget the event history up to now: watches from an older resourceVersion get 410 Gone."""
        with self._lock:
            self._compacted = self._rv
            self._events = []
            return self._compacted

    def inject(self, fault: Fault) -> Fault:
        """Answer matching requests as `fault` says (the first matching fault wins); returns it, so a
        test can read `hits`."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def restore(self, rv: int) -> None:
        """An etcd restore from a backup taken at `rv`: the resourceVersion goes back to `rv` (objects
        stay as they are; the test writes what the backup held) and the event history is gone."""
        with self._lock:
            self._rv = rv
            self._events = []
            self._compacted = 0
            self._lock.notify_all()

    def drop_watches(self) -> None:
        """Break every open watch connection mid-stream (no terminating chunk), as a network fault would."""
        with self._lock:
            self._drop_gen += 1
            self._lock.notify_all()
        self._close_watch_sockets()

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current resourceVersion on every watch that allows bookmarks."""
        with self._lock:
            self._bookmark_gen += 1
            self._lock.notify_all()

    @contextmanager
    def hold_watches(self) -> Iterator[None]:
        """While held, new watch requests wait (the client sees nothing); on exit they proceed."""
        with self._lock:
            self._held = True
        try:
            yield
        finally:
            with self._lock:
                self._held = False
                self._lock.notify_all()

    @contextmanager
    def hold_token_reviews(self) -> Iterator[None]:
        """While held, TokenReviews wait unanswered (an API server slowed by a flood); on exit they
        are answered."""
        self._reviews_open.clear()
        try:
            yield
        finally:
            self._reviews_open.set()

    def watch_requests(self, plural: str) -> list[dict[str, str]]:
        return [q for m, p, q in list(self.requests) if m == "GET" and p.endswith("/" + plural) and q.get("watch")]

    def list_requests(self, plural: str) -> list[dict[str, str]]:
        return [q for m, p, q in list(self.requests) if m == "GET" and p.endswith("/" + plural) and not q.get("watch")]

    def open_watches(self) -> int:
        with self._lock:
            return len(self._sockets)

    # -- object writes (the test's kubectl) -------------------------------------------------------
    def _type_of(self, obj: Obj) -> ResourceType:
        api_version, kind = obj["apiVersion"], obj["kind"]
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        for t in self._types.values():
            if t.group == group and t.kind == kind:
                return t
        raise KeyError(f"no resource type for {api_version} {kind}")

    def _key(self, t: ResourceType, obj: Obj) -> tuple[str, str]:
        md = obj["metadata"]
        return (md.get("namespace", "default") if t.namespaced else "", md["name"])

    def _record(self, t: ResourceType, etype: str, obj: Obj) -> None:
        self._events.append((self._rv, (t.group, t.plural), etype, copy.deepcopy(obj)))
        self._lock.notify_all()

    def create(self, obj: Obj) -> Obj:
        """Store a new object (no admission: a test seeds state with it); KeyError if it exists."""
        with self._lock:
            t = self._type_of(obj)
            return self._insert(t, self._prepared_create(t, obj))

    def _prepared_create(self, t: ResourceType, obj: Obj) -> Obj:
        """`obj` as a create would store it, but for its resourceVersion (and a Service's cluster IP)."""
        o = copy.deepcopy(obj)
        md = o.setdefault("metadata", {})
        if t.namespaced:
            md.setdefault("namespace", "default")
        md.pop("resourceVersion", None)
        md.update(uid=str(uuid.uuid4()), generation=1,
                  creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        _write_only_fields(t.kind, o)
        return o

    def _cluster_ip(self, t: ResourceType, o: Obj, allocate: bool) -> None:
        """A Service without a cluster IP gets the next one (`allocate` False: the one it would get)."""
        if t.kind == "Service" and not (o.get("spec") or {}).get("clusterIP"):
            n = self._next_ip + 1
            if allocate:
                self._next_ip = n
            o.setdefault("spec", {})["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
            o["spec"]["clusterIPs"] = [o["spec"]["clusterIP"]]

    def _insert(self, t: ResourceType, o: Obj) -> Obj:
        """Store `o` (from _prepared_create; the lock held): KeyError if it exists."""
        store = self._objects.setdefault((t.group, t.plural), {})
        key = self._key(t, o)
        if key in store:
            raise KeyError(f"{t.kind} {key} already exists")
        o = copy.deepcopy(o)
        self._rv += 1
        o["metadata"]["resourceVersion"] = str(self._rv)
        self._cluster_ip(t, o, allocate=True)
        store[key] = o
        self._record(t, "ADDED", o)
        out = copy.deepcopy(o)
        self._collect_if_orphan(t, key, o)
        return out

    def update(self, obj: Obj) -> Obj:
        """Replace a stored object (no admission); KeyError if it does not exist."""
        with self._lock:
            t = self._type_of(obj)
            key = self._key(t, obj)
            old = self._objects.setdefault((t.group, t.plural), {})[key]
            return self._replace(t, key, self._prepared_update(t, old, obj))

    @staticmethod
    def _prepared_update(t: ResourceType, old: Obj, obj: Obj) -> Obj:
        """`obj` as an update of `old` would store it, with `old`'s resourceVersion."""
        o = copy.deepcopy(obj)
        _write_only_fields(t.kind, o)
        md = o.setdefault("metadata", {})
        for f in ("uid", "creationTimestamp", "namespace"):
            if f in old["metadata"]:
                md[f] = old["metadata"][f]
        gen = old["metadata"].get("generation", 1)
        md["generation"] = gen + 1 if o.get("spec") != old.get("spec") else gen
        md["resourceVersion"] = old["metadata"].get("resourceVersion")
        if "status" not in o and "status" in old:
            o["status"] = copy.deepcopy(old["status"])
        return o

    def _replace(self, t: ResourceType, key: tuple[str, str], o: Obj) -> Obj:
        """Store `o` (from _prepared_update; the lock held) in place of the object at `key`."""
        o = copy.deepcopy(o)
        self._rv += 1
        o["metadata"]["resourceVersion"] = str(self._rv)
        self._objects.setdefault((t.group, t.plural), {})[key] = o
        self._record(t, "MODIFIED", o)
        out = copy.deepcopy(o)
        self._collect_if_orphan(t, key, o)
        return out

    def apply(self, obj: Obj) -> Obj:
        with self._lock:
            t = self._type_of(obj)
            exists = self._key(t, obj) in self._objects.get((t.group, t.plural), {})
        return self.update(obj) if exists else self.create(obj)

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "default") -> None:
        with self._lock:
            t = self._type_of({"apiVersion": api_version, "kind": kind})
            self._delete(t, (namespace if t.namespaced else "", name))

    def _collect_if_orphan(self, t: ResourceType, key: tuple[str, str], o: Obj) -> None:
        """The garbage collector's other half: an object written with an owner that no longer
        exists (a controller acting on a stale cache after the owner's deletion) is deleted, as
        kube-controller-manager deletes dependents whose owner's uid is gone."""
        owners = {r.get("uid") for r in o["metadata"].get("ownerReferences") or []}
        if not owners:
            return
        alive = {d["metadata"].get("uid") for objs in self._objects.values() for d in objs.values()}
        if not owners <= alive:
            self._delete(t, key)

    def _delete(self, t: ResourceType, key: tuple[str, str]) -> Obj:
        """Delete one object, then (the garbage collector) every object it owns, transitively."""
        store = self._objects.setdefault((t.group, t.plural), {})
        o = store.pop(key)
        self._rv += 1
        o["metadata"]["resourceVersion"] = str(self._rv)
        self._record(t, "DELETED", o)
        uid = o["metadata"].get("uid")
        for (group, plural), objs in list(self._objects.items()):
            for k, dep in list(objs.items()):
                if any(r.get("uid") == uid for r in dep["metadata"].get("ownerReferences") or []):
                    self._delete(self._types[(group, plural)], k)
        return o

    def get(self, api_version: str, kind: str, name: str, namespace: str = "default") -> Obj | None:
        with self._lock:
            t = self._type_of({"apiVersion": api_version, "kind": kind})
            o = self._objects.get((t.group, t.plural), {}).get((namespace if t.namespaced else "", name))
            return copy.deepcopy(o) if o else None

    def write_log(self, namespace: str, pod: str, container: str, text: str) -> None:
        """Append to what `kubectl logs -n NAMESPACE POD -c CONTAINER` returns."""
        with self._lock:
            key = (namespace, pod, container)
            self._logs[key] = self._logs.get(key, "") + text

    # -- discovery and selectors (kubectl) --------------------------------------------------------
    def _discovery(self, path: str) -> Obj | None:
        """The legacy discovery documents kubectl reads before any request; None if `path` is not one."""
        parts = [p for p in path.split("/") if p]
        groups: dict[str, list[str]] = {}
        for t in self._types.values():
            for v in t.versions:
                if v not in groups.setdefault(t.group, []):
                    groups[t.group].append(v)
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                for g, vs in sorted(groups.items()) if g]}
        if parts == ["api", "v1"]:
            group, version = "", "v1"
        elif len(parts) == 3 and parts[0] == "apis" and parts[1] in groups and parts[2] in groups[parts[1]]:
            group, version = parts[1], parts[2]
        else:
            return None
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources = []
        for t in sorted(self._types.values(), key=lambda t: t.plural):
            if t.group == group and version in t.versions:
                resources.append({"name": t.plural, "singularName": t.kind.lower(), "namespaced": t.namespaced,
                                  "kind": t.kind, "verbs": verbs})
                resources.append({"name": f"{t.plural}/status", "singularName": "", "namespaced": t.namespaced,
                                  "kind": t.kind, "verbs": ["get", "patch", "update"]})
                if t.plural == "pods":
                    resources.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
                                      "verbs": ["get"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    def _selector(self, query: dict[str, str]) -> list[tuple[str, str, str, str]]:
        """(kind, key, op, value) terms of labelSelector and fieldSelector; ValueError for what is not emulated."""
        terms: list[tuple[str, str, str, str]] = []
        for kind in ("labelSelector", "fieldSelector") if self._apply_selectors else ():
            for term in filter(None, (t.strip() for t in (query.get(kind) or "").split(","))):
                if " in " in term or " notin " in term or "(" in term:
                    raise ValueError(f"{kind} {term!r}: set-based terms are not emulated")
                for op in ("!=", "==", "="):
                    if op in term:
                        k, v = term.split(op, 1)
                        terms.append((kind, k.strip(), "!=" if op == "!=" else "=", v.strip()))
                        break
                else:
                    if kind == "fieldSelector":
                        raise ValueError(f"fieldSelector {term!r}: expected path=value or path!=value")
                    terms.append((kind, term.lstrip("!").strip(), "!" if term.startswith("!") else "exists", ""))
        return terms

    @staticmethod
    def _selected(obj: Obj, terms: list[tuple[str, str, str, str]]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for kind, key, op, value in terms:
            if kind == "labelSelector":
                have: Any = labels.get(key)
                if op == "exists" and key not in labels or op == "!" and key in labels:
                    return False
            else:
                have = obj
                for part in key.split("."):
                    have = have.get(part) if isinstance(have, dict) else None
                have = "" if have is None else str(have)
            if op == "=" and have != value or op == "!=" and have == value:
                return False
        return True

    # -- HTTP -------------------------------------------------------------------------------------
    def _close_watch_sockets(self) -> None:
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        emu = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return

            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                emu._dispatch(self, "GET")

            def do_PATCH(self) -> None:  # noqa: N802
                emu._dispatch(self, "PATCH")

            def do_PUT(self) -> None:  # noqa: N802
                emu._dispatch(self, "PUT")

            def do_POST(self) -> None:  # noqa: N802
                emu._dispatch(self, "POST")

            def do_DELETE(self) -> None:  # noqa: N802
                emu._dispatch(self, "DELETE")

        return Handler

    def _send_json(self, h: BaseHTTPRequestHandler, code: int, body: Obj, warnings: Iterable[str] = ()) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for w in warnings:
            h.send_header("Warning", _warning_header(w))
        h.end_headers()
        h.wfile.write(data)

    def add_token(self, token: str, namespace: str, service_account: str, *, node: str = "", pod: str = "",
                  audiences: Iterable[str] = ("ambit-ca",), pod_uid: str = "") -> None:
        """Register a projected service-account token for TokenReview (bound to `pod` on `node`).
        With `pod_uid` it is bound as the API server binds it: refused ("service account token has
        been invalidated") once that pod (by UID) or its service account is not among the objects."""
        extra: dict[str, list[str]] = {}
        if node:
            extra["authentication.kubernetes.io/node-name"] = [node]
        if pod:
            extra["authentication.kubernetes.io/pod-name"] = [pod]
        if pod_uid:
            extra["authentication.kubernetes.io/pod-uid"] = [pod_uid]
        self._tokens[token] = {"user": {"username": f"system:serviceaccount:{namespace}:{service_account}",
                                        "uid": str(uuid.uuid4()),
                                        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                                                   "system:authenticated"], "extra": extra},
                               "audiences": list(audiences)}

    def set_log(self, namespace: str, pod: str, text: str, container: str = "") -> None:
        """What `GET .../pods/<pod>/log` answers for that container ("" : the pod's only/first one)."""
        self._logs[(namespace, pod, container)] = text

    def _pod_log(self, h: BaseHTTPRequestHandler, ns: str, name: str, query: dict[str, str]) -> None:
        """The kubelet's log of one container, as the API server proxies it: text/plain, honouring
        `container`, `tailLines` and `limitBytes`; 404 for a missing pod, 400 for a container that is
        not the pod's or none named in a pod of several, as the real server answers."""
        with self._lock:
            pod = self._objects.get(("", "pods"), {}).get((ns, name))
        if pod is None:
            self._send_json(h, 404, _status(404, "NotFound", f'pods "{name}" not found'))
            return
        names = [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]
        container = query.get("container", "")
        if container and container not in names:
            self._send_json(h, 400, _status(400, "BadRequest",
                                            f"container {container} is not valid for pod {name}"))
            return
        if not container and len(names) > 1:
            self._send_json(h, 400, _status(400, "BadRequest", f"a container name must be specified for pod {name}, "
                                                               f"choose one of: [{' '.join(names)}]"))
            return
        text = self._logs.get((ns, name, container), self._logs.get((ns, name, ""), ""))
        if "tailLines" in query:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(query["tailLines"]):]) if int(query["tailLines"]) > 0 else ""
        data = text.encode()
        if "limitBytes" in query:
            data = data[:int(query["limitBytes"])]
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def add_user_token(self, token: str, username: str, groups: Iterable[str] = ("system:authenticated",)) -> None:
        """Register a user's bearer token (a kubeconfig user's) for TokenReview, for the API server's
        default audience (a review naming no audiences accepts it)."""
        self._tokens[token] = {"user": {"username": username, "uid": str(uuid.uuid4()), "groups": list(groups),
                                        "extra": {}}, "audiences": ["https://kubernetes.default.svc"]}

    def _binding_holds(self, user: Obj) -> bool:
        """A token registered with a pod UID: its pod (that UID) and service account still exist."""
        uid = (user.get("extra") or {}).get("authentication.kubernetes.io/pod-uid")
        if not uid:
            return True
        ns, _, sa = user["username"].removeprefix("system:serviceaccount:").partition(":")
        pod_name = user["extra"]["authentication.kubernetes.io/pod-name"][0]
        with self._lock:
            pod = self._objects.get(("", "pods"), {}).get((ns, pod_name))
            account = self._objects.get(("", "serviceaccounts"), {}).get((ns, sa))
        return pod is not None and pod["metadata"].get("uid") == uid[0] and account is not None

    def _token_review(self, h: BaseHTTPRequestHandler, body: Obj) -> None:
        while not self._reviews_open.wait(0.05) and not self._closing:
            pass
        spec = body.get("spec") or {}
        known = self._tokens.get(spec.get("token") or "")
        wanted = spec.get("audiences") or []
        status: Obj
        if known is None:
            status = {"authenticated": False, "error": "[invalid bearer token, token lookup failed]"}
        elif not self._binding_holds(known["user"]):
            status = {"authenticated": False, "error": "[invalid bearer token, service account token has been invalidated]"}
        elif not self.audience_aware:
            status = {"authenticated": True, "user": known["user"]}
        elif wanted and not set(wanted) & set(known["audiences"]):
            status = {"authenticated": False, "error": "[invalid bearer token, token audiences "
                      f"{json.dumps(known['audiences'])} is invalid for the target audiences {json.dumps(wanted)}]"}
        else:
            status = {"authenticated": True, "user": known["user"], "audiences": wanted or known["audiences"]}
        self._send_json(h, 201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                                 "metadata": {"creationTimestamp": None}, "spec": spec, "status": status})

    def _route(self, path: str) -> tuple[ResourceType | None, str, str | None, str | None, bool]:
        """(type, version, namespace, name, is_status) for a request path."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None, "", None, None, False
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest:
            return None, "", None, None, False
        t = self._types.get((group, rest[0]))
        if t is None or version not in t.versions:
            return None, "", None, None, False
        name = rest[1] if len(rest) >= 2 else None
        return t, version, ns, name, len(rest) >= 3 and rest[2] == "status"

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests.append((method, url.path, query))
            t, version, ns, name, is_status = self._route(url.path)
            fault = next((f for f in self._faults if f.matches(method, url.path, query)), None)
            if fault is not None:
                fault.hits += 1
        if fault is not None and self._faulted(h, fault):
            return
        if method == "POST" and url.path.rstrip("/") == "/apis/authentication.k8s.io/v1/tokenreviews":
            length = int(h.headers.get("Content-Length") or 0)
            self._token_review(h, json.loads(h.rfile.read(length) or b"{}"))
            return
        parts = [p for p in url.path.split("/") if p]
        if method == "GET" and len(parts) == 7 and parts[:3] == ["api", "v1", "namespaces"] \
                and parts[4] == "pods" and parts[6] == "log":
            self._pod_log(h, parts[3], parts[5], query)
            return
        if t is None and method == "GET" and (doc := self._discovery(url.path)) is not None:
            self._send_json(h, 200, doc)
            return
        if t is None:
            self._send_json(h, 404, _status(404, "NotFound", "the server could not find the requested resource"))
            return
        if method == "GET" and name is None:
            try:
                self._selector(query)
            except ValueError as e:
                self._send_json(h, 400, _status(400, "BadRequest", str(e)))
                return
            if query.get("watch") in ("1", "true"):
                self._watch(h, t, version, ns, query)
            else:
                self._list(h, t, version, ns, query)
            return
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length) or b"{}") if length else {}
        if (method == "POST" and name is None) or (method in ("PUT", "PATCH") and name is not None and not is_status):
            self._write(h, method, t, version, ns, name, body, query)
            return
        with self._lock:
            store = self._objects.setdefault((t.group, t.plural), {})
            key = (ns or "default" if t.namespaced else "", name or "")
            obj = store.get(key)
            if obj is None:
                self._send_json(h, 404, _status(404, "NotFound", f'{t.plural} "{name}" not found'))
                return
            if method == "GET":
                self._send_json(h, 200, self._present(t, version, obj, with_type=True))
                return
            if method == "DELETE" and not is_status:
                pre = body.get("preconditions") or {}
                stale = [f for f in ("uid", "resourceVersion") if pre.get(f) and pre[f] != obj["metadata"].get(f)]
                if stale:
                    self._send_json(h, 409, _status(409, "Conflict", f"Precondition failed: {stale[0]} in precondition: "
                                                    f"{pre[stale[0]]}, {stale[0]} in object meta: "
                                                    f"{obj['metadata'].get(stale[0])}"))
                    return
                gone = self._delete(t, key)
                self._send_json(h, 200, self._present(t, version, gone, with_type=True))
                return
            if not is_status or method not in ("PUT", "PATCH"):
                self._send_json(h, 405, _status(405, "MethodNotAllowed", "only status can be written here"))
                return
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv and rv != obj["metadata"].get("resourceVersion"):     # a patch naming a resourceVersion is conditional
                self._send_json(h, 409, _status(409, "Conflict", f'Operation cannot be fulfilled on {t.plural} '
                                                f'"{name}": the object has been modified'))
                return
            uid = (body.get("metadata") or {}).get("uid")
            if uid and uid != obj["metadata"].get("uid"):   # a uid in the body is a precondition
                self._send_json(h, 409, _status(409, "Conflict", f"Precondition failed: UID in precondition: {uid}, "
                                                f"UID in object meta: {obj['metadata'].get('uid')}"))
                return
            new_status = body.get("status") if method == "PUT" else _merge_patch(obj.get("status"), body.get("status"))
            strategic = (h.headers.get("Content-Type") or "").startswith("application/strategic-merge-patch+json")
            if (t.kind == "Pod" and method == "PATCH" and strategic
                    and isinstance((body.get("status") or {}).get("conditions"), list)):
                # PodStatus.conditions: patchStrategy merge, patchMergeKey type (the kubelet's stay)
                new_status["conditions"] = _merge_by(((obj.get("status") or {}).get("conditions")) or [],
                                                     ((body.get("status") or {}).get("conditions")) or [], "type")
            if t.kind == "Pod" and method == "PATCH":
                # The pod status strategy keeps metadata changes: labels and annotations can be
                # written through pods/status, the lower privilege (Istio's CNI labels pods so).
                for f in ("labels", "annotations"):
                    if f in (body.get("metadata") or {}):
                        obj["metadata"][f] = _merge_patch(obj["metadata"].get(f) or {}, body["metadata"][f])
            self._rv += 1
            obj["status"] = new_status
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._record(t, "MODIFIED", obj)
            self._send_json(h, 200, self._present(t, version, obj, with_type=True))

    # -- admission: validating webhooks on HTTP writes --------------------------------------------
    def route_service(self, namespace: str, name: str, port: int = 443, host: str = "127.0.0.1",
                      real_port: int | None = None) -> None:
        """A webhook whose `clientConfig.service` is NAMESPACE/NAME at `port` (443 when the spec names
        none) is called at `host`:`real_port` (default: `port`); TLS still verifies the name
        `NAME.NAMESPACE.svc`, as kube-apiserver does."""
        with self._lock:
            self._service_routes[(namespace, name, int(port))] = (host, int(port if real_port is None else real_port))

    def _user_of(self, h: BaseHTTPRequestHandler) -> Obj:
        """The requester, as authentication would name it: the user of a bearer token registered with
        add_user_token()/add_token(), else an administrator."""
        auth = h.headers.get("Authorization") or ""
        known = self._tokens.get(auth[7:].strip()) if auth.startswith("Bearer ") else None
        if known is not None:
            return copy.deepcopy(known["user"])
        return {"username": "emulator-admin", "groups": ["system:masters", "system:authenticated"]}

    def _write(self, h: BaseHTTPRequestHandler, method: str, t: ResourceType, version: str, ns: str | None,
               name: str | None, body: Obj, query: dict[str, str]) -> None:
        """POST (create), PUT (update) or PATCH (merge patch) of an object, as the API server does
        them: the object that would be stored is admitted by the validating webhooks (called with no
        lock held: a webhook may read from this server), then stored, or, with `dryRun=All`, only
        answered. An update retries (admission again) if the object changed meanwhile."""
        options_kind = {"POST": "CreateOptions", "PUT": "UpdateOptions", "PATCH": "PatchOptions"}[method]
        if "dryRun" in query and query["dryRun"] != "All":
            self._send_json(h, 422, _status(422, "Invalid", f'{options_kind}.meta.k8s.io "" is invalid: dryRun: '
                                            f'Unsupported value: ["{query["dryRun"]}"]: supported values: "All"'))
            return
        dry = "dryRun" in query
        if method == "PATCH":
            ctype = (h.headers.get("Content-Type") or "").split(";")[0]
            if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                self._send_json(h, 415, _status(415, "UnsupportedMediaType", f"patch type {ctype!r} is not emulated"))
                return
        operation = "CREATE" if method == "POST" else "UPDATE"
        options: Obj = {"kind": options_kind, "apiVersion": "meta.k8s.io/v1"}
        if dry:
            options["dryRun"] = ["All"]
        if query.get("fieldManager"):
            options["fieldManager"] = query["fieldManager"]
        user = self._user_of(h)
        for _attempt in range(10):
            with self._lock:
                store = self._objects.setdefault((t.group, t.plural), {})
                old: Obj | None = None
                if method == "POST":
                    b = copy.deepcopy(body)
                    b["apiVersion"], b["kind"] = t.api_version(), t.kind
                    md = b.setdefault("metadata", {})
                    if t.namespaced:
                        md["namespace"] = ns or md.get("namespace") or "default"
                    if not md.get("name") and md.get("generateName"):
                        md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
                    if not md.get("name"):
                        self._send_json(h, 422, _status(422, "Invalid", f"{t.kind} \"\" is invalid: metadata.name: "
                                                        "Required value: name or generateName is required"))
                        return
                    new = self._prepared_create(t, b)
                else:
                    key = (ns or "default" if t.namespaced else "", name or "")
                    stored = store.get(key)
                    if stored is None:
                        self._send_json(h, 404, _status(404, "NotFound", f'{t.plural} "{name}" not found'))
                        return
                    old = copy.deepcopy(stored)
                    if method == "PUT":
                        rv = (body.get("metadata") or {}).get("resourceVersion")
                        if rv and rv != old["metadata"].get("resourceVersion"):
                            self._send_json(h, 409, _status(409, "Conflict", f'Operation cannot be fulfilled on '
                                                            f'{t.plural} "{name}": the object has been modified; '
                                                            "please apply your changes to the latest version and "
                                                            "try again"))
                            return
                        b = copy.deepcopy(body)
                        named = (b.get("metadata") or {}).get("name")
                        if named != name:
                            self._send_json(h, 400, _status(400, "BadRequest", f"the name of the object ({named}) "
                                                            f"does not match the name on the URL ({name})"))
                            return
                        if t.namespaced:
                            b.setdefault("metadata", {})["namespace"] = old["metadata"].get("namespace")
                    else:
                        b = _merge_patch(old, body)
                        b.setdefault("metadata", {})["name"] = name
                    b["apiVersion"], b["kind"] = t.api_version(), t.kind
                    new = self._prepared_update(t, old, b)
                key = self._key(t, new)
                try:
                    hooks = self._webhooks_for(t, version, operation, new, old)
                except ValueError as e:
                    self._send_json(h, 500, _internal_error(str(e)))
                    return
            refused, warnings = self._admit(hooks, t, version, operation, new, old, dry, options, user)
            if refused is not None:
                self._send_json(h, refused["code"], refused, warnings)
                return
            with self._lock:
                store = self._objects.setdefault((t.group, t.plural), {})
                if method == "POST":
                    if key in store:
                        self._send_json(h, 409, _status(409, "AlreadyExists",
                                                        f'{t.plural} "{key[1]}" already exists'), warnings)
                        return
                    if dry:
                        out = copy.deepcopy(new)
                        self._cluster_ip(t, out, allocate=False)
                    else:
                        out = self._insert(t, new)
                    self._send_json(h, 201, self._present(t, version, out, with_type=True), warnings)
                    return
                current = store.get(key)
                if current is None:
                    self._send_json(h, 404, _status(404, "NotFound", f'{t.plural} "{name}" not found'), warnings)
                    return
                assert old is not None
                if current["metadata"].get("resourceVersion") != old["metadata"].get("resourceVersion"):
                    continue        # changed while being admitted: again, from the current object
                out = new if dry else self._replace(t, key, new)
                self._send_json(h, 200, self._present(t, version, out, with_type=True), warnings)
                return
        self._send_json(h, 409, _status(409, "Conflict", f'Operation cannot be fulfilled on {t.plural} "{name}": '
                                        "the object kept changing while it was admitted"))

    def _webhooks_for(self, t: ResourceType, version: str, operation: str, obj: Obj,
                      old: Obj | None) -> list[tuple[str, Obj, str]]:
        """(configuration name, webhook, version matched) of every webhook that admits this request
        (the lock held): configurations by name, webhooks in their order. ValueError for what is
        not emulated."""
        if t.group == "admissionregistration.k8s.io":
            return []   # never called for webhook configurations themselves (no lock-out), as kube-apiserver
        out = []
        configs = self._objects.get(("admissionregistration.k8s.io", "validatingwebhookconfigurations"), {})
        for _, cfg in sorted(configs.items()):
            for hook in cfg.get("webhooks") or []:
                matched = _rule_version(hook, t, version, operation)
                if matched is None or not self._namespace_selected(hook, t, obj):
                    continue
                selector = hook.get("objectSelector")
                if not (_labels_selected(selector, _labels(obj))
                        or old is not None and _labels_selected(selector, _labels(old))):
                    continue
                if hook.get("matchConditions"):
                    raise ValueError(f'webhook "{hook.get("name")}": matchConditions (CEL) are not emulated')
                out.append((cfg["metadata"]["name"], copy.deepcopy(hook), matched))
        return out

    def _namespace_selected(self, hook: Obj, t: ResourceType, obj: Obj) -> bool:
        """namespaceSelector: on the labels of the object's namespace (a Namespace: its own labels;
        another cluster-scoped object always matches). A namespace that is not among the objects has
        only the label kubernetes.io/metadata.name, which the API server puts on every namespace."""
        md = obj.get("metadata") or {}
        if (t.group, t.plural) == ("", "namespaces"):
            labels = {**(md.get("labels") or {}), "kubernetes.io/metadata.name": md.get("name", "")}
        elif not t.namespaced:
            return True
        else:
            namespace = self._objects.get(("", "namespaces"), {}).get(("", md.get("namespace", "")))
            labels = {**_labels(namespace or {}), "kubernetes.io/metadata.name": md.get("namespace", "")}
        return _labels_selected(hook.get("namespaceSelector"), labels)

    def _admit(self, hooks: list[tuple[str, Obj, str]], t: ResourceType, version: str, operation: str,
               obj: Obj, old: Obj | None, dry: bool, options: Obj,
               user: Obj) -> tuple[Obj | None, list[str]]:
        """Call every webhook (no lock held), in order; (the refusal, as a Status, or None; the
        warnings). All are called, as kube-apiserver calls them all (in parallel); the first refusal
        in order is the answer."""
        refusals: list[Obj] = []
        warnings: list[str] = []
        md = obj.get("metadata") or {}
        namespace = md.get("namespace") if t.namespaced else (md.get("name") if t.plural == "namespaces" else None)
        for cfg_name, hook, matched in hooks:
            hook_name = hook.get("name", "")
            call: Obj = {"configuration": cfg_name, "webhook": hook_name, "operation": operation, "dryRun": dry,
                         "resource": t.plural, "namespace": namespace, "name": md.get("name"), "request": None}
            try:
                if dry and hook.get("sideEffects") not in ("None", "NoneOnDryRun"):
                    if hook.get("sideEffects") is None:
                        raise _CallFailed("Webhook SideEffects is nil")
                    refusals.append(_status(400, "BadRequest", f'admission webhook "{hook_name}" does not support '
                                                               "dry run"))
                    call["result"] = "error: does not support dry run"
                    continue
                review_version = next((v for v in hook.get("admissionReviewVersions") or []
                                       if v in ("v1", "v1beta1")), None)
                if review_version is None:
                    raise _CallFailed("webhook does not accept known AdmissionReview versions (v1, v1beta1)")
                request: Obj = {
                    "uid": str(uuid.uuid4()),
                    "kind": {"group": t.group, "version": matched, "kind": t.kind},
                    "resource": {"group": t.group, "version": matched, "resource": t.plural},
                    "requestKind": {"group": t.group, "version": version, "kind": t.kind},
                    "requestResource": {"group": t.group, "version": version, "resource": t.plural},
                    "name": md.get("name"),
                    "operation": operation,
                    "userInfo": user,
                    "object": self._present(t, matched, obj, with_type=True),
                    "oldObject": self._present(t, matched, old, with_type=True) if old is not None else None,
                    "dryRun": dry,
                    "options": options,
                }
                if namespace:
                    request["namespace"] = namespace
                call["request"] = request
                response = self._call_webhook(hook, {"apiVersion": f"admission.k8s.io/{review_version}",
                                                     "kind": "AdmissionReview", "request": request})
            except _CallFailed as e:
                detail = f'failed calling webhook "{hook_name}": {e}'
                call["result"] = f"error: {detail}"
                if hook.get("failurePolicy", "Fail") != "Ignore":
                    refusals.append(_internal_error(detail))
                continue
            finally:
                with self._lock:
                    self.admission_calls.append(call)
            warnings += [w for w in response.get("warnings") or [] if isinstance(w, str) and w not in warnings]
            if response.get("allowed") is True:
                call["result"] = "allowed"
            else:
                call["result"] = "denied"
                refusals.append(_denied(hook_name, response.get("status")))
        return (refusals[0] if refusals else None), warnings

    def _call_webhook(self, hook: Obj, review: Obj) -> Obj:
        """POST the AdmissionReview over HTTPS as kube-apiserver does; the verified `response`, or
        _CallFailed."""
        cc = hook.get("clientConfig") or {}
        timeout = float(hook.get("timeoutSeconds") or 10)
        if cc.get("url"):
            u = urlsplit(cc["url"])
            if u.scheme != "https" or not u.hostname:
                raise _CallFailed(f"webhook url {cc['url']!r} must be https://host[:port]/path")
            server_name, port = u.hostname, u.port or 443
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            address: tuple[str, int] | None = (u.hostname, port)
        elif cc.get("service"):
            svc = cc["service"]
            server_name, port = f"{svc.get('name')}.{svc.get('namespace')}.svc", int(svc.get("port") or 443)
            path = svc.get("path") or "/"
            with self._lock:
                address = self._service_routes.get((svc.get("namespace"), svc.get("name"), port))
        else:
            raise _CallFailed("clientConfig names neither url nor service")
        path += ("&" if "?" in path else "?") + f"timeout={timeout:g}s"
        shown = f'Post "https://{server_name}:{port}{path}"'
        if address is None:
            raise _CallFailed(f'failed to call webhook: {shown}: service "{svc.get("name")}" not found '
                              f"(the emulator has no route_service({svc.get('namespace')!r}, {svc.get('name')!r}, "
                              f"{port}))")
        try:
            ctx = (ssl.create_default_context(cadata=base64.b64decode(cc["caBundle"]).decode())
                   if cc.get("caBundle") else ssl.create_default_context())
        except (ValueError, ssl.SSLError) as e:
            raise _CallFailed(f"could not get REST client: unable to load root certificates: {e}") from e
        data = json.dumps(review).encode()
        try:
            raw = socket.create_connection(address, timeout=timeout)
            try:
                sock = ctx.wrap_socket(raw, server_hostname=server_name)
            except BaseException:
                raw.close()
                raise
            conn = http.client.HTTPConnection(server_name, port, timeout=timeout)
            conn.sock = sock
            try:
                conn.request("POST", path, body=data, headers={"Content-Type": "application/json",
                                                                "Accept": "application/json, */*"})
                resp = conn.getresponse()
                status, payload = resp.status, resp.read()
            finally:
                conn.close()
        except ssl.SSLCertVerificationError as e:
            raise _CallFailed(f"failed to call webhook: {shown}: tls: failed to verify certificate: "
                              f"{e.verify_message}") from e
        except TimeoutError as e:
            raise _CallFailed(f"failed to call webhook: {shown}: context deadline exceeded") from e
        except (OSError, http.client.HTTPException) as e:
            raise _CallFailed(f"failed to call webhook: {shown}: {e}") from e
        if status != 200:
            text = payload.decode("utf-8", "replace").strip()
            raise _CallFailed(f"failed to call webhook: the server responded with the status code {status}"
                              + (f': "{text[:200]}"' if text else " but did not return more information"))
        try:
            answer = json.loads(payload)
        except ValueError as e:
            raise _CallFailed(f"received invalid webhook response: {e}") from e
        if not isinstance(answer, dict):
            raise _CallFailed("received invalid webhook response: not an object")
        if answer.get("apiVersion") != review["apiVersion"] or answer.get("kind") != "AdmissionReview":
            raise _CallFailed(f"received invalid webhook response: expected webhook response of "
                              f"{review['apiVersion']}, Kind=AdmissionReview, got {answer.get('apiVersion')}, "
                              f"Kind={answer.get('kind')}")
        response = answer.get("response")
        if not isinstance(response, dict):
            raise _CallFailed("received invalid webhook response: webhook response was absent")
        if response.get("uid") != review["request"]["uid"]:
            raise _CallFailed(f'received invalid webhook response: expected response.uid="{review["request"]["uid"]}"'
                              f', got "{response.get("uid")}"')
        if response.get("patch"):
            raise _CallFailed("received invalid webhook response: validating webhook may not return response.patch")
        return response

    def _faulted(self, h: BaseHTTPRequestHandler, fault: Fault) -> bool:
        """Answer as `fault` says; False when the request is then served normally (a delay alone)."""
        if fault.delay:
            time.sleep(fault.delay)
        if fault.status:
            length = int(h.headers.get("Content-Length") or 0)
            if length:
                h.rfile.read(length)
            body = json.dumps(_status(fault.status, _REASONS.get(fault.status, "InternalError"),
                                      f"injected fault: {fault.status}")).encode()
            h.send_response(fault.status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            if fault.retry_after is not None:
                h.send_header("Retry-After", str(fault.retry_after))
            h.end_headers()
            h.wfile.write(body)
            return True
        if fault.body is not None:
            length = int(h.headers.get("Content-Length") or 0)
            if length:
                h.rfile.read(length)
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(fault.body)))
            h.end_headers()
            h.wfile.write(fault.body)
            return True
        if fault.endless is not None:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            chunk = f"{len(fault.endless):x}\r\n".encode() + fault.endless + b"\r\n"
            try:
                while not self._closing:
                    h.wfile.write(chunk)
            except OSError:
                pass            # the client went
            h.close_connection = True
            return True
        if fault.watch_end or fault.truncate:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            if fault.truncate:      # a chunk header promising more than is sent, then the connection goes
                line = b'{"type": "ADDED", "object": {"metadata": {"name": "half'
                h.wfile.write(f"{len(line) * 2:x}\r\n".encode() + line)
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
            else:
                self._end(h)
            return True
        return False

    def _present(self, t: ResourceType, version: str, obj: Obj, with_type: bool) -> Obj:
        o = copy.deepcopy(obj)
        if with_type:
            o["apiVersion"], o["kind"] = t.api_version(version), t.kind
        else:   # list items of built-in kinds carry no type fields on a real API server
            o.pop("apiVersion", None)
            o.pop("kind", None)
        return o

    def _matches(self, t: ResourceType, ns: str | None, obj: Obj,
                 terms: list[tuple[str, str, str, str]] | None = None) -> bool:
        in_ns = ns is None or not t.namespaced or obj["metadata"].get("namespace") == ns
        return in_ns and self._selected(obj, terms or [])

    def _list(self, h: BaseHTTPRequestHandler, t: ResourceType, version: str, ns: str | None,
              query: dict[str, str]) -> None:
        with self._lock:
            terms = self._selector(query)
            items = [o for _, o in sorted(self._objects.get((t.group, t.plural), {}).items())
                     if self._matches(t, ns, o, terms)]
            rv = self._rv
            start = 0
            if query.get("continue"):
                token = json.loads(base64.b64decode(query["continue"]))
                if token["rv"] < self._compacted:
                    self._send_json(h, 410, _status(410, "Expired", "The provided continue parameter is too old"))
                    return
                start, rv = token["start"], token["rv"]
            limit = int(query.get("limit") or 0)
            page = items[start:start + limit] if limit else items[start:]
            more = bool(limit) and start + limit < len(items)
            body = {
                "kind": f"{t.kind}List",
                "apiVersion": t.api_version(version),
                "metadata": {"resourceVersion": str(rv)},
                "items": [self._present(t, version, o, with_type=t.group not in BUILTIN_GROUPS) for o in page],
            }
            if more:
                body["metadata"]["continue"] = base64.b64encode(
                    json.dumps({"rv": rv, "start": start + limit}).encode()).decode()
        self._send_json(h, 200, body)

    def _watch(self, h: BaseHTTPRequestHandler, t: ResourceType, version: str, ns: str | None,
               query: dict[str, str]) -> None:
        sock = h.connection
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        terms = self._selector(query)
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._held and not self._closing:
                self._lock.wait(0.1)
            drop_gen, bm_gen = self._drop_gen, self._bookmark_gen
            self._sockets.add(sock)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(event: Obj) -> None:
            line = json.dumps(event).encode() + b"\n"
            h.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            h.wfile.flush()

        def present(o: Obj) -> Obj:
            return self._present(t, version, o, with_type=True)

        try:
            rv_param = query.get("resourceVersion") or "0"
            with self._lock:
                since = int(rv_param)
                if since == 0:      # "any": synthetic ADDED for the current state, then changes
                    initial = [present(o) for _, o in sorted(self._objects.get((t.group, t.plural), {}).items())
                               if self._matches(t, ns, o, terms)]
                    since = self._rv
                elif since < self._compacted:
                    initial = None
                elif since > self._rv:      # the watch cache has not reached it (after an etcd restore)
                    initial = "too large"
                else:
                    initial = []
            if initial == "too large":
                send({"type": "ERROR", "object": {**_status(504, "Timeout", f"Too large resource version: {since}, "
                                                            f"current: {self._rv}"),
                                                  "details": {"causes": [{"reason": "ResourceVersionTooLarge",
                                                                          "message": "Too large resource version"}],
                                                              "retryAfterSeconds": 1}}})
                self._end(h)
                return
            if initial is None:
                send({"type": "ERROR", "object": _status(
                    410, "Expired", f"too old resource version: {since} ({self._compacted})")})
                self._end(h)
                return
            for o in initial:
                send({"type": "ADDED", "object": o})
            last_bookmark = time.monotonic()
            while True:
                with self._lock:
                    pending = [(rv, et, o) for rv, rt, et, o in self._events
                               if rt == (t.group, t.plural) and rv > since and self._matches(t, ns, o, terms)]
                    if not pending:
                        self._lock.wait(0.05)
                    dropped = self._drop_gen != drop_gen or self._closing
                    want_bookmark = bookmarks and (self._bookmark_gen != bm_gen or (
                        self._bookmark_interval is not None
                        and time.monotonic() - last_bookmark >= self._bookmark_interval))
                    bm_gen = self._bookmark_gen
                    current = self._rv
                if dropped:
                    raise _Dropped()
                for rv, et, o in pending:
                    send({"type": et, "object": present(o)})
                    since = rv
                if want_bookmark:
                    since = max(since, current)
                    send({"type": "BOOKMARK", "object": {
                        "kind": t.kind, "apiVersion": t.api_version(version),
                        "metadata": {"resourceVersion": str(current)}}})
                    last_bookmark = time.monotonic()
                if time.monotonic() >= deadline:
                    self._end(h)
                    return
        except (_Dropped, OSError):
            h.close_connection = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        finally:
            with self._lock:
                self._sockets.discard(sock)

    def _end(self, h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()


def _merge_by(old: list[Any], patch: list[Any], key: str) -> list[Any]:
    """A strategic merge patch's list with a merge key: entries of `patch` replace (merged into) the
    entries of `old` with the same `key`, the others are appended; `old`'s others are kept."""
    out = [copy.deepcopy(o) for o in old]
    for p in patch:
        i = next((i for i, o in enumerate(out) if isinstance(o, dict) and isinstance(p, dict)
                  and o.get(key) == p.get(key)), None)
        if i is None:
            out.append(copy.deepcopy(p))
        else:
            out[i] = _merge_patch(out[i], p)
    return out


def _write_only_fields(kind: str, o: Obj) -> None:
    """As the API server does: a Secret's `stringData` is merged into `data` (base64, over the keys
    `data` has) and is never stored nor returned."""
    if kind == "Secret" and "stringData" in o:
        data = dict(o.get("data") or {})
        for k, v in (o.pop("stringData") or {}).items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        o["data"] = data


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


def _labels(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _labels_selected(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (absent or empty: everything) on `labels`; ValueError for an unknown operator."""
    for k, v in ((selector or {}).get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in (selector or {}).get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = labels.get(key) not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            raise ValueError(f"label selector operator {op!r} is not valid (In, NotIn, Exists, DoesNotExist)")
        if not ok:
            return False
    return True


def _rule_matches(rule: Obj, t: ResourceType, version: str, operation: str) -> bool:
    """One RuleWithOperations on a request for the object itself (no subresource): a bare `*`
    resource matches no subresource, `*/*` and `plural/*` match the object too."""
    def has(field: str, value: str) -> bool:
        return any(v in ("*", value) for v in rule.get(field) or [])

    resources = [r.split("/", 1) + [""] for r in rule.get("resources") or []]
    scope = rule.get("scope") or "*"
    return (has("operations", operation) and has("apiGroups", t.group) and has("apiVersions", version)
            and any(r in ("*", t.plural) and sub in ("*", "") for r, sub, *_ in resources)
            and (scope == "*" or (scope == "Namespaced") == t.namespaced))


def _rule_version(hook: Obj, t: ResourceType, version: str, operation: str) -> str | None:
    """The version at which one of the webhook's rules matches the request: the request's own, or
    with matchPolicy Equivalent (the default) another version of the same resource (the object is
    then sent at that version, as kube-apiserver converts it); None if none matches."""
    versions = [version] + ([v for v in t.versions if v != version]
                            if (hook.get("matchPolicy") or "Equivalent") == "Equivalent" else [])
    return next((v for v in versions if any(_rule_matches(r, t, v, operation) for r in hook.get("rules") or [])),
                None)


def _denied(webhook: str, result: Obj | None) -> Obj:
    """A webhook's refusal as kube-apiserver answers it (apiserver webhook/errors ToStatusErr)."""
    result = result if isinstance(result, dict) else {}
    code = result.get("code") if isinstance(result.get("code"), int) and result["code"] >= 400 else 400
    denied = f'admission webhook "{webhook}" denied the request'
    if result.get("message"):
        message = f"{denied}: {result['message']}"
    elif result.get("reason"):
        message = f"{denied}: {result['reason']}"
    else:
        message = f"{denied} without explanation"
    out: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "code": code}
    for f in ("reason", "details"):
        if result.get(f):
            out[f] = result[f]
    return out


def _internal_error(detail: str) -> Obj:
    """apierrors.NewInternalError: 500 InternalError."""
    return {**_status(500, "InternalError", f"Internal error occurred: {detail}"),
            "details": {"causes": [{"message": detail}]}}


def _warning_header(text: str) -> str:
    """A `Warning` header value as kube-apiserver sends one: `299 - "text"`, quotes and backslashes
    escaped, control characters dropped; UTF-8 bytes carried as latin-1 (what http.server encodes)."""
    text = "".join(c if c >= " " and c != "\x7f" else " " for c in text)
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{quoted}"'.encode().decode("latin-1")
