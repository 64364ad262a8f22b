"""The Telemetry API's resolver: which tracing, access logging and metrics apply to one proxy, after Istio's
precedence. Pure functions over the model (`TelemetryPolicy`, `MeshSettings`); both proxies call
them on each config update.

Precedence (Istio's "Telemetry API" docs): the root namespace's Telemetry without a selector is
mesh-wide; a namespace's Telemetry without a selector overrides it for that namespace; one with a
selector (or, for a waypoint, `targetRefs` naming its Gateway, one of its Services, or a ServiceEntry
it serves) overrides both for what it selects. At each level, each entry of a section (`tracing[]`,
`accessLogging[]`), in order, overrides field by field what it sets: a provider list *replaces* the
inherited one, and `randomSamplingPercentage`, `disableSpanReporting`, `customTags` (the whole map),
`useRequestIdForTraceSampling`, `enableIstioTags`, `disabled` and `filter` override when set. Where
nothing names providers, MeshConfig `defaultProviders` apply.
`metrics` overrides merge per metric and label, narrower levels last (ambit.telemetrymetrics);
a metrics provider list replaces the inherited one, and without a Prometheus provider in it (the
default is `prometheus`) the proxy side reports no metrics, as Istio generates none.

Which side a proxy is (`match.mode`): for ztunnel, the source workload's side of a connection is
CLIENT and the destination's is SERVER (each side resolved for its own workload); a waypoint is
the SERVER side of the requests it serves, as in Istio's ambient mode. Each entry applies only to
the side(s) its own `match.mode` names (Istio's mergeTracing/mergeLogs): entries of one resource
with different modes stay apart, so a CLIENT-only `disabled: true` leaves the SERVER side logging.

Istio calls two selector-less Telemetries in one namespace (or two selecting one workload) invalid;
Ambit applies them in name order, and `ambit apply` warns. A selector in the root namespace selects
workloads of the root namespace only (Istio: it is not mesh-wide).

Provider names MeshConfig does not define (and that are not built in: `envoy`, `prometheus`) are
dropped, as Istio ignores them; `ambit apply` warns about them by name. When no provider remains,
the proxy's own default log applies (access logging on, in its built-in JSON line), unless disabled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ambit.model import AccessLogEntry, MeshSettings, TelemetryPolicy, TracingEntry
from ambit.telemetryconfig import AccessLogConfig, Provider, TelemetryConfig, TracingConfig
from ambit.telemetrymetrics import FAMILIES, MetricsConfig, MetricsMerge

# Istio's built-in providers: `envoy` (a text log on the proxy's stdout) and `prometheus` (metrics,
# which Ambit's components always export).
BUILTIN_PROVIDERS: dict[str, dict[str, Any]] = {
    "envoy": {"name": "envoy", "kind": "envoyFileAccessLog", "path": "/dev/stdout", "log_format": "text"},
    "prometheus": {"name": "prometheus", "kind": "prometheus"},
}
GATEWAY_LABEL = "gateway.networking.k8s.io/gateway-name"
# The provider kinds each section uses; a provider of another kind does nothing there (warned at apply).
TRACING_KINDS = ("opentelemetry", "zipkin")
ACCESS_LOG_KINDS = ("envoyFileAccessLog", "envoyOtelAls")
CLIENT, SERVER = "CLIENT", "SERVER"


def provider_from_dict(d: Mapping[str, Any]) -> Provider:
    return Provider(name=str(d["name"]), kind=str(d["kind"]), service=str(d.get("service") or ""),
                    port=int(d.get("port") or 0), path=str(d.get("path") or ""),
                    protocol=str(d.get("protocol") or ""), log_format=str(d.get("log_format") or ""),
                    labels=tuple((str(k), str(v)) for k, v in (d.get("labels") or {}).items()),
                    log_name=str(d.get("log_name") or ""), timeout=float(d.get("timeout") or 0.0),
                    headers=tuple((str(k), str(v)) for k, v in (d.get("headers") or ())),
                    resource_env=bool(d.get("resource_env")))


def providers_of(mesh: MeshSettings | None) -> dict[str, Provider]:
    """Every provider a Telemetry may name: the built-ins, then MeshConfig's (which may redefine them)."""
    out = {n: provider_from_dict(d) for n, d in BUILTIN_PROVIDERS.items()}
    for d in (mesh.extension_providers if mesh is not None else []):
        out[d["name"]] = provider_from_dict(d)
    return out


