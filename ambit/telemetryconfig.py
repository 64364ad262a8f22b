"""What the Telemetry API decides for one proxy (a ztunnel's workload, or a waypoint), after Istio's
precedence (mesh, namespace, workload / targetRefs) is applied: the data-plane view of tracing, access
logging and metrics (ambit.telemetrymetrics). The controller's Telemetry translation and the resolver produce these; the proxies
consume them. Pure data.

A provider is a MeshConfig `extensionProviders` entry (name -> kind and where it sends), so a
Telemetry names providers by name, as in Istio (`jaeger`, `zipkin`, `otel`, `envoy` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ambit.telemetrymetrics import MetricsConfig


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str                       # opentelemetry | zipkin | envoyFileAccessLog | envoyOtelAls | prometheus ...
    service: str = ""               # host (or host:port) it sends to
    port: int = 0
    path: str = ""                  # e.g. Zipkin's /api/v2/spans, OTLP/HTTP's /v1/traces
    protocol: str = ""              # OTLP: grpc | http
    log_format: str = ""            # access logs: text (Istio's default format) | json
    labels: tuple[tuple[str, str], ...] = ()   # JSON access-log fields / text format override
    log_name: str = ""              # envoyOtelAls: the records' instrumentation scope name
    timeout: float = 0.0            # seconds per export (0: the exporter's default, 10 s)
    headers: tuple[tuple[str, str], ...] = ()   # added to each export (gRPC: its initial metadata)
    resource_env: bool = False      # opentelemetry resourceDetectors.environment: OTEL_RESOURCE_ATTRIBUTES


@dataclass(frozen=True)
class TracingConfig:
    """Tracing for one proxy. No providers, or `disable_span_reporting`: spans are not exported
    (trace headers are still propagated)."""

    providers: tuple[Provider, ...] = ()
    sampling_percent: float = 1.0   # Istio's default meshConfig.defaultConfig.tracing.sampling is 1 %
    custom_tags: tuple[tuple[str, str, str], ...] = ()  # (tag, kind literal|environment|header, value/name)
    disable_span_reporting: bool = False
    # Istio's defaults (both true): sample by the x-request-id's hash, so every proxy that sees one
    # request decides alike; tag spans with istio.canonical_service, .namespace, .mesh_id ...
    use_request_id: bool = True
    istio_tags: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.providers) and not self.disable_span_reporting


@dataclass(frozen=True)
class AccessLogConfig:
    """Access logging for one proxy: which providers, whether disabled, for which mode
    (client/server), and a filter on the request (an expression such as `response.code >= 400`)."""

    providers: tuple[Provider, ...] = ()
    disabled: bool = False
    mode: str = "CLIENT_AND_SERVER"     # CLIENT_AND_SERVER | CLIENT | SERVER
    filter: str = ""


@dataclass(frozen=True)
class TelemetryConfig:
    tracing: TracingConfig = field(default_factory=TracingConfig)
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
