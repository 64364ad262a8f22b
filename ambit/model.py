"""The mesh model: typed resources that the controller computes and the data plane consumes.

These are what travel over the config stream (as JSON bodies), so every type round-trips through
`to_dict`/`from_dict`. They are deliberately flat and already resolved: ztunnel should never need
to re-read Kubernetes objects or re-run selectors on its hot path.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Resource")


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


class Resource:
    """Base for stream resources: a type URL, a stable name, and JSON round-tripping."""

    TYPE: ClassVar[str] = ""
    # No instance dict of its own: a subclass declared with slots (one instance per pod) then has
    # none either; the others keep theirs.
    __slots__ = ()

    @property
    def resource_name(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Equal to `dataclasses.asdict(self)`, without its deep copy of every string: the
        controller encodes every resource of every snapshot (10,000 workloads)."""
        return _as_dict(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        return _from_dict(cls, d)


_ATOM_TYPES = frozenset((str, int, float, bool, type(None)))   # what asdict's deepcopy returns as it is
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _as_dict(obj: Any) -> Any:
    """`dataclasses.asdict`'s conversion (dataclasses to dicts, containers rebuilt as their own
    type, anything else deep-copied), with the field names cached per class and immutable
    scalars kept as they are."""
    cls = type(obj)
    if cls in _ATOM_TYPES:
        return obj
    if cls is list:         # before the dataclass check: lists and dicts are most of the calls
        return [v if type(v) in _ATOM_TYPES else _as_dict(v) for v in obj]
    if cls is dict:
        return {k if type(k) in _ATOM_TYPES else _as_dict(k): v if type(v) in _ATOM_TYPES else _as_dict(v)
                for k, v in obj.items()}
    names = _FIELD_NAMES.get(cls)
    if names is None and dataclasses.is_dataclass(cls):
        names = _FIELD_NAMES.setdefault(cls, tuple(f.name for f in dataclasses.fields(cls)))
    if names is not None:
        return {n: v if type(v := getattr(obj, n)) in _ATOM_TYPES else _as_dict(v) for n in names}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return cls(*[_as_dict(v) for v in obj])
    if isinstance(obj, (list, tuple)):
        return cls(_as_dict(v) for v in obj)
    if isinstance(obj, dict):
        return cls((_as_dict(k), _as_dict(v)) for k, v in obj.items())
    return copy.deepcopy(obj)


def _from_dict(cls: Any, d: Any) -> Any:
    if not dataclasses.is_dataclass(cls) or not isinstance(d, dict):
        return d
    plan = _plan(cls)
    kwargs = {}
    for name, klass, many, spec in plan:
        if name not in d:
            continue
        v = d[name]
        if spec is not None and type(v) not in spec[0] and not (v is None and spec[2]):
            _wrong_type(cls, name, spec, v)
        if klass is None:
            if spec is not None and spec[1] is not None and v:
                _check_items(cls, name, spec, v)
            kwargs[name] = v if type(v) in _ATOM_TYPES and type(v) is not str else _share(v)
        elif many:
            kwargs[name] = [_from_dict(klass, _an_object(cls, name, x)) for x in v]
        else:
            kwargs[name] = None if v is None else _from_dict(klass, v)
    if len(d) > len(kwargs):
        _unknown_fields(cls, d, _PLAN_NAMES[cls], kwargs)
    return cls(**kwargs)


# What a field's JSON value may be, by its annotation: (the types of the value, of its items (a
# dict's values) or None for unchecked, whether null is allowed). A body that does not fit is a
# DecodeError naming the field (the client NACKs it), not a string where a list of ports goes that
# ztunnel then iterates character by character, or an int compared with a str in an index.
_JSON_TYPES: dict[str, tuple[frozenset[type], frozenset[type] | None]] = {
    "str": (frozenset({str}), None),
    "int": (frozenset({int}), None),
    "float": (frozenset({int, float}), None),
    "bool": (frozenset({bool}), None),
    "list[str]": (frozenset({list}), frozenset({str})),
    "list[int]": (frozenset({list}), frozenset({int})),
    "dict[str, str]": (frozenset({dict}), frozenset({str})),
    "dict[str, list[str]]": (frozenset({dict}), frozenset({list})),
    "dict[str, list[int]]": (frozenset({dict}), frozenset({list})),
    "list[dict[str, str]]": (frozenset({list}), frozenset({dict})),
    "list[dict[str, Any]]": (frozenset({list}), frozenset({dict})),
    "list[list[str]]": (frozenset({list}), frozenset({list})),
    "list[list[Any]]": (frozenset({list}), frozenset({list})),
    "dict[str, Any]": (frozenset({dict}), None),
    "dict[str, dict[str, Any]]": (frozenset({dict}), frozenset({dict})),
    "dict[int, str]": (frozenset({dict}), frozenset({str})),
}
Spec = tuple[frozenset[type], frozenset[type] | None, bool, str]


def _spec_of(tp: str, klass: Any, many: bool) -> Spec | None:
    optional = tp.endswith(" | None")
    base = tp[:-len(" | None")] if optional else tp
    if klass is not None:
        return (frozenset({list}), None, False, tp) if many else (frozenset({dict}), None, optional, tp)
    known = _JSON_TYPES.get(base)
    return None if known is None else (known[0], known[1], optional, tp)


def _wrong_type(cls: Any, name: str, spec: Spec, v: Any) -> None:
    shown = repr(v)
    raise TypeError(f"{cls.__name__}.{name}: expected {spec[3]}, got {type(v).__name__} "
                    f"{shown[:60]}{'...' if len(shown) > 60 else ''}")


def _check_items(cls: Any, name: str, spec: Spec, v: Any) -> None:
    items, inner = (v.values() if type(v) is dict else v), spec[1]
    for x in items:
        if type(x) not in inner:       # type: ignore[operator]
            _wrong_type(cls, f"{name}[...]", (inner, None, False, spec[3]), x)   # type: ignore[arg-type]
        if type(x) is list and spec[3] in ("dict[str, list[int]]", "dict[str, list[str]]", "list[list[str]]"):
            want = int if spec[3] == "dict[str, list[int]]" else str
            if any(type(y) is not want for y in x):
                raise TypeError(f"{cls.__name__}.{name}: expected {spec[3]}, got an item {_shown_list(x)}")


def _shown_list(x: list[Any]) -> str:
    s = repr(x)
    return s[:60] + ("..." if len(s) > 60 else "")


def _an_object(cls: Any, name: str, x: Any) -> Any:
    if type(x) is not dict:
        shown = repr(x)
        raise TypeError(f"{cls.__name__}.{name}: expected a list of objects, got an item {shown[:60]}")
    return x


_PLANS: dict[type, tuple[tuple[str, Any, bool, Spec | None], ...]] = {}
_PLAN_NAMES: dict[type, frozenset[str]] = {}


def _plan(cls: Any) -> tuple[tuple[str, Any, bool, Spec | None], ...]:
    """Per field of `cls`: (name, the model class it holds or None, whether a list of them, what its
    JSON value may be); made once per class, since a decode of 10,000 workloads would otherwise
    match every field's type against every nested class's name again for each one."""
    plan = _PLANS.get(cls)
    if plan is None:
        out = []
        for f in dataclasses.fields(cls):
            tp_s = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            klass, many = None, False
            for name, k in _NESTED.items():
                if tp_s == f"list[{name}]":
                    klass, many = k, True
                    break
                if tp_s in (name, f"{name} | None"):
                    klass = k
                    break
            out.append((f.name, klass, many, _spec_of(tp_s, klass, many)))
        _PLAN_NAMES[cls] = frozenset(n for n, _, _, _ in out)
        plan = _PLANS[cls] = tuple(out)
    return plan


def _share(v: Any) -> Any:
    """A decoded JSON value with its strings interned (lists and dicts rebuilt, equal): a data
    plane decodes each resource's body on its own, so without this every workload holds its own
    copy of its namespace, node, labels, identity and annotations, and every endpoint its own copy
    of its workload's uid and IP (at 10,000 pods about a third of a waypoint's or ztunnel's config,
    docs/performance.md, "The waypoint and the node agent at 10,000 pods")."""
    t = type(v)
    if t is str:
        return sys.intern(v)
    if t is list:
        return [_share(x) for x in v]
    if t is dict:
        return {sys.intern(k) if type(k) is str else k: _share(x) for k, x in v.items()}
    return v


UNKNOWN_FIELD = "a field this version of Ambit does not know"
# The set fields of a body that a client may ignore if it does not know them: a resource class
# lists its top-level ones in `ADVISORY` (fields that only refine behaviour, never narrow what a
# policy allows), and the wire encoder (ambit/configclient/codec.py) names those that are set under
# this key, so an older client that meets them ignores them instead of NACKing every update of
# that type until it is upgraded (docs/config-stream.md, "Version skew").
ADVISORY_KEY = "_advisory"


def wire_dict(resource: Resource) -> dict[str, Any]:
    """`resource.to_dict()`, with the set advisory fields of it and of the objects inside it named
    under `ADVISORY_KEY` in their own dicts (a reader checks unknown fields at every level)."""
    d = resource.to_dict()
    _mark_advisory(resource, d)
    return d


def _mark_advisory(obj: Any, d: dict[str, Any]) -> None:
    advisory = getattr(type(obj), "ADVISORY", ())
    if advisory and (set_ := [n for n in advisory if not _is_zero(d[n])]):
        d[ADVISORY_KEY] = set_
    for name, many in _advisory_fields(type(obj)):
        v = getattr(obj, name)
        if many:
            for item, sub in zip(v, d[name], strict=True):
                _mark_advisory(item, sub)
        elif v is not None:
            _mark_advisory(v, d[name])


_ADVISORY_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {}


def _advisory_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    """The fields of `cls` that hold (a list of) a model class with advisory fields at some depth,
    and whether each is a list; cached, so a class with none costs one lookup."""
    found = _ADVISORY_FIELDS.get(cls)
    if found is not None:
        return found
    _ADVISORY_FIELDS[cls] = ()      # a class that contains itself ends here
    out = []
    for f in dataclasses.fields(cls):
        tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        for name, klass in _NESTED.items():
            many = tp == f"list[{name}]"
            if (many or tp in (name, f"{name} | None")) and (getattr(klass, "ADVISORY", ()) or _advisory_fields(klass)):
                out.append((f.name, many))
    _ADVISORY_FIELDS[cls] = found = tuple(out)
    return found


def _unknown_fields(cls: Any, d: dict[str, Any], hints: Collection[str], kwargs: dict[str, Any]) -> None:
    """Fields of a newer controller (version skew: the control plane is upgraded first).

    `to_dict` writes every field, so a field added in a newer version reaches an older client in
    every body, at its default when it is not used: a zero value (empty, false, 0, null) means the
    field is not in use, and is ignored. A set field is never dropped silently, since it may narrow
    what a policy allows: in a `Match` it becomes an `unsupported` attribute (never proves an ALLOW,
    always matches in a DENY or AUDIT, as for attributes Ambit cannot evaluate); anywhere else it
    raises ValueError naming it, so the client rejects (NACKs) the update and keeps its last good
    state, unless the sender lists it under `ADVISORY_KEY` (a field its class declares safe to
    ignore). A newly added field must therefore default to a zero value meaning "as before"
    (docs/config-stream.md, "Version skew").
    """
    advisory = d.get(ADVISORY_KEY)
    if not (isinstance(advisory, list) and all(isinstance(a, str) for a in advisory)):
        advisory = ()
    unknown = sorted(k for k, v in d.items()
                     if k not in hints and k != ADVISORY_KEY and k not in advisory and not _is_zero(v))
    if not unknown:
        return
    if cls is Match:
        kwargs["unsupported"] = [*kwargs.get("unsupported", ()), *(f"{k} ({UNKNOWN_FIELD})" for k in unknown)]
        return
    k = unknown[0]
    shown = repr(d[k])
    raise ValueError(f"{cls.__name__}.{k}: {UNKNOWN_FIELD} (set to {shown[:80]}{'...' if len(shown) > 80 else ''}; "
                     "sent by a newer controller? upgrade this component)")


def _is_zero(v: Any) -> bool:
    return v is None or v is False or v == 0 or v == "" or (isinstance(v, (list, dict)) and not v)


@dataclass(slots=True, weakref_slot=True)   # one per pod: no instance dict (docs/performance.md)
class ServicePort:
    port: int
    target_port: int
    name: str = ""
    protocol: str = "TCP"       # TCP | HTTP | HTTP2 | GRPC (from appProtocol or name prefix)
    target_port_name: str = ""  # set when the Service names its targetPort ("http"); see Endpoint.ports


@dataclass(slots=True, weakref_slot=True)   # one per pod: no instance dict (docs/performance.md)
class Endpoint:
    workload_uid: str
    ip: str
    node: str = ""
    ready: bool = True
    # Only when the Service uses named targetPorts: this endpoint's own resolution of them (pods of
    # one Service may map a name to different numbers). Empty means "use Service.ports".
    ports: list[ServicePort] = field(default_factory=list)
    # ServiceEntry endpoints only: a DNS name ztunnel resolves when it dials (resolution DNS; `ip`
    # is then ""), the relative weight (0: 1) and the endpoint's labels (DestinationRule subsets).
    hostname: str = ""
    weight: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    # ServiceEntry endpoints only: `locality` ("region/zone/subzone"), where the endpoint runs for
    # traffic distribution and locality balancing (a pod endpoint's is its Workload's). Advisory:
    # an older data plane balances without it.
    locality: str = ""

    ADVISORY: ClassVar[tuple[str, ...]] = ("locality",)


def target_port(p: ServicePort, ep: Endpoint) -> int:
    """The endpoint's port for a Service port: the endpoint's own resolution of a named targetPort
    (or a ServiceEntry endpoint's `ports`) wins; without targetPort it is the Service port's number."""
    for own in ep.ports:
        if own.port == p.port and own.target_port:
            return own.target_port
    return p.target_port or p.port


@dataclass(slots=True, weakref_slot=True)   # one per pod: no instance dict (docs/performance.md)
class Service(Resource):
    """A Kubernetes Service as the data plane needs it: VIPs, ports and resolved endpoints."""

    TYPE: ClassVar[str] = "ambit.io/Service"
    name: str
    namespace: str
    hostname: str                       # name.ns.svc.cluster.local
    vips: list[str] = field(default_factory=list)
    ports: list[ServicePort] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    waypoint: str = ""                  # "ns/name" of the waypoint Gateway, or ""
    # A ServiceEntry host is a Service too (one per host, named by the host, as Istio's ztunnel
    # does): `kind` "ServiceEntry", `location` MESH_EXTERNAL (never HBONE) or MESH_INTERNAL,
    # `resolution` NONE (to the original destination) / STATIC / DNS, CIDR `subnets` besides the
    # VIPs, and `export_to` the namespaces that see it (empty: all; Istio's exportTo resolved).
    kind: str = "Service"
    location: str = ""
    resolution: str = ""
    subnets: list[str] = field(default_factory=list)
    export_to: list[str] = field(default_factory=list)
    # Kubernetes `internalTrafficPolicy: Local`: a client reaches only the endpoints on its own
    # node, and none when its node has none (kube-proxy's rule; Istio's ztunnel applies it as a
    # strict NODE routing preference). ztunnel takes over Service balancing from kube-proxy for
    # enrolled pods, so it must apply it too.
    node_local: bool = False
    # Which endpoints a client prefers (Kubernetes `trafficDistribution`, else Istio's
    # `networking.istio.io/traffic-distribution` annotation on the Service, else on its namespace):
    # "PreferSameZone" (also for PreferClose) or "PreferSameNode"; "" spreads over every endpoint.
    # ztunnel keeps the endpoints that share most of the client's region, zone (subzone, node);
    # a waypoint fails over by the same scopes, on endpoint readiness, as Istio configures Envoy.
    # Advisory: a preference, so an older data plane that ignores it still balances correctly.
    traffic_distribution: str = ""

    ADVISORY: ClassVar[tuple[str, ...]] = ("traffic_distribution",)

    @property
    def resource_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def external(self) -> bool:
        return self.location == "MESH_EXTERNAL"

    def visible_to(self, namespace: str) -> bool:
        """exportTo: a ServiceEntry exported to some namespaces is invisible to the others (and
        routing treats it as absent for their pods)."""
        return not self.export_to or "*" in self.export_to or namespace in self.export_to


@dataclass(slots=True, weakref_slot=True)   # one per pod: no instance dict (docs/performance.md)
class Workload(Resource):
    """A pod as the data plane needs it."""

    TYPE: ClassVar[str] = "ambit.io/Workload"
    # Set fields an older client may ignore (ADVISORY_KEY): where a pod runs only refines balancing.
    ADVISORY: ClassVar[tuple[str, ...]] = ("locality",)
    uid: str
    name: str
    namespace: str
    ips: list[str]
    node: str
    service_account: str
    identity: str                       # SPIFFE id
    labels: dict[str, str] = field(default_factory=dict)
    enrolled: bool = False              # ambient capture applies (namespace label, no pod opt-out)
    waypoint: str = ""
    protocol: str = "HBONE"             # HBONE for enrolled pods, TCP otherwise
    services: dict[str, list[int]] = field(default_factory=dict)  # "ns/name" -> service ports
    annotations: dict[str, str] = field(default_factory=dict)
    probe_ports: list[int] = field(default_factory=list)  # kubelet probes' ports (ambit.probes)
    netns: str = ""                     # lab only: the pod's netns path
    cgroup: str = ""                    # lab only: the pod's cgroup path
    # "region/zone/subzone" from its node's topology labels (or the pod's `istio-locality` label):
    # locality load balancing at the waypoint. "": unknown, which balances as before (one locality).
    locality: str = ""

    @property
    def resource_name(self) -> str:
        return self.uid


@dataclass
class Match:
    """One match set. Empty lists mean "any"; not_* lists exclude.

    The L4 fields are all ztunnel reads. The HTTP fields (methods .. unsupported) are set only in
    `Authorization.http_rules`, which waypoints evaluate; ztunnel never sees them set."""

    principals: list[str] = field(default_factory=list)
    not_principals: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    not_namespaces: list[str] = field(default_factory=list)
    # `trustDomains` / `source.trustDomain`: the trust domain of the peer's SPIFFE id, as written
    # (exact, `prefix*`, `*suffix`, `*`); the proxies expand the mesh's trust domain and aliases.
    trust_domains: list[str] = field(default_factory=list)
    not_trust_domains: list[str] = field(default_factory=list)
    ip_blocks: list[str] = field(default_factory=list)
    not_ip_blocks: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    not_ports: list[int] = field(default_factory=list)
    destination_ips: list[str] = field(default_factory=list)       # `when: destination.ip`
    not_destination_ips: list[str] = field(default_factory=list)
    # -- HTTP attributes (waypoints only) --
    methods: list[str] = field(default_factory=list)
    not_methods: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    not_paths: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    not_hosts: list[str] = field(default_factory=list)
    remote_ip_blocks: list[str] = field(default_factory=list)      # remoteIpBlocks, `when: remote.ip`
    not_remote_ip_blocks: list[str] = field(default_factory=list)
    request_headers: dict[str, list[str]] = field(default_factory=dict)     # `when: request.headers[name]`
    not_request_headers: dict[str, list[str]] = field(default_factory=dict)
    # -- end-user (JWT) attributes, from the waypoint's RequestAuthentication (waypoint/authn) --
    request_principals: list[str] = field(default_factory=list)     # "<iss>/<sub>"
    not_request_principals: list[str] = field(default_factory=list)
    # `when` on request.auth.principal / audiences / presenter / claims[a][b]: the key -> values
    auth: dict[str, list[str]] = field(default_factory=dict)
    not_auth: dict[str, list[str]] = field(default_factory=dict)
    # Attributes Ambit cannot evaluate (connection.sni, experimental.*), and fields set by a newer
    # controller that this version does not know (`_unknown_fields`; the only way it is set in an
    # L4 rule, so ztunnel honours it too): they never prove an ALLOW and always count as matched
    # in a DENY or AUDIT (fail safe).
    unsupported: list[str] = field(default_factory=list)


@dataclass
class Rule:
    """A rule matches when every clause matches (AND); a clause is a list of alternatives (OR).

    `has_l7`: this is only the L4 part of a rule that also has HTTP attributes. ztunnel skips such
    rules in ALLOW policies and applies them (L4 part only, i.e. more broadly) in DENY policies,
    as Istio's ztunnel does.
    """

    clauses: list[list[Match]] = field(default_factory=list)
    has_l7: bool = False


@dataclass
class Authorization(Resource):
    """An AuthorizationPolicy reduced to what ztunnel enforces at L4.

    `has_l7` marks policies whose rules use HTTP attributes (methods, paths, headers, ...).
    Without a waypoint ztunnel cannot evaluate those, so an ALLOW with L7 rules matches nothing and
    a DENY with L7 rules matches everything (fail safe), and the log says why.
    """

    TYPE: ClassVar[str] = "ambit.io/Authorization"
    name: str
    namespace: str
    action: str                         # ALLOW | DENY | AUDIT
    scope: str = "namespace"            # global (root ns) | namespace | workload | waypoint (targetRefs)
    selector: dict[str, str] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    has_l7: bool = False
    l7_rules: list[dict[str, Any]] = field(default_factory=list)  # kept verbatim for waypoints
    target_refs: list[dict[str, str]] = field(default_factory=list)  # scope "waypoint": Gateway/Service refs
    # Scope "waypoint" only: every rule in full (L4 and HTTP attributes in the same Matches), in
    # the policy's order, for waypoints. `rules` stays the L4 view ztunnel enforces.
    http_rules: list[Rule] = field(default_factory=list)
    # action CUSTOM only: the MeshConfig extension provider (`ExtAuthzProvider.name`) a request the
    # rules match is checked with. Not advisory: a waypoint that does not know it NACKs the policy
    # (as it NACKs the CUSTOM action), rather than skip a check written to deny.
    provider: str = ""
    # istio.io/dry-run: evaluated and reported, never enforced. ztunnels are sent none (Istio's
    # control plane gives its ztunnel none); a waypoint reports what it would decide (the access
    # log's `dry_run`). Not advisory: a waypoint that cannot tell would enforce it (NACKs instead).
    dry_run: bool = False

    @property
    def resource_name(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class JwtRule:
    """One RequestAuthentication `jwtRules` entry, resolved: `jwks` is always the key set itself
    (inline in the policy, or fetched from `jwks_uri` by the controller, as istiod inlines it), so
    a waypoint never fetches. `jwks_error` says why a `jwksUri` could not be fetched: tokens of
    this issuer are then refused (fail closed, as istiod does with its placeholder key set)."""

    issuer: str
    audiences: list[str] = field(default_factory=list)
    jwks: str = ""
    jwks_uri: str = ""
    jwks_error: str = ""
    from_headers: list[dict[str, str]] = field(default_factory=list)   # {"name", "prefix"}
    from_params: list[str] = field(default_factory=list)
    from_cookies: list[str] = field(default_factory=list)
    forward_original_token: bool = False
    output_payload_to_header: str = ""
    output_claim_to_headers: list[dict[str, str]] = field(default_factory=list)   # {"header", "claim"}
    # claims read as space-separated words besides `scope` and `permission` (ambit/jwtclaims.py)
    space_delimited_claims: list[str] = field(default_factory=list)


@dataclass
class RequestAuthn(Resource):
    """A RequestAuthentication for waypoints: the JWT rules and where they apply (`target_refs`,
    scope "waypoint"; other scopes are reported by the controller and enforced nowhere)."""

    TYPE: ClassVar[str] = "ambit.io/RequestAuthn"
    name: str
    namespace: str
    scope: str = "namespace"
    selector: dict[str, str] = field(default_factory=dict)
    target_refs: list[dict[str, str]] = field(default_factory=list)
    rules: list[JwtRule] = field(default_factory=list)

    @property
    def resource_name(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class PeerAuthn(Resource):
    """PeerAuthentication: STRICT | PERMISSIVE | DISABLE (| UNSET), with port overrides."""

    TYPE: ClassVar[str] = "ambit.io/PeerAuthn"
    name: str
    namespace: str
    mode: str = "UNSET"
    selector: dict[str, str] = field(default_factory=dict)
    port_modes: dict[int, str] = field(default_factory=dict)
    root: bool = False                  # in the mesh root namespace: applies mesh-wide

    @property
    def resource_name(self) -> str:
        return f"{self.namespace}/{self.name}"


# -- waypoint (L7) configuration ------------------------------------------------------------------
# VirtualService, HTTPRoute, GRPCRoute and DestinationRule all normalise into these, so a waypoint
# implements one routing model. Durations are seconds (float); 0 means "not set".


@dataclass
class StringMatch:
    """kind: exact | prefix | path_prefix (Gateway API: whole path segments) | regex | present."""

    kind: str
    value: str = ""
    ignore_case: bool = False


@dataclass
class HeaderMatch:
    name: str
    match: StringMatch | None = None    # None: the header (or query parameter) must be present
    invert: bool = False                # VirtualService withoutHeaders: must NOT match
    # a VirtualService `@request.auth.claims` name: the verified JWT's claim at this path is matched
    # instead of a header (`name` keeps the name as written, for dumps; ambit/jwtclaims.py)
    claim: list[str] = field(default_factory=list)


@dataclass
class HttpMatch:
    """Everything set must match (AND). A route matches when any of its HttpMatch does (OR)."""

    path: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    scheme: StringMatch | None = None
    headers: list[HeaderMatch] = field(default_factory=list)
    query: list[HeaderMatch] = field(default_factory=list)
    port: int = 0
    source_labels: dict[str, str] = field(default_factory=dict)
    source_namespace: str = ""


@dataclass
class HeaderRewrite:
    request_set: dict[str, str] = field(default_factory=dict)
    request_add: dict[str, str] = field(default_factory=dict)
    request_remove: list[str] = field(default_factory=list)
    response_set: dict[str, str] = field(default_factory=dict)
    response_add: dict[str, str] = field(default_factory=dict)
    response_remove: list[str] = field(default_factory=list)


@dataclass
class RouteDestination:
    host: str                           # FQDN (short names resolved against the route's namespace)
    service: str = ""                   # "ns/name" when host is a known Service
    subset: str = ""
    port: int = 0                       # 0: the port the request arrived on
    weight: int = 1                     # relative weight among the route's destinations
    headers: HeaderRewrite | None = None
    # Gateway API filters on a backendRef, applied when this destination is the one chosen: a
    # RequestRedirect answers in place of forwarding, a URLRewrite replaces the route's. A waypoint
    # older than these fields NACKs a route setting them and keeps its last good routes.
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None


@dataclass
class Redirect:
    scheme: str = ""
    authority: str = ""
    port: int = 0
    path: str = ""
    path_mode: str = "full"             # full | prefix (replace the matched prefix)
    code: int = 301
    # No `port`: "" keeps the request's port (Envoy), FROM_REQUEST_PORT uses the port the request
    # came in on, FROM_PROTOCOL_DEFAULT the scheme's default (Istio HTTPRedirect.derivePort).
    derive_port: str = ""


@dataclass
class Rewrite:
    path: str = ""
    path_mode: str = "prefix"           # prefix: replace the matched prefix (whole path if none) | full
    authority: str = ""
    regex: str = ""                     # uriRegexRewrite
    regex_substitution: str = ""


@dataclass
class Retry:
    attempts: int = 0
    per_try_timeout: float = 0.0
    retry_on: list[str] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    backoff: float = 0.0
    ignore_previous_hosts: bool = True  # retryIgnorePreviousHosts (Istio's default: true)
    # retryRemoteLocalities: retries move off the locality priorities already tried (Envoy's
    # previous_priorities, update_frequency 2). False: as before; a waypoint older than this field
    # NACKs a route setting it and keeps its last good routes.
    remote_localities: bool = False
    # Gateway API `retry.backoff` is the least a retry waits ("not retried before the configured
    # minimum duration"); Istio's `backoff` is Envoy's base interval, whose full jitter waits
    # [0, base) before the first retry. True: each wait is at least `backoff`. A waypoint older
    # than this field NACKs a route setting it and keeps its last good routes.
    min_backoff: bool = False


@dataclass
class Fault:
    delay: float = 0.0
    delay_percent: float = 0.0
    abort_status: int = 0
    abort_grpc_status: str = ""
    abort_percent: float = 0.0


@dataclass
class Mirror:
    destination: RouteDestination
    percent: float = 100.0


@dataclass
class DirectResponse:
    """A route's local answer. Its body is text (`body`: VirtualService `body.string`, sent UTF-8
    encoded) or binary (`body_base64`: `body.bytes` as the VirtualService gives it, since the model
    travels as JSON, which has no bytes); `payload` is exactly what goes on the wire. A waypoint
    older than `body_base64` ignores it and answers such a route with an empty body."""

    status: int
    body: str = ""
    body_base64: str = ""

    @functools.cached_property
    def payload(self) -> bytes:
        return base64.b64decode(self.body_base64) if self.body_base64 else self.body.encode()


@dataclass
class SessionPersistence:
    """A Gateway API route rule's `sessionPersistence` (GEP-1619), as the waypoint applies it:
    Envoy's stateful session (cookie or header based session state). The value the client sends
    back names the endpoint that served the session (base64 of "ip:port", with its expiry when
    `absolute_timeout` is set); the waypoint sends requests carrying a valid value to that endpoint
    while it is still a ready, not ejected endpoint of the rule's backends, and otherwise balances
    as usual and sets a new value (waypoint/traffic/session.py). A waypoint older than this field
    NACKs a route that sets it (docs/config-stream.md, "Version skew")."""

    name: str                           # the cookie or header name (generated per rule when unnamed)
    header: bool = False                # type Header: the value travels in header `name`; else a cookie
    path: str = "/"                     # the cookie's Path
    absolute_timeout: float = 0.0       # seconds a session lasts from when it was pinned; 0: no limit
    permanent: bool = False             # cookie lifetimeType Permanent: Max-Age=absolute_timeout


@dataclass
class HttpRoute:
    """One route; the first route (in list order) whose matches match wins."""

    name: str = ""
    source: str = ""                    # Kind/namespace/name of the object it came from
    matches: list[HttpMatch] = field(default_factory=list)   # empty: matches every request
    destinations: list[RouteDestination] = field(default_factory=list)
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite: Rewrite | None = None
    timeout: float = 0.0                # VirtualService timeout / HTTPRoute timeouts.request; 0: none
    backend_timeout: float = 0.0        # HTTPRoute timeouts.backendRequest: each try's timeout
    retries: Retry | None = None        # None: the data plane's default policy
    fault: Fault | None = None
    mirrors: list[Mirror] = field(default_factory=list)
    headers: HeaderRewrite | None = None
    # Istio's corsPolicy by its field names: a VirtualService's verbatim, an HTTPRoute CORS filter's
    # translated (origins as {"origin": pattern}); applied by waypoint/routing/cors.py
    cors: dict[str, Any] | None = None
    grpc: bool = False
    session: SessionPersistence | None = None   # Gateway API sessionPersistence; None: balance per request


@dataclass
class TcpRoute:
    """A VirtualService `tcp` route (at a waypoint or an ingress TCP server), or a TLSRoute/TCPRoute
    at an ingress listener. Everything set must match; the first route that matches wins."""

    source: str = ""
    port: int = 0
    destination_subnets: list[str] = field(default_factory=list)
    destinations: list[RouteDestination] = field(default_factory=list)
    source_labels: dict[str, str] = field(default_factory=dict)     # the client workload's labels
    source_namespace: str = ""
    sni_hosts: list[str] = field(default_factory=list)  # a VirtualService `tls` route's (WaypointRoutes.tls)

    # A waypoint older than these fields applied no mesh tcp or tls routes at all (they were
    # accepted and warned), so it may ignore them instead of refusing every route update.
    ADVISORY: ClassVar[tuple[str, ...]] = ("source_labels", "source_namespace", "sni_hosts")


@dataclass(frozen=True)
class TcpKeepalive:
    """`connectionPool.tcp.tcpKeepalive` (a DestinationRule's, or MeshConfig's `tcpKeepalive`):
    SO_KEEPALIVE on every upstream socket of the cluster, and each value set (non-zero) as its
    socket option, the OS default otherwise, as Envoy's `upstream_connection_options.tcp_keepalive`
    (ambit/dataplane/keepalive.py). Whole seconds: Istio passes `Duration.Seconds` to Envoy
    (pilot/pkg/networking/core/cluster.go, setKeepAliveSettings). Frozen: it keys connection pools."""

    time: int = 0                       # seconds idle before the first probe (TCP_KEEPIDLE); 0: the OS's
    interval: int = 0                   # seconds between probes (TCP_KEEPINTVL); 0: the OS's
    probes: int = 0                     # unanswered probes before the connection is dead (TCP_KEEPCNT); 0: the OS's


@dataclass
class TrafficPolicy:
    """A DestinationRule trafficPolicy, flattened. Zero means "no limit" / "not set"."""

    # tcp_keepalive: an older waypoint applied no tcpKeepalive at all (accepted and warned), so it
    # may ignore it as before: keepalive keeps idle connections alive, it never narrows what is allowed
    ADVISORY: ClassVar[tuple[str, ...]] = ("locality_set", "tcp_keepalive")

    lb: str = ""                        # ROUND_ROBIN | LEAST_REQUEST | RANDOM | PASSTHROUGH | CONSISTENT_HASH
    hash_header: str = ""
    hash_cookie: str = ""
    hash_cookie_path: str = ""
    hash_cookie_ttl: float = 0.0
    # httpCookie `ttl: 0s` (present and zero): a session cookie is set, without Max-Age (Envoy's
    # Cookie.ttl); an unset ttl sets none
    hash_cookie_session: bool = False
    hash_source_ip: bool = False
    hash_query_param: str = ""
    hash_cookie_attributes: dict[str, str] = field(default_factory=dict)
    hash_ring: str = ""                 # RING_HASH (default) | MAGLEV
    hash_ring_size: int = 0             # ringHash.minimumRingSize / minimumRingSize / maglev.tableSize; 0: default
    warmup_duration: float = 0.0        # warmup.duration / warmupDurationSecs; 0: no slow start
    warmup_aggression: float = 1.0
    warmup_min_percent: float = 10.0
    max_connections: int = 0
    connect_timeout: float = 0.0
    tcp_idle_timeout: float = 0.0
    http1_max_pending_requests: int = 0
    http2_max_requests: int = 0
    max_requests_per_connection: int = 0
    max_retries: int = 0
    http_idle_timeout: float = 0.0
    h2_upgrade: bool = False
    # tcp.maxConnectionDuration (s): an upstream HTTP connection older than this is drained; 0: no limit
    max_connection_duration: float = 0.0
    max_concurrent_streams: int = 0     # http.maxConcurrentStreams: streams per h2 upstream connection; 0: the server's
    h2_keepalive_interval: float = 0.0  # http.http2KeepAlive.interval (s): PING h2 upstreams; 0: no PINGs
    h2_keepalive_timeout: float = 0.0   # http.http2KeepAlive.timeout (s): no PING ACK within it closes; 0: unset
    tcp_keepalive: TcpKeepalive | None = None   # tcp.tcpKeepalive; None: unset (the mesh's, else no SO_KEEPALIVE)
    use_client_protocol: bool = False   # http.useClientProtocol: h2 upstream iff the client spoke h2; false: the port's
    outlier_detection: bool = False     # the outlier fields below apply only when this is true
    consecutive_5xx_errors: int = 5
    consecutive_gateway_errors: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0
    consecutive_local_origin_failures: int = 5
    split_external_local_origin_errors: bool = False
    # outlierDetectionHttpErrorCodes: when set, only these response statuses count as errors (a
    # listed non-5xx as a 500, a listed 5xx as itself) and every other response as a success;
    # empty: 5xx count, as before (waypoint/traffic/outlier.py)
    outlier_http_error_codes: list[int] = field(default_factory=list)
    retry_budget: bool = False          # the fields below apply only when this is true
    retry_budget_percent: float = 20.0
    retry_budget_min_concurrency: int = 3
    retry_budget_interval: float = 0.0  # budgetInterval (s); 0: the budget counts active requests only
    # loadBalancer.localityLbSetting (waypoint/traffic/locality.py). Istio's mesh default has it
    # enabled: with outlier detection, endpoints are prioritised by locality unless disabled.
    locality_disabled: bool = False     # enabled: false
    # the rule sets localityLbSetting at all: it then overrides a Service's trafficDistribution, as
    # Istio's GetEffectiveLbSetting orders them (DestinationRule, Service, mesh)
    locality_set: bool = False
    # distribute: [[from, {to: weight}]], in the rule's order (the first `from` matching the proxy applies)
    locality_distribute: list[list[Any]] = field(default_factory=list)
    locality_failover: list[list[str]] = field(default_factory=list)     # failover: [[from region, to region]]
    locality_failover_priority: list[str] = field(default_factory=list)  # failoverPriority: labels (or label=value)
    tls_mode: str = ""                  # DISABLE | SIMPLE | MUTUAL | ISTIO_MUTUAL
    sni: str = ""
    subject_alt_names: list[str] = field(default_factory=list)
    # TLS origination to ServiceEntry endpoints (waypoint/origination.py): files the waypoint reads
    ca_certificates: str = ""
    client_certificate: str = ""
    private_key: str = ""
    insecure_skip_verify: bool = False
    # caCrl: a PEM file of CRLs the server's chain is checked against (every CA of it, as Envoy
    # without `only_verify_leaf_cert_crl`). Not advisory: an older waypoint NACKs it rather than
    # originate without revocation checks.
    ca_crl: str = ""
    # A Gateway API BackendTLSPolicy's CA bundle, inline (PEM, from its caCertificateRefs
    # ConfigMaps' `ca.crt`), verified against instead of `ca_certificates`; a value holding no
    # certificate fails every connection (a policy none of whose references resolved: Gateway API
    # asks for 5xx, never plaintext nor the system roots). Not advisory: an older waypoint that
    # ignored it would verify against the system roots (or send plaintext where the policy is the
    # only thing that asks for TLS), so it NACKs an update that sets it (docs/config-stream.md).
    ca_certificate_pem: str = ""
    # A DestinationRule's `tls.credentialName`: the name of a Secret in the waypoint's own namespace
    # (as Istio reads it in the proxy's namespace) whose client certificate, key, CA bundle and CRLs
    # the waypoint originates with, instead of the files above. The controller sends the Secret's
    # material as a `ClientCredential` to the waypoints of that namespace only. Not advisory: an older
    # waypoint that ignored it would verify against the system roots and present no certificate.
    credential_name: str = ""


@dataclass
class PortPolicy:
    port: int
    policy: TrafficPolicy


@dataclass
class Subset:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    policy: TrafficPolicy | None = None             # already merged over the host-level policy
    port_policies: list[PortPolicy] = field(default_factory=list)


@dataclass
class WaypointRoutes(Resource):
    """The L7 configuration of one destination host (normally a Service), for its waypoint."""

    TYPE: ClassVar[str] = "ambit.io/WaypointRoutes"
    hostname: str
    namespace: str = ""
    service: str = ""                   # "ns/name", or "" for a host that is not a known Service
    waypoint: str = ""                  # the Service's waypoint ("ns/name"), if any
    http: list[HttpRoute] = field(default_factory=list)
    tcp: list[TcpRoute] = field(default_factory=list)
    tls: list[TcpRoute] = field(default_factory=list)      # VirtualService `tls` routes, by SNI
    policy: TrafficPolicy | None = None
    port_policies: list[PortPolicy] = field(default_factory=list)
    subsets: list[Subset] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)    # refs of the objects that contributed

    # An older waypoint applied no `tls` routes (warned), so it may ignore them: as before.
    ADVISORY: ClassVar[tuple[str, ...]] = ("tls",)

    @property
    def resource_name(self) -> str:
        return self.hostname


@dataclass
class TracingEntry:
    """One `tracing[]` entry of a Telemetry. It applies to the side(s) its own `match.mode` names
    (Istio's mergeTracing), so a CLIENT entry and a SERVER entry of one resource stay apart; what it
    leaves unset (None, empty) is inherited from earlier entries and broader levels."""

    mode: str = ""                      # CLIENT_AND_SERVER | CLIENT | SERVER ("": both)
    providers: list[str] = field(default_factory=list)
    sampling_percent: float | None = None
    custom_tags: dict[str, dict[str, Any]] = field(default_factory=dict)   # tag -> {literal|environment|header}
    disable_span_reporting: bool | None = None
    use_request_id_sampling: bool | None = None     # useRequestIdForTraceSampling
    enable_istio_tags: bool | None = None           # enableIstioTags


@dataclass
class AccessLogEntry:
    """One `accessLogging[]` entry of a Telemetry, applied to the side(s) its own `match.mode`
    names (Istio's mergeLogs), as `TracingEntry`."""

    mode: str = ""                      # CLIENT_AND_SERVER | CLIENT | SERVER ("": both)
    providers: list[str] = field(default_factory=list)
    disabled: bool | None = None
    filter: str = ""


@dataclass
class TelemetryPolicy(Resource):
    """A Telemetry resource: tracing and access-log entries, metrics providers and overrides.

    Entries are kept apart, in order, each with its own `match.mode`: the resolver applies an entry
    only to the side it names. Fields an entry leaves unset (None, "", no providers) inherit from
    earlier entries and the broader level (mesh < namespace < workload / targetRefs), see
    ambit.telemetry: a set field overrides, a provider list replaces.
    """

    TYPE: ClassVar[str] = "ambit.io/Telemetry"
    name: str
    namespace: str
    scope: str = "namespace"            # global | namespace | workload | waypoint
    selector: dict[str, str] = field(default_factory=dict)
    target_refs: list[dict[str, str]] = field(default_factory=list)
    tracing: list[TracingEntry] = field(default_factory=list)
    metrics_providers: list[str] = field(default_factory=list)
    metrics_overrides: list[dict[str, Any]] = field(default_factory=list)
    access_logging: list[AccessLogEntry] = field(default_factory=list)

    @property
    def resource_name(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class ExtAuthzBody:
    """`includeRequestBodyInCheck`: the request body sent with the check, buffered first."""

    max_request_bytes: int = 0          # the most buffered and sent; 0: Envoy's default
    allow_partial_message: bool = False  # False: a longer body is answered 413 before any check
    pack_as_bytes: bool = False         # gRPC: the body as raw_body (bytes), not body (UTF-8 text)


@dataclass
class ExtAuthzProvider:
    """A MeshConfig `extensionProviders` entry of kind `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`,
    validated by the controller (controller/meshconfig.py): the external authorizer an
    AuthorizationPolicy with action CUSTOM names (`Authorization.provider`). The waypoint or
    ingress gateway enforcing the policy calls it over the mesh (HBONE to the Service's endpoint,
    like any route destination) before its DENY and ALLOW policies, as Envoy's ext_authz filter
    runs before its RBAC filters in Istio."""

    name: str
    kind: str                           # "http" (envoyExtAuthzHttp) | "grpc" (envoyExtAuthzGrpc)
    service: str                        # the Service's hostname as written ("[<namespace>/]<hostname>")
    port: int
    timeout: float = 600.0              # seconds; Istio's default is 600 s
    fail_open: bool = False             # failOpen: an authorizer that cannot be reached allows
    status_on_error: int = 403          # statusOnError: the status when it cannot be reached (fail closed)
    # http only
    path_prefix: str = ""               # pathPrefix: prepended to the request's path in the check
    include_request_headers: list[str] = field(default_factory=list)   # includeRequestHeadersInCheck
    include_additional_headers: dict[str, str] = field(default_factory=dict)  # includeAdditionalHeadersInCheck
    headers_to_upstream_on_allow: list[str] = field(default_factory=list)
    headers_to_downstream_on_allow: list[str] = field(default_factory=list)
    headers_to_downstream_on_deny: list[str] = field(default_factory=list)
    include_body: ExtAuthzBody | None = None            # includeRequestBodyInCheck (http and grpc)


@dataclass
class MeshSettings(Resource):
    """Mesh-wide settings the data plane enforces (Istio's MeshState, the parts Ambit uses).

    One resource, named "mesh". `trust_domain` is the domain the CA issues in; `trust_domain_aliases`
    are other domains whose identities are accepted as the mesh's own (Istio's `trustDomainAliases`:
    migrating from an old trust domain, or merging meshes that share a root). A peer whose SPIFFE id
    is in neither is refused, and policy `principals`/`namespaces` match only within them.
    """

    TYPE: ClassVar[str] = "ambit.io/MeshSettings"
    trust_domain: str
    trust_domain_aliases: list[str] = field(default_factory=list)
    name: str = "mesh"
    # MeshConfig extensionProviders (name, kind, service, port, path, protocol, log_format, labels)
    # and defaultProviders ({"tracing": [...], "accessLogging": [...], "metrics": [...]}): what a
    # Telemetry's provider names refer to (ambit.telemetry resolves them).
    extension_providers: list[dict[str, Any]] = field(default_factory=list)
    default_providers: dict[str, list[str]] = field(default_factory=dict)
    # MeshConfig outboundTrafficPolicy.mode: ALLOW_ANY passes connections to unknown addresses
    # through; REGISTRY_ONLY refuses them (ztunnel.routing.decide).
    outbound_traffic_policy: str = "ALLOW_ANY"
    # MeshConfig localityLbSetting, flattened by the controller as a DestinationRule's is (only
    # the `locality_*` fields of the TrafficPolicy are set; None: unset, Istio's default of
    # enabled): a waypoint's locality balancing for clusters whose DestinationRule sets none and
    # whose Service has no trafficDistribution (Istio's order). Advisory: an older waypoint keeps
    # the default.
    locality: TrafficPolicy | None = None
    # MeshConfig tcpKeepalive: SO_KEEPALIVE and its values on every upstream socket a waypoint opens,
    # each value a cluster's DestinationRule `tcpKeepalive` sets overriding it (Istio's
    # applyTCPKeepalive). None: unset. Advisory: the controllers before it refused it in the mesh
    # config file, so no older waypoint ever applied it; one that ignores it keeps the OS's behaviour.
    tcp_keepalive: TcpKeepalive | None = None
    # MeshConfig extensionProviders of kinds envoyExtAuthzHttp and envoyExtAuthzGrpc: the external
    # authorizers AuthorizationPolicies with action CUSTOM name. Advisory: a waypoint older than
    # them NACKs every CUSTOM policy (its action and `provider`), so it never needs them.
    ext_authz: list[ExtAuthzProvider] = field(default_factory=list)

    ADVISORY: ClassVar[tuple[str, ...]] = ("locality", "tcp_keepalive", "ext_authz")

    @property
    def resource_name(self) -> str:
        return self.name


@dataclass
class TlsCertificate:
    """One server certificate of an ingress listener, from a `kubernetes.io/tls` Secret: PEM chain
    and key, as the Secret holds them (`tls.crt`, `tls.key`)."""

    name: str                           # "ns/name" of the Secret
    cert_pem: str
    key_pem: str


@dataclass
class IngressListener:
    """One listener of an ingress Gateway, resolved: its port, protocol (HTTP | HTTPS), hostname
    ("" for any), certificates (HTTPS) and the routes that attached to it, per virtual host: each
    `WaypointRoutes.hostname` is a hostname of the listener/route intersection ("*" for any)."""

    name: str
    port: int
    protocol: str
    hostname: str = ""
    tls_min_version: str = ""           # "" | "1.2" | "1.3"
    certificates: list[TlsCertificate] = field(default_factory=list)
    hosts: list[WaypointRoutes] = field(default_factory=list)
    # The Istio Gateway server this listener is one host of ("": a Gateway API listener, its own
    # group). A TLS connection serves the Hosts of the listeners of its SNI's group, no others.
    server: str = ""
    # Client certificates (Istio Gateway `tls.mode` MUTUAL: "required", OPTIONAL_MUTUAL:
    # "optional"): verified against `client_ca_pem`; `client_sans` (subjectAltNames), when set, the
    # names one of which the certificate must carry. Not advisory: a gateway that ignored them would
    # serve clients without certificates (an older one refuses the update and keeps its last one).
    client_auth: str = ""
    client_ca_pem: str = ""
    client_sans: list[str] = field(default_factory=list)
    # Revocation (the credentialName Secret's `ca.crl`, Istio's pilot/pkg/credentials/kube/secrets.go):
    # PEM CRLs a client certificate's chain is checked against, every CA of it, as Envoy's
    # `CertificateValidationContext.crl` without `only_verify_leaf_cert_crl` (what Istio sends).
    client_crl_pem: str = ""
    # Pins (verifyCertificateSpki / verifyCertificateHash), as lowercase hex SHA-256 digests of the
    # client certificate's SubjectPublicKeyInfo / DER: when either list is set, a certificate must
    # match one entry of either (Envoy's rule). Not advisory, as the fields above: an older gateway
    # NACKs rather than serve without them.
    client_spki_sha256: list[str] = field(default_factory=list)
    client_cert_sha256: list[str] = field(default_factory=list)


@dataclass
class ClientCredential(Resource):
    """A Secret named by a DestinationRule's `tls.credentialName`, read in a namespace that runs a
    waypoint or gateway, for TLS origination: the client chain and key (MUTUAL), the CA bundle the
    server is verified against and its CRLs (Istio's `<name>-cacert` Secret, else the Secret's own
    `ca.crt`/`cacert`, pilot/pkg/credentials/kube/secrets.go). Carries a private key: the config
    server sends it to the waypoints and gateways of `namespace` only (controller/configserver/scope.py).
    `error` says why it cannot be used (the Secret is missing, a key does not parse): a waypoint then
    fails the connections that name it (503 UF), never plaintext nor weaker verification."""

    TYPE: ClassVar[str] = "ambit.io/ClientCredential"
    name: str
    namespace: str
    cert_pem: str = ""
    key_pem: str = ""
    ca_pem: str = ""
    crl_pem: str = ""
    error: str = ""

    @property
    def resource_name(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class IngressGateway(Resource):
    """A Gateway API `Gateway` of an ingress class (`ambit`, `istio`), for the gateway pods that
    serve it: what they listen on and how they route. Carries TLS keys: the config server sends it
    to that gateway's pods only (controller/configserver/scope.py)."""

    TYPE: ClassVar[str] = "ambit.io/IngressGateway"
    name: str
    namespace: str
    gateway_class: str = "ambit"
    listeners: list[IngressListener] = field(default_factory=list)

    @property
    def resource_name(self) -> str:
        return f"{self.namespace}/{self.name}"


_NESTED: dict[str, Any] = {
    "ServicePort": ServicePort,
    "Endpoint": Endpoint,
    "Match": Match,
    "Rule": Rule,
    "StringMatch": StringMatch,
    "HeaderMatch": HeaderMatch,
    "HttpMatch": HttpMatch,
    "HeaderRewrite": HeaderRewrite,
    "RouteDestination": RouteDestination,
    "Redirect": Redirect,
    "Rewrite": Rewrite,
    "Retry": Retry,
    "Fault": Fault,
    "Mirror": Mirror,
    "DirectResponse": DirectResponse,
    "SessionPersistence": SessionPersistence,
    "HttpRoute": HttpRoute,
    "TcpRoute": TcpRoute,
    "TcpKeepalive": TcpKeepalive,
    "ExtAuthzBody": ExtAuthzBody,
    "ExtAuthzProvider": ExtAuthzProvider,
    "TrafficPolicy": TrafficPolicy,
    "PortPolicy": PortPolicy,
    "Subset": Subset,
    "JwtRule": JwtRule,
    "TlsCertificate": TlsCertificate,
    "IngressListener": IngressListener,
    "WaypointRoutes": WaypointRoutes,
    "TracingEntry": TracingEntry,
    "AccessLogEntry": AccessLogEntry,
}


def _rule_from_dict(d: Any) -> Rule:
    if type(d) is not dict:
        raise TypeError(f"Rule: expected an object, got {type(d).__name__}")
    clauses = d.get("clauses", [])
    if type(clauses) is not list or any(type(c) is not list for c in clauses):
        raise TypeError(f"Rule.clauses: expected list[list[Match]], got {_shown_list(clauses)}")
    if type(d.get("has_l7", False)) is not bool:
        raise TypeError(f"Rule.has_l7: expected bool, got {d['has_l7']!r:.60}")
    r = Rule(clauses=[[_from_dict(Match, _an_object(Rule, "clauses", m)) for m in clause] for clause in clauses],
             has_l7=d.get("has_l7", False))
    if any(k not in ("clauses", "has_l7") for k in d):
        _unknown_fields(Rule, d, {"clauses": None, "has_l7": None}, {})
    return r


def _authz_from_dict(cls: Any, d: dict[str, Any]) -> Authorization:
    a = _from_dict(cls, {k: v for k, v in d.items() if k not in ("rules", "http_rules")})
    for name in ("rules", "http_rules"):
        if type(d.get(name, [])) is not list:
            raise TypeError(f"Authorization.{name}: expected list[Rule], got {_shown_list(d[name])}")
    a.rules = [_rule_from_dict(r) for r in d.get("rules", [])]
    a.http_rules = [_rule_from_dict(r) for r in d.get("http_rules", [])]
    return a


Authorization.from_dict = classmethod(_authz_from_dict)  # type: ignore[assignment]


def _pa_from_dict(cls: Any, d: dict[str, Any]) -> PeerAuthn:
    p = _from_dict(cls, d)
    modes = {}
    for k, v in (d.get("port_modes") or {}).items():
        port = int(k) if type(k) is str and k.isdigit() and k.isascii() else -1
        if not 0 < port < 65536:
            raise ValueError(f"PeerAuthn.port_modes: {k!r} is not a TCP port")
        modes[port] = v
    p.port_modes = modes
    return p


PeerAuthn.from_dict = classmethod(_pa_from_dict)  # type: ignore[assignment]

RESOURCE_TYPES: dict[str, type[Resource]] = {
    c.TYPE: c for c in (Service, Workload, Authorization, PeerAuthn, WaypointRoutes, TelemetryPolicy, MeshSettings,
                        RequestAuthn, IngressGateway, ClientCredential)
}