@dataclass(frozen=True)
class Subject:
    """What a Telemetry can select: a workload (namespace + labels), or a waypoint (its Gateway's
    namespace/name, and optionally the Service ("ns/name") a request is for)."""

    namespace: str
    labels: Mapping[str, str]
    side: str                           # CLIENT | SERVER
    gateway: str = ""                   # a waypoint's Gateway name
    service: str = ""                   # a waypoint's request's Service, "ns/name"


def _level(p: TelemetryPolicy, s: Subject) -> int:
    """0 mesh, 1 namespace, 2 workload/targetRefs; -1: does not apply to `s`."""
    if p.scope == "waypoint":
        if not s.gateway:
            return -1       # targetRefs bind waypoints and gateways, never a ztunnel's workload
        for r in p.target_refs:
            kind, name = r.get("kind", ""), r.get("name", "")
            if r.get("namespace") not in (None, "", p.namespace):
                continue    # another namespace's target: refused by validation, never bound (as Istio)
            if kind == "Gateway" and p.namespace == s.namespace and name == s.gateway:
                return 2
            if kind == "Service" and s.service and f"{p.namespace}/{name}" == s.service:
                return 2
        return -1
    selected = all(s.labels.get(k) == v for k, v in p.selector.items())
    if p.scope == "global":     # Istio: a selector in the root namespace is not mesh-wide; it selects there only
        return (2 if selected and p.namespace == s.namespace else -1) if p.selector else 0
    if p.namespace != s.namespace:
        return -1
    if p.scope == "workload":
        return 2 if p.selector and selected else -1
    return 1


def _applies(mode: str, side: str) -> bool:
    return not mode or mode == "CLIENT_AND_SERVER" or mode == side


def ordered(policies: Iterable[TelemetryPolicy], s: Subject) -> list[TelemetryPolicy]:
    """The Telemetries that apply to `s`, broadest first (later ones override earlier ones);
    within a level, by name, so the result does not depend on arrival order."""
    ranked = [(lvl, p.resource_name, p) for p in policies if (lvl := _level(p, s)) >= 0]
    return [p for _, _, p in sorted(ranked, key=lambda t: (t[0], t[1]))]


def _pick(names: Iterable[str], known: Mapping[str, Provider]) -> tuple[Provider, ...]:
    return tuple(known[n] for n in names if n in known)


def _override(acc: Any, entry: TracingEntry | AccessLogEntry) -> None:
    """Istio's field-by-field merge: each field of `acc` that `entry` sets (not None, "" or empty)
    takes the entry's value; the others keep what broader levels and earlier entries said."""
    for f in dataclasses.fields(entry):
        v = getattr(entry, f.name)
        if hasattr(acc, f.name) and v is not None and v != "" and v != [] and v != {}:
            setattr(acc, f.name, v)


@dataclass
class _Tracing:
    """The tracing fields as entries are applied, broadest first (named as `TracingEntry`'s)."""

    providers: list[str]
    sampling_percent: float = TracingConfig().sampling_percent
    custom_tags: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    disable_span_reporting: bool = False
    use_request_id_sampling: bool = True
    enable_istio_tags: bool = True

    def config(self, known: Mapping[str, Provider]) -> TracingConfig:
        return TracingConfig(
            providers=tuple(p for p in _pick(self.providers, known) if p.kind in TRACING_KINDS),
            sampling_percent=self.sampling_percent, custom_tags=_tags(self.custom_tags),
            disable_span_reporting=self.disable_span_reporting, use_request_id=self.use_request_id_sampling,
            istio_tags=self.enable_istio_tags)


