"""The controller's mesh config file (`--mesh-config`): Istio's MeshConfig, the fields Ambit honours.

    trustDomainAliases: [old.td, partner.mesh]
    extensionProviders:                 # what a Telemetry's provider names refer to
    - name: otel
      opentelemetry: {service: otel-collector.observability.svc.cluster.local, port: 4317}
    - name: zipkin
      zipkin: {service: zipkin.observability.svc.cluster.local, port: 9411, path: /api/v2/spans}
    - name: fluentd
      envoyFileAccessLog: {path: /dev/stdout, logFormat: {labels: {code: "%RESPONSE_CODE%"}}}
    defaultProviders: {tracing: [otel], accessLogging: [envoy], metrics: [prometheus]}
    outboundTrafficPolicy: {mode: REGISTRY_ONLY}   # ALLOW_ANY (default): see docs/egress.md
    localityLbSetting: {enabled: false}             # as a DestinationRule's; unset: enabled
    tcpKeepalive: {time: 300s, interval: 30s, probes: 3}   # waypoints' and gateways' upstream sockets

`extensionProviders` also holds the external authorizers (`envoyExtAuthzHttp`, `envoyExtAuthzGrpc`)
that AuthorizationPolicies with `action: CUSTOM` name: controller/extauthz.py.

The file is optional and watched: an edit is picked up within a second and pushed to every ztunnel
as the `MeshSettings` resource, with no restart. Fields Ambit does not implement are refused (a
setting that silently did nothing would be worse than an error), and so is `trustDomain` unless it
equals `--trust-domain`: the trust domain is the CA's, and renaming it means new certificates for
every workload, which is a restart of the controller with a new `--trust-domain`, not an edit.
A file that cannot be used is reported (log and `ambit status`) and the last good one stays in force.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ambit.duration import parse_go_duration
from ambit.model import ExtAuthzProvider
from ambit.telemetry import BUILTIN_PROVIDERS
from ambit.telemetryformat import check_format
from ambit.trustdomain import TrustDomains
from controller.extauthz import is_ext_authz, parse_provider
from controller.kinds.networking import LocalityLbSetting, TcpKeepalive

KNOWN = ("trustDomain", "trustDomainAliases", "extensionProviders", "defaultProviders", "outboundTrafficPolicy",
         "localityLbSetting", "tcpKeepalive")
OUTBOUND_MODES = ("ALLOW_ANY", "REGISTRY_ONLY")


@dataclass(frozen=True)
class MeshFile:
    trust_domain_aliases: tuple[str, ...] = ()
    extension_providers: tuple[dict[str, Any], ...] = ()   # ambit.telemetry.provider_from_dict's shape
    default_providers: dict[str, list[str]] = field(default_factory=dict)
    outbound_traffic_policy: str = "ALLOW_ANY"
    locality_lb_setting: dict[str, Any] = field(default_factory=dict)
    tcp_keepalive: dict[str, Any] | None = None     # None: unset; {} too turns SO_KEEPALIVE on
    ext_authz: tuple[ExtAuthzProvider, ...] = ()    # envoyExtAuthzHttp / envoyExtAuthzGrpc (CUSTOM policies)


def locality_lb_setting(data: Any, where: str = "mesh config") -> dict[str, Any]:
    """MeshConfig `localityLbSetting`: a DestinationRule's `loadBalancer.localityLbSetting`, checked
    by the same rules (controller/kinds/networking.py, Istio's validateLocalityLbSetting); {} when
    unset."""
    if data is None:
        return {}
    return dict(_checked(LocalityLbSetting, data, "localityLbSetting", where))


def tcp_keepalive(data: Any, where: str = "mesh config") -> dict[str, Any] | None:
    """MeshConfig `tcpKeepalive`: a DestinationRule's `connectionPool.tcp.tcpKeepalive`, checked by
    the same rules (whole seconds, the kernel's limits); the default of every waypoint cluster,
    whose rule's values override it one by one (Istio's applyTCPKeepalive). None when unset."""
    if data is None:
        return None
    return dict(_checked(TcpKeepalive, data, "tcpKeepalive", where))


def _checked(schema: Any, data: Any, name: str, where: str) -> Any:
    errs: list[tuple[str, str]] = []
    schema.check(data, name, errs)
    if errs:
        raise ValueError(f"{where}: " + "; ".join(f"{p}: {r}" for p, r in errs))
    return data


def outbound_traffic_policy(data: Any, where: str = "mesh config") -> str:
    """MeshConfig `outboundTrafficPolicy: {mode: ALLOW_ANY | REGISTRY_ONLY}` -> the mode. Istio's
    `egressProxy` (a sidecar-only setting) is refused by name."""
    if data is None:
        return "ALLOW_ANY"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: outboundTrafficPolicy: expected a mapping {{mode: ALLOW_ANY | REGISTRY_ONLY}}")
    if "egressProxy" in data:
        raise ValueError(f"{where}: outboundTrafficPolicy.egressProxy: not supported by Ambit: route external hosts "
                         "through an egress waypoint with a ServiceEntry labelled istio.io/use-waypoint instead")
    unknown = sorted(set(data) - {"mode"})
    if unknown:
        raise ValueError(f"{where}: outboundTrafficPolicy: {', '.join(unknown)}: unknown field (supported: mode)")
    mode = data.get("mode") or "ALLOW_ANY"
    if mode not in OUTBOUND_MODES:
        raise ValueError(f"{where}: outboundTrafficPolicy.mode: must be one of {', '.join(OUTBOUND_MODES)}, "
                         f"got {mode!r}")
    return str(mode)


def parse(data: Any, trust_domain: str, where: str = "mesh config") -> MeshFile:
    """Validate a parsed YAML document; ValueError names the field and the reason."""
    if data is None:
        return MeshFile()
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of MeshState fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(KNOWN))
    if unknown:
        raise ValueError(f"{where}: {', '.join(unknown)}: not supported by Ambit (supported: {', '.join(KNOWN)})")
    td = data.get("trustDomain")
    if td is not None and td != trust_domain:
        raise ValueError(f"{where}: trustDomain: {td!r} differs from the controller's --trust-domain "
                         f"{trust_domain!r}; the CA issues in one trust domain, change it with --trust-domain")
    aliases = data.get("trustDomainAliases") or []
    if not isinstance(aliases, list):
        raise ValueError(f"{where}: trustDomainAliases: expected a list of trust domains")
    try:
        tds = TrustDomains.of(trust_domain, aliases)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    providers = extension_providers(data.get("extensionProviders"), where)
    authorizers = ext_authz_providers(data.get("extensionProviders"), where)
    defaults = default_providers(data.get("defaultProviders"), {p["name"] for p in providers}, where)
    outbound = outbound_traffic_policy(data.get("outboundTrafficPolicy"), where)
    return MeshFile(tds.aliases, tuple(providers), defaults, outbound,
                    locality_lb_setting(data.get("localityLbSetting"), where),
                    tcp_keepalive(data.get("tcpKeepalive"), where), tuple(authorizers))


# Istio's extension provider kinds: those Ambit implements, and those it refuses (with why).
PROVIDER_KINDS = ("opentelemetry", "zipkin", "envoyFileAccessLog", "envoyOtelAls", "prometheus")
REFUSED_KINDS = {
    "datadog": "Ambit exports spans over OTLP and Zipkin only; use an opentelemetry provider and the collector",
    "lightstep": "Ambit exports spans over OTLP and Zipkin only; use an opentelemetry provider",
    "skywalking": "Ambit exports spans over OTLP and Zipkin only",
    "stackdriver": "Ambit does not export to Stackdriver; use an opentelemetry provider",
    "envoyHttpAls": "Ambit's access logs go to files (envoyFileAccessLog) or OTLP (envoyOtelAls)",
    "envoyTcpAls": "Ambit's access logs go to files (envoyFileAccessLog) or OTLP (envoyOtelAls)",
    "sds": "not a telemetry provider Ambit implements",
}
_FIELDS = {
    "opentelemetry": ("service", "port", "http", "grpc", "resourceDetectors", "maxTagLength"),
    "zipkin": ("service", "port", "path", "timeout", "headers", "maxTagLength"),
    "envoyFileAccessLog": ("path", "logFormat"),
    "envoyOtelAls": ("service", "port", "logName", "logFormat"),
    "prometheus": (),
}
# Istio's default logName (pilot/pkg/model OtelEnvoyAccessLogFriendlyName)
OTEL_LOG_NAME = "otel_envoy_accesslog"
_MAX_TAG = "maxTagLength is not supported by Ambit (tags are exported whole)"


def _log_format(fmt: Any, where: str) -> tuple[str, dict[str, str]]:
    """Istio's logFormat {text | labels} -> (log_format, labels)."""
    if fmt is None:
        return "text", {}
    if not isinstance(fmt, dict) or set(fmt) - {"text", "labels"} or len(fmt) != 1:
        raise ValueError(f"{where}.logFormat: expected exactly one of text (an Envoy format string) or labels "
                         "(JSON key -> format)")
    if "text" in fmt:
        text = str(fmt["text"]).rstrip("\n")
        bad = check_format(text)
        if bad:
            raise ValueError(f"{where}.logFormat.text: {bad}")
        return text or "text", {}
    labels = fmt["labels"]
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{where}.logFormat.labels: expected a mapping of JSON key -> format")
    for k, v in labels.items():
        bad = check_format(str(v))
        if bad:
            raise ValueError(f"{where}.logFormat.labels.{k}: {bad}")
    return "json", {str(k): str(v) for k, v in labels.items()}


def _provider(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or not entry.get("name"):
        raise ValueError(f"{where}: expected {{name: ..., <kind>: {{...}}}}")
    name = str(entry["name"])
    where = f"{where} ({name})"
    kinds = [k for k in entry if k != "name"]
    if len(kinds) != 1:
        raise ValueError(f"{where}: expected exactly one provider kind ({', '.join(PROVIDER_KINDS)}), "
                         f"got {', '.join(kinds) or 'none'}")
    kind = kinds[0]
    if kind in REFUSED_KINDS:
        raise ValueError(f"{where}: {kind}: {REFUSED_KINDS[kind]}")
    if kind not in PROVIDER_KINDS:
        raise ValueError(f"{where}: {kind}: unknown provider kind (Ambit supports {', '.join(PROVIDER_KINDS)})")
    spec = entry[kind] or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: {kind}: expected a mapping")
    unknown = sorted(set(spec) - set(_FIELDS[kind]))
    if unknown:
        raise ValueError(f"{where}: {kind}: {', '.join(unknown)}: not supported by Ambit "
                         f"(supported: {', '.join(_FIELDS[kind]) or 'none'})")
    if spec.get("maxTagLength"):
        raise ValueError(f"{where}: {kind}.maxTagLength: {_MAX_TAG}")
    out: dict[str, Any] = {"name": name, "kind": kind}
    if kind in ("opentelemetry", "zipkin", "envoyOtelAls"):
        if not spec.get("service") or not spec.get("port"):
            raise ValueError(f"{where}: {kind}: service and port are required")
        try:
            out["port"] = int(spec["port"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {kind}.port: expected a port number") from None
        if not 0 < out["port"] < 65536:
            raise ValueError(f"{where}: {kind}.port: {out['port']} is not a port (1-65535)")
        out["service"] = str(spec["service"])
        if any(c in out["service"] for c in _NOT_IN_HOST):
            raise ValueError(f"{where}: {kind}.service: {out['service']!r} is not a host name "
                             "(a Service's FQDN, a host, or host:port)")
    if kind == "opentelemetry":
        http, grpc = spec.get("http"), spec.get("grpc")
        if http is not None and grpc is not None:
            raise ValueError(f"{where}: opentelemetry: http and grpc are exclusive (http: OTLP/HTTP, grpc or "
                             "neither: OTLP/gRPC)")
        if http is not None:
            if not isinstance(http, dict) or set(http) - {"path", "timeout", "headers"}:
                raise ValueError(f"{where}: opentelemetry.http: expected path, timeout, headers")
            out["protocol"], out["path"] = "http", _url_path(http.get("path") or "/v1/traces", where, kind)
            _export_options(out, http.get("timeout"), http.get("headers"), f"{where}: opentelemetry.http")
        else:
            if grpc is not None and (not isinstance(grpc, dict) or set(grpc) - {"timeout", "initialMetadata"}):
                raise ValueError(f"{where}: opentelemetry.grpc: expected timeout, initialMetadata")
            out["protocol"] = "grpc"
            grpc = grpc or {}
            _export_options(out, grpc.get("timeout"), grpc.get("initialMetadata"),
                            f"{where}: opentelemetry.grpc", metadata=True)
        detectors = spec.get("resourceDetectors")
        if detectors is not None:
            if not isinstance(detectors, dict) or set(detectors) - {"environment", "dynatrace"}:
                raise ValueError(f"{where}: opentelemetry.resourceDetectors: expected environment (or dynatrace)")
            if "dynatrace" in detectors:
                raise ValueError(f"{where}: opentelemetry.resourceDetectors.dynatrace: not supported by Ambit "
                                 "(environment is: OTEL_RESOURCE_ATTRIBUTES of the waypoint)")
            if detectors.get("environment") not in (None, {}):
                raise ValueError(f"{where}: opentelemetry.resourceDetectors.environment: takes no fields ({{}})")
            out["resource_env"] = "environment" in detectors
    elif kind == "zipkin":
        out["path"] = _url_path(spec.get("path") or "/api/v2/spans", where, kind)
        _export_options(out, spec.get("timeout"), spec.get("headers"), f"{where}: zipkin")
    elif kind == "envoyFileAccessLog":
        out["path"] = str(spec.get("path") or "/dev/stdout")
        out["log_format"], out["labels"] = _log_format(spec.get("logFormat"), f"{where}: envoyFileAccessLog")
    elif kind == "envoyOtelAls":
        out["protocol"] = "grpc"
        out["log_format"], out["labels"] = _log_format(spec.get("logFormat"), f"{where}: envoyOtelAls")
        name = spec.get("logName")
        if name is not None and (not isinstance(name, str) or not name.isprintable() or len(name) > 256):
            raise ValueError(f"{where}: envoyOtelAls.logName: expected a name of at most 256 printable characters")
        out["log_name"] = name or OTEL_LOG_NAME
    return out


_NOT_IN_HOST = frozenset("/?#@ \t\r\n")


# A header or gRPC metadata name: an HTTP token (gRPC metadata: lower case, and not a pseudo-header).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_MAX_HEADERS = 32


def _export_options(out: dict[str, Any], timeout: Any, headers: Any, where: str, metadata: bool = False) -> None:
    """An exporter's `timeout` (a duration) and `headers` / `initialMetadata` ({name, value |
    envName}), as Istio hands them to Envoy's tracer: an `envName` is read from the controller's own
    environment when the mesh config is loaded (istiod reads its own), and the value reaches the
    proxies with the provider. A name that is not set there is refused: Istio would send the
    header empty, an authentication that silently fails."""
    field = "initialMetadata" if metadata else "headers"
    if timeout is not None:
        try:
            seconds = parse_go_duration(str(timeout))
        except ValueError as e:
            raise ValueError(f"{where}.timeout: {e}") from None
        if not 0 < seconds <= 300:
            raise ValueError(f"{where}.timeout: {timeout!r} must be more than 0 and at most 300s")
        out["timeout"] = seconds
    if headers is None:
        return
    if not isinstance(headers, list) or len(headers) > _MAX_HEADERS:
        raise ValueError(f"{where}.{field}: expected a list of at most {_MAX_HEADERS} {{name, value | envName}}")
    pairs = []
    for i, h in enumerate(headers):
        at = f"{where}.{field}[{i}]"
        if not isinstance(h, dict) or set(h) - {"name", "value", "envName"} or "name" not in h \
                or ("value" in h) == ("envName" in h):
            raise ValueError(f"{at}: expected {{name, value}} or {{name, envName}}")
        name = str(h["name"])
        if not _TOKEN.fullmatch(name) or (metadata and (name != name.lower() or name.startswith("grpc-"))):
            raise ValueError(f"{at}.name: {name!r} is not a header name" + (
                " (gRPC metadata names are lower case, and grpc- names are gRPC's own)" if metadata else ""))
        if "envName" in h:
            env = str(h["envName"])
            if env not in os.environ:
                raise ValueError(f"{at}.envName: {env!r} is not set in the controller's environment (Istio reads "
                                 "istiod's; an unset one would send the header empty)")
            value = os.environ[env]
        else:
            value = str(h["value"])
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"{at}: the value has a line break or NUL, which no header carries")
        pairs.append((name, value))
    out["headers"] = pairs


def _url_path(path: Any, where: str, kind: str) -> str:
    """A collector's URL path, with one leading slash as Istio writes the URI ("v1/traces" and
    "/v1/traces" are the same path)."""
    text = str(path)
    if any(c in text for c in " \t\r\n#"):
        raise ValueError(f"{where}: {kind}.path: {text!r} is not a URL path")
    return "/" + text.lstrip("/")


def extension_providers(data: Any, where: str = "mesh config") -> list[dict[str, Any]]:
    """MeshConfig `extensionProviders` -> provider dicts (see ambit.telemetry.provider_from_dict)."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValueError(f"{where}: extensionProviders: expected a list")
    out = [_provider(e, f"{where}: extensionProviders[{i}]") for i, e in enumerate(data) if not is_ext_authz(e)]
    names = [str(e["name"]) for e in data if isinstance(e, dict) and e.get("name")]   # authorizers' too
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: extensionProviders: duplicate name {', '.join(dup)}")
    return out


def ext_authz_providers(data: Any, where: str = "mesh config") -> list[ExtAuthzProvider]:
    """The `extensionProviders` entries that are external authorizers (controller/extauthz.py);
    `extension_providers` takes the others and checks that every name is unique."""
    if not isinstance(data, list):
        return []
    out = []
    for i, e in enumerate(data):
        if not is_ext_authz(e):
            continue
        at = f"{where}: extensionProviders[{i}]"
        name = str(e.get("name") or "")
        kinds = [k for k in e if k != "name"]
        if not name or len(kinds) != 1:
            raise ValueError(f"{at}: expected {{name: ..., <kind>: {{...}}}} with exactly one provider kind")
        out.append(parse_provider(name, kinds[0], e[kinds[0]], f"{at} ({name})"))
    return out


def default_providers(data: Any, defined: set[str], where: str = "mesh config") -> dict[str, list[str]]:
    """MeshConfig `defaultProviders` ({tracing, accessLogging, metrics}: provider names)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: defaultProviders: expected a mapping")
    unknown = sorted(set(data) - {"tracing", "accessLogging", "metrics"})
    if unknown:
        raise ValueError(f"{where}: defaultProviders: {', '.join(unknown)}: unknown (tracing, accessLogging, metrics)")
    out: dict[str, list[str]] = {}
    for k, names in data.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{where}: defaultProviders.{k}: expected a list of provider names")
        missing = [n for n in names if n not in defined and n not in BUILTIN_PROVIDERS]
        if missing:
            raise ValueError(f"{where}: defaultProviders.{k}: {', '.join(missing)}: not defined in extensionProviders")
        out[k] = list(names)
    return out


def load(path: Path, trust_domain: str) -> MeshFile:
    """Read and validate `path`; a missing file means the defaults."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return MeshFile()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML: {e}") from None
    return parse(data, trust_domain, str(path))


class Watcher:
    """Tells when the file changed (by stat), so the main loop re-reads it only then."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._first = True

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if self._first or stamp != self._stamp:
            self._first, self._stamp = False, stamp
            return True
        return False
