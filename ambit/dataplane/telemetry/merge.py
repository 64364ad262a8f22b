"""Metrics merging: another local process's Prometheus exposition appended to this proxy's own.

Why: Prometheus's annotation-based discovery (`prometheus.io/scrape`, `prometheus.io/port`) can name
one port per pod, and the node pod runs two processes that export metrics: ztunnel (15020, the
port the annotation names) and the node agent (15014: `ambit_agent_uncaptured_pods`,
`ambit_agent_pod_repairs_total`). Without merging, a cluster scraped by annotations never scrapes
the agent, and the alerts on it (deploy/alerts.yaml: AmbitPodsUncaptured, AmbitPodRepairFailing)
can never fire. Istio solves the same problem for an app and its sidecar the same way: the agent
on 15020 scrapes the app's port at scrape time and serves both ("metrics merging").

What a scrape does (ztunnel's `--merge-metrics-from`, ztunnel/serve.py and ztunnel/workers.py):
- fetch the source's exposition (`fetch`, asyncio, never blocking the loop) within `TIMEOUT`
  seconds and `MAX_BYTES` bytes, from a loopback address or a unix socket only (`parse_source`
  refuses any other: the merged text is served to whoever scrapes ztunnel);
- parse it and append its families after the proxy's own (`append`). A family whose name, or one
  of whose sample names, the proxy's own exposition already has is **dropped**, not renamed: on
  that target the name is the proxy's (a `process_*` family describes one process), a renamed copy
  would be a name no dashboard knows, and the source's own port still serves it unchanged;
- on any failure (nothing listening, a timeout, a non-200 answer, too large, not parseable), serve
  the proxy's own metrics all the same, as Istio does since its agent stopped failing the whole
  scrape for the app's sake: a proxy's metrics must not vanish because the other process is down.
  The failure is counted (`ambit_metrics_merge_failures_total{reason}`, every reason from 0, alert
  AmbitMetricsMergeFailing) and logged at most once per `LOG_INTERVAL` (`MergeFailures`).

Parsing and writing go through prometheus_client, so escaping and the HELP/TYPE of each family
follow its rules; what is appended is re-written, never the source's bytes as they came.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httptools
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("ambit.dataplane.merge")

TIMEOUT = 1.0                   # seconds for the whole fetch: Prometheus's default scrape timeout is 10 s
MAX_BYTES = 1024 * 1024         # of the source's answer, headers included (the agent's is a few KiB)
LOG_INTERVAL = 60.0             # seconds between two log lines about failed merges
FAILURES = "ambit_metrics_merge_failures"
REASONS = ("unreachable", "timeout", "status", "too_large", "invalid")
SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count", "_info", "_gcount", "_gsum")


class MergeError(Exception):
    """A merge that failed; `reason` is one of REASONS (the counter's label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class MergeSource:
    """Where to fetch from: `http://<loopback>:<port>/<path>` or `unix:<path>` (GET /metrics)."""

    text: str
    host: str = ""
    port: int = 0
    path: str = "/metrics"
    unix: str = ""


def parse_source(value: str) -> MergeSource:
    """The flag's value as a source, or ValueError saying why not. Only loopback (a literal
    127.0.0.0/8 or ::1 address, or `localhost`) and unix sockets: the source's metrics are served
    to every scraper of this proxy's port, so they must come from this pod, not from an address a
    misconfiguration or a hostile config could point anywhere."""
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        path = path[2:] if path.startswith("//") else path
        if not path.startswith("/"):
            raise ValueError("a unix socket must be an absolute path: unix:/run/agent-metrics.sock")
        return MergeSource(value, unix=path)
    u = urllib.parse.urlsplit(value)
    if u.scheme != "http" or not u.hostname:
        raise ValueError("must be http://127.0.0.1:PORT/PATH (loopback) or unix:/PATH")
    try:
        port = u.port
    except ValueError:
        port = None
    if not port:
        raise ValueError("the URL needs a port, e.g. http://127.0.0.1:15014/metrics")
    host = u.hostname
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{host!r} is not a loopback address: only 127.0.0.0/8, ::1, localhost or a unix "
                             "socket (the merged metrics are served to whoever scrapes this proxy)")
    path = u.path or "/metrics"
    return MergeSource(value, host="127.0.0.1" if host == "localhost" else host, port=port,
                       path=path + (f"?{u.query}" if u.query else ""))