@dataclass
class _AccessLog:
    """The access-log fields as entries are applied (named as `AccessLogEntry`'s)."""

    providers: list[str]
    disabled: bool = False
    mode: str = "CLIENT_AND_SERVER"
    filter: str = ""

    def config(self, known: Mapping[str, Provider]) -> AccessLogConfig:
        return AccessLogConfig(providers=tuple(p for p in _pick(self.providers, known) if p.kind in ACCESS_LOG_KINDS),
                               disabled=self.disabled, mode=self.mode, filter=self.filter)


def resolve(policies: Iterable[TelemetryPolicy], mesh: MeshSettings | None, s: Subject) -> TelemetryConfig:
    """The effective tracing and access logging for `s`: every entry that applies to `s`'s side, in
    order (levels broadest first, then each resource's entries as written)."""
    known = providers_of(mesh)
    defaults = mesh.default_providers if mesh is not None else {}
    tracing = _Tracing(list(defaults.get("tracing", [])))
    access = _AccessLog(list(defaults.get("accessLogging", [])))
    metric_names: list[str] = list(defaults.get("metrics", [])) or ["prometheus"]
    metrics = MetricsMerge()
    for p in ordered(policies, s):
        if p.metrics_providers:
            metric_names = list(p.metrics_providers)
        for o in p.metrics_overrides:
            metrics.add(o, s.side)
        for entry in (*p.tracing, *p.access_logging):
            if _applies(entry.mode, s.side):
                _override(tracing if isinstance(entry, TracingEntry) else access, entry)
    prom = any(p.kind == "prometheus" for p in _pick(metric_names, known))
    # Ambit's proxies export Prometheus only: with no Prometheus provider in force, Istio would
    # generate no Prometheus metrics for this proxy, so none are reported.
    return TelemetryConfig(tracing.config(known), access.config(known),
                           metrics.result() if prom else MetricsConfig(disabled=frozenset(FAMILIES)))


def _tags(tags: Mapping[str, Mapping[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    """customTags as the tracer takes them: (tag, kind, value). An environment or header tag's
    `defaultValue` is carried as `name|default` (waypoint/telemetry/tracing.py `custom_tags`)."""
    out = []
    for tag, spec in sorted(tags.items()):
        if "literal" in spec:
            out.append((tag, "literal", str(spec["literal"].get("value", ""))))
            continue
        for kind in ("environment", "header"):
            if kind in spec:
                name, default = str(spec[kind].get("name", "")), spec[kind].get("defaultValue")
                out.append((tag, kind, f"{name}|{default}" if default else name))
    return tuple(out)


def for_workload(policies: Iterable[TelemetryPolicy], mesh: MeshSettings | None, namespace: str,
                 labels: Mapping[str, str], side: str) -> TelemetryConfig:
    """A ztunnel's view for one of its workloads: `side` CLIENT for its outbound connections,
    SERVER for its inbound ones."""
    return resolve(policies, mesh, Subject(namespace, labels, side))


def for_waypoint(policies: Iterable[TelemetryPolicy], mesh: MeshSettings | None, namespace: str, gateway: str,
                 service: str = "", side: str = SERVER) -> TelemetryConfig:
    """A waypoint's view (the SERVER side), for requests to `service` ("ns/name"; "" for the
    waypoint as a whole: what a Gateway-level or namespace-level Telemetry says). An ingress
    gateway is the CLIENT side, as Istio resolves a gateway's Telemetry (its listener class
    Gateway: `match.mode` CLIENT metrics overrides and access logging)."""
    labels = {GATEWAY_LABEL: gateway, "istio.io/gateway-name": gateway}
    return resolve(policies, mesh, Subject(namespace, labels, side, gateway=gateway, service=service))
