"""The topology view's I/O edge to a tracing backend: one HTTP GET per service name of a node,
against the backend's query API (`--tracing-url`, `--tracing-api`; the shapes are in traces.py).

`unix:PATH` URLs are read over a unix socket (the lab's collector serves its query API there, as
the lab's components serve their metrics: the controller runs in the host netns, the collector
in a pod's).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from ambit.dataplane.endpoint import fetch
from controller.dashboard import traces

LOOKBACK_MS = 3600 * 1000       # the last hour, as Kiali and Jaeger's UI default to
LIMIT = 20


class TraceBackend:
    """A tracing backend's query API: Zipkin v2 or Jaeger."""

    def __init__(self, url: str, api: str = "zipkin", timeout: float = 5.0) -> None:
        if api not in traces.APIS:
            raise ValueError(f"--tracing-api {api!r}: want one of {', '.join(traces.APIS)}")
        if not (url.startswith(("http://", "https://")) or url.startswith("unix:")):
            raise ValueError(f"--tracing-url {url!r}: want http(s)://HOST:PORT[/PREFIX] or unix:PATH")
        self.url, self.api, self.timeout = url.rstrip("/"), api, timeout

    def path(self, service: str, limit: int = LIMIT) -> str:
        if self.api == "zipkin":
            q = {"serviceName": service, "lookback": str(LOOKBACK_MS), "limit": str(limit)}
            return "/api/v2/traces?" + urllib.parse.urlencode(q)
        return "/api/traces?" + urllib.parse.urlencode({"service": service, "lookback": "1h", "limit": str(limit)})

    def get(self, path: str) -> Any:
        if self.url.startswith("unix:"):
            status, body = fetch(self.url[len("unix:"):], path, self.timeout)
        else:
            with urllib.request.urlopen(self.url + path, timeout=self.timeout) as r:   # noqa: S310 - operator-given URL
                status, body = r.status, r.read()
        if status != 200:
            raise OSError(f"{self.url}{path} answered {status}: {body[:200]!r}")
        return json.loads(body)

    def recent(self, services: list[str], limit: int = LIMIT) -> dict[str, Any]:
        """The panel's `traces` part: the rows of the services' recent traces, or why there are none."""
        found: list[list[traces.Span]] = []
        errors = []
        for s in services:
            try:
                found += traces.parse(self.api, self.get(self.path(s, limit)))
            except (OSError, ValueError) as e:     # (json's and urllib's errors are among these)
                errors.append(f"{s}: {e}")
        where = f"{self.api} API at {self.url}, services {', '.join(services) or '(none)'}"
        return {"available": not errors or bool(found), "message": where + ("; " + "; ".join(errors) if errors else ""),
                "services": services, "traces": traces.rows(found, limit)}