def source_problem(value: str) -> str | None:
    """`parse_source` as a settings check (ambit/settings.py): the reason, or None."""
    if not value:
        return None
    try:
        parse_source(value)
    except ValueError as e:
        return str(e)
    return None


# --- sans-IO: the answer, the merge, the failures ---------------------------------------------------

class _Response:
    """httptools callbacks: the body and whether the message is over."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False
        self.headers_done = False
        self.framed = False     # Content-Length or chunked: the body's end is known, EOF before it cuts it

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


def response_body(raw: bytes) -> str:
    """The exposition in one whole HTTP/1.1 answer (read to EOF: the request said Connection: close),
    or MergeError: not HTTP, not 200, not UTF-8, or cut short."""
    resp = _Response()
    parser = httptools.HttpResponseParser(resp)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError as e:
        raise MergeError("invalid", f"not an HTTP answer ({e})") from None
    if not resp.headers_done:
        raise MergeError("invalid", "the answer ended before its headers")
    status = parser.get_status_code()
    if status != 200:
        raise MergeError("status", f"answered {status}")
    if not resp.complete and resp.framed:
        raise MergeError("invalid", "the answer ended before its body")   # a cut exposition could be a wrong value
    try:
        return bytes(resp.body).decode()
    except UnicodeDecodeError:
        raise MergeError("invalid", "the exposition is not UTF-8") from None


_TYPE_LINE = re.compile(r"^# (?:TYPE|HELP) (\S+)", re.M)
_SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", re.M)


def own_names(own: str) -> set[str]:
    """Every name the proxy's own exposition uses or could use for a sample: its families' names
    with every suffix prometheus_client writes, and its sample names. A scan, not a parse: the own
    text is the large one (Istio's label sets), read on every scrape."""
    names = {m.group(1) + s for m in _TYPE_LINE.finditer(own) for s in SUFFIXES}
    names.update(m.group(1) for m in _SAMPLE_LINE.finditer(own))
    return names


def foreign_families(text: str, taken: set[str]) -> tuple[list[Metric], list[str]]:
    """The source's families (parsed), less those that clash with `taken` (`own_names`): (kept,
    names of the dropped). MergeError("invalid") when the text is not an exposition."""
    kept: list[Metric] = []
    dropped: list[str] = []
    seen: set[str] = set()
    try:
        for fam in text_string_to_metric_families(text):
            names = {fam.name, *(s.name for s in fam.samples)}
            if names & taken or fam.name in seen:
                dropped.append(fam.name)
                continue
            seen.add(fam.name)
            kept.append(fam)
    except Exception as e:  # noqa: BLE001 - the parser's errors are not one type; any means "not an exposition"
        raise MergeError("invalid", f"not a Prometheus text exposition ({e})") from None
    return kept, dropped


def render(families: Iterable[Metric]) -> str:
    """Families written as prometheus_client writes a registry (HELP and TYPE once each)."""
    fams = list(families)

    class _Fixed:
        def collect(self) -> list[Metric]:
            return fams

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    return generate_latest(registry).decode()


def append(own: str, foreign: str) -> tuple[str, list[str]]:
    """The proxy's own exposition with the source's appended: (text, dropped family names).
    MergeError("invalid") when `foreign` does not parse (then nothing of it is served)."""
    kept, dropped = foreign_families(foreign, own_names(own))
    if not kept:
        return own, dropped
    return own + ("" if not own or own.endswith("\n") else "\n") + render(kept), dropped


class MergeFailures:
    """Failed merges by reason (every reason from 0, so an alert has a baseline), and a log line
    about them at most once per `interval` seconds: a source that is down for an hour fails every
    scrape, and one line per scrape would bury the log."""

    def __init__(self, source: str, *, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.counts = dict.fromkeys(REASONS, 0)
        self.interval, self.clock = interval, clock
        self._last_log: float | None = None
        self._unlogged = 0
        self._dropped_logged: set[str] = set()

    def record(self, err: MergeError) -> bool:
        """Count a failure; True when it was logged (the first, then one per interval)."""
        self.counts[err.reason] += 1
        now = self.clock()
        if self._last_log is not None and now - self._last_log < self.interval:
            self._unlogged += 1
            return False
        more = f" ({self._unlogged} more since the last line)" if self._unlogged else ""
        log.warning("metrics merge from %s failed, serving this proxy's own metrics only: %s%s",
                    self.source, err, more)
        self._last_log, self._unlogged = now, 0
        return True

    def dropped(self, names: list[str]) -> None:
        """Log, once per family, a family of the source left out because the proxy has that name."""
        new = [n for n in names if n not in self._dropped_logged]
        if new:
            self._dropped_logged.update(new)
            log.info("metrics merge from %s: left out %s (this proxy exports the same names; the source's "
                     "own port still serves them)", self.source, ", ".join(new))

    def collect(self) -> list[Metric]:
        """A registry collector: the counter is served with the proxy's own families."""
        return [self.family()]

    def family(self) -> CounterMetricFamily:
        fam = CounterMetricFamily(FAILURES, "Scrapes that served this proxy's metrics without the merged source's "
                                            "(--merge-metrics-from), by reason", labels=["reason"])
        for reason, n in self.counts.items():
            fam.add_metric([reason], n)
        return fam


# --- IO: the fetch ----------------------------------------------------------------------------------

class MetricsMerger:
    """One source, fetched at scrape time. Concurrent scrapes share one fetch in flight, so a
    burst of scrapers is one request to the source, not one each."""

    def __init__(self, source: MergeSource, *, timeout: float = TIMEOUT, max_bytes: int = MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self.timeout, self.max_bytes = source, timeout, max_bytes
        self.failures = MergeFailures(source.text, clock=clock)
        self._inflight: asyncio.Future[str] | None = None

    async def fetch(self) -> str:
        """The source's exposition text, or MergeError (never anything else)."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(self._inflight)

    async def _fetch(self) -> str:
        writer = None
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    if self.source.unix:
                        reader, writer = await asyncio.open_unix_connection(self.source.unix)
                    else:
                        reader, writer = await asyncio.open_connection(self.source.host, self.source.port)
                except OSError as e:
                    raise MergeError("unreachable", f"cannot connect ({e.strerror or e})") from None
                host = "localhost" if self.source.unix else f"{self.source.host}:{self.source.port}"
                writer.write(f"GET {self.source.path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\n"
                             "Connection: close\r\n\r\n".encode())
                raw = bytearray()
                try:
                    while chunk := await reader.read(65536):
                        raw += chunk
                        if len(raw) > self.max_bytes:
                            raise MergeError("too_large", f"the answer is over {self.max_bytes} bytes")
                except OSError as e:
                    raise MergeError("unreachable", f"the connection failed ({e})") from None
        except TimeoutError:
            raise MergeError("timeout", f"no whole answer within {self.timeout:g} s") from None
        finally:
            if writer is not None:
                writer.transport.abort()
        return response_body(bytes(raw))

    async def merged(self, own: Callable[[], str]) -> str:
        """`own()` (the proxy's exposition, which includes `failures.family()`) with the source's
        appended; own only when the merge fails. The fetch comes first, so a failure is already
        counted in the text this scrape serves; parsing runs off the loop (up to MAX_BYTES of text)."""
        try:
            foreign: str | None = await self.fetch()
        except MergeError as e:
            self.failures.record(e)
            foreign = None
        text = own()
        if foreign is None:
            return text
        try:
            merged, dropped = await asyncio.to_thread(append, text, foreign)
        except MergeError as e:
            self.failures.record(e)
            return own()
        self.failures.dropped(dropped)
        return merged
