"""The controller's own health under `ambit_`, read at scrape time (the names the proxies use for the
same ideas, ambit/dataplane/telemetry/health.py, plus the CA's):

- `ambit_config_version_info{version}`: 1, naming the config version the controller serves.
- `ambit_config_last_update_timestamp_seconds`: unix time of the last snapshot applied (translated
  and handed to the config server; an unchanged version is not pushed again).
- `ambit_config_updates_total`: snapshots translated (every change of the sources).
- `ambit_certificate_expiry_seconds`: seconds until the CA's own certificate (or the earliest one of
  its chain) expires.
- `ambit_ca_certificates_issued_total`: workload certificates signed.
- `ambit_ca_requests_refused_total{code}`: CSRs refused, by gRPC status (UNAUTHENTICATED: bad node
  credential; PERMISSION_DENIED: an identity not on the node; INVALID_ARGUMENT: a bad CSR or TTL;
  RESOURCE_EXHAUSTED: a credential over its request rate).
- `ambit_controller_limited_total{limit}`: requests and streams refused by a per-client bound
  (controller/fairness.py): `ca_request_rate` (a credential asked for certificates faster than its
  bucket refills), `config_streams_per_client` (a credential held its bound of open config streams).

The config stream's own families (`ambit_config_pushes_total`, `ambit_config_connected_subscribers`,
`ambit_config_nacks_total`, `ambit_config_push_latency_seconds`) are in configserver/metrics.py.
Served with `--metrics-port` (TCP) and/or `--metrics-socket` (a unix socket: the lab).
"""

from __future__ import annotations

import http.server
import os
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from controller import fairness


class ControllerHealth(Collector):
    def __init__(self, controller: Any, ca_servicer: Any = None, clock: Callable[[], float] = time.time,
                 ca_reloader: Any = None) -> None:
        self.controller = controller
        self.ca_servicer = ca_servicer
        self.clock = clock
        self.ca_reloader = ca_reloader

    def collect(self) -> Iterator[Metric]:
        c = self.controller
        info = GaugeMetricFamily("ambit_config_version_info", "The config version the controller serves",
                                 labels=["version"])
        if c.version:
            info.add_metric([c.version], 1.0)
        yield info
        yield GaugeMetricFamily("ambit_config_last_update_timestamp_seconds",
                                "Unix time of the last snapshot applied (0: none yet)",
                                value=float(c.last_applied_at))
        yield CounterMetricFamily("ambit_config_updates", "Snapshots of the sources translated", value=c.snapshots)
        limited = CounterMetricFamily("ambit_controller_limited",
                                      "Requests and streams refused by a per-client bound, by bound", labels=["limit"])
        for limit, n in fairness.REFUSED.items():
            limited.add_metric([limit], float(n))
        yield limited
        s = self.ca_servicer
        if s is None:
            return
        material = s.ca.material
        earliest = material.expires.timestamp()
        now = self.clock()
        yield GaugeMetricFamily("ambit_certificate_expiry_seconds",
                                "Seconds until the CA's certificate (or the earliest of its chain) expires",
                                value=earliest - now)
        # istiod's names (security/pkg/server/ca/monitoring.go), so its alerts carry over; read at
        # scrape time, so a reloaded CA (controller/ca/reload.py) shows at once.
        root = material.root.not_valid_after_utc.timestamp()
        yield GaugeMetricFamily("citadel_server_root_cert_expiry_timestamp",
                                "The unix timestamp, in seconds, when the root cert will expire.", value=root)
        yield GaugeMetricFamily("citadel_server_root_cert_expiry_seconds",
                                "The time remaining, in seconds, before the root cert will expire. "
                                "A negative value indicates the cert is expired.", value=root - now)
        yield GaugeMetricFamily("citadel_server_cert_chain_expiry_timestamp",
                                "The unix timestamp, in seconds, when the CA's cert chain will expire.",
                                value=earliest)
        yield GaugeMetricFamily("citadel_server_cert_chain_expiry_seconds",
                                "The time remaining, in seconds, before the CA's cert chain will expire. "
                                "A negative value indicates the cert is expired.", value=earliest - now)
        r = self.ca_reloader
        if r is not None:
            reloads = CounterMetricFamily("ambit_ca_reloads", "Reads of the stored CA that found it changed, by "
                                          "outcome (applied; refused: against the rotation rules; failed: unreadable "
                                          "or gone)", labels=["result"])
            for result, n in r.counts.items():
                reloads.add_metric([result], float(n))
            yield reloads
            yield GaugeMetricFamily("ambit_ca_reload_problem", "1 while the stored CA differs from the one signing "
                                    "and cannot be taken up (the controller's log says why)",
                                    value=1.0 if r.problem else 0.0)
        yield CounterMetricFamily("ambit_ca_certificates_issued", "Workload certificates signed", value=s.issued)
        refused = CounterMetricFamily("ambit_ca_requests_refused", "Certificate requests refused, by gRPC status",
                                      labels=["code"])
        for code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"):
            refused.add_metric([code], float(s.refused.get(code, 0)))
        for code, n in sorted(s.refused.items()):
            if code not in ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"):
                refused.add_metric([code], float(n))
        yield refused


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve_unix(path: Path, registry: CollectorRegistry = REGISTRY) -> Callable[[], None]:
    """Serve the Prometheus exposition of `registry` on a unix socket, in a daemon thread (GET, any
    path). Returns a function that stops it and removes the socket."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "unix"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    srv = _UnixHTTPServer(str(path), Handler)
    os.chmod(path, 0o600)
    t = threading.Thread(target=srv.serve_forever, name="metrics-socket", daemon=True)
    t.start()

    def stop() -> None:
        srv.shutdown()
        srv.server_close()
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    return stop
