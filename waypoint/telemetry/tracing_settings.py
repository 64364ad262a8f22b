"""The waypoint's own tracing config, from its flags (`--tracing-otlp`, `--tracing-otlp-http`,
`--tracing-zipkin`, `--tracing-sampling`, `--tracing-tag`, `--tracing-disable-span-reporting`):
what the waypoint traces with when the Telemetry API names no tracing provider for a request's
Service (waypoint/app.py: the Telemetry API decides first).

`--tracing-sampling-file PATH` makes the sampling percentage switchable at runtime (the bench
compares 0 % and 100 % on one running waypoint): the file holds a number; it is re-read when its
modification time changes, checked at most once a second, so a request pays one clock read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ambit.telemetryconfig import Provider, TracingConfig
from waypoint.telemetry.tracing import Identity, parse_tag_flag

if TYPE_CHECKING:
    from waypoint.settings import WaypointSettings

log = logging.getLogger("waypoint.tracing")


def url_provider(name: str, kind: str, url: str, protocol: str = "") -> Provider:
    """A Provider from `http://host:port/path` (the path defaults per kind when absent)."""
    u = urlsplit(url if "//" in url else f"http://{url}")
    if not u.hostname or not u.port:
        raise ValueError(f"--tracing-{name} {url!r}: must be http://HOST:PORT[/PATH]")
    return Provider(name, kind, u.hostname, u.port, u.path if u.path not in ("", "/") else "", protocol)


def from_flags(otlp: str = "", otlp_http: str = "", zipkin: str = "", sampling: float = 1.0,
               tags: tuple[str, ...] = (), disable_span_reporting: bool = False) -> TracingConfig:
    providers = []
    if otlp:
        host, _, port = otlp.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--tracing-otlp {otlp!r}: must be HOST:PORT (OTLP gRPC)")
        providers.append(Provider("otlp", "opentelemetry", host, int(port), "", "grpc"))
    if otlp_http:
        providers.append(url_provider("otlp-http", "opentelemetry", otlp_http, "http"))
    if zipkin:
        providers.append(url_provider("zipkin", "zipkin", zipkin))
    return TracingConfig(tuple(providers), sampling, tuple(parse_tag_flag(t) for t in tags),
                         disable_span_reporting)


class SamplingFile:
    """`tracing_for()` over a fixed config whose sampling percentage a file can change at runtime."""

    def __init__(self, base: TracingConfig, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.base = self.cfg = base
        self.path = path
        self.clock = clock
        self._next = 0.0
        self._mtime = -1.0

    def __call__(self, service: str = "") -> TracingConfig:
        now = self.clock()
        if now >= self._next:
            self._next = now + 1.0
            self._reload()
        return self.cfg

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = 0.0
        if mtime == self._mtime:
            return
        self._mtime = mtime
        if not mtime:
            self.cfg = self.base
            return
        try:
            pct = float(self.path.read_text().strip())
            if not 0 <= pct <= 100:
                raise ValueError("not within 0..100")
        except ValueError as e:
            log.warning("--tracing-sampling-file %s: %s; keeping %.6g %%", self.path, e, self.cfg.sampling_percent)
            return
        self.cfg = replace(self.base, sampling_percent=pct)
        log.info("tracing sampling now %.6g %% (from %s)", pct, self.path)


def settings_tracing(s: WaypointSettings) -> Callable[[str], TracingConfig] | None:
    """The flags' `tracing_for`, or None when no flag names a provider (then the engine has no
    tracer at all and a request pays nothing)."""
    if not (s.tracing_otlp or s.tracing_otlp_http or s.tracing_zipkin):
        for name, given in (("--tracing-sampling-file", s.tracing_sampling_file), ("--tracing-tag", s.tracing_tag),
                            ("--tracing-disable-span-reporting", s.tracing_disable_span_reporting)):
            if given:
                log.warning("%s is set but no --tracing-otlp/--tracing-otlp-http/--tracing-zipkin provider is: "
                            "ignored", name)
        return None
    cfg = from_flags(s.tracing_otlp, s.tracing_otlp_http, s.tracing_zipkin, s.tracing_sampling, s.tracing_tag,
                     s.tracing_disable_span_reporting)
    if s.tracing_sampling_file is not None:
        return SamplingFile(cfg, s.tracing_sampling_file)
    return lambda service="": cfg


def tracing_identity(s: WaypointSettings) -> Identity:
    """The waypoint as its spans name it: Envoy's node id (`waypoint~~<pod>.<ns>~<ns>.svc.<domain>`)
    and Istio's canonical service, the Gateway's name."""
    return Identity(f"waypoint~~{s.pod_name}.{s.namespace}~{s.namespace}.svc.{s.cluster_domain}", s.name,
                    "latest", s.namespace, s.trust_domain)
